"""TXE: send block globals, credit manager (CM) and egress.

    SEND_CTRL                0x1800000 RW  [0] SEND_ENABLE [1] VL_ARBITER_ENABLE
                                           [2] CM_RESET (self-clearing) [10:3] UNSUPPORTED_VL
    SEND_CONTEXTS            0x1800010 RO  number of PIO send contexts
    SEND_DMA_ENGINES         0x1800018 RO  number of SDMA engines
    SEND_PIO_MEM_SIZE        0x1800020 RO  PIO send buffer bytes
    SEND_DMA_MEM_SIZE        0x1800028 RO  SDMA buffer bytes
    SEND_HIGH_PRIORITY_LIMIT 0x1800030 RW
    SEND_EGRESS_ERR_STATUS/MASK/CLEAR 0x1800080/88/90  second tier of source 6
    SEND_BTH_QP, SEND_STATIC_RATE_CONTROL, SEND_SC2VLT0..3, SEND_LEN_CHECK0/1  RW
    SEND_ERR_STATUS/MASK/CLEAR 0x18000E0/E8/F0          second tier of source 7
    SEND_LOW/HIGH_PRIORITY_LIST[16], SEND_CONTEXT_SET_CTRL[contexts/8]  RW
    SEND_COUNTER_ARRAY32[7], SEND_COUNTER_ARRAY64[30]    RW
    SEND_CM_CTRL (reset 0x20), SEND_CM_GLOBAL_CREDIT (reset 0x0000094000030000),
    SEND_CM_TIMER_CTRL, SEND_CM_{LOCAL,REMOTE}_AU_TABLE*, SEND_CM_CREDIT_VL[8],
    SEND_CM_CREDIT_VL15      RW   link credit limits, read back by the SMA
    SEND_CM_CREDIT_USED_STATUS 0x1800510 RO  per-VL "credits outstanding": 0
    SEND_EGRESS_CTXT_STATUS[contexts]     0x1800800 RO  [13:0] packet occupancy: 0
    SEND_EGRESS_SEND_DMA_STATUS[engines]  0x1800E00 RO  packet occupancy: 0
    SEND_EGRESS_ERR_INFO     0x1800F00 W1C; SEND_EGRESS_ERR_SOURCE 0x1800F08 RO

`__cm_reset` sets CM_RESET and spins until it reads back clear, with no
timeout, on every link down: the bit clears as soon as the write lands.
Egress hands a packet to the link the moment it is launched, so egress
occupancy and credits-in-use always read 0 and disabling a context or
changing credit limits completes at once.

Egress (`egress`, a chip event): a launched packet (PIO or SDMA) arrives as
PBC + packet. The chip strips the PBC, takes SC[3:0] from the LRH and SC[4]
from PBC.DcInfo, appends the ICRC (9B; a 16B packet's ICRC space is filled
in place), checks it may go, counts it and queues it for the link:

    SEND_CTRL.SEND_ENABLE clear          dropped (SEND_DROPPED_PKT_CNT)
    logical state Down                   dropped, TxLinkdownErr (source 6)
    Init or Armed and not VL15           dropped, TxIncorrectLinkStateErr
    LRH.PktLen beyond SEND_LEN_CHECK[vl] dropped, SEND_EGRESS_ERR_INFO.TooLongIbPacket
    LRH.PktLen != PBC length - 1         dropped, SEND_EGRESS_ERR_INFO.BadPktLen

Before any of this, the launching send context or SDMA engine applies its
integrity checks (integrity.py); a packet they refuse never reaches egress
(`refuse` records it: SEND_EGRESS_ERR_INFO, SEND_EGRESS_ERR_SOURCE).

Whether the link partner has room is the launching engine's question (PIO's
launcher, an SDMA engine), asked of the port before each packet: egress
never holds a packet back.

Collaborators: the interrupt controller (egress and TXE errors, sources 6
and 7), the DCC (logical state, port counters), the 8051's physical link
(is it up?), and the chip's outbox (`ChipServices.emit`). PIO and SDMA hand
it their packets.
"""
from __future__ import annotations

