"""testdev: a small PCI device that proves the host path before the NIC exists.

BAR0, 64 KiB, 64-bit, trapped. All registers 64-bit:

    0x00 ID          RO   TESTDEV_ID ("vfnictd1" in memory order)
    0x08 SCRATCH     RW
    0x10 DMA_SRC     RW   guest-physical source
    0x18 DMA_DST     RW   guest-physical destination
    0x20 DMA_LEN     RW   bytes to copy (at most DMA_MAX_LEN)
    0x28 DMA_CMD     SC   write 1: start the copy (reads back 0)
    0x30 DMA_STATUS  W1C  [0] DONE  [1] ERROR  [2] BUSY (RO)
    0x38 IRQ_VECTOR  RW   MSI-X vector raised when a copy ends
    0x40 DMA_COUNT   RO   copies completed (ok or not)
    0x8000           MSI-X table (4 vectors), 0x9000 PBA

The copy runs on the model's worker, not in the register write, like a real
DMA engine: the guest polls DONE or waits for the interrupt. A bad address or
length sets ERROR instead of DONE; the guest is never trusted.
"""
from __future__ import annotations

import logging
import threading

from common.ratelog import counts, flush, limited
from devmodel.base import DeviceModel, DmaError
from devmodel.pci_layout import Bar, BarKind, MsixLayout, PciIdentity, PciLayout
from devmodel.regs import Access, Register, RegisterFile
from devmodel.worker import Worker

log = logging.getLogger("vfnic.testdev")

TESTDEV_ID = int.from_bytes(b"vfnictd1", "little")
VENDOR_ID, DEVICE_ID = 0x1234, 0x11F0
BAR0_SIZE = 64 << 10
MSIX_VECTORS = 4
DMA_MAX_LEN = 16 << 20

ID, SCRATCH, DMA_SRC, DMA_DST, DMA_LEN, DMA_CMD, DMA_STATUS, IRQ_VECTOR, DMA_COUNT = range(0, 0x48, 8)
STATUS_DONE, STATUS_ERROR, STATUS_BUSY = 1 << 0, 1 << 1, 1 << 2
CMD_START = 1


class TestDevice(DeviceModel):
    name = "testdev"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.worker = Worker(self.name)
        self.regs = RegisterFile(self.name, [
            Register("ID", ID, TESTDEV_ID, Access.RO),
            Register("SCRATCH", SCRATCH),
            Register("DMA_SRC", DMA_SRC),
            Register("DMA_DST", DMA_DST),
            Register("DMA_LEN", DMA_LEN),
            Register("DMA_CMD", DMA_CMD, access=Access.SC, on_write=self._command),
            Register("DMA_STATUS", DMA_STATUS, access=Access.W1C),
            Register("IRQ_VECTOR", IRQ_VECTOR, writable=MSIX_VECTORS - 1),
            Register("DMA_COUNT", DMA_COUNT, access=Access.RO),
        ], log)

    def layout(self) -> PciLayout:
        return PciLayout(
            identity=PciIdentity(VENDOR_ID, DEVICE_ID, VENDOR_ID, DEVICE_ID, class_code=0xFF0000, revision=1),
            bars=(Bar(0, BAR0_SIZE, BarKind.MEM64),),
            msix=MsixLayout(MSIX_VECTORS, table_bar=0, table_offset=0x8000, pba_bar=0, pba_offset=0x9000),
        )

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        with self._lock:
            return self.regs.read(offset, size)

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        with self._lock:
            self.regs.write(offset, size, value)

    def _command(self, old: int, new: int) -> None:
        if not new & CMD_START or self.regs.get(DMA_STATUS) & STATUS_BUSY:
            return
        self.regs.set_bits(DMA_STATUS, STATUS_BUSY)
        job = (self.regs.get(DMA_SRC), self.regs.get(DMA_DST), self.regs.get(DMA_LEN), self.regs.get(IRQ_VECTOR))
        self.worker.submit(lambda: self._copy(*job))

    def _copy(self, src: int, dst: int, length: int, vector: int) -> None:
        try:
            if length > DMA_MAX_LEN:
                raise DmaError(f"DMA_LEN {length} exceeds {DMA_MAX_LEN}")
            self.host.dma.write(dst, self.host.dma.read(src, length))
            outcome = STATUS_DONE
            log.debug("DMA_CMD: copied %d bytes %#x -> %#x", length, src, dst)
        except DmaError as e:
            outcome = STATUS_ERROR
            limited(self, log, "failed DMA copies").warning("DMA_CMD: copy failed: %s", e)
        with self._lock:
            self.regs.clear_bits(DMA_STATUS, STATUS_BUSY)
            self.regs.set_bits(DMA_STATUS, outcome)
            self.regs.set(DMA_COUNT, self.regs.get(DMA_COUNT) + 1)
        self.host.irq.trigger(vector)

    def reset(self) -> None:
        self.worker.cancel_all()
        self.worker.settle()
        with self._lock:
            self.regs.reset()

    def close(self) -> None:
        self.worker.stop()
        self.regs.flush_log()
        flush(self)

    def stats(self) -> dict:
        return {"undeclared_csr_accesses": sum(self.regs.undeclared.values()), "warnings": counts(self)}


class SharedMemoryTestDevice(TestDevice):
    """testdev plus BAR2: 1 MiB of shared memory the client may mmap, except
    its first page, which stays trapped. A separate device because offering
    any mmappable region turns off QEMU's posted writes for the whole device."""

    name = "testdev-shm"
    BAR2_SIZE = 1 << 20

    def layout(self) -> PciLayout:
        base = super().layout()
        shared = Bar(2, self.BAR2_SIZE, BarKind.MEM64, prefetchable=True, shared=True,
                     mmap_areas=((0x1000, self.BAR2_SIZE - 0x1000),))
        return PciLayout(base.identity, base.bars + (shared,), base.msix, base.pcie_link, base.interrupt_pin)

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        if bar == 2:
            return 0  # the trapped page of BAR2 holds nothing
        return super().bar_read(bar, offset, size)

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar != 2:
            super().bar_write(bar, offset, size, value)
