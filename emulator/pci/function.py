"""A PCI function: a device model behind config space, BARs and MSI-X.

    vfio-user region    served by
    ----------------    -----------------------------------------------------
    0..5  BARs          MSI-X table/PBA ranges: here; shared-memory parts: the
                        BAR's memfd; everything else: model.bar_read/bar_write
    6     ROM           absent (size 0)
    7     config        ConfigSpace (4 KiB, PCIe)
    8     VGA           absent

The transport calls `region_read`/`region_write` with any offset and length;
accesses are split into naturally aligned pieces of at most 8 bytes before
they reach the model, as a CPU's MMIO would. `reset()` is DEVICE_RESET and
also what an FLR (PCIe Device Control, Initiate FLR) does.

The function is the model's `DeviceHost`: its `dma` and `irq` live as long as
the device; a client disconnect empties them (unmaps, closes eventfds) but
keeps the device's state, as the vfio-user spec asks.
"""
from __future__ import annotations

import logging
import mmap
import os
import threading
from dataclasses import dataclass

from devmodel.base import DeviceModel

from ..dma import DmaSpace
from ..irq import InterruptLines
from ..protocol import IrqIndex
from .config import CONFIG_SIZE, ConfigSpace, MsiX, PciExpress, PowerManagement
from .layout import Bar, BarKind

log = logging.getLogger("vfnic.pci")

CONFIG_REGION = 7
NUM_REGIONS = 9
MSIX_ENTRY_SIZE = 16


class RegionAccessError(Exception):
    """An access outside a region, or to a region that does not exist."""


@dataclass
class SharedMemory:
    """The memfd behind a shared-memory BAR."""

    fd: int
    mapping: mmap.mmap


def split_access(offset: int, length: int):
    """Yield (offset, size) pieces, naturally aligned, at most 8 bytes each."""
    end = offset + length
    while offset < end:
        size = 8
        while size > 1 and (offset % size or offset + size > end):
            size //= 2
        yield offset, size
        offset += size


