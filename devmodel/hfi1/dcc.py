"""DCC: the DC's port configuration, logical link state, and DCC errors/counters.

    DCC_CFG_RESET            0x600000 RW  [0] RESET_LCB [1] RESET_TX_FPE [2] RESET_RX_FPE
                                          [3] RESET_8051 [4] ENABLE_CCLK_BCC
    DCC_CFG_PORT_CONFIG      0x600008 RW  [34:32] MTU_CAP, [50:48] LINK_STATE (logical)
    DCC_CFG_PORT_CONFIG1     0x600010 RW  [15:0] target DLID, [31:16] DLID mask
    DCC_CFG_SC_VL_TABLE_15_0 0x600028 RW  DCC_CFG_SC_VL_TABLE_31_16 0x600030 RW
    DCC_CFG_LED_CNTRL        0x600040 RW  [4] LED override, [3:0] blink rate
    DCC_ERR_FLG/FLG_EN/FLG_CLR 0x600050/58/60  second tier of source 248
    DCC_ERR_INFO_*           0x600078.. RO  error capture
    DCC_ERR_*_CNT, DCC_PRF_* 0x600100.. RW  counters (per-VL ones: 9 entries, VL0-7 and VL15);
                                          the port packet and data (flit) counters count traffic

The logical link state belongs to both sides: the DC moves it to Init when the
physical link reaches LinkUp and to Down when it leaves it; the driver moves it
Init -> Armed -> Active (read-modify-write of the whole register, then polls
the field). A driver write that would move the field any other way leaves the
field as it is [inferred], so a read-modify-write racing with a hardware change
cannot undo it.

Collaborators: the interrupt controller (DCC errors, source 248). The 8051's
link state machine moves the logical state; receive and egress read it and
count their traffic here.
"""
from __future__ import annotations

from enum import IntEnum

from common.ratelog import limited
from devmodel.regs import Access, Register

from .chip_registers import (
    DCC_CFG_PORT_CONFIG,
    DCC_CFG_PORT_CONFIG_LINK_STATE_MASK,
    DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT,
    DCC_CFG_PORT_CONFIG_LINK_STATE_SMASK,
    DCC_PRF_PORT_RCV_DATA_CNT,
    DCC_PRF_PORT_RCV_PKTS_CNT,
    DCC_PRF_PORT_XMIT_DATA_CNT,
    DCC_PRF_PORT_XMIT_PKTS_CNT,
)
from .csr import Block, csr, csr_array, csrs, field
from .intr import DCC_ERR_INT, ErrorFlags, InterruptController
from .services import ChipServices

VL_COUNTERS = 9  # VL0..VL7 and VL15 (chip.h C_VL_COUNT)


class LogicalState(IntEnum):
    DOWN = 1
    INIT = 2
    ARMED = 3
    ACTIVE = 4


_STATES = {int(state): state for state in LogicalState}
_DRIVER_MOVES = {(LogicalState.INIT, LogicalState.ARMED), (LogicalState.ARMED, LogicalState.ACTIVE)}