from devmodel.fabric import Packet
from devmodel.regs import Access, Register
from devmodel.wire import opa

from .chip_registers import (
    SEND_CM_CTRL_RESETCSR,
    SEND_CM_GLOBAL_CREDIT_RESETCSR,
    SEND_COUNTER_ARRAY32,
    SEND_COUNTER_ARRAY64,
    SEND_CTRL,
    SEND_CTRL_CM_RESET_SMASK,
    SEND_CTRL_SEND_ENABLE_SMASK,
    SEND_EGRESS_ERR_INFO,
    SEND_EGRESS_ERR_INFO_BAD_PKT_LEN_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_TOO_LONG_IB_PACKET_ERR_SMASK,
    SEND_EGRESS_ERR_SOURCE,
    SEND_EGRESS_ERR_STATUS_TX_INCORRECT_LINK_STATE_ERR_SMASK,
    SEND_EGRESS_ERR_STATUS_TX_LINKDOWN_ERR_SMASK,
    SEND_LEN_CHECK0,
    SEND_LEN_CHECK1,
)
from .csr import Block, csr, csr_array, csrs
from .dcc import Dcc, LogicalState
from .formats import PBC, PBC_BYTES
from .integrity import describe
from .intr import EGRESS_ERR_INT, TXE_ERR_INT, ErrorFlags, InterruptController
from .lni import PhysicalLink
from .services import ChipServices

NUM_CONTEXTS_PER_SET = 8
SEND_DATA_PKT_CNT, SEND_DWORD_CNT = 0, 1  # SEND_COUNTER_ARRAY64
_DATA_PKT_CNT = SEND_COUNTER_ARRAY64 + 8 * SEND_DATA_PKT_CNT
_DWORD_CNT = SEND_COUNTER_ARRAY64 + 8 * SEND_DWORD_CNT
SEND_DROPPED_PKT_CNT = 5  # SEND_COUNTER_ARRAY32
_DC_INFO = 1 << PBC.shift["dc_info"]
_VL_SHIFT, _VL_MASK = PBC.shift["vl"], PBC.mask["vl"]
#: the LRH fields egress reads (9B, devmodel/wire/opa.py), and SC[4]'s place above SC[3:0]
_LNH_SHIFT, _LNH_MASK = opa.LRH.shift["lnh"], opa.LRH.mask["lnh"]
_SC_SHIFT, _SC_MASK = opa.LRH.shift["sc"], opa.LRH.mask["sc"]
_PKT_LEN_SHIFT, _PKT_LEN_MASK = opa.LRH.shift["pkt_len"], opa.LRH.mask["pkt_len"]
_SC4 = 1 << opa.LRH.width["sc"]
_SC_16B_SHIFT, _SC_16B_MASK = opa.LRH_16B.shift["sc"], opa.LRH_16B.mask["sc"]
_BYPASS = 1 << PBC.shift["packet_bypass"]
_TEST_BAD_ICRC = 1 << PBC.shift["test_bad_icrc"]