class PciFunction:
    def __init__(self, model: DeviceModel):
        self.model = model
        self.layout = layout = model.layout()
        self.bars: dict[int, Bar] = {bar.index: bar for bar in layout.bars}
        self.msix = layout.msix
        caps = [PowerManagement(), PciExpress(layout.pcie_link, self.function_level_reset)]
        if self.msix:
            caps.append(MsiX(self.msix))
        self.config = ConfigSpace(layout.identity, layout.bars, caps, layout.interrupt_pin)
        self.msix_table = bytearray(MSIX_ENTRY_SIZE * (self.msix.vectors if self.msix else 0))
        self._reset_msix_table()
        self.shared: dict[int, SharedMemory] = {i: self._make_shared(b) for i, b in self.bars.items() if b.shared}
        self.resets = 0
        self.dma = DmaSpace()
        self.irq = InterruptLines({
            IrqIndex.INTX: 1 if layout.interrupt_pin else 0,
            IrqIndex.MSIX: self.msix.vectors if self.msix else 0,
            IrqIndex.ERR: 1,
            IrqIndex.REQ: 1,
        })
        # One lock serialises the transport's accesses with resets; model
        # workers take the model's own lock.
        self.lock = threading.RLock()
        model.attach(self)

    @staticmethod
    def _make_shared(bar: Bar) -> SharedMemory:
        fd = os.memfd_create(f"vfnic-bar{bar.index}", os.MFD_CLOEXEC)
        os.ftruncate(fd, bar.size)
        return SharedMemory(fd, mmap.mmap(fd, bar.size, mmap.MAP_SHARED))

    def _reset_msix_table(self) -> None:
        for v in range(len(self.msix_table) // MSIX_ENTRY_SIZE):
            self.msix_table[v * MSIX_ENTRY_SIZE:(v + 1) * MSIX_ENTRY_SIZE] = bytes(12) + (1).to_bytes(4, "little")  # vector control: masked

    # -- region geometry ----------------------------------------------------
    def region_size(self, index: int) -> int:
        if index == CONFIG_REGION:
            return CONFIG_SIZE
        bar = self.bars.get(index)
        return bar.size if bar else 0

    def _check(self, index: int, offset: int, length: int) -> None:
        size = self.region_size(index)
        if size == 0:
            raise RegionAccessError(f"region {index} does not exist")
        if offset < 0 or length <= 0 or offset + length > size:
            raise RegionAccessError(f"[{offset:#x}, +{length:#x}) is outside region {index} (size {size:#x})")

    # -- accesses ----------------------------------------------------------------
    def region_read(self, index: int, offset: int, length: int) -> bytes:
        self._check(index, offset, length)
        with self.lock:
            if index == CONFIG_REGION:
                return self.config.read(offset, length)
            if length in (1, 2, 4, 8) and not offset % length:  # one CPU access: the common case
                return self._bar_read(index, offset, length).to_bytes(length, "little")
            out = bytearray()
            for off, size in split_access(offset, length):
                out += self._bar_read(index, off, size).to_bytes(size, "little")
            return bytes(out)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        self._check(index, offset, len(data))
        with self.lock:
            if index == CONFIG_REGION:
                self.config.write(offset, data)
                return
            if len(data) in (1, 2, 4, 8) and not offset % len(data):
                self._bar_write(index, offset, len(data), int.from_bytes(data, "little"))
                return
            for off, size in split_access(offset, len(data)):
                rel = off - offset
                self._bar_write(index, off, size, int.from_bytes(data[rel:rel + size], "little"))

    def _msix_range(self, index: int, offset: int) -> tuple[str, int] | None:
        m = self.msix
        if m is None:
            return None
        if index == m.table_bar and 0 <= offset - m.table_offset < len(self.msix_table):
            return "table", offset - m.table_offset
        if index == m.pba_bar and 0 <= offset - m.pba_offset < 8 * ((m.vectors + 63) // 64):
            return "pba", offset - m.pba_offset
        return None

    def _in_shared(self, index: int, offset: int) -> bool:
        bar = self.bars[index]
        return bar.shared and any(o <= offset < o + s for o, s in bar.mmap_areas)

    def _bar_read(self, index: int, offset: int, size: int) -> int:
        where = self._msix_range(index, offset)
        if where is not None:
            kind, rel = where
            if kind == "table":
                return int.from_bytes(self.msix_table[rel:rel + size], "little")
            return (self.pending_bits() >> (8 * rel)) & ((1 << (8 * size)) - 1)
        if self._in_shared(index, offset):
            return int.from_bytes(self.shared[index].mapping[offset:offset + size], "little")
        return self.model.bar_read(index, offset, size)

    def _bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        where = self._msix_range(index, offset)
        if where is not None:
            kind, rel = where
            if kind == "table":
                self.msix_table[rel:rel + size] = value.to_bytes(size, "little")
            return  # the PBA is read-only
        if self._in_shared(index, offset):
            self.shared[index].mapping[offset:offset + size] = value.to_bytes(size, "little")
            return
        self.model.bar_write(index, offset, size, value)

    def pending_bits(self) -> int:
        return sum(1 << v for v, pending in enumerate(self.irq.pending) if pending)

    # -- reset ----------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.resets += 1
            self.config.reset()
            self._reset_msix_table()
            for shared in self.shared.values():
                shared.mapping[:] = bytes(len(shared.mapping))
            self.model.reset()

    def function_level_reset(self) -> None:
        log.info("PCIe Device Control: Initiate Function Level Reset")
        self.reset()

    def disconnect(self) -> None:
        """The client went away: release its maps and eventfds, keep device state."""
        self.irq.close()
        self.dma.clear()

    def close(self) -> None:
        self.disconnect()
        self.model.close()
        for shared in self.shared.values():
            shared.mapping.close()
            os.close(shared.fd)
        self.shared.clear()
