"""CCE interrupt block: 768 sources, their MSI-X routing, and second-tier flags.

    CCE_INT_STATUS[i]  0x110800+8i  RO   pending sources 64i..64i+63 (latched)
    CCE_INT_MASK[i]    0x110900+8i  RW   1 = source enabled
    CCE_INT_CLEAR[i]   0x110A00+8i  WO   1 clears the STATUS bit
    CCE_INT_FORCE[i]   0x110B00+8i  WO   1 sets the STATUS bit (software interrupt)
    CCE_INT_BLOCKED[i] 0x110C00+8i  RO   pending but masked  [inferred]
    CCE_INT_MAP[j]     0x110500+8j  RW   byte n = MSI-X vector of source 8j+n
      i = 0..11, j = 0..95

Delivery is edge-like, as the driver's handlers assume: one MSI-X message
whenever a source's (STATUS & MASK) bit goes 0 -> 1, whether the STATUS bit
was just set (hardware event or FORCE) or the MASK bit was just set over a
pending STATUS bit. Vectors are collected under the model lock and signalled
after it is released (`take_pending`).

Second-tier sources (error/flag registers of each block, QSFP pins, DC flags)
are `ErrorFlags`: a flag set by hardware latches in its STATUS/FLG register; if
its enable (MASK/EN) bit is set, the block's first-tier source is raised. The
driver clears the first tier, then loops on the second tier ("clear down") until
it reads 0, so CLEAR must really clear.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from devmodel.regs import Access, Register, RegisterFile

from .chip_registers import CCE_INT_CLEAR, CCE_INT_FORCE, CCE_INT_MAP, CCE_INT_MASK, CCE_INT_STATUS, CSR_OFFSETS
from .csr import csr, csr_array

log = logging.getLogger("vfnic.hfi1.intr")

# chip.h interrupt source numbers
CCE_ERR_INT = 0
RXE_ERR_INT = 1
MISC_ERR_INT = 2
PIO_ERR_INT = 4
SDMA_ERR_INT = 5
EGRESS_ERR_INT = 6
TXE_ERR_INT = 7
IS_SDMAENG_ERR_START = 16
IS_SENDCTXT_ERR_START = 32
IS_SDMA_START = 192
IS_SDMA_PROGRESS_START = 208
IS_SDMA_IDLE_START = 224
PBC_INT = 240
GPIO_ASSERT_INT = 241
QSFP1_INT = 242
QSFP2_INT = 243
TCRIT_INT = 244
IS_DC_START = 248
DCC_ERR_INT = IS_DC_START + 0
LCB_ERR_INT = IS_DC_START + 1
DC8051_INT = IS_DC_START + 2
IS_RCVAVAIL_START = 256
IS_RCVURGENT_START = 416
IS_SENDCREDIT_START = 576
NUM_INTERRUPT_SOURCES = 768
CCE_NUM_INT_CSRS = 12
CCE_NUM_INT_MAP_CSRS = 96
CCE_NUM_32_BIT_INT_COUNTERS = 6


def pulse(regs: RegisterFile, offset: int, action) -> dict:
    """Hooks for a write-only command register: act on the written bits, then
    forget them, so a later partial (4-byte) write does not replay them."""

    def on_write(_old: int, new: int) -> None:
        regs.set(offset, 0)
        action(new)

    return {"access": Access.WO, "on_write": on_write}


class InterruptController:
    name = "intr"

    def __init__(self, regs: RegisterFile):
        self.regs = regs
        self._pending: list[int] = []
        self.delivered = 0
        self.registers = self.declare()

    def declare(self) -> list[Register]:
        regs = self.regs
        return [
            *csr_array("CCE_INT_STATUS", CCE_NUM_INT_CSRS, access=Access.RO),
            *csr_array("CCE_INT_MASK", CCE_NUM_INT_CSRS,
                       per_index=lambda i: {"on_write": lambda old, new, i=i: self._mask_written(i, old, new)}),
            *csr_array("CCE_INT_CLEAR", CCE_NUM_INT_CSRS,
                       per_index=lambda i: pulse(regs, CCE_INT_CLEAR + 8 * i, lambda v, i=i: self._clear(i, v))),
            *csr_array("CCE_INT_FORCE", CCE_NUM_INT_CSRS,
                       per_index=lambda i: pulse(regs, CCE_INT_FORCE + 8 * i, lambda v, i=i: self._set(i, v))),
            *csr_array("CCE_INT_BLOCKED", CCE_NUM_INT_CSRS, access=Access.RO,
                       per_index=lambda i: {"on_read": lambda _v, i=i: self.status(i) & ~self.mask(i)}),
            *csr_array("CCE_INT_MAP", CCE_NUM_INT_MAP_CSRS),
            *csr_array("CCE_INT_COUNTER_ARRAY32", CCE_NUM_32_BIT_INT_COUNTERS),
            csr("CCE_MSIX_INT_GRANTED", access=Access.WO),
            csr("CCE_MSIX_VEC_CLR_WITHOUT_INT", access=Access.WO),
        ]

    def reset(self) -> None:
        self._pending.clear()

    # -- state -------------------------------------------------------------
    def status(self, i: int) -> int:
        return self.regs.get(CCE_INT_STATUS + 8 * i)

    def mask(self, i: int) -> int:
        return self.regs.get(CCE_INT_MASK + 8 * i)

    def vector_of(self, source: int) -> int:
        return (self.regs.get(CCE_INT_MAP + 8 * (source // 8)) >> (8 * (source % 8))) & 0xFF

    def pending(self, source: int) -> bool:
        return bool(self.status(source // 64) >> (source % 64) & 1)

    def outstanding(self, source: int) -> bool:
        """Pending and unmasked: its MSI-X message went out and the driver has
        not cleared it yet."""
        i = source // 64
        return bool((self.status(i) & self.mask(i)) >> (source % 64) & 1)

    # -- events --------------------------------------------------------------
    def raise_source(self, source: int) -> None:
        """A hardware event for `source` (0..767)."""
        self._set(source // 64, 1 << (source % 64))

    def _set(self, i: int, bits: int) -> None:
        old = self.status(i)
        self.regs.set(CCE_INT_STATUS + 8 * i, old | bits)
        self._fire(i, bits & ~old & self.mask(i))

    def _clear(self, i: int, bits: int) -> None:
        self.regs.clear_bits(CCE_INT_STATUS + 8 * i, bits)

    def _mask_written(self, i: int, old: int, new: int) -> None:
        self._fire(i, self.status(i) & new & ~old)

    def _fire(self, i: int, bits: int) -> None:
        while bits:
            low = bits & -bits
            source = 64 * i + low.bit_length() - 1
            vector = self.vector_of(source)
            log.debug("CCE_INT_STATUS[%d]: source %d -> MSI-X vector %d", i, source, vector)
            self._pending.append(vector)
            bits ^= low

    def take_pending(self) -> Sequence[int]:
        if not self._pending:
            return ()  # every BAR access and chip event asks: no list for nothing
        vectors, self._pending = self._pending, []
        self.delivered += len(vectors)
        return vectors


class ErrorFlags:
    """A second-tier flag register set and the first-tier source it feeds.

        <status> RO  flags latched by hardware (set via `set`)
        <clear>  WO  1 clears the flag
        <enable> RW  1 lets a flag raise `source` (+ index for arrays)
        <force>  WO  optional; 1 sets the flag as if hardware had

    `count`/`stride` describe per-context copies (one source per copy)."""

    def __init__(self, intr: InterruptController, source: int, status: str, clear: str, enable: str,
                 force: str | None = None, count: int = 1, stride: int = 8):
        self.intr = intr
        self.regs = intr.regs
        self.source = source
        self.names = (status, clear, enable, force)
        self.count = count
        self.stride = stride
        self.status_offset = CSR_OFFSETS[status]
        self.enable_offset = CSR_OFFSETS[enable]

    def declare(self) -> list[Register]:
        status, clear, enable, force = self.names
        regs, stride, count = self.regs, self.stride, self.count

        def array(base: str, per_index=None, **kw) -> list[Register]:
            if count == 1:
                return [csr(base, **kw, **(per_index(0) if per_index else {}))]
            return csr_array(base, count, stride, per_index=per_index, **kw)

        clear_base, force_base = CSR_OFFSETS[clear], CSR_OFFSETS[force] if force else 0
        regs = [
            *array(status, access=Access.RO),
            *array(clear, per_index=lambda i: pulse(regs, clear_base + i * stride,
                                                    lambda v, i=i: self.clear(v, i))),
            *array(enable, per_index=lambda i: {"on_write": lambda old, new, i=i: self._enabled(i, old, new)}),
        ]
        if force:
            regs += array(force, per_index=lambda i: pulse(regs, force_base + i * stride,
                                                          lambda v, i=i: self.set(v, i)))
        return regs

    def value(self, index: int = 0) -> int:
        return self.regs.get(self.status_offset + index * self.stride)

    def enabled(self, index: int = 0) -> int:
        return self.regs.get(self.enable_offset + index * self.stride)

    def set(self, bits: int, index: int = 0) -> None:
        old = self.value(index)
        self.regs.set(self.status_offset + index * self.stride, old | bits)
        if bits & ~old & self.enabled(index):
            self.intr.raise_source(self.source + index)

    def clear(self, bits: int, index: int = 0) -> None:
        self.regs.clear_bits(self.status_offset + index * self.stride, bits)

    def _enabled(self, index: int, old: int, new: int) -> None:
        if self.value(index) & new & ~old:
            self.intr.raise_source(self.source + index)
