"""RXE: the receive block -- receive contexts, packet steering, the RcvArray.

    RCV_CTRL            0x1000000 RW  [0] PORT_ENABLE [1] QP_MAP [2] PARTITION_KEY
                                      [4] BYPASS [5] RSM [6] EXTENDED_PSN,
                                      [9] RX_RBUF_INIT (self-clearing command)
    RCV_STATUS          0x1000008 RO  [0] PKT_IN_PROGRESS [6] RBUF_PKT_PENDING [9] RBUF_INIT_DONE
    RCV_CONTEXTS        0x1000010 RO  number of receive contexts
    RCV_ARRAY_CNT       0x1000018 RO  number of RcvArray entries
    RCV_BTH_QP          0x1000028 RW  [23:16] KDETH_QP: DestQP[23:16] of PSM2 packets (0x80)
    RCV_MULTICAST, RCV_BYPASS ([7:0] context, [20:16] header dwords), RCV_VL15 ([7:0] context)
    RCV_ERR_INFO        0x1000050 W1C
    RCV_ERR_STATUS/MASK/CLEAR 0x1000060/68/70  second tier of source 1
    RCV_QP_MAP_TABLE[32]  256 one-byte contexts, indexed by DestQP[8:1]
    RCV_RSM_CFG/SELECT/MATCH[4], RCV_RSM_MAP_TABLE[32]  receive-side mapping rules
    RCV_COUNTER_ARRAY32[24], RCV_COUNTER_ARRAY64[2]    error and traffic counters
    per context c, kernel page 0x1100000 + 0x100c (`ReceiveContext`, rcv_context.py)
    per context c, user page 0x1300000 + 0x1000c: RCV_HDR_TAIL (RO), RCV_HDR_HEAD,
      RCV_EGR_INDEX_HEAD, RCV_TID_FLOW_TABLE[32] (RW, its [38:37] mismatch status W1C;
      the entry's fields in rcv_context.py)
    RcvArray            0x1200000 + 8i  one TID entry per index (formats.RCV_ARRAY_ENTRY); a
                        write changes an entry only with WriteEnable (bit 63) set, and only
                        from a whole 64-bit value (`rcv_array_write`); with
                        `ChipConfig.mapped` "rcvarray" the entries live in BAR0's shared memory
                        (`map_rcv_array`): the guest's stores land there untrapped

Mapped (`vfnic serve --option mmap=rcvarray`), an entry is read from the
shared memory at the moment it is used (an eager or expected placement), so
it is whatever the guest stored last. That loses the WriteEnable rule, and
the 6.12 driver depends on it: `rcv_array_wc_fill` (user_exp_rcv.c,
tid_rdma.c) stores 0 into the entries of a TID group it does not program,
live ones included, to fill the write-combining buffer, which the chip
ignores; mapped, the 0 replaces a live entry and its packets get TidErr.
PSM2's rendezvous (1 MiB fi_pingpong) stalls on it. So mapping the
RcvArray is unsound with the unmodified driver: kept for measurement only
(docs/execution-model.md, "Latency"). The torn-write rule is moot mapped
(QEMU maps the page as RAM: a writeq is one 8-byte store, read here as one
aligned 8-byte load).

A packet from the link (`receive_packet`, a chip event on the worker) is
checked (port enabled, logical state, DLID, length, ICRC), classified (IB,
KDETH eager or expected, 16B bypass), split where the chip splits it
(header: LRH through the opcode's extension headers; KDETH: 56 bytes; 16B:
RCV_BYPASS.HDR_SIZE dwords) and steered to a context, in this order:

    SC 15 (VL15)                 -> RCV_VL15 (context 0)
    RSM rules 0..3 (RSM_ENABLE)  -> RCV_RSM_MAP_TABLE[(OFFSET + idx1 ^ idx2) & 0xFF]
    DestQP[23:16] == KDETH_QP    -> context DestQP[7:0]
    16B (BYPASS_ENABLE)          -> RCV_BYPASS context
    QP map (QP_MAP_ENABLE)       -> RCV_QP_MAP_TABLE[DestQP[8:1]]
    otherwise                    -> context 0

RSM fields and indexes are bit offsets into the packet (LRH first) read in
8-byte chunks as big-endian words: offset = (chunk << 6) | bit. A map entry
of 0xFF names no context and the packet falls through [inferred]. The
precedence above is inferred from the rules the driver installs.

Collaborators: the interrupt controller (RXE errors, source 1; RcvAvail and
RcvUrgent of each context), the CCE (a frozen chip drops), the DCC (logical
state, port counters). The port hands it packets (`receive_packet`).
"""
from __future__ import annotations