class Dcc(Block):
    name = "dcc"

    def __init__(self, services: ChipServices, intr: InterruptController):
        self.intr = intr
        super().__init__(services)

    def declare(self) -> list[Register]:
        self.errors = ErrorFlags(self.intr, DCC_ERR_INT, "DCC_ERR_FLG", "DCC_ERR_FLG_CLR", "DCC_ERR_FLG_EN")
        return [
            csr("DCC_CFG_RESET"),
            csr("DCC_CFG_PORT_CONFIG", reset=LogicalState.DOWN << DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT,
                on_write=self._port_config),
            *csrs("DCC_CFG_PORT_CONFIG1", "DCC_CFG_SC_VL_TABLE_15_0", "DCC_CFG_SC_VL_TABLE_31_16",
                  "DCC_CFG_LED_CNTRL"),
            *self.errors.declare(),
            *csrs("DCC_ERR_INFO_PORTRCV", "DCC_ERR_INFO_PORTRCV_HDR0", "DCC_ERR_INFO_PORTRCV_HDR1",
                  "DCC_ERR_INFO_FMCONFIG", "DCC_ERR_INFO_UNCORRECTABLE", access=Access.RO),
            *csrs("DCC_ERR_UNCORRECTABLE_CNT", "DCC_ERR_PORTRCV_ERR_CNT", "DCC_ERR_FMCONFIG_ERR_CNT",
                  "DCC_ERR_RCVREMOTE_PHY_ERR_CNT", "DCC_ERR_DROPPED_PKT_CNT",
                  "DCC_PRF_PORT_XMIT_MULTICAST_CNT", "DCC_PRF_PORT_RCV_MULTICAST_PKT_CNT",
                  "DCC_PRF_PORT_XMIT_CORRECTABLE_CNT", "DCC_PRF_PORT_RCV_CORRECTABLE_CNT",
                  "DCC_PRF_RX_FLOW_CRTL_CNT", "DCC_PRF_TX_FLOW_CRTL_CNT", "DCC_PRF_PORT_XMIT_DATA_CNT",
                  "DCC_PRF_PORT_RCV_DATA_CNT", "DCC_PRF_PORT_XMIT_PKTS_CNT", "DCC_PRF_PORT_RCV_PKTS_CNT",
                  "DCC_PRF_PORT_RCV_FECN_CNT", "DCC_PRF_PORT_RCV_BECN_CNT", "DCC_PRF_PORT_RCV_BUBBLE_CNT",
                  "DCC_PRF_PORT_MARK_FECN_CNT"),
            *csr_array("DCC_PRF_PORT_VL_RCV_DATA_CNT", VL_COUNTERS),
            *csr_array("DCC_PRF_PORT_VL_RCV_PKTS_CNT", VL_COUNTERS),
            *csr_array("DCC_PRF_PORT_VL_RCV_FECN_CNT", VL_COUNTERS),
            *csr_array("DCC_PRF_PORT_VL_RCV_BECN_CNT", VL_COUNTERS),
            *csr_array("DCC_PRF_PORT_VL_RCV_BUBBLE_CNT", VL_COUNTERS),
            *csr_array("DCC_PRF_PORT_VL_MARK_FECN_CNT", VL_COUNTERS),
        ]

    @property
    def logical_state(self) -> LogicalState:
        raw = (self.regs.get(DCC_CFG_PORT_CONFIG) >> DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT) \
            & DCC_CFG_PORT_CONFIG_LINK_STATE_MASK
        return _STATES.get(raw, LogicalState.DOWN)

    def set_logical_state(self, state: LogicalState) -> None:
        """The DC's own move (link up -> Init, link down -> Down)."""
        old = self.logical_state
        value = self.regs.get(DCC_CFG_PORT_CONFIG) & ~DCC_CFG_PORT_CONFIG_LINK_STATE_SMASK
        self.regs.set(DCC_CFG_PORT_CONFIG, value | state << DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT)
        if old is not state:
            self.log.info("DCC_CFG_PORT_CONFIG: logical state %s -> %s", old.name, state.name)

    # -- port counters (the PMA reads them: PortXmitData/Pkts, PortRcvData/Pkts) -----
    def count_received(self, packet, _vl15: bool) -> None:
        add = self.regs.add
        add(DCC_PRF_PORT_RCV_PKTS_CNT, 1)
        add(DCC_PRF_PORT_RCV_DATA_CNT, len(packet.data) // 8)  # flits

    def count_transmitted(self, packet) -> None:
        add = self.regs.add
        add(DCC_PRF_PORT_XMIT_PKTS_CNT, 1)
        add(DCC_PRF_PORT_XMIT_DATA_CNT, len(packet.data) // 8)

    def _port_config(self, old: int, new: int) -> None:
        was = field(old, DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT, DCC_CFG_PORT_CONFIG_LINK_STATE_MASK)
        want = field(new, DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT, DCC_CFG_PORT_CONFIG_LINK_STATE_MASK)
        if want == was:
            return
        if (was, want) in _DRIVER_MOVES:
            self.log.info("DCC_CFG_PORT_CONFIG: logical state %s -> %s (driver)",
                          LogicalState(was).name, LogicalState(want).name)
            return
        limited(self, self.log, "link state writes ignored").warning(
            "DCC_CFG_PORT_CONFIG: LINK_STATE write %d -> %d ignored", was, want)
        self.regs.set(DCC_CFG_PORT_CONFIG, (new & ~DCC_CFG_PORT_CONFIG_LINK_STATE_SMASK)
                      | (old & DCC_CFG_PORT_CONFIG_LINK_STATE_SMASK))
