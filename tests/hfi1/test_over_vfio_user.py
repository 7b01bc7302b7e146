"""The driver's sequences again, this time through the real protocol.

The hfi1 model is served by the vfio-user server (in a thread), and the
re-enacted driver reaches it only the way QEMU would: BAR0 reads as
REGION_READ, BAR0 writes posted (NO_REPLY), interrupts as MSI-X eventfds, the
credit-return page in memfd-backed guest RAM mapped with DMA_MAP, FLR as a
config-space write to PCIe Device Control.
"""
from __future__ import annotations

import threading

import pytest

from devmodel.hfi1 import ChipConfig, Hfi1Device
from devmodel.hfi1 import chip_registers as cr
from emulator.pci.function import PciFunction
from emulator.server import Server
from testkit.client import Client, GuestMemory
from testkit.hfi1.chip import FAST, SIMULATOR
from testkit.hfi1.dc8051 import READ_CONFIG_DATA, bring_link_up, logical, phys
from testkit.hfi1.guest import HCMD_SUCCESS, GuestDriver
from testkit.hfi1.over_vfio_user import DeviceOverTheWire, EventfdInterrupts
from testkit.hfi1.probe import CREDIT_RETURN_BASE, load_to_link_up, remove_one
from testkit.host import Host, RealTime


@pytest.fixture
def wire(tmp_path):
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
    yield device, Host(memory, irq, RealTime()), memory  # a served model runs on its own worker thread
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