import numpy as np

from common.ratelog import limited
from devmodel.fabric import Packet
from devmodel.regs import Access, Register, extract_lanes, merge_lanes
from devmodel.wire import opa

from .cce import Cce
from .chip_registers import (
    DCC_CFG_PORT_CONFIG1,
    DCC_CFG_PORT_CONFIG1_DLID_MASK_MASK,
    DCC_CFG_PORT_CONFIG1_DLID_MASK_SHIFT,
    DCC_CFG_PORT_CONFIG1_TARGET_DLID_MASK,
    DCC_CFG_PORT_CONFIG1_TARGET_DLID_SHIFT,
    RCV_ARRAY,
    RCV_ARRAY_RT_WRITE_ENABLE_SMASK,
    RCV_BTH_QP,
    RCV_BTH_QP_KDETH_QP_MASK,
    RCV_BTH_QP_KDETH_QP_SHIFT,
    RCV_BYPASS,
    RCV_BYPASS_BYPASS_CONTEXT_MASK,
    RCV_BYPASS_HDR_SIZE_MASK,
    RCV_BYPASS_HDR_SIZE_SHIFT,
    RCV_COUNTER_ARRAY32,
    RCV_COUNTER_ARRAY64,
    RCV_CTRL,
    RCV_CTRL_RCV_BYPASS_ENABLE_SMASK,
    RCV_CTRL_RCV_PORT_ENABLE_SMASK,
    RCV_CTRL_RCV_QP_MAP_ENABLE_SMASK,
    RCV_CTRL_RCV_RSM_ENABLE_SMASK,
    RCV_CTRL_RX_RBUF_INIT_SMASK,
    RCV_QP_MAP_TABLE,
    RCV_RSM_CFG,
    RCV_RSM_CFG_OFFSET_SHIFT,
    RCV_RSM_CFG_PACKET_TYPE_SHIFT,
    RCV_RSM_MAP_TABLE,
    RCV_RSM_MATCH,
    RCV_RSM_SELECT,
    RCV_STATUS,
    RCV_STATUS_RX_RBUF_INIT_DONE_SMASK,
    RCV_TID_FLOW_TABLE,
    RCV_VL15,
)
from .csr import KCTXT_STRIDE, UCTXT_STRIDE, Block, csr, csr_array, csrs, field
from .dcc import Dcc, LogicalState
from .formats import RcvType
from .intr import RXE_ERR_INT, ErrorFlags, InterruptController
from .rcv_context import KERNEL_CONTEXT_CSRS, RXE_NUM_TID_FLOWS, TF_STATUS, Arrival, ReceiveContext
from .services import ChipServices

