"""The driver's sequences again, this time through the real protocol.

The hfi1 model is served by the vfio-user server (in a thread), and the
re-enacted driver reaches it only the way QEMU would: BAR0 reads as
REGION_READ, BAR0 writes posted (NO_REPLY), interrupts as MSI-X eventfds, the
credit-return page in memfd-backed guest RAM mapped with DMA_MAP, FLR as a
config-space write to PCIe Device Control.
"""
from __future__ import annotations

import os
import select
import struct
import time

import pytest
from hfi1_guest import HCMD_SUCCESS, GuestDriver
from test_dc8051 import READ_CONFIG_DATA, bring_link_up, logical, phys
from test_probe_walk import CREDIT_RETURN_BASE, load_to_link_up, remove_one

from devmodel.hfi1 import chip_registers as cr
from emulator.client import Client, GuestMemory
from emulator.pci.function import PciFunction
from emulator.server import Server

CONFIG = 7


class EventfdInterrupts:
    """The guest's view of MSI-X: one eventfd per vector, counted as they fire."""

    def __init__(self, client: Client, vectors: int):
        self.fds = {v: client.enable_msix(v) for v in range(vectors)}
        self.counts = {v: 0 for v in range(vectors)}

    def _collect(self, timeout: float) -> None:
        ready, _, _ = select.select(list(self.fds.values()), [], [], timeout)
        for fd in ready:
            vector = next(v for v, f in self.fds.items() if f == fd)
            self.counts[vector] += os.eventfd_read(fd)

    def count(self, vector: int) -> int:
        self._collect(0)
        return self.counts[vector]

    def wait_for(self, vector: int, count: int = 1, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(vector) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"MSI-X vector {vector} fired {self.counts[vector]} times, wanted {count}")
            self._collect(left)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


class DeviceOverTheWire:
    """What GuestDriver needs of a device, reached through the client."""

    def __init__(self, client: Client, model):
        self.client, self.model = client, model
        self.config = model.config

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        return int.from_bytes(self.client.read(bar, offset, size), "little")

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.client.write(bar, offset, value.to_bytes(size, "little"), posted=True)

    def reset(self) -> None:
        """pcie_flr(): Initiate FLR in the PCI Express capability."""
        pcie = _find_capability(self.client, 0x10)
        devctl = struct.unpack("<H", self.client.read(CONFIG, pcie + 8, 2))[0]
        self.client.write(CONFIG, pcie + 8, struct.pack("<H", devctl | 0x8000))

    def settle(self, timeout_s: float = 1.0) -> bool:
        self.client.read(0, cr.CCE_REVISION, 8)  # every posted write before this has landed
        return self.model.settle(timeout_s)

    def stats(self) -> dict:
        return self.model.stats()


def _find_capability(client: Client, cap_id: int) -> int:
    ptr = client.read(CONFIG, 0x34, 1)[0]
    while ptr:
        if client.read(CONFIG, ptr, 1)[0] == cap_id:
            return ptr
        ptr = client.read(CONFIG, ptr + 1, 1)[0]
    raise LookupError(f"capability {cap_id:#x} not found")


class Host:
    def __init__(self, irq):
        self.irq = irq


@pytest.fixture
def wire(tmp_path):
    import threading

    from hfi1_fakes import FAST, SIMULATOR

    from devmodel.hfi1 import ChipConfig, Hfi1Device
    model = Hfi1Device(ChipConfig(**FAST, **SIMULATOR))
    function = PciFunction(model)
    server = Server(str(tmp_path / "hfi1.sock"), function)
    server.bind()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = Client(server.path, timeout=10)
    client.connect()
    memory = GuestMemory(1 << 20)
    client.dma_map(memory, CREDIT_RETURN_BASE)
    irq = EventfdInterrupts(client, 8)
    device = DeviceOverTheWire(client, model)
    yield device, Host(irq), memory
    irq.close()
    client.close()
    server.stop()
    thread.join(5)
    server.close()
    function.close()
    memory.close()


def test_interrupt_self_test_passes_over_the_wire(wire):
    device, host, _ = wire
    assert GuestDriver(device, host).check_int_registers()


def test_8051_command_handshake_over_the_wire(wire):
    device, host, _ = wire
    driver = GuestDriver(device, host)
    driver.read_guid()
    code, _ = driver.do_8051_command(READ_CONFIG_DATA, 0x0B << 40 | 4 << 32)
    assert code == HCMD_SUCCESS
    assert driver.load_8051_config(0x06, 4, 0x1234) == HCMD_SUCCESS


def test_link_up_raises_its_msix_eventfd(wire):
    device, host, _ = wire
    driver = GuestDriver(device, host)
    driver.read_guid()
    bring_link_up(driver, host)  # waits on vector 0's eventfd
    assert (phys(driver), logical(driver)) == (0x50, 2)  # physical LinkUp, logical Init


def test_flr_through_config_space_restores_reset_values(wire):
    device, host, _ = wire
    driver = GuestDriver(device, host)
    driver.read_guid()
    driver.write_csr(cr.CCE_INT_MASK, 0xFF)
    device.reset()
    assert driver.read_csr(cr.CCE_INT_MASK) == 0 and driver.read_csr(cr.CCE_DC_CTRL) == 1


def test_probe_link_up_and_rmmod_over_the_wire(wire):
    device, host, memory = wire
    driver = GuestDriver(device, host)
    learnt = load_to_link_up(driver)
    assert driver.host_link_state == "INIT"
    remove_one(driver, learnt)
    assert device.stats()["undeclared_csr_accesses"] == 0, device.stats()["undeclared_offsets"]
