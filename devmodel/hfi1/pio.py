"""PIO send contexts, the PIO init engine, credit return, and the PIO send space.

    SEND_PIO_INIT_CTXT   0x1800038 RW  [0] ALL_CTXT_INIT [1] SINGLE_CTXT_INIT
                                       [2] IN_PROGRESS (RO) [3] ERR (RO) [15:8] CTXT_NUM
    SEND_PIO_ERR_STATUS/MASK/CLEAR 0x1800040/48/50  second tier of source 4
    per hardware context h, 0x1900000 + 0x100h:
      SEND_CTXT_CTRL               RW  [0] ENABLE, [45:32] base block, [58:48] depth
      SEND_CTXT_STATUS             RO  [0] HALTED
      SEND_CTXT_CREDIT_CTRL        RW  [10:0] THRESHOLD [16] EARLY_RETURN [17] CREDIT_INTR
      SEND_CTXT_CREDIT_STATUS      RO  [10:0] last returned, [42:32] current free counter
      SEND_CTXT_CREDIT_RETURN_ADDR RW  [47:6] where credit returns are written (DMA)
      SEND_CTXT_CREDIT_FORCE       RW  [0] FORCE_RETURN: 0 -> 1 writes a credit return
      SEND_CTXT_ERR_STATUS/MASK/CLEAR  second tier of source 32 + h
      SEND_CTXT_CHECK_{ENABLE,VL,JOB_KEY,PARTITION_KEY,SLID,OPCODE} RW
    PIO send space  0x2000000 + 0x10000h (0x3000000 + ...: start-of-packet alias)

A credit return is one little-endian qword written to CREDIT_RETURN_ADDR +
8*(h & 7): [10:0] free counter, [11] status (context halted) [inferred],
[12..15] reason (PBC, threshold, error, force). A forced return also raises
source 576 + h when CREDIT_CTRL.CREDIT_INTR is set.

The PIO init engine resets a context's fill/free counters and clears its halt;
it finishes before the driver's first poll, so IN_PROGRESS and ERR read 0. An
SPC freeze halts every enabled context.

Packets written into the send space are accepted and counted, not launched:
the packet data path comes later.
"""
from __future__ import annotations

from devmodel.base import DmaError
from devmodel.regs import Access, Register

from .chip_registers import (
    CSR_OFFSETS, SEND_CTXT_CREDIT_CTRL_CREDIT_INTR_SMASK, SEND_CTXT_CREDIT_FORCE_FORCE_RETURN_SMASK,
    SEND_CTXT_CREDIT_RETURN_ADDR_ADDRESS_SMASK, SEND_CTXT_CREDIT_STATUS_CURRENT_FREE_COUNTER_SHIFT,
    SEND_CTXT_CTRL_CTXT_ENABLE_SMASK, SEND_CTXT_STATUS_CTXT_HALTED_SMASK, SEND_PIO_INIT_CTXT_PIO_ALL_CTXT_INIT_SMASK,
    SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_MASK, SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_SHIFT,
    SEND_PIO_INIT_CTXT_PIO_SINGLE_CTXT_INIT_SMASK, TXE, TXE_PIO_SEND_OFFSET,
)
from .csr import KCTXT_STRIDE, Block, csr, csr_array, field
from .intr import IS_SENDCREDIT_START, IS_SENDCTXT_ERR_START, PIO_ERR_INT, ErrorFlags

TXE_PIO_SEND = TXE + TXE_PIO_SEND_OFFSET  # chip.h
TXE_PIO_SIZE = 32 << 20
SOP_DISTANCE = 16 << 20
PIO_CONTEXT_WINDOW = 1 << 16
CR_COUNTER_MASK = 0x7FF
CR_STATUS = 1 << 11
CR_DUE_TO_FORCE = 1 << 15
CONTEXT_CSRS = ("SEND_CTXT_CREDIT_CTRL", "SEND_CTXT_CREDIT_RETURN_ADDR", "SEND_CTXT_CHECK_ENABLE",
                "SEND_CTXT_CHECK_VL", "SEND_CTXT_CHECK_JOB_KEY", "SEND_CTXT_CHECK_PARTITION_KEY",
                "SEND_CTXT_CHECK_SLID", "SEND_CTXT_CHECK_OPCODE")


def _kctxt(name: str, ctxt: int) -> int:
    return CSR_OFFSETS[name] + KCTXT_STRIDE * ctxt