#: RCV_COUNTER_ARRAY32 / 64 indexes (chip_registers.h)
RCV_LENGTH_ERR_CNT, RCV_SHORT_ERR_CNT, RCV_ICRC_ERR_CNT, RCV_BUF_OVFL_CNT = 0, 2, 6, 10
RCV_DATA_PKT_CNT, RCV_DWORD_CNT = 0, 1
_DATA_PKT_CNT = RCV_COUNTER_ARRAY64 + 8 * RCV_DATA_PKT_CNT
_DWORD_CNT = RCV_COUNTER_ARRAY64 + 8 * RCV_DWORD_CNT
NO_CONTEXT = 0xFF
#: receive classes an RSM rule's PACKET_TYPE matches
RSM_TYPE = {RcvType.EXPECTED: 0, RcvType.EAGER: 1, RcvType.IB: 2, RcvType.BYPASS: 4}
#: the fields classification reads, from the wire declarations (devmodel/wire/opa.py)
_LNH_SHIFT, _LNH_MASK = opa.LRH.shift["lnh"], opa.LRH.mask["lnh"]
_DLID_SHIFT, _DLID_MASK = opa.LRH.shift["dlid"], opa.LRH.mask["dlid"]
_PKT_LEN_SHIFT, _PKT_LEN_MASK = opa.LRH.shift["pkt_len"], opa.LRH.mask["pkt_len"]
_OPCODE_SHIFT, _OPCODE_MASK = opa.BTH.shift["opcode"], opa.BTH.mask["opcode"]
_DEST_QP_SHIFT, _DEST_QP_MASK = opa.BTH.shift["dest_qp"], opa.BTH.mask["dest_qp"]
_TID_CTRL_SHIFT, _TID_CTRL_MASK = opa.KDETH0.shift["tid_ctrl"], opa.KDETH0.mask["tid_ctrl"]
_INTR_SHIFT, _INTR_MASK = opa.KDETH0.shift["intr"], opa.KDETH0.mask["intr"]
_KDETH0_BYTES = opa.KDETH0.size


def packet_bits(data: bytes, offset: int, width: int) -> int:
    """`width` bits at RSM bit `offset` of a packet (see the module docstring)."""
    chunk, bit = offset >> 6, offset & 63
    word = int.from_bytes(data[8 * chunk:8 * chunk + 8].ljust(8, b"\0"), "big")
    return (word >> bit) & ((1 << width) - 1)


