"""An hfi1 model reached the way QEMU reaches it: BAR0 reads as
REGION_READ, BAR0 writes posted (NO_REPLY), interrupts as MSI-X eventfds,
FLR as a config-space write to PCIe Device Control. What GuestDriver needs
of a device and a host, through the project's vfio-user client."""
from __future__ import annotations

import os
import select
import struct
import time

from devmodel.hfi1 import chip_registers as cr
from testkit.client import Client

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


