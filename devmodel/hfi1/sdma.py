"""SDMA engines: configuration and the halt -> clean-up handshake.

    SEND_DMA_ERR_STATUS/MASK/CLEAR 0x1800060/68/70  second tier of source 5
    per engine e, 0x1A00000 + 0x100e:
      SEND_DMA_CTRL        RW  [0] ENABLE [1] HALT [2] CLEANUP [3] INT_ENABLE
      SEND_DMA_STATUS      RO  [56] ENG_HALTED [57] ENG_CLEANED_UP
      SEND_DMA_BASE_ADDR, LEN_GEN, HEAD_ADDR, PRIORITY_THLD, RELOAD_CNT, DESC_CNT, MEMORY  RW
      SEND_DMA_TAIL        RW  doorbell
      SEND_DMA_HEAD        RO  the engine's head (0 after a clean-up)
      SEND_DMA_IDLE_CNT, SEND_DMA_DESC_FETCHED_CNT  RO counters
      SEND_DMA_ENG_ERR_STATUS/MASK/CLEAR  second tier of source 16 + e; [6] SDMA_HALT_ERR
      SEND_DMA_CHECK_{ENABLE,VL,JOB_KEY,PARTITION_KEY,SLID,OPCODE}  RW

The driver starts every engine with a handshake it cannot leave without the
device (sdma.c state machine, s10 -> s15 -> s20):

    driver: CTRL = HALT                       engine: HALTING
    engine (after sdma_halt_s): STATUS.ENG_HALTED, ENG_ERR_STATUS.SDMA_HALT_ERR,
            source 16+e (MSI-X through CCE_INT_MAP)   HALTED
    driver: ENG_ERR_CLEAR, polls ENG_HALTED, CTRL = INT_ENABLE | CLEANUP
    engine (after sdma_cleanup_s): head = 0, STATUS.ENG_CLEANED_UP   CLEANED
    driver: LEN_GEN, TAIL = 0, CTRL = INT_ENABLE (idle) or ENABLE | INT_ENABLE

An engine left in s10 blocks the first link-down freeze and so `rmmod`; the
clean-up poll runs in a tasklet without a timeout. An SPC freeze halts every
engine and the unfreeze leaves it cleaned up, with no error interrupt (the
freeze "acts like a halt and a hardware clean combined", sdma.c).

Descriptor processing (the data path) is not modelled yet: a tail write on a
running engine is counted, the head does not move.
"""
from __future__ import annotations

from enum import Enum

from devmodel.regs import Access, Register

from .chip_registers import (
    CSR_OFFSETS, SEND_DMA_CTRL_SDMA_CLEANUP_SMASK, SEND_DMA_CTRL_SDMA_ENABLE_SMASK, SEND_DMA_CTRL_SDMA_HALT_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_HALT_ERR_SMASK, SEND_DMA_STATUS_ENG_CLEANED_UP_SMASK,
    SEND_DMA_STATUS_ENG_HALTED_SMASK,
)
from .csr import KCTXT_STRIDE, Block, csr_array
from .intr import IS_SDMAENG_ERR_START, SDMA_ERR_INT, ErrorFlags

ENGINE_CSRS = ("SEND_DMA_BASE_ADDR", "SEND_DMA_LEN_GEN", "SEND_DMA_HEAD_ADDR", "SEND_DMA_PRIORITY_THLD",
               "SEND_DMA_RELOAD_CNT", "SEND_DMA_DESC_CNT", "SEND_DMA_MEMORY", "SEND_DMA_CHECK_ENABLE",
               "SEND_DMA_CHECK_VL", "SEND_DMA_CHECK_JOB_KEY", "SEND_DMA_CHECK_PARTITION_KEY",
               "SEND_DMA_CHECK_SLID", "SEND_DMA_CHECK_OPCODE")


class EngineState(Enum):
    DISABLED = "disabled"
    RUNNING = "running"
    HALTING = "halting"
    HALTED = "halted"
    CLEANING = "cleaning"
    CLEANED = "cleaned up"