class Pio(Block):
    name = "pio"

    def declare(self) -> list[Register]:
        contexts = self.chip.config.send_contexts
        self.errors = ErrorFlags(self.chip, PIO_ERR_INT, "SEND_PIO_ERR_STATUS", "SEND_PIO_ERR_CLEAR",
                                 "SEND_PIO_ERR_MASK")
        self.context_errors = ErrorFlags(self.chip, IS_SENDCTXT_ERR_START, "SEND_CTXT_ERR_STATUS",
                                         "SEND_CTXT_ERR_CLEAR", "SEND_CTXT_ERR_MASK",
                                         count=contexts, stride=KCTXT_STRIDE)
        self.free_counter = [0] * contexts
        self.last_returned = [0] * contexts
        self.bytes_written = [0] * 256
        regs = [
            csr("SEND_PIO_INIT_CTXT", writable=SEND_PIO_INIT_CTXT_PIO_ALL_CTXT_INIT_SMASK
                | SEND_PIO_INIT_CTXT_PIO_SINGLE_CTXT_INIT_SMASK
                | SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_MASK << SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_SHIFT,
                on_write=self._init_engine),
            *self.errors.declare(),
            *self.context_errors.declare(),
            *csr_array("SEND_CTXT_CTRL", contexts, KCTXT_STRIDE,
                       per_index=lambda h: {"on_write": lambda old, new, h=h: self._ctrl(h, old, new)}),
            *csr_array("SEND_CTXT_STATUS", contexts, KCTXT_STRIDE, access=Access.RO),
            *csr_array("SEND_CTXT_CREDIT_STATUS", contexts, KCTXT_STRIDE, access=Access.RO,
                       per_index=lambda h: {"on_read": lambda _v, h=h: self._credit_status(h)}),
            *csr_array("SEND_CTXT_CREDIT_FORCE", contexts, KCTXT_STRIDE,
                       per_index=lambda h: {"on_write": lambda old, new, h=h: self._force(h, old, new)}),
        ]
        for name in CONTEXT_CSRS:
            regs += csr_array(name, contexts, KCTXT_STRIDE)
        return regs

    def reset(self) -> None:
        self.free_counter = [0] * len(self.free_counter)
        self.last_returned = [0] * len(self.last_returned)
        self.bytes_written = [0] * 256

    # -- contexts ------------------------------------------------------------------
    def enabled(self, ctxt: int) -> bool:
        return bool(self.regs.get(_kctxt("SEND_CTXT_CTRL", ctxt)) & SEND_CTXT_CTRL_CTXT_ENABLE_SMASK)

    def halted(self, ctxt: int) -> bool:
        return bool(self.regs.get(_kctxt("SEND_CTXT_STATUS", ctxt)) & SEND_CTXT_STATUS_CTXT_HALTED_SMASK)

    def _ctrl(self, ctxt: int, old: int, new: int) -> None:
        change = (old ^ new) & SEND_CTXT_CTRL_CTXT_ENABLE_SMASK
        if change:
            self.log.debug("SEND_CTXT_CTRL[%d]: %s", ctxt, "enabled" if new & change else "disabled")

    def _init_engine(self, _old: int, new: int) -> None:
        if new & SEND_PIO_INIT_CTXT_PIO_ALL_CTXT_INIT_SMASK:
            targets = range(len(self.free_counter))
        elif new & SEND_PIO_INIT_CTXT_PIO_SINGLE_CTXT_INIT_SMASK:
            ctxt = field(new, SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_SHIFT, SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_MASK)
            targets = [ctxt] if ctxt < len(self.free_counter) else []
        else:
            return
        for ctxt in targets:
            self.free_counter[ctxt] = 0
            self.last_returned[ctxt] = 0
            self.regs.clear_bits(_kctxt("SEND_CTXT_STATUS", ctxt), SEND_CTXT_STATUS_CTXT_HALTED_SMASK)

    def freeze(self) -> None:
        for ctxt in range(len(self.free_counter)):
            if self.enabled(ctxt):
                self.regs.set_bits(_kctxt("SEND_CTXT_STATUS", ctxt), SEND_CTXT_STATUS_CTXT_HALTED_SMASK)

    # -- credit return ---------------------------------------------------------------
    def _credit_status(self, ctxt: int) -> int:
        return (self.free_counter[ctxt] << SEND_CTXT_CREDIT_STATUS_CURRENT_FREE_COUNTER_SHIFT
                | self.last_returned[ctxt])

    def _force(self, ctxt: int, old: int, new: int) -> None:
        if new & ~old & SEND_CTXT_CREDIT_FORCE_FORCE_RETURN_SMASK:
            self.return_credits(ctxt, CR_DUE_TO_FORCE)

    def return_credits(self, ctxt: int, reason: int) -> None:
        base = self.regs.get(_kctxt("SEND_CTXT_CREDIT_RETURN_ADDR", ctxt)) & SEND_CTXT_CREDIT_RETURN_ADDR_ADDRESS_SMASK
        counter = self.free_counter[ctxt] & CR_COUNTER_MASK
        value = counter | (CR_STATUS if self.halted(ctxt) else 0) | reason
        if base == 0:
            self.log.warning("SEND_CTXT_CREDIT_RETURN_ADDR[%d] not set: credit return dropped", ctxt)
            return
        dma = self.chip.dma
        if dma is None:
            return
        try:
            dma.write(base + 8 * (ctxt & 7), value.to_bytes(8, "little"))
        except DmaError as err:
            self.log.warning("SEND_CTXT_CREDIT_RETURN_ADDR[%d]: credit return to %#x failed: %s", ctxt, base, err)
            return
        self.last_returned[ctxt] = counter
        if self.regs.get(_kctxt("SEND_CTXT_CREDIT_CTRL", ctxt)) & SEND_CTXT_CREDIT_CTRL_CREDIT_INTR_SMASK:
            self.chip.intr.raise_source(IS_SENDCREDIT_START + ctxt)

    # -- PIO send space ----------------------------------------------------------------
    def space_write(self, offset: int, size: int, _value: int) -> None:
        ctxt = ((offset - TXE_PIO_SEND) % SOP_DISTANCE) // PIO_CONTEXT_WINDOW
        self.bytes_written[ctxt] += size