class Send(Block):
    name = "send"

    def __init__(self, services: ChipServices, intr: InterruptController, dcc: Dcc, link: PhysicalLink):
        self.intr = intr
        self.dcc = dcc
        self.link = link
        super().__init__(services)

    def declare(self) -> list[Register]:
        config = self.config
        self.egress_errors = ErrorFlags(self.intr, EGRESS_ERR_INT, "SEND_EGRESS_ERR_STATUS",
                                        "SEND_EGRESS_ERR_CLEAR", "SEND_EGRESS_ERR_MASK")
        self.errors = ErrorFlags(self.intr, TXE_ERR_INT, "SEND_ERR_STATUS", "SEND_ERR_CLEAR", "SEND_ERR_MASK")
        self.cm_resets = 0
        return [
            csr("SEND_CTRL", access=Access.SC, self_clearing=SEND_CTRL_CM_RESET_SMASK, on_write=self._control),
            csr("SEND_CONTEXTS", access=Access.RO, reset=config.send_contexts),
            csr("SEND_DMA_ENGINES", access=Access.RO, reset=config.sdma_engines),
            csr("SEND_PIO_MEM_SIZE", access=Access.RO, reset=config.pio_mem_size),
            csr("SEND_DMA_MEM_SIZE", access=Access.RO, reset=config.sdma_mem_size),
            csr("SEND_HIGH_PRIORITY_LIMIT"),
            *self.egress_errors.declare(),
            *self.errors.declare(),
            *csrs("SEND_BTH_QP", "SEND_STATIC_RATE_CONTROL", "SEND_SC2VLT0", "SEND_SC2VLT1", "SEND_SC2VLT2",
                  "SEND_SC2VLT3", "SEND_LEN_CHECK0", "SEND_LEN_CHECK1"),
            *csr_array("SEND_LOW_PRIORITY_LIST", 16),
            *csr_array("SEND_HIGH_PRIORITY_LIST", 16),
            *csr_array("SEND_CONTEXT_SET_CTRL", config.send_contexts // NUM_CONTEXTS_PER_SET),
            *csr_array("SEND_COUNTER_ARRAY32", 7),
            *csr_array("SEND_COUNTER_ARRAY64", 30),
            csr("SEND_CM_CTRL", reset=SEND_CM_CTRL_RESETCSR),
            csr("SEND_CM_GLOBAL_CREDIT", reset=SEND_CM_GLOBAL_CREDIT_RESETCSR),
            *csrs("SEND_CM_TIMER_CTRL", "SEND_CM_LOCAL_AU_TABLE0_TO3", "SEND_CM_LOCAL_AU_TABLE4_TO7",
                  "SEND_CM_REMOTE_AU_TABLE0_TO3", "SEND_CM_REMOTE_AU_TABLE4_TO7", "SEND_CM_CREDIT_VL15"),
            csr("SEND_CM_CREDIT_USED_STATUS", access=Access.RO),
            *csr_array("SEND_CM_CREDIT_VL", 8),
            *csr_array("SEND_EGRESS_CTXT_STATUS", config.send_contexts, access=Access.RO),
            *csr_array("SEND_EGRESS_SEND_DMA_STATUS", config.sdma_engines, access=Access.RO),
            csr("SEND_EGRESS_ERR_INFO", access=Access.W1C),
            csr("SEND_EGRESS_ERR_SOURCE", access=Access.RO),
        ]

    def reset(self) -> None:
        self.cm_resets = 0
        self.sent = 0
        self.dropped: dict[str, int] = {}

    def counters(self) -> dict:
        return {"sent": self.sent, "dropped": dict(self.dropped)}

    def _control(self, _old: int, new: int) -> None:
        if new & SEND_CTRL_CM_RESET_SMASK:
            self.cm_resets += 1
            self.log.info("SEND_CTRL: CM_RESET (credit manager reset)")

    # -- egress ----------------------------------------------------------------------
    def _drop(self, why: str, status: int = 0, info: int = 0) -> None:
        first = why not in self.dropped
        self.dropped[why] = self.dropped.get(why, 0) + 1
        offset = SEND_COUNTER_ARRAY32 + 8 * SEND_DROPPED_PKT_CNT
        self.regs.set(offset, self.regs.get(offset) + 1)
        if info:
            self.regs.set_bits(SEND_EGRESS_ERR_INFO, info)
        if status:
            self.egress_errors.set(status)
        if first:
            self.log.info("egress: dropped a packet: %s (counted in stats, logged once)", why)

    def refuse(self, info: int, source: int, status: int = 0) -> None:
        """A packet the sender's integrity checks refused (integrity.py): the
        checks it failed latch in SEND_EGRESS_ERR_INFO, the sender in
        SEND_EGRESS_ERR_SOURCE (the send context, or the SDMA engine
        [inferred: the driver only prints it]); `status` is an SDMA
        engine's SEND_EGRESS_ERR_STATUS TxSdma<e>DisallowedPacketErr."""
        self.regs.set(SEND_EGRESS_ERR_SOURCE, source)
        self._drop(f"refused by its sender's integrity checks ({describe(info)})", status=status, info=info)

    def max_dwords(self, vl: int) -> int:
        """SEND_LEN_CHECK's limit for `vl`, in dwords (0: none)."""
        if vl == 15:
            return (self.regs.get(SEND_LEN_CHECK1) >> 48) & 0xFFF
        if vl < 4:
            return (self.regs.get(SEND_LEN_CHECK0) >> (12 * vl)) & 0xFFF
        return (self.regs.get(SEND_LEN_CHECK1) >> (12 * (vl - 4))) & 0xFFF

    def egress(self, frame: bytes) -> None:
        """A launched packet (PBC first) leaves for the link; see the module docstring."""
        pbc = int.from_bytes(frame[:PBC_BYTES], "little")
        data = memoryview(frame)[PBC_BYTES:]  # copied once, into the Packet
        if not self.regs.get(SEND_CTRL) & SEND_CTRL_SEND_ENABLE_SMASK:
            self._drop("SEND_CTRL.SEND_ENABLE is clear")
            return
        bypass = bool(pbc & _BYPASS)
        if bypass:
            sc = ((int.from_bytes(data[:opa.LRH_16B_BYTES], "little") >> _SC_16B_SHIFT) & _SC_16B_MASK
                  if len(data) >= opa.LRH_16B_BYTES else 0)
            packet = Packet(bytes(data), sc, bypass=True)
        else:
            lrh = int.from_bytes(data[:opa.LRH_BYTES], "big") if len(data) >= opa.LRH_BYTES else 0
            lnh = (lrh >> _LNH_SHIFT) & _LNH_MASK
            headers = opa.LRH_BYTES + (opa.GRH_BYTES if lnh == opa.LNH_GRH else 0) + opa.BTH_BYTES
            if len(data) < headers:
                self._drop("packet shorter than its LRH, GRH and BTH",
                           info=SEND_EGRESS_ERR_INFO_BAD_PKT_LEN_ERR_SMASK)
                return
            sc = (lrh >> _SC_SHIFT) & _SC_MASK | (_SC4 if pbc & _DC_INFO else 0)
            pkt_len = (lrh >> _PKT_LEN_SHIFT) & _PKT_LEN_MASK
            if pkt_len != len(data) // 4 + 1:
                self._drop("LRH.PktLen disagrees with the PBC length", info=SEND_EGRESS_ERR_INFO_BAD_PKT_LEN_ERR_SMASK)
                return
            vl = (pbc >> _VL_SHIFT) & _VL_MASK
            limit = self.max_dwords(vl)
            if limit and pkt_len > limit:
                self._drop(f"packet longer than VL {vl}'s SEND_LEN_CHECK",
                           info=SEND_EGRESS_ERR_INFO_TOO_LONG_IB_PACKET_ERR_SMASK)
                return
            icrc = opa.icrc(data)
            if pbc & _TEST_BAD_ICRC:
                icrc ^= 0xFFFFFFFF
            packet = Packet(b"".join((data, icrc.to_bytes(opa.ICRC_BYTES, "little"))), sc,
                            sealed=not pbc & _TEST_BAD_ICRC)
        state = self.dcc.logical_state
        if state is LogicalState.DOWN or not self.link.is_up:
            self._drop("link down", status=SEND_EGRESS_ERR_STATUS_TX_LINKDOWN_ERR_SMASK)
            return
        if state is not LogicalState.ACTIVE and sc != opa.SC_VL15:
            self._drop(f"data packet while the port is {state.name}",
                       status=SEND_EGRESS_ERR_STATUS_TX_INCORRECT_LINK_STATE_ERR_SMASK)
            return
        self.regs.add(_DATA_PKT_CNT, 1)
        self.regs.add(_DWORD_CNT, len(packet.data) // 4)
        self.dcc.count_transmitted(packet)
        self.sent += 1
        self.services.emit(packet)
