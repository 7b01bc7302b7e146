"""CCE: chip identity, SPC freeze, DC reset, CCE errors.

    CCE_REVISION    0x000  RO  [7:0] chip rev minor, [15:8] major, [31:24] SW compat,
                                [35:32] board id
    CCE_REVISION2   0x008  RO  [0] HFI id, [15:8] implementation code, [31:16] impl rev
    CCE_CTRL        0x010  WO  pulses: [8] SPC_FREEZE [9] SPC_UNFREEZE
                                [11] RXE_RESUME [13] TXE_RESUME
    CCE_STATUS      0x018  RO  [0] SDMA_FROZE [1] RXE_FROZE [2] TXE_FROZE
                                [3] TXE_PIO_FROZE [4] SDMA_PAUSED [5] RXE_PAUSED
                                [6] TXE_PAUSED [7] TXE_PIO_PAUSED
    CCE_SCRATCH[4]  0x020  RW
    CCE_ERR_STATUS/MASK/CLEAR 0x040/0x048/0x050  second tier of source 0
    CCE_COUNTER_ARRAY32[3] 0x060 RW
    CCE_DC_CTRL     0x0B8  RW  [0] DC_RESET, reset value 1: the DC (DCC, LCB, 8051)
                                is held in reset until the driver clears it
    CCE_PCIE_CTRL   0x0C0  RW

The SPC freeze takes the chip a moment: a freeze request sets the four FROZE
bits after `freeze_s` on the model's worker (the driver polls CCE_STATUS for up
to 20 ms); unfreeze clears them the same way. While frozen, SDMA engines are
halted, enabled PIO send contexts are halted and the receive block drops
packets. The chip also freezes on its own after an uncorrectable error
(`hardware_freeze`, at once); the driver then learns of it from the error
interrupt and runs the same unfreeze.

Collaborators: the interrupt controller (CCE errors, source 0), the device's
`dc_reset` (CCE_DC_CTRL.DC_RESET holds or releases DCC, LCB and 8051), and,
wired once they exist (`connect_freeze`), the blocks a freeze halts: SDMA,
PIO and receive. Receive and the 8051 read `frozen` and `dc_in_reset` back.
"""
from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Protocol

from devmodel.regs import Access, Register

from .chip_registers import (
    CCE_CTRL,
    CCE_CTRL_RXE_RESUME_SMASK,
    CCE_CTRL_SPC_FREEZE_SMASK,
    CCE_CTRL_SPC_UNFREEZE_SMASK,
    CCE_CTRL_TXE_RESUME_SMASK,
    CCE_DC_CTRL,
    CCE_DC_CTRL_DC_RESET_SMASK,
    CCE_DC_CTRL_RESETCSR,
    CCE_STATUS,
    CCE_STATUS_RXE_FROZE_SMASK,
    CCE_STATUS_RXE_PAUSED_SMASK,
    CCE_STATUS_SDMA_FROZE_SMASK,
    CCE_STATUS_SDMA_PAUSED_SMASK,
    CCE_STATUS_TXE_FROZE_SMASK,
    CCE_STATUS_TXE_PAUSED_SMASK,
    CCE_STATUS_TXE_PIO_FROZE_SMASK,
    CCE_STATUS_TXE_PIO_PAUSED_SMASK,
)
from .csr import Block, csr, csr_array
from .intr import CCE_ERR_INT, ErrorFlags, InterruptController, pulse
from .services import ChipServices

ALL_FROZE = (CCE_STATUS_SDMA_FROZE_SMASK | CCE_STATUS_RXE_FROZE_SMASK
             | CCE_STATUS_TXE_FROZE_SMASK | CCE_STATUS_TXE_PIO_FROZE_SMASK)
ALL_TXE_PAUSE = CCE_STATUS_SDMA_PAUSED_SMASK | CCE_STATUS_TXE_PAUSED_SMASK | CCE_STATUS_TXE_PIO_PAUSED_SMASK


class FreezeState(Enum):
    THAWED = "thawed"
    FREEZING = "freezing"
    FROZEN = "frozen"
    THAWING = "thawing"


class Freezable(Protocol):
    def freeze(self) -> None: ...


class Thawable(Freezable, Protocol):
    def unfreeze(self) -> None: ...


