"""The HFI1 (WFR) PCI function: BAR0 decode, reset, worker, interrupts.

    BAR0 (64 MiB, 64-bit, non-prefetchable), as hfi1_pcie_ddinit maps it:
    0x0000000 ..          CSRs: CCE 0x0, ASIC 0x400000, MISC 0x500000, DC 0x600000,
                          RXE 0x1000000 (kernel per-context 0x1100000 + 0x100c)
      0x0100000 0x0100FFF MSI-X table (CCE_MSIX_TABLE_LOWER/UPPER), served by the PCI layer
      0x0110000 0x011001F MSI-X PBA (CCE_MSIX_PBA_OFFSET), served by the PCI layer
    0x1200000 ..          RcvArray, 8 bytes x RCV_ARRAY_CNT (write-combining in the driver)
    .. 0x1FFFFFF          CSRs: RXE user per-context 0x1300000 + 0x1000c, TXE 0x1800000,
                          send contexts 0x1900000 + 0x100h, SDMA engines 0x1A00000 + 0x100e
    0x2000000 0x2FFFFFF   PIO send buffers, 64 KiB per hardware context
    0x3000000 0x3FFFFFF   the same buffers, start-of-packet alias

Every CSR is declared by its kernel name in one `RegisterFile`; an access the
model does not declare is served as storage, logged once with the nearest
declared name, and counted in `stats()["undeclared_csr_accesses"]`.

Concurrency: BAR accesses (transport thread) and worker events take one model
lock. MSI-X vectors raised while it is held are signalled after it is released,
so the interrupt layer is never called under the model lock. A reset bumps a
generation number: events scheduled before it are dropped when they fire.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from devmodel.base import DeviceHost, DeviceModel
from devmodel.regs import RegisterFile
from devmodel.worker import Job, Worker
from emulator.pci.layout import Bar, BarKind, MsixLayout, PciIdentity, PciLayout, PcieLink

from .asic import Asic
from .cce import Cce
from .chip_registers import CCE_MSIX_PBA_OFFSET, CCE_MSIX_TABLE_LOWER
from .config import (
    PCI_CLASS_FABRIC_CONTROLLER, PCI_DEVICE_ID_INTEL0, PCI_REVISION_B1, PCI_SUBSYSTEM_ID_ADAPTER_X16,
    PCI_VENDOR_ID_INTEL, ChipConfig,
)
from .dc8051 import Dc8051
from .dcc import Dcc
from .eprom import Eprom
from .intr import InterruptController
from .lcb import Lcb
from .misc import Misc
from .pio import TXE_PIO_SEND, TXE_PIO_SIZE, Pio
from .qsfp import QsfpPort
from .rcv import Receive
from .sdma import Sdma
from .send import Send

BAR0_SIZE = TXE_PIO_SEND + TXE_PIO_SIZE  # 64 MiB: hfi1_pcie_ddinit refuses anything else


class Hfi1Device(DeviceModel):
    name = "hfi1"

    @classmethod
    def from_options(cls, link_partner: str = "present") -> "Hfi1Device":
        """Build from `vfnic serve --option` values (see devmodel/registry.py)."""
        return cls(ChipConfig(neighbour=None) if link_partner == "none" else ChipConfig())

    def __init__(self, config: ChipConfig | None = None):
        self.config = config or ChipConfig()
        self.log = logging.getLogger("vfnic.hfi1")
        self.host: DeviceHost | None = None
        self._lock = threading.RLock()
        self._generation = 0
        self.worker = Worker(self.name)
        self.regs = RegisterFile("hfi1.bar0", log=self.log)
        self.intr = InterruptController(self)
        self.cce = Cce(self)
        self.asic = Asic(self)
        self.qsfp = (QsfpPort(self, 1), QsfpPort(self, 2))
        self.eprom = Eprom(self)
        self.misc = Misc(self)
        self.dcc = Dcc(self)
        self.lcb = Lcb(self)
        self.dc8051 = Dc8051(self)
        self.rcv = Receive(self)
        self.send = Send(self)
        self.pio = Pio(self)
        self.sdma = Sdma(self)
        self.blocks = (self.intr, self.cce, self.asic, *self.qsfp, self.eprom, self.misc, self.dcc, self.lcb,
                       self.dc8051, self.rcv, self.send, self.pio, self.sdma)
        for block in self.blocks:
            self.regs.declare(block.registers)
        for block in self.blocks:
            block.reset()

    # -- DeviceModel ---------------------------------------------------------------
    def layout(self) -> PciLayout:
        return PciLayout(
            identity=PciIdentity(
                vendor_id=PCI_VENDOR_ID_INTEL, device_id=PCI_DEVICE_ID_INTEL0,
                subsystem_vendor_id=PCI_VENDOR_ID_INTEL, subsystem_id=PCI_SUBSYSTEM_ID_ADAPTER_X16,
                class_code=PCI_CLASS_FABRIC_CONTROLLER, revision=PCI_REVISION_B1,
            ),
            bars=(Bar(0, BAR0_SIZE, BarKind.MEM64, prefetchable=False),),
            msix=MsixLayout(vectors=self.config.msix_vectors, table_bar=0, table_offset=CCE_MSIX_TABLE_LOWER,
                            pba_bar=0, pba_offset=CCE_MSIX_PBA_OFFSET),
            pcie_link=PcieLink(speed=3, width=16),
        )

    def attach(self, host: DeviceHost) -> None:
        self.host = host

    @property
    def dma(self):
        return self.host.dma if self.host is not None else None

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        if not self._in_bar0(bar, offset, size):
            return 0
        with self._lock:
            lo, hi = self.rcv.rcv_array_span()
            if lo <= offset < hi:
                value = self.rcv.rcv_array_read(offset, size)
            elif offset >= TXE_PIO_SEND:
                value = 0  # the send buffers are write-only
            else:
                value = self.regs.read(offset, size)
            vectors = self.intr.take_pending()
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("read %s (%d) -> %#x", self.regs.nearest(offset), size, value)
        self._deliver(vectors)
        return value

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if not self._in_bar0(bar, offset, size):
            return
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("write %s (%d) <- %#x", self.regs.nearest(offset), size, value)
        with self._lock:
            lo, hi = self.rcv.rcv_array_span()
            if lo <= offset < hi:
                self.rcv.rcv_array_write(offset, size, value)
            elif offset >= TXE_PIO_SEND:
                self.pio.space_write(offset, size, value)
            else:
                self.regs.write(offset, size, value)
            vectors = self.intr.take_pending()
        self._deliver(vectors)

    def reset(self) -> None:
        """FLR or device reset: every register back to its reset value, except the
        ASIC semaphores the two HFIs of a part share; the DC is held in reset
        (CCE_DC_CTRL resets to 1) until the driver releases it."""
        with self._lock:
            self._generation += 1
            self.worker.cancel_all()
            shared = self.asic.preserved()
            self.regs.reset()
            for offset, value in shared.items():
                self.regs.set(offset, value)
            for block in self.blocks:
                block.reset()
        self.log.info("reset: registers at reset values, DC held in reset")

    def close(self) -> None:
        with self._lock:
            self._generation += 1
        self.worker.stop()

    def stats(self) -> dict:
        with self._lock:
            undeclared = dict(self.regs.undeclared)
            return {
                "undeclared_csr_accesses": sum(undeclared.values()),
                "undeclared_offsets": {f"{off:#x}": self.regs.nearest(off) for off in sorted(undeclared)},
                "declared_csrs": sum(len(block.registers) for block in self.blocks),
                "msix_raised": self.intr.delivered,
                "physical_state": self.dc8051.phys.name if self.dc8051.running else "HELD",
                "logical_state": self.dcc.logical_state.name,
                "sdma_engines": [engine.state.value for engine in self.sdma.engines],
                "pio_bytes_discarded": sum(self.pio.bytes_written),
            }

    # -- services for the blocks -------------------------------------------------------
    def after(self, delay_s: float, fn: Callable[[], None]) -> Job:
        """Run `fn` on the worker after `delay_s`, under the model lock, unless it
        was cancelled or a reset intervened."""
        generation = self._generation
        return self.worker.after(delay_s, lambda: self.hardware_event(fn, generation))

    def hardware_event(self, fn: Callable[[], None], generation: int | None = None) -> None:
        """Run `fn` as the chip would on its own (a link partner, a fault, a timer):
        under the model lock, signalling the MSI-X vectors it raises afterwards."""
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            fn()
            vectors = self.intr.take_pending()
        self._deliver(vectors)

    def dc_reset(self, asserted: bool) -> None:
        """CCE_DC_CTRL.DC_RESET: hold or release the whole DC (DCC, LCB, 8051)."""
        if asserted:
            for block in (self.dcc, self.lcb, self.dc8051):
                block.reset_registers()
            self.dc8051.reset()
        else:
            self.dc8051.release()

    def settle(self, timeout_s: float = 1.0) -> bool:
        """Wait until every chip event due within `timeout_s` has happened (tests,
        tools); False if one is still outstanding at the deadline."""
        return self.worker.settle(within=timeout_s, timeout=timeout_s)

    def _deliver(self, vectors: list[int]) -> None:
        if not vectors:
            return
        if self.host is None:
            self.log.warning("MSI-X %s raised with no host attached", vectors)
            return
        for vector in vectors:
            if vector >= self.config.msix_vectors:
                self.log.warning("CCE_INT_MAP names MSI-X vector %d beyond the table", vector)
                continue
            self.host.irq.trigger(vector)

    def _in_bar0(self, bar: int, offset: int, size: int) -> bool:
        if bar != 0 or offset < 0 or offset + size > BAR0_SIZE or size not in (1, 2, 4, 8) or offset % size:
            self.log.warning("BAR%d access at %#x size %d outside the model", bar, offset, size)
            return False
        return True