class Receive(Block):
    name = "rcv"

    def __init__(self, services: ChipServices, intr: InterruptController, cce: Cce, dcc: Dcc):
        self.intr = intr
        self.cce = cce
        self.dcc = dcc
        super().__init__(services)

    def declare(self) -> list[Register]:
        config = self.config
        contexts = config.rcv_contexts
        self.errors = ErrorFlags(self.intr, RXE_ERR_INT, "RCV_ERR_STATUS", "RCV_ERR_CLEAR", "RCV_ERR_MASK")
        self.rcv_array = np.zeros(config.rcv_array_count, dtype=np.uint64)
        #: (index, bytes written, value so far) of an entry being written in pieces (`rcv_array_write`)
        self.rcv_array_staging: tuple[int, int, int] | None = None
        self.held_bytes = 0  # packets all contexts hold for full queues (bounded)
        self.contexts = [ReceiveContext(self, c) for c in range(contexts)]
        self.dropped: dict[str, int] = {}
        self.received = 0

        def ctxt_hook(method: str):
            return lambda c: {"on_write": getattr(self.contexts[c], method)}

        regs = [
            csr("RCV_CTRL", access=Access.SC, self_clearing=RCV_CTRL_RX_RBUF_INIT_SMASK, on_write=self._control),
            csr("RCV_STATUS", access=Access.RO),
            csr("RCV_CONTEXTS", access=Access.RO, reset=contexts),
            csr("RCV_ARRAY_CNT", access=Access.RO, reset=config.rcv_array_count),
            *csrs("RCV_BTH_QP", "RCV_MULTICAST", "RCV_BYPASS", "RCV_VL15"),
            csr("RCV_ERR_INFO", access=Access.W1C),
            *self.errors.declare(),
            *csr_array("RCV_QP_MAP_TABLE", 32),
            *csr_array("RCV_PARTITION_KEY", 4),
            *csr_array("RCV_COUNTER_ARRAY32", 24),
            *csr_array("RCV_COUNTER_ARRAY64", 2),
            *csr_array("RCV_RSM_CFG", 4),
            *csr_array("RCV_RSM_SELECT", 4),
            *csr_array("RCV_RSM_MATCH", 4),
            *csr_array("RCV_RSM_MAP_TABLE", 32),
            *csr_array("RCV_CTXT_STATUS", contexts, KCTXT_STRIDE, access=Access.RO),
            *csr_array("RCV_HDR_TAIL", contexts, UCTXT_STRIDE, access=Access.RO,
                       per_index=lambda c: {"on_read": lambda _v, c=c: self.contexts[c].tail}),
            *csr_array("RCV_HDR_HEAD", contexts, UCTXT_STRIDE, per_index=ctxt_hook("head_written")),
            *csr_array("RCV_EGR_INDEX_HEAD", contexts, UCTXT_STRIDE, per_index=ctxt_hook("egr_head_written")),
            *csr_array("RCV_CTXT_CTRL", contexts, KCTXT_STRIDE, per_index=ctxt_hook("control")),
        ]
        for name in KERNEL_CONTEXT_CSRS:
            regs += csr_array(name, contexts, KCTXT_STRIDE)
        for ctxt in range(contexts):
            regs += csr_array(f"RCV_TID_FLOW_TABLE[{ctxt}]", RXE_NUM_TID_FLOWS, 8,
                              base=RCV_TID_FLOW_TABLE + ctxt * UCTXT_STRIDE, w1c=TF_STATUS)
        return regs

    def reset(self) -> None:
        self.rcv_array[:] = 0
        self.rcv_array_staging = None
        for context in self.contexts:
            context.reset()
        self.dropped.clear()
        self.received = 0

    def freeze(self) -> None:
        """SPC freeze: packets held for full contexts are lost."""
        for context in self.contexts:
            context.discard_held("the chip froze")

    def counters(self) -> dict:
        delivered = sum(c.delivered for c in self.contexts)
        return {"received": self.received, "delivered": delivered, "dropped": dict(self.dropped),
                "contexts": {c.index: c.counters() for c in self.contexts
                             if c.delivered or c.expected or c.any_drops()}}

    def _control(self, _old: int, new: int) -> None:
        if new & RCV_CTRL_RX_RBUF_INIT_SMASK:
            self.log.info("RCV_CTRL: RX_RBUF_INIT")
            self.regs.set_bits(RCV_STATUS, RCV_STATUS_RX_RBUF_INIT_DONE_SMASK)

    # -- counters ----------------------------------------------------------------
    def count32(self, index: int, n: int = 1) -> None:
        offset = RCV_COUNTER_ARRAY32 + 8 * index
        self.regs.set(offset, self.regs.get(offset) + n)

    def _drop(self, why: str, counter: int | None = None) -> None:
        first = why not in self.dropped
        self.dropped[why] = self.dropped.get(why, 0) + 1
        if counter is not None:
            self.count32(counter)
        if first:
            self.log.info("RXE: dropped a packet: %s (counted in stats, logged once)", why)

    # -- RcvArray ------------------------------------------------------------------
    def rcv_array_span(self) -> tuple[int, int]:
        return RCV_ARRAY, RCV_ARRAY + 8 * len(self.rcv_array)

    def rcv_array_read(self, offset: int, size: int) -> int:
        index, byte = divmod(offset - RCV_ARRAY, 8)
        return extract_lanes(int(self.rcv_array[index]), byte, size)

    def rcv_array_write(self, offset: int, size: int, value: int) -> None:
        """The driver writes the RcvArray through a write-combining map
        (`hfi1_put_tid`), whose flushes may carry whole 64-byte lines: an
        entry changes only when the qword written has WriteEnable (bit 63)
        set, which every `hfi1_put_tid` sets; the other qwords of the line
        leave their entries alone.

        An entry takes effect only from one whole 64-bit value: one 8-byte
        write, or the pieces of one store as QEMU hands a store wider than an
        access to a device -- in ascending order, the low byte first, each
        piece where the last one ended. Anything else -- a lone upper half
        (WriteEnable and the size over the entry's old address bits), pieces
        out of order, a store cut short by a write elsewhere in the RcvArray
        -- is discarded with a log line, so that a torn write never maps a
        TID to a mixed or stale address. [inferred: the chip has no sub-qword
        decode (PSM2's opa_user.h: "paired 32 bit writes ... will not work");
        what it does with a torn write is not documented]"""
        index, byte = divmod(offset - RCV_ARRAY, 8)
        if size == 8:
            self._discard_torn_rcv_array_write()
            if value & RCV_ARRAY_RT_WRITE_ENABLE_SMASK:
                self.rcv_array[index] = value
            return
        staged = self.rcv_array_staging
        if byte == 0:
            self._discard_torn_rcv_array_write()
            staged = (index, 0, 0)
        elif staged is None or staged[:2] != (index, byte):
            self._discard_torn_rcv_array_write()
            self._torn_log().warning("RcvArray[%d]: a %d-byte write at byte %d that starts no 64-bit value and "
                                     "continues none: discarded", index, size, byte)
            return
        entry = merge_lanes(staged[2], byte, size, value)
        if byte + size < 8:
            self.rcv_array_staging = (index, byte + size, entry)
            return
        self.rcv_array_staging = None
        if entry & RCV_ARRAY_RT_WRITE_ENABLE_SMASK:
            self.rcv_array[index] = entry

    def _discard_torn_rcv_array_write(self) -> None:
        if self.rcv_array_staging is None:
            return
        index, written, entry = self.rcv_array_staging
        self.rcv_array_staging = None
        self._torn_log().warning("RcvArray[%d]: the first %d bytes of a 64-bit value (%#x) never completed: "
                                 "discarded, the entry keeps %#018x", index, written, entry, int(self.rcv_array[index]))

    def _torn_log(self):
        return limited(self, self.log, "torn RcvArray writes")

    def map_rcv_array(self, memory: memoryview) -> None:
        """Serve the RcvArray from `memory` (all of BAR0, shared with the
        guest): the entries become a view of it, what they held copied in."""
        mapped = np.frombuffer(memory, dtype="<u8", count=len(self.rcv_array), offset=RCV_ARRAY)
        mapped[:] = self.rcv_array
        self.rcv_array = mapped

    def unmap_rcv_array(self) -> None:
        """Back to private entries (a copy of the shared ones): the host may unmap."""
        if self.rcv_array.base is not None:
            self.rcv_array = self.rcv_array.copy()

    def rcv_array_entry(self, index: int) -> int:
        return int(self.rcv_array[index]) if 0 <= index < len(self.rcv_array) else 0

    # -- a packet from the link ----------------------------------------------------------
    def receive_packet(self, packet: Packet) -> None:
        """A chip event: one packet arrived from the link."""
        self.received += 1
        regs = self.regs
        if self.cce.frozen or not regs.get(RCV_CTRL) & RCV_CTRL_RCV_PORT_ENABLE_SMASK:
            self._drop("port not enabled (RCV_CTRL.PORT_ENABLE) or SPC frozen")
            return
        state = self.dcc.logical_state
        if state is LogicalState.DOWN:
            self._drop("logical link state Down")
            return
        if packet.sc == opa.SC_VL15:
            pass
        elif state is LogicalState.INIT:
            self._drop("data packet while the port is in Init (only VL15 passes)")
            return
        arrival = self.classify(packet)
        if arrival is None:
            return
        regs.add(_DATA_PKT_CNT, 1)
        regs.add(_DWORD_CNT, len(packet.data) // 4)
        self.dcc.count_received(packet, arrival.vl15)
        ctxt = self.steer(arrival)
        if ctxt >= len(self.contexts):
            self._drop(f"steered to context {ctxt}, which does not exist")
            return
        self.contexts[ctxt].deliver(arrival)

    def classify(self, packet: Packet) -> Arrival | None:
        """Check a packet and decide its receive type and header split; None if dropped."""
        data = packet.data
        if packet.bypass:
            return self._classify_16b(packet)
        if len(data) < opa.LRH_BYTES + opa.BTH_BYTES + opa.ICRC_BYTES or len(data) % 4:
            self._drop("runt or ragged 9B packet", RCV_SHORT_ERR_CNT)
            return None
        lrh = int.from_bytes(data[:opa.LRH_BYTES], "big")
        lnh = (lrh >> _LNH_SHIFT) & _LNH_MASK
        dlid = (lrh >> _DLID_SHIFT) & _DLID_MASK
        if not self._dlid_accepted(dlid):
            self._drop("DLID is neither this port's LID, multicast nor permissive")
            return None
        if lnh == opa.LNH_GRH:
            bth = opa.LRH_BYTES + opa.GRH_BYTES
        elif lnh == opa.LNH_BTH:
            bth = opa.LRH_BYTES
        else:
            self._drop(f"raw packet (LNH {lnh}): no IB transport header")
            return None
        if len(data) < bth + opa.BTH_BYTES + opa.ICRC_BYTES:
            self._drop("packet shorter than its headers", RCV_SHORT_ERR_CNT)
            return None
        bth_word = int.from_bytes(data[bth:bth + opa.BTH_BYTES], "big")
        opcode = (bth_word >> _OPCODE_SHIFT) & _OPCODE_MASK
        dest_qp = (bth_word >> _DEST_QP_SHIFT) & _DEST_QP_MASK
        kdeth_prefix = (self.regs.get(RCV_BTH_QP) >> RCV_BTH_QP_KDETH_QP_SHIFT) & RCV_BTH_QP_KDETH_QP_MASK
        rcv_type, tid_ctrl, urgent = RcvType.IB, 0, False
        if dest_qp >> 16 == kdeth_prefix and kdeth_prefix:
            hdr_len = bth - opa.LRH_BYTES + opa.KDETH_HEADER_BYTES
            if len(data) < hdr_len + opa.ICRC_BYTES:
                # the J_KEY, TID and flow checks read KDETH where it would be
                self._drop("KDETH packet shorter than its headers", RCV_SHORT_ERR_CNT)
                return None
            kdeth = bth + opa.BTH_BYTES
            kdeth0 = int.from_bytes(data[kdeth:kdeth + _KDETH0_BYTES], "little")
            tid_ctrl = (kdeth0 >> _TID_CTRL_SHIFT) & _TID_CTRL_MASK
            urgent = bool((kdeth0 >> _INTR_SHIFT) & _INTR_MASK)
            rcv_type = RcvType.EXPECTED if tid_ctrl else RcvType.EAGER
        else:
            hdr_len = (opa.HEADER_BYTES_BY_OPCODE[opcode] or opa.LRH_BYTES + opa.BTH_BYTES) + bth - opa.LRH_BYTES
        errors = 0
        pkt_len = (lrh >> _PKT_LEN_SHIFT) & _PKT_LEN_MASK
        if pkt_len * 4 != len(data) or hdr_len + opa.ICRC_BYTES > len(data):
            errors |= ReceiveContext.RHF_LEN_ERR
            self.count32(RCV_LENGTH_ERR_CNT)
        if not packet.sealed and not opa.icrc_ok(data):
            errors |= ReceiveContext.RHF_ICRC_ERR
            self.count32(RCV_ICRC_ERR_CNT)
        return Arrival(packet, rcv_type, min(hdr_len, len(data)), errors, dest_qp, tid_ctrl,
                       vl15=packet.sc == opa.SC_VL15, urgent=urgent)

    def _classify_16b(self, packet: Packet) -> Arrival | None:
        """A 16B (bypass) packet: RCV_BYPASS.HDR_SIZE dwords of it go to the
        header queue, the rest (with its ICRC and LT byte) to eager."""
        hdr_dws = (self.regs.get(RCV_BYPASS) >> RCV_BYPASS_HDR_SIZE_SHIFT) & RCV_BYPASS_HDR_SIZE_MASK
        return Arrival(packet, RcvType.BYPASS, min(4 * hdr_dws or opa.LRH_16B_BYTES, len(packet.data)), 0, 0, 0)

    def _dlid_accepted(self, dlid: int) -> bool:
        if dlid >= opa.MULTICAST_LID_BASE:  # multicast and permissive
            return True
        config1 = self.regs.get(DCC_CFG_PORT_CONFIG1)
        target = field(config1, DCC_CFG_PORT_CONFIG1_TARGET_DLID_SHIFT, DCC_CFG_PORT_CONFIG1_TARGET_DLID_MASK)
        mask = field(config1, DCC_CFG_PORT_CONFIG1_DLID_MASK_SHIFT, DCC_CFG_PORT_CONFIG1_DLID_MASK_MASK)
        return target != 0 and (dlid & mask) == (target & mask)

    def steer(self, arrival: Arrival) -> int:
        regs = self.regs
        if arrival.vl15:
            return regs.get(RCV_VL15) & 0xFF
        ctrl = regs.get(RCV_CTRL)
        if ctrl & RCV_CTRL_RCV_RSM_ENABLE_SMASK:
            ctxt = self._rsm(arrival)
            if ctxt is not None:
                return ctxt
        if arrival.rcv_type in (RcvType.EXPECTED, RcvType.EAGER):
            return arrival.dest_qp & 0xFF
        if arrival.rcv_type is RcvType.BYPASS:
            if ctrl & RCV_CTRL_RCV_BYPASS_ENABLE_SMASK:
                return regs.get(RCV_BYPASS) & RCV_BYPASS_BYPASS_CONTEXT_MASK
            return 0
        if ctrl & RCV_CTRL_RCV_QP_MAP_ENABLE_SMASK:
            return self._table_byte(RCV_QP_MAP_TABLE, (arrival.dest_qp >> 1) & 0xFF)
        return 0

    def _table_byte(self, base: int, index: int) -> int:
        return (self.regs.get(base + 8 * (index >> 3)) >> (8 * (index & 7))) & 0xFF

    def _rsm(self, arrival: Arrival) -> int | None:
        regs, data = self.regs, arrival.packet.data
        kind = RSM_TYPE.get(arrival.rcv_type)
        for rule in range(4):
            cfg = regs.get(RCV_RSM_CFG + 8 * rule)
            if not cfg >> rule & 1 or (cfg >> RCV_RSM_CFG_PACKET_TYPE_SHIFT) & 7 != kind:
                continue
            select = regs.get(RCV_RSM_SELECT + 8 * rule)
            match = regs.get(RCV_RSM_MATCH + 8 * rule)
            field1 = packet_bits(data, select & 0x1FF, 8)
            field2 = packet_bits(data, (select >> 16) & 0x1FF, 8)
            if field1 & (match & 0xFF) != (match >> 8) & 0xFF or field2 & ((match >> 16) & 0xFF) != match >> 24 & 0xFF:
                continue
            index1 = packet_bits(data, (select >> 32) & 0x1FF, (select >> 44) & 0xF)
            index2 = packet_bits(data, (select >> 48) & 0x1FF, (select >> 60) & 0xF)
            index = (((cfg >> RCV_RSM_CFG_OFFSET_SHIFT) & 0xFF) + (index1 ^ index2)) & 0xFF
            ctxt = self._table_byte(RCV_RSM_MAP_TABLE, index)
            if ctxt != NO_CONTEXT:
                return ctxt
        return None