class Cce(Block):
    name = "cce"

    def __init__(self, services: ChipServices, intr: InterruptController, dc_reset: Callable[[bool], None]):
        self.intr = intr
        self._dc_reset = dc_reset
        self._sdma: Thawable | None = None
        self._halted_by_freeze: tuple[Freezable, ...] = ()
        super().__init__(services)

    def connect_freeze(self, sdma: Thawable, pio: Freezable, rcv: Freezable) -> None:
        """The blocks an SPC freeze stops (built after the CCE, which they consult)."""
        self._sdma = sdma
        self._halted_by_freeze = (sdma, pio, rcv)

    def declare(self) -> list[Register]:
        config = self.config
        self.errors = ErrorFlags(self.intr, CCE_ERR_INT, "CCE_ERR_STATUS", "CCE_ERR_CLEAR", "CCE_ERR_MASK")
        self.freeze_state = FreezeState.THAWED
        return [
            csr("CCE_REVISION", access=Access.RO, reset=config.revision),
            csr("CCE_REVISION2", access=Access.RO, reset=config.revision2),
            csr("CCE_CTRL", **pulse(self.regs, CCE_CTRL, self._control)),
            csr("CCE_STATUS", access=Access.RO),
            *csr_array("CCE_SCRATCH", 4),
            *self.errors.declare(),
            *csr_array("CCE_COUNTER_ARRAY32", 3),
            csr("CCE_DC_CTRL", reset=CCE_DC_CTRL_RESETCSR, writable=CCE_DC_CTRL_DC_RESET_SMASK,
                on_write=self._dc_ctrl),
            csr("CCE_PCIE_CTRL"),
        ]

    def reset(self) -> None:
        self.freeze_state = FreezeState.THAWED

    @property
    def dc_in_reset(self) -> bool:
        return bool(self.regs.get(CCE_DC_CTRL) & CCE_DC_CTRL_DC_RESET_SMASK)

    def _dc_ctrl(self, old: int, new: int) -> None:
        was, now = old & CCE_DC_CTRL_DC_RESET_SMASK, new & CCE_DC_CTRL_DC_RESET_SMASK
        if was != now:
            self.log.info("CCE_DC_CTRL: DC_RESET %s", "asserted" if now else "released")
            self._dc_reset(bool(now))

    def _control(self, value: int) -> None:
        if value & CCE_CTRL_SPC_FREEZE_SMASK:
            self._freeze()
        if value & CCE_CTRL_SPC_UNFREEZE_SMASK:
            self._unfreeze()
        if value & CCE_CTRL_RXE_RESUME_SMASK:
            self.regs.clear_bits(CCE_STATUS, CCE_STATUS_RXE_PAUSED_SMASK)
        if value & CCE_CTRL_TXE_RESUME_SMASK:
            self.regs.clear_bits(CCE_STATUS, ALL_TXE_PAUSE)

    def _freeze(self) -> None:
        self.log.info("CCE_CTRL: SPC_FREEZE")
        self._move(FreezeState.FREEZING, FreezeState.FROZEN, self._frozen)

    def _unfreeze(self) -> None:
        self.log.info("CCE_CTRL: SPC_UNFREEZE")
        self._move(FreezeState.THAWING, FreezeState.THAWED, self._thawed)

    def _move(self, via: FreezeState, to: FreezeState, arrive) -> None:
        """Start a freeze or an unfreeze; it lands `freeze_s` later unless the
        other one was requested meanwhile."""
        if self.freeze_state in (via, to):
            return
        self.freeze_state = via

        def land() -> None:
            if self.freeze_state is via:
                self.freeze_state = to
                arrive()

        self.services.after(self.config.freeze_s, land)

    def hardware_freeze(self) -> None:
        """The chip froze itself (an uncorrectable internal error)."""
        if self.freeze_state is FreezeState.FROZEN:
            return
        self.log.warning("CCE_STATUS: SPC frozen by hardware")
        self.freeze_state = FreezeState.FROZEN
        self._frozen()

    @property
    def frozen(self) -> bool:
        return self.freeze_state is not FreezeState.THAWED

    def _frozen(self) -> None:
        for block in self._halted_by_freeze:
            block.freeze()
        self.regs.set_bits(CCE_STATUS, ALL_FROZE)
        self.log.info("CCE_STATUS: SPC frozen")

    def _thawed(self) -> None:
        if self._sdma is not None:
            self._sdma.unfreeze()
        self.regs.clear_bits(CCE_STATUS, ALL_FROZE)
        self.log.info("CCE_STATUS: SPC unfrozen")
