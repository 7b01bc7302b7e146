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

A model that raises out of a BAR access or a reset is contained here, the last
line of the fault policy (docs/execution-model.md; hfi1 contains its own
errors first): the error is logged and counted (`model_errors`), the read
returns all ones -- what a PCIe read of a failed function returns -- the write
is dropped, and the transport keeps serving.
"""
from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns

from common.ratelog import RateLimitedLog
from devmodel.base import DeviceModel
from devmodel.pci_layout import Bar
from devmodel.regs import extract_lanes

from ..dma import DmaSpace
from ..irq import InterruptLines
from ..profile import AccessProfile
from ..protocol import IrqIndex
from .config import CONFIG_SIZE, ConfigSpace, MsiX, PciExpress, PowerManagement

log = logging.getLogger("vfnic.pci")

CONFIG_REGION = 7
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


MAX_LOGGED_MODEL_ERRORS = 32


class PciFunction:
    def __init__(self, model: DeviceModel, name: str = ""):
        self.model = model
        self.name = name or model.name
        #: an MmioTrace (emulator/trace.py) recording every BAR access, or None
        self.trace = None
        #: an AccessProfile (emulator/profile.py) counting and timing BAR accesses, or None
        self.profile = None
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
        #: accesses to a shared BAR's mmap areas that came trapped (a client that did not map them)
        self.shared_trapped = 0
        self.model_errors = 0
        self._model_errors_log = RateLimitedLog(log, "device model errors", burst=MAX_LOGGED_MODEL_ERRORS)
        self._special = self._special_ranges()
        #: per BAR, the span covering all its special ranges: most accesses fall outside it
        self._special_span = {index: (min(r[0] for r in ranges), max(r[1] for r in ranges))
                              for index, ranges in self._special.items()}
        #: region index -> size, for the bounds check every access makes
        self._region_sizes = {CONFIG_REGION: CONFIG_SIZE, **{index: bar.size for index, bar in self.bars.items()}}
        self.dma = DmaSpace()
        self.irq = InterruptLines({
            IrqIndex.INTX: 1 if layout.interrupt_pin else 0,
            IrqIndex.MSIX: self.msix.vectors if self.msix else 0,
            IrqIndex.ERR: 1,
            IrqIndex.REQ: 1,
        })
        model.attach(self)

    @staticmethod
    def _make_shared(bar: Bar) -> SharedMemory:
        fd = os.memfd_create(f"vfnic-bar{bar.index}", os.MFD_CLOEXEC)
        os.ftruncate(fd, bar.size)
        return SharedMemory(fd, mmap.mmap(fd, bar.size, mmap.MAP_SHARED))

    def shared_memory(self, bar: int) -> memoryview | None:
        """DeviceHost: the memfd mapping behind a shared BAR, or None."""
        shared = self.shared.get(bar)
        return memoryview(shared.mapping) if shared is not None else None

    def _reset_msix_table(self) -> None:
        for v in range(len(self.msix_table) // MSIX_ENTRY_SIZE):
            masked = bytes(12) + (1).to_bytes(4, "little")  # vector control: masked
            self.msix_table[v * MSIX_ENTRY_SIZE:(v + 1) * MSIX_ENTRY_SIZE] = masked

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
    # One transport thread drives a function (accesses, resets, FLR), so the
    # function itself takes no lock; model workers use the model's own lock.
    def region_read(self, index: int, offset: int, length: int) -> bytes:
        if not 0 <= offset < offset + length <= self._region_sizes.get(index, 0):
            self._check(index, offset, length)  # raises, saying which bound
        if index == CONFIG_REGION:
            return self.config.read(offset, length)
        if length in (1, 2, 4, 8) and not offset % length:  # one CPU access: the common case
            return self._bar_read(index, offset, length).to_bytes(length, "little")
        out = bytearray()
        for off, size in split_access(offset, length):
            out += self._bar_read(index, off, size).to_bytes(size, "little")
        return bytes(out)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if not 0 <= offset < offset + len(data) <= self._region_sizes.get(index, 0):
            self._check(index, offset, len(data))  # raises, saying which bound
        if index == CONFIG_REGION:
            self.config.write(offset, data)
            return
        if len(data) in (1, 2, 4, 8) and not offset % len(data):
            self._bar_write(index, offset, len(data), int.from_bytes(data, "little"))
            return
        for off, size in split_access(offset, len(data)):
            rel = off - offset
            self._bar_write(index, off, size, int.from_bytes(data[rel:rel + size], "little"))

    def _special_ranges(self) -> dict[int, list[tuple[int, int, Callable, Callable]]]:
        """Per BAR: (start, end, read, write) of the ranges the function
        serves itself -- MSI-X table, PBA, shared memory -- not the model."""
        special: dict[int, list] = {}
        m = self.msix
        if m is not None:
            special.setdefault(m.table_bar, []).append(
                (m.table_offset, m.table_offset + len(self.msix_table), self._table_read, self._table_write))
            special.setdefault(m.pba_bar, []).append(
                (m.pba_offset, m.pba_offset + 8 * ((m.vectors + 63) // 64), self._pba_read, lambda *_: None))
        for index, bar in self.bars.items():
            for start, size in bar.mmap_areas if bar.shared else ():
                special.setdefault(index, []).append(
                    (start, start + size, self._shared_reader(index, start), self._shared_writer(index, start)))
        return special

    def _table_read(self, rel: int, size: int) -> int:
        return int.from_bytes(self.msix_table[rel:rel + size], "little")

    def _table_write(self, rel: int, size: int, value: int) -> None:
        self.msix_table[rel:rel + size] = value.to_bytes(size, "little")

    def _pba_read(self, rel: int, size: int) -> int:
        return extract_lanes(self.pending_bits(), rel, size)

    def _shared_reader(self, index: int, start: int) -> Callable[[int, int], int]:
        def read(rel: int, size: int) -> int:
            self.shared_trapped += 1
            off = start + rel
            return int.from_bytes(self.shared[index].mapping[off:off + size], "little")
        return read

    def _shared_writer(self, index: int, start: int) -> Callable[[int, int, int], None]:
        def write(rel: int, size: int, value: int) -> None:
            self.shared_trapped += 1
            off = start + rel
            self.shared[index].mapping[off:off + size] = value.to_bytes(size, "little")
        return write

    def _bar_read(self, index: int, offset: int, size: int) -> int:
        if self.profile is not None:
            started = perf_counter_ns()
            value = self._served_read(index, offset, size)
            self.profile.record("R", index, offset, started)
        else:
            value = self._served_read(index, offset, size)
        if self.trace is not None:
            self.trace.record(self.name, "R", index, offset, size, self._name_of(index, offset), value)
        return value

    def _served_read(self, index: int, offset: int, size: int) -> int:
        span = self._special_span.get(index)
        if span is not None and span[0] <= offset < span[1]:
            for start, end, read, _write in self._special[index]:
                if start <= offset < end:
                    return read(offset - start, size)
        try:
            return self.model.bar_read(index, offset, size)
        except Exception as exc:
            self._model_failed(exc, f"read of BAR{index} {offset:#x} ({size} bytes)")
            return (1 << 8 * size) - 1

    def _bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        if self.trace is not None:
            self.trace.record(self.name, "W", index, offset, size, self._name_of(index, offset), value)
        if self.profile is not None:
            started = perf_counter_ns()
            self._served_write(index, offset, size, value)
            self.profile.record("W", index, offset, started)
        else:
            self._served_write(index, offset, size, value)

    def _served_write(self, index: int, offset: int, size: int, value: int) -> None:
        span = self._special_span.get(index)
        if span is not None and span[0] <= offset < span[1]:
            for start, end, _read, write in self._special[index]:
                if start <= offset < end:
                    write(offset - start, size, value)
                    return
        try:
            self.model.bar_write(index, offset, size, value)
        except Exception as exc:
            self._model_failed(exc, f"write of BAR{index} {offset:#x} ({size} bytes)")

    def enable_profile(self) -> AccessProfile:
        """Count and time every BAR access and interrupt from now on
        (emulator/profile.py); the profile."""
        self.profile = AccessProfile()
        self.irq.on_signal = self.profile.interrupt_signalled
        return self.profile

    def profile_stats(self) -> dict | None:
        return self.profile.snapshot(self._name_of) if self.profile is not None else None

    def _name_of(self, index: int, offset: int) -> str:
        m = self.msix
        if m is not None and index == m.table_bar and m.table_offset <= offset < m.table_offset + len(self.msix_table):
            vector, field = divmod(offset - m.table_offset, MSIX_ENTRY_SIZE)
            return f"MSI-X_TABLE[{vector}]+{field:#x}"
        try:
            return self.model.register_name(index, offset)
        except Exception as exc:  # a name is never worth an error
            return f"BAR{index}+{offset:#x}({type(exc).__name__})"

    def _model_failed(self, exc: Exception, during: str) -> None:
        self.model_errors += 1
        self._model_errors_log.error("device model %s raised during the %s: %s: %s [%d so far]", self.model.name or "?",
                                     during, type(exc).__name__, exc, self.model_errors, exc_info=self.model_errors == 1)

    def pending_bits(self) -> int:
        return sum(1 << v for v, pending in enumerate(self.irq.pending) if pending)

    # -- reset ----------------------------------------------------------------------
    def reset(self) -> None:
        self.resets += 1
        self.config.reset()
        self._reset_msix_table()
        try:
            self.model.reset()  # first: a model polling its shared memory stops before it is zeroed
        except Exception as exc:
            self._model_failed(exc, "reset")
        for index, shared in self.shared.items():  # only the mapped areas: the rest of the memfd stays untouched
            for start, size in self.bars[index].mmap_areas:
                shared.mapping[start:start + size] = bytes(size)

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
        for index, shared in self.shared.items():
            try:
                shared.mapping.close()
            except BufferError:  # the model still holds a view (shared_memory): the mapping goes with it
                log.warning("BAR%d: the model kept a view of its shared memory past close", index)
            os.close(shared.fd)
        self.shared.clear()