class SendDmaEngine:
    def __init__(self, block: "Sdma", index: int):
        self.block = block
        self.index = index
        self.state = EngineState.DISABLED
        self.head = 0
        self.tail_writes = 0
        self._pending = None

    def offset(self, name: str) -> int:
        return CSR_OFFSETS[name] + KCTXT_STRIDE * self.index

    def reset(self) -> None:
        self._cancel()
        self.state = EngineState.DISABLED
        self.head = 0
        self.tail_writes = 0

    def _cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _status(self, halted: bool, cleaned: bool) -> None:
        value = (SEND_DMA_STATUS_ENG_HALTED_SMASK if halted else 0) | (SEND_DMA_STATUS_ENG_CLEANED_UP_SMASK
                                                                      if cleaned else 0)
        self.block.regs.set(self.offset("SEND_DMA_STATUS"), value)

    def _enter(self, state: EngineState) -> None:
        if state is not self.state:
            self.block.log.debug("SEND_DMA_CTRL[%d]: %s -> %s", self.index, self.state.value, state.value)
        self.state = state

    # -- the driver's requests -----------------------------------------------------
    def control(self, old: int, new: int) -> None:
        rising = new & ~old
        chip = self.block.chip
        if rising & SEND_DMA_CTRL_SDMA_HALT_SMASK and self.state in (EngineState.DISABLED, EngineState.RUNNING):
            self._enter(EngineState.HALTING)
            self._pending = chip.after(chip.config.sdma_halt_s, self._halted)
        if rising & SEND_DMA_CTRL_SDMA_CLEANUP_SMASK:
            if self.state is EngineState.HALTED:
                self._enter(EngineState.CLEANING)
                self._pending = chip.after(chip.config.sdma_cleanup_s, self._cleaned)
            elif self.state is not EngineState.CLEANED:
                self.block.log.warning("SEND_DMA_CTRL[%d]: CLEANUP while %s ignored", self.index, self.state.value)
        if (rising & SEND_DMA_CTRL_SDMA_ENABLE_SMASK and not new & SEND_DMA_CTRL_SDMA_HALT_SMASK
                and self.state in (EngineState.DISABLED, EngineState.CLEANED, EngineState.HALTED)):
            self._enter(EngineState.RUNNING)
            self._status(halted=False, cleaned=False)

    def tail(self, _old: int, _new: int) -> None:
        self.tail_writes += 1
        if self.state is EngineState.RUNNING and self.tail_writes == 1:
            self.block.log.warning("SEND_DMA_TAIL[%d]: descriptor processing is not modelled", self.index)

    # -- what the engine does on its own ------------------------------------------------
    def _halted(self) -> None:
        self._pending = None
        if self.state is not EngineState.HALTING:
            return
        self._enter(EngineState.HALTED)
        self._status(halted=True, cleaned=False)
        self.block.engine_errors.set(SEND_DMA_ENG_ERR_STATUS_SDMA_HALT_ERR_SMASK, self.index)

    def _cleaned(self) -> None:
        self._pending = None
        if self.state is not EngineState.CLEANING:
            return
        self.head = 0
        self._enter(EngineState.CLEANED)
        self._status(halted=True, cleaned=True)

    def freeze(self) -> None:
        self._cancel()
        self._enter(EngineState.HALTED)
        self._status(halted=True, cleaned=False)

    def unfreeze(self) -> None:
        self.head = 0
        self._enter(EngineState.CLEANED)
        self._status(halted=True, cleaned=True)


class Sdma(Block):
    name = "sdma"

    def declare(self) -> list[Register]:
        count = self.chip.config.sdma_engines
        self.engines = [SendDmaEngine(self, e) for e in range(count)]
        self.errors = ErrorFlags(self.chip, SDMA_ERR_INT, "SEND_DMA_ERR_STATUS", "SEND_DMA_ERR_CLEAR",
                                 "SEND_DMA_ERR_MASK")
        self.engine_errors = ErrorFlags(self.chip, IS_SDMAENG_ERR_START, "SEND_DMA_ENG_ERR_STATUS",
                                        "SEND_DMA_ENG_ERR_CLEAR", "SEND_DMA_ENG_ERR_MASK",
                                        count=count, stride=KCTXT_STRIDE)

        def engine_hook(method: str):
            return lambda e: {"on_write": getattr(self.engines[e], method)}

        regs = [
            *self.errors.declare(),
            *self.engine_errors.declare(),
            *csr_array("SEND_DMA_CTRL", count, KCTXT_STRIDE, per_index=engine_hook("control")),
            *csr_array("SEND_DMA_TAIL", count, KCTXT_STRIDE, per_index=engine_hook("tail")),
            *csr_array("SEND_DMA_STATUS", count, KCTXT_STRIDE, access=Access.RO),
            *csr_array("SEND_DMA_HEAD", count, KCTXT_STRIDE, access=Access.RO,
                       per_index=lambda e: {"on_read": lambda _v, e=e: self.engines[e].head}),
            *csr_array("SEND_DMA_IDLE_CNT", count, KCTXT_STRIDE, access=Access.RO),
            *csr_array("SEND_DMA_DESC_FETCHED_CNT", count, KCTXT_STRIDE, access=Access.RO),
        ]
        for name in ENGINE_CSRS:
            regs += csr_array(name, count, KCTXT_STRIDE)
        return regs

    def reset(self) -> None:
        for engine in self.engines:
            engine.reset()

    def freeze(self) -> None:
        for engine in self.engines:
            engine.freeze()

    def unfreeze(self) -> None:
        for engine in self.engines:
            engine.unfreeze()
