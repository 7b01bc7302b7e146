"""One receive context: its header queue, eager buffers, tail and interrupts.

    kernel page 0x1100000 + 0x100c
      RCV_CTXT_CTRL     RW  [0] ENABLE [1] ONE_PACKET_PER_EGR_BUFFER [2] DONT_DROP_EGR_FULL
                            [3] DONT_DROP_RHQ_FULL [4] TID_FLOW_ENABLE [5] INTR_AVAIL
                            [6] TAIL_UPD [10:8] EGR_BUF_SIZE (1 = 4 KiB .. 7 = 256 KiB)
      RCV_EGR_CTRL      RW  [12:0] eager base / 8, [40:32] eager buffers / 8
      RCV_TID_CTRL      RW  [12:0] expected base / 8, [40:32] expected entries / 8
      RCV_HDR_ADDR      RW  header queue (host memory)
      RCV_HDR_CNT       RW  [8:0] entries / 32
      RCV_HDR_ENT_SIZE  RW  1: 2 dwords, 2: 16, 4: 32 (the RHF is the entry's last qword)
      RCV_HDR_TAIL_ADDR RW  where TAIL_UPD writes the tail (u64, dwords)
      RCV_AVAIL_TIME_OUT RW [7:0] interrupt coalescing timer, 64 core clocks a tick
      RCV_HDR_OVFL_CNT  RW  packets dropped on a full header queue
    user page 0x1300000 + 0x1000c
      RCV_HDR_TAIL      RO  the tail, in dwords
      RCV_HDR_HEAD      RW  [18:0] HEAD (dwords): first entry software still owns;
                            [39:32] COUNTER: packets per interrupt
      RCV_EGR_INDEX_HEAD RW [10:0] first eager buffer software still owns
      RCV_TID_FLOW_TABLE[32] (+ 8f) one TidFlow entry per flow f = BTH.DestQP[15:11]:
                        RW  [10:0] SeqNum (next sequence) [30:11] GenVal [32] FlowValid
                            [33] HdrSuppEnabled [34] KeepAfterSeqErr [35] KeepOnGenErr
                            [36] KeepPayloadOnGenErr
                        W1C [37] SeqMismatch [38] GenMismatch (set by the chip, sticky)

Delivering a packet (the order the driver relies on):

    1. eager part (payload, pad, ICRC) at buffer[index] + offset * 64; or, for a
       KDETH packet with a TID, the payload at the expected buffer
    2. header, right-justified against the RHF: HdrqOffset = entsize - 2 - header dwords
    3. the RHF, one 8-byte write (RcvSeq 1..13, the driver's "new entry" mark)
    4. the tail to RCV_HDR_TAIL_ADDR when TAIL_UPD (context 0)
    5. RcvAvail (source 256 + c) once COUNTER packets wait since the last
       head write, or when the coalescing timer runs out
    6. RcvUrgent (source 416 + c) for a KDETH packet with KDETH.Intr set, as
       soon as it is in the queue (or its payload placed, its header
       suppressed). With its CCE_INT_MASK bit clear a source only latches
       CCE_INT_STATUS; the driver sets RcvUrgent's for user contexts only
       (URGENT_ENB)

Eager buffers are filled several packets each (multi-packet mode) at 64-byte
offsets; moving to the next buffer is refused while software still owns it
(next index == RcvEgrIndexHead). A header queue is full when the next tail
would reach the head. A full context holds the packet if its DONT_DROP bit is
set (and retries when software moves a head), else drops and counts it --
never overwriting an entry software owns. Memory the context was given that
is not guest memory (a bad RCV_HDR_ADDR, an invalid RcvArray entry) loses
the packet, with a log line and a count, as a write blocked by an IOMMU
would.

Collaborators: its receive block (`ReceiveBlock`, which `rcv.Receive`
implements: the RcvArray, the budget of held bytes all contexts share, the
counters), the interrupt controller (RcvAvail, RcvUrgent) and the chip's
services (guest memory, events).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from common.ratelog import limited
from devmodel.base import DmaError
from devmodel.fabric import Packet
from devmodel.regs import RegisterFile
from devmodel.wire import opa

from .chip_registers import (
    RCV_AVAIL_TIME_OUT,
    RCV_AVAIL_TIME_OUT_TIME_OUT_RELOAD_MASK,
    RCV_AVAIL_TIME_OUT_TIME_OUT_RELOAD_SHIFT,
    RCV_CTXT_CTRL,
    RCV_CTXT_CTRL_DONT_DROP_EGR_FULL_SMASK,
    RCV_CTXT_CTRL_DONT_DROP_RHQ_FULL_SMASK,
    RCV_CTXT_CTRL_EGR_BUF_SIZE_MASK,
    RCV_CTXT_CTRL_EGR_BUF_SIZE_SHIFT,
    RCV_CTXT_CTRL_ENABLE_SMASK,
    RCV_CTXT_CTRL_INTR_AVAIL_SMASK,
    RCV_CTXT_CTRL_ONE_PACKET_PER_EGR_BUFFER_SMASK,
    RCV_CTXT_CTRL_TAIL_UPD_SMASK,
    RCV_CTXT_CTRL_TID_FLOW_ENABLE_SMASK,
    RCV_EGR_CTRL,
    RCV_EGR_CTRL_EGR_BASE_INDEX_MASK,
    RCV_EGR_CTRL_EGR_BASE_INDEX_SHIFT,
    RCV_EGR_CTRL_EGR_CNT_MASK,
    RCV_EGR_CTRL_EGR_CNT_SHIFT,
    RCV_EGR_INDEX_HEAD,
    RCV_EGR_INDEX_HEAD_HEAD_MASK,
    RCV_HDR_ADDR,
    RCV_HDR_CNT,
    RCV_HDR_CNT_CNT_MASK,
    RCV_HDR_CNT_CNT_SHIFT,
    RCV_HDR_ENT_SIZE,
    RCV_HDR_ENT_SIZE_ENT_SIZE_MASK,
    RCV_HDR_ENT_SIZE_ENT_SIZE_SHIFT,
    RCV_HDR_HEAD,
    RCV_HDR_HEAD_COUNTER_MASK,
    RCV_HDR_HEAD_COUNTER_SHIFT,
    RCV_HDR_HEAD_HEAD_MASK,
    RCV_HDR_OVFL_CNT,
    RCV_HDR_TAIL_ADDR,
    RCV_KEY_CTRL,
    RCV_KEY_CTRL_JOB_KEY_ENABLE_SMASK,
    RCV_KEY_CTRL_JOB_KEY_VALUE_MASK,
    RCV_KEY_CTRL_JOB_KEY_VALUE_SHIFT,
    RCV_TID_CTRL,
    RCV_TID_CTRL_TID_BASE_INDEX_MASK,
    RCV_TID_CTRL_TID_BASE_INDEX_SHIFT,
    RCV_TID_CTRL_TID_PAIR_CNT_MASK,
    RCV_TID_CTRL_TID_PAIR_CNT_SHIFT,
    RCV_TID_FLOW_TABLE,
)
from .csr import KCTXT_STRIDE, UCTXT_STRIDE, field
from .formats import RCV_ARRAY_ENTRY, RHF, RHF_MAX_SEQ, RcvType, rcv_array_buffer_bytes
from .intr import IS_RCVAVAIL_START, IS_RCVURGENT_START, InterruptController
from .services import ChipServices

KERNEL_CONTEXT_CSRS = ("RCV_EGR_CTRL", "RCV_TID_CTRL", "RCV_KEY_CTRL", "RCV_HDR_ADDR", "RCV_HDR_CNT",
                       "RCV_HDR_ENT_SIZE", "RCV_HDR_SIZE", "RCV_HDR_TAIL_ADDR", "RCV_AVAIL_TIME_OUT",
                       "RCV_HDR_OVFL_CNT")
RXE_NUM_TID_FLOWS = 32
ENTRY_DWORDS = {1: 2, 2: 16, 4: 32}  # RCV_HDR_ENT_SIZE encodings
#: packets a full DONT_DROP context holds before it drops, and the bytes
#: all contexts of a chip may hold together
HOLD_LIMIT = 1024
HOLD_BYTES_LIMIT = 64 << 20
#: RCV_AVAIL_TIME_OUT ticks: 64 core clocks of 1.242 ns (ASIC_CCLOCK_PS)
TIMEOUT_TICK_S = 64 * 1.242e-9
RCV_BUF_OVFL_CNT = 10
#: RCV_COUNTER_ARRAY32 indexes the driver reads (chip.c RcvTidFlowGenMismatch, ...SeqMismatch)
RCV_TID_FLOW_GEN_MISMATCH_CNT, RCV_TID_FLOW_SEQ_MISMATCH_CNT = 20, 23
#: the RHF fields a delivery fills, (shift, mask) from its declaration (formats.RHF)
_RHF = {name: (RHF.shift[name], RHF.mask[name]) for name in
        ("pkt_len", "rcv_type", "use_egr_buf", "egr_index", "dc_info", "rcv_seq", "egr_offset", "hdrq_offset")}
_PKT_LEN, _RCV_TYPE, _USE_EGR_BUF, _EGR_INDEX, _DC_INFO, _RCV_SEQ, _EGR_OFFSET, _HDRQ_OFFSET = _RHF.values()
#: KDETH word 0 and BTH.Pad, from the wire declarations (devmodel/wire/opa.py)
_KDETH0_BYTES = opa.KDETH0.size
_TID_SHIFT, _TID_MASK = opa.KDETH0.shift["tid"], opa.KDETH0.mask["tid"]
_OFFSET_SHIFT, _OFFSET_MASK = opa.KDETH0.shift["offset"], opa.KDETH0.mask["offset"]
_OM_SHIFT, _OM_MASK = opa.KDETH0.shift["om"], opa.KDETH0.mask["om"]
_PAD_SHIFT, _PAD_MASK = opa.BTH.shift["pad"], opa.BTH.mask["pad"]
#: SC[4], the RHF's DcInfo: the bits above the LRH's 4-bit SC field
_SC4_SHIFT = opa.LRH.width["sc"]
_SH_SHIFT = opa.KDETH0.shift["sh"]
_JKEY_SHIFT, _JKEY_MASK = opa.KDETH1.shift["jkey"], opa.KDETH1.mask["jkey"]
_PSN_SHIFT, _PSN_MASK = opa.BTH.shift["psn"], opa.BTH.mask["psn"]
#: a KDETH packet's flow: BTH.DestQP[15:11] (PSM2's HFI_BTH_FLOWID); its PSN is
#: generation [30:11] and sequence [10:0] (HFI1_KDETH_BTH_SEQ_SHIFT)
FLOW_SHIFT, FLOW_MASK = 11, 0x1F
SEQ_BITS, GEN_MASK = 11, 0xFFFFF
SEQ_MASK = (1 << SEQ_BITS) - 1
#: RCV_TID_FLOW_TABLE entry (PSM2's HFI_TF_*, tid_rdma.c)
TF_FLOW_VALID, TF_HDR_SUPP_EN, TF_KEEP_AFTER_SEQ_ERR, TF_KEEP_ON_GEN_ERR = 1 << 32, 1 << 33, 1 << 34, 1 << 35
TF_KEEP_PAYLOAD_ON_GEN_ERR, TF_SEQ_MISMATCH, TF_GEN_MISMATCH = 1 << 36, 1 << 37, 1 << 38
#: the entry's status bits: set by the chip, cleared by software writing 1
#: (kern_set_hw_flow, hfi_tidflow_set_entry and hfi_tidflow_reset write both
#: as 1 every time they program a flow)
TF_STATUS = TF_SEQ_MISMATCH | TF_GEN_MISMATCH
#: RHF.RcvTypeErr of an expected packet (common.h RHF_RTE_EXPECTED_FLOW_*)
RTE_FLOW_SEQ_ERR, RTE_FLOW_GEN_ERR = 0x2, 0x4
_RTE_SHIFT = RHF.shift["rcv_type_err"]


class ReceiveBlock(Protocol):
    """What a context needs of its receive block (`rcv.Receive`)."""

    services: ChipServices
    intr: InterruptController
    regs: RegisterFile
    log: logging.Logger
    #: bytes all contexts hold for full queues, against HOLD_BYTES_LIMIT
    held_bytes: int

    def count32(self, index: int, n: int = 1) -> None: ...

    def rcv_array_entry(self, index: int) -> int: ...


@dataclass
class Arrival:
    """A packet the RXE has checked and classified, on its way to a context."""

    packet: Packet
    rcv_type: RcvType
    hdr_len: int  # bytes that go to the header queue
    errors: int  # RHF error bits found on arrival (ICRC, length)
    dest_qp: int
    tid_ctrl: int
    vl15: bool = False
    #: KDETH.Intr: the sender asks for the context's RcvUrgent interrupt
    urgent: bool = False


class ReceiveContext:
    RHF_ICRC_ERR = 1 << RHF.shift["icrc_err"]
    RHF_LEN_ERR = 1 << RHF.shift["len_err"]
    RHF_TID_ERR = 1 << RHF.shift["tid_err"]
    RHF_KHDR_LEN_ERR = 1 << RHF.shift["khdr_len_err"]

    def __init__(self, block: ReceiveBlock, index: int):
        self.block = block
        self.services = block.services
        self.intr = block.intr
        self.regs = block.regs
        self.index = index
        #: add to a per-context CSR's offset for this context's copy: kernel
        #: page (`write_kctxt_csr`), user page (`write_uctxt_csr`)
        self.kernel_csr_offset = KCTXT_STRIDE * index
        self.user_csr_offset = UCTXT_STRIDE * index
        self.held: deque[Arrival] = deque()
        self._timer = None
        self._retry_posted = False
        self.reset()

    def reset(self) -> None:
        self.enabled = False
        self.tail = 0  # dwords
        self.seq = 1
        self.egr_index = 0
        self.egr_offset = 0  # 64-byte units
        self.since_head = 0
        if self.held:
            self.block.held_bytes -= sum(len(a.packet.data) for a in self.held)
        self.held.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._retry_posted = False
        self.delivered = 0
        #: packets lost, by why (each packet counted once)
        self.drops = {"disabled": 0, "hdrq_full": 0, "eager_full": 0, "held_overflow": 0, "dma_error": 0,
                      "too_large": 0, "job_key": 0, "flow_dropped": 0}
        self.tid_errors = 0  # payloads refused with TidErr (reported in the RHF when a header is kept)
        self.tail_write_errors = 0  # RCV_HDR_TAIL_ADDR writes host memory refused
        self.expected = 0  # KDETH packets placed through expected (TID) entries
        self.urgent = 0  # ... delivered with KDETH.Intr (RcvUrgent raised)
        self.suppressed = 0  # ... of which no header reached the header queue (TidFlow header suppression)
        self.flow_errors = {"seq": 0, "gen": 0}
        # geometry, latched at enable
        self.hdr_addr = 0
        self.entry_dw = 32
        self.queue_dw = 0
        self.egr_base = 0
        self.egr_count = 0
        self.egr_buf_bytes = 0

    def counters(self) -> dict:
        return {"delivered": self.delivered, "held": len(self.held), "expected": self.expected,
                "headers_suppressed": self.suppressed, "urgent": self.urgent,
                **{f"flow_{k}_errors": v for k, v in self.flow_errors.items() if v},
                **{k: v for k, v in (("tid_error", self.tid_errors), ("tail_write_errors", self.tail_write_errors))
                   if v},
                **{k: v for k, v in self.drops.items() if v}}

    def any_drops(self) -> bool:
        return any(self.drops.values()) or bool(self.tid_errors or self.tail_write_errors)

    # -- the driver's writes (transport thread: record, then return) ------------------
    def control(self, old: int, new: int) -> None:
        """RCV_CTXT_CTRL."""
        if new & ~old & RCV_CTXT_CTRL_ENABLE_SMASK:
            self._enable(new)
        elif old & ~new & RCV_CTXT_CTRL_ENABLE_SMASK:
            self.enabled = False
            self.discard_held("the context was disabled")
            self.block.log.debug("RCV_CTXT_CTRL[%d]: disabled", self.index)
        if new & ~old & RCV_CTXT_CTRL_INTR_AVAIL_SMASK and self.enabled and self._unread():
            # interrupts turned on over packets already waiting: do not lose the wake-up
            self.intr.raise_source(IS_RCVAVAIL_START + self.index)

    def _enable(self, ctrl: int) -> None:
        regs, k = self.regs, self.kernel_csr_offset
        self.enabled = True
        self.tail, self.seq, self.egr_index, self.egr_offset, self.since_head = 0, 1, 0, 0, 0
        self.hdr_addr = regs.get(RCV_HDR_ADDR + k)
        entry_size = field(regs.get(RCV_HDR_ENT_SIZE + k), RCV_HDR_ENT_SIZE_ENT_SIZE_SHIFT,
                           RCV_HDR_ENT_SIZE_ENT_SIZE_MASK)
        self.entry_dw = ENTRY_DWORDS.get(entry_size, 0)
        self.queue_dw = 32 * field(regs.get(RCV_HDR_CNT + k), RCV_HDR_CNT_CNT_SHIFT, RCV_HDR_CNT_CNT_MASK) \
            * self.entry_dw
        egr = regs.get(RCV_EGR_CTRL + k)
        self.egr_base = 8 * field(egr, RCV_EGR_CTRL_EGR_BASE_INDEX_SHIFT, RCV_EGR_CTRL_EGR_BASE_INDEX_MASK)
        self.egr_count = 8 * field(egr, RCV_EGR_CTRL_EGR_CNT_SHIFT, RCV_EGR_CTRL_EGR_CNT_MASK)
        code = (ctrl >> RCV_CTXT_CTRL_EGR_BUF_SIZE_SHIFT) & RCV_CTXT_CTRL_EGR_BUF_SIZE_MASK
        self.egr_buf_bytes = rcv_array_buffer_bytes(code)
        if self.entry_dw == 0 or self.queue_dw == 0:
            limited(self.block, self.block.log, "contexts with an invalid header queue").warning(
                "RCV_CTXT_CTRL[%d]: enabled with an invalid header queue "
                "(RCV_HDR_ENT_SIZE %#x, RCV_HDR_CNT %#x): its packets will be dropped",
                self.index, regs.get(RCV_HDR_ENT_SIZE + k), regs.get(RCV_HDR_CNT + k))
        if ctrl & RCV_CTXT_CTRL_TAIL_UPD_SMASK:
            self.services.post(self._write_tail)
        self.block.log.debug("RCV_CTXT_CTRL[%d]: enabled, hdrq %#x %d dwords (%d per entry), %d eager "
                             "buffers from RcvArray %d", self.index, self.hdr_addr, self.queue_dw,
                             self.entry_dw, self.egr_count, self.egr_base)

    def head_written(self, _old: int, _new: int) -> None:
        """RCV_HDR_HEAD: software consumed entries (and reset the count)."""
        self.since_head = 0
        self._post_retry()

    def egr_head_written(self, _old: int, _new: int) -> None:
        self._post_retry()

    def _post_retry(self) -> None:
        if self.held and not self._retry_posted:
            self._retry_posted = True
            self.services.post(self._retry_held)

    def _retry_held(self) -> None:
        self._retry_posted = False
        while self.held and self.enabled:
            if not self._place(self.held[0]):
                return
            self.block.held_bytes -= len(self.held.popleft().packet.data)

    def discard_held(self, why: str) -> None:
        if self.held:
            self.block.log.info("receive context %d: %d held packet(s) lost: %s", self.index, len(self.held), why)
            self.drops["held_overflow"] += len(self.held)
            self.block.held_bytes -= sum(len(a.packet.data) for a in self.held)
            self.held.clear()

    # -- state ------------------------------------------------------------------------
    def _head(self) -> int:
        """Software's head, in dwords, at the start of the entry it points
        into (a head written inside an entry still owns that entry)."""
        head = (self.regs.get(RCV_HDR_HEAD + self.user_csr_offset) & RCV_HDR_HEAD_HEAD_MASK) % max(self.queue_dw, 1)
        return head - head % max(self.entry_dw, 1)

    def _unread(self) -> bool:
        return self.tail != self._head()

    # -- a packet for this context (a chip event) ---------------------------------------------
    def deliver(self, arrival: Arrival) -> None:
        if not self.enabled:
            self.drops["disabled"] += 1
            return
        if arrival.rcv_type in (RcvType.EXPECTED, RcvType.EAGER) and not self._job_key_matches(arrival):
            self.drops["job_key"] += 1
            return
        if self.held:  # keep order behind packets already waiting
            self._hold(arrival)
            return
        if not self._place(arrival):
            self._hold(arrival)

    def _job_key_matches(self, arrival: Arrival) -> bool:
        """RCV_KEY_CTRL (hfi1_set_ctxt_jkey, for user contexts): with
        JobKeyEnable, a KDETH packet whose J_KEY (KDETH word 1, bits 15:0)
        is not the context's is dropped, so one job cannot write into
        another's queues [inferred: drop, not an RHF error]."""
        key_ctrl = self.regs.get(RCV_KEY_CTRL + self.kernel_csr_offset)
        if not key_ctrl & RCV_KEY_CTRL_JOB_KEY_ENABLE_SMASK:
            return True
        data, hdr_len = arrival.packet.data, arrival.hdr_len
        kdeth1 = hdr_len - opa.KDETH_HEADER_BYTES + opa.LRH_BYTES + opa.BTH_BYTES + _KDETH0_BYTES
        if len(data) < kdeth1 + opa.KDETH1.size:
            return False
        jkey = (int.from_bytes(data[kdeth1:kdeth1 + opa.KDETH1.size], "little") >> _JKEY_SHIFT) & _JKEY_MASK
        return jkey == field(key_ctrl, RCV_KEY_CTRL_JOB_KEY_VALUE_SHIFT, RCV_KEY_CTRL_JOB_KEY_VALUE_MASK)

    def _hold(self, arrival: Arrival) -> None:
        size = len(arrival.packet.data)
        if len(self.held) >= HOLD_LIMIT or self.block.held_bytes + size > HOLD_BYTES_LIMIT:
            self.drops["held_overflow"] += 1
            self.block.count32(RCV_BUF_OVFL_CNT)
            return
        self.held.append(arrival)
        self.block.held_bytes += size

    def _place(self, arrival: Arrival) -> bool:
        """Write one packet into host memory; False if the context is full and
        the packet should wait (DONT_DROP) -- it was dropped and counted
        otherwise. True when the packet is done with (delivered or lost).

        An expected packet meets its TidFlow entry here, each time it is
        tried: a packet that waited for room is judged by the entry as
        software left it meanwhile, never by the one of its arrival. The
        entry changes only once the packet is through (`FlowVerdict`)."""
        dma = self.services.dma
        if self.queue_dw == 0 or dma is None:
            self.drops["dma_error"] += 1
            return True
        regs, ctrl = self.regs, self.regs.get(RCV_CTXT_CTRL + self.kernel_csr_offset)
        expected = arrival.rcv_type is RcvType.EXPECTED
        flow = None
        if expected and not arrival.errors and ctrl & RCV_CTXT_CTRL_TID_FLOW_ENABLE_SMASK:
            flow = self._tid_flow(arrival)

        tid_err = None  # the RHF bits of a payload placement already tried
        try:
            if flow is not None and not flow.keep_header:
                # the flow keeps no header of this packet (and its payload only if it says so)
                if flow.keep_payload:
                    self._place_expected(arrival)
                return self._lost("flow_dropped", flow)
            if flow is not None and flow.suppress:
                # in sequence, KDETH.SH, the flow suppresses headers: the
                # payload lands and no header-queue entry is used -- unless
                # it does not land (TidErr), which is always reported
                tid_err = self._place_expected(arrival)
                if not tid_err:
                    flow.commit(placed=True)
                    self.suppressed += 1
                    self._urgent(arrival)
                    return True
        except DmaError:
            return self._lost("dma_error", flow)
        next_tail = (self.tail + self.entry_dw) % self.queue_dw
        if next_tail == self._head():
            if ctrl & RCV_CTXT_CTRL_DONT_DROP_RHQ_FULL_SMASK:
                return False
            offset = RCV_HDR_OVFL_CNT + self.kernel_csr_offset
            regs.set(offset, regs.get(offset) + 1)
            return self._lost("hdrq_full", flow)
        data = arrival.packet.data
        hdr_len = arrival.hdr_len
        rhf = arrival.errors
        egr_index = egr_offset = 0
        use_egr = False
        try:
            if expected:
                if arrival.errors:
                    pass  # a packet the chip knows is damaged: nothing of it is placed, its flow not judged
                elif tid_err is not None:
                    rhf |= tid_err
                elif flow is not None and flow.error:
                    rhf |= flow.error << _RTE_SHIFT
                    if flow.keep_payload:
                        rhf |= self._place_expected(arrival)
                else:
                    rhf |= self._place_expected(arrival)
            elif len(data) - hdr_len > (0 if arrival.rcv_type is RcvType.BYPASS else opa.ICRC_BYTES):
                placed = self._place_eager(data, hdr_len, ctrl)
                if placed is None:
                    if ctrl & RCV_CTXT_CTRL_DONT_DROP_EGR_FULL_SMASK:
                        return False
                    self.drops["eager_full"] += 1
                    self.block.count32(RCV_BUF_OVFL_CNT)
                    return True
                if placed is False:
                    return True  # lost (counted)
                egr_index, egr_offset = placed
                use_egr = True
            hdr_dw = hdr_len // 4
            room = self.entry_dw - 2
            if hdr_dw > room:
                rhf |= self.RHF_KHDR_LEN_ERR
                hdr_dw = room
            entry = self.hdr_addr + 4 * self.tail
            hdrq_offset = room - hdr_dw
            if hdr_dw:
                dma.write(entry + 4 * hdrq_offset, data[:4 * hdr_dw])
            rhf |= ((len(data) // 4 & _PKT_LEN[1]) << _PKT_LEN[0]
                    | (int(arrival.rcv_type) & _RCV_TYPE[1]) << _RCV_TYPE[0]
                    | int(use_egr) << _USE_EGR_BUF[0]
                    | (egr_index & _EGR_INDEX[1]) << _EGR_INDEX[0]
                    | (arrival.packet.sc >> _SC4_SHIFT & _DC_INFO[1]) << _DC_INFO[0]
                    | (self.seq & _RCV_SEQ[1]) << _RCV_SEQ[0]
                    | (egr_offset & _EGR_OFFSET[1]) << _EGR_OFFSET[0]
                    | (hdrq_offset & _HDRQ_OFFSET[1]) << _HDRQ_OFFSET[0])
            dma.write(entry + 4 * room, rhf.to_bytes(8, "little"))
        except DmaError as err:
            if self.drops["dma_error"] == 0:
                self.block.log.warning("receive context %d: packet lost, host memory refused the write: %s "
                                       "(RCV_HDR_ADDR %#x)", self.index, err, self.hdr_addr)
            return self._lost("dma_error", flow)
        if flow is not None:
            flow.commit(placed=not rhf & self.RHF_TID_ERR)
        self.tail = next_tail
        self.seq = self.seq % RHF_MAX_SEQ + 1
        self.delivered += 1
        if ctrl & RCV_CTXT_CTRL_TAIL_UPD_SMASK:
            self._write_tail()
        self._interrupt(ctrl)
        self._urgent(arrival)
        return True

    def _lost(self, why: str, flow: FlowVerdict | None) -> bool:
        """`_place`: the packet is done with, and gone: a mismatch still counts, SeqNum stays."""
        self.drops[why] += 1
        if flow is not None:
            flow.commit(placed=False)
        return True

    def _place_eager(self, data: bytes, hdr_len: int, ctrl: int):
        """Eager bytes into the buffers: (index, offset) used, None if full,
        False if the packet was lost (counted)."""
        nbytes = len(data) - hdr_len
        if self.egr_count == 0:
            self.drops["dma_error"] += 1
            return False
        index, offset = self.egr_index, self.egr_offset
        size = self._eager_size(index)
        one_per_buffer = ctrl & RCV_CTXT_CTRL_ONE_PACKET_PER_EGR_BUFFER_SMASK
        if offset and (one_per_buffer or 64 * offset + nbytes > size):
            nxt = (index + 1) % self.egr_count
            egr_head = self.regs.get(RCV_EGR_INDEX_HEAD + self.user_csr_offset) & RCV_EGR_INDEX_HEAD_HEAD_MASK
            egr_head %= self.egr_count
            if nxt == egr_head:
                return None
            index, offset = nxt, 0
            size = self._eager_size(index)
        entry = self.block.rcv_array_entry(self.egr_base + index)
        if size == 0 or nbytes > size:
            self.drops["too_large" if size else "dma_error"] += 1
            if self.drops["too_large"] + self.drops["dma_error"] == 1:
                self.block.log.warning("receive context %d: %d eager bytes do not fit RcvArray entry %d "
                                       "(%#x): packet dropped", self.index, nbytes, self.egr_base + index, entry)
            return False
        address = (RCV_ARRAY_ENTRY.get(entry, "address_4k") << 12) + 64 * offset
        self.services.dma.write(address, memoryview(data)[hdr_len:])  # no copy of the payload
        self.egr_index, self.egr_offset = index, offset + (nbytes + 63) // 64
        return index, offset

    def _eager_size(self, index: int) -> int:
        """Bytes eager buffer `index` holds: its RcvArray entry's size (0 for
        an invalid entry: never written), no more than EGR_BUF_SIZE says."""
        entry = self.block.rcv_array_entry(self.egr_base + index)
        size = rcv_array_buffer_bytes(RCV_ARRAY_ENTRY.get(entry, "size_code"))
        return min(size, self.egr_buf_bytes) if size and self.egr_buf_bytes else size

    def _place_expected(self, arrival: Arrival) -> int:
        """A KDETH packet with a TID: payload into the expected buffer the
        RcvArray names. Returns RHF error bits: TidErr, with nothing
        written, when an entry is outside the context's expected range or
        invalid, or the payload does not fit.

        KDETH.TID names a pair of RcvArray entries (2 * TID, 2 * TID + 1,
        counted from RCV_TID_CTRL's base); TIDCtrl picks the first (1), the
        second (2) or both as one buffer, the first's pages followed by the
        second's (3: PSM2 merges the two halves of a pair so that one
        packet may cross from one to the other). KDETH.Offset counts 4-byte
        units, or 64-byte units with KDETH.OM."""
        data, hdr_len = arrival.packet.data, arrival.hdr_len
        bth = hdr_len - opa.KDETH_HEADER_BYTES + opa.LRH_BYTES
        kdeth = bth + opa.BTH_BYTES
        kdeth0 = int.from_bytes(data[kdeth:kdeth + _KDETH0_BYTES], "little")
        pad = (int.from_bytes(data[bth:kdeth], "big") >> _PAD_SHIFT) & _PAD_MASK
        tid = (kdeth0 >> _TID_SHIFT) & _TID_MASK
        offset = (kdeth0 >> _OFFSET_SHIFT) & _OFFSET_MASK
        om = (kdeth0 >> _OM_SHIFT) & _OM_MASK
        tid_ctrl = self.regs.get(RCV_TID_CTRL + self.kernel_csr_offset)
        base = 8 * field(tid_ctrl, RCV_TID_CTRL_TID_BASE_INDEX_SHIFT, RCV_TID_CTRL_TID_BASE_INDEX_MASK)
        count = 8 * field(tid_ctrl, RCV_TID_CTRL_TID_PAIR_CNT_SHIFT, RCV_TID_CTRL_TID_PAIR_CNT_MASK)
        indexes = [2 * tid + half for half in (0, 1) if arrival.tid_ctrl >> half & 1]
        payload = data[hdr_len:len(data) - opa.ICRC_BYTES - pad]
        buffers = []  # (guest address, bytes) of each entry, in placement order
        for index in indexes:
            entry = self.block.rcv_array_entry(base + index) if index < count else 0
            size = rcv_array_buffer_bytes(RCV_ARRAY_ENTRY.get(entry, "size_code"))
            buffers.append(((RCV_ARRAY_ENTRY.get(entry, "address_4k") << 12), size))
        start = offset * (64 if om else 4)
        if any(size == 0 for _, size in buffers) or start + len(payload) > sum(size for _, size in buffers):
            self.tid_errors += 1
            if self.tid_errors == 1:
                self.block.log.info("receive context %d: TidErr (first of this context, counted in stats): "
                                    "TID %d TIDCtrl %d offset %d bytes, %d payload bytes; RcvArray entries %s "
                                    "of %d from %d", self.index, tid, arrival.tid_ctrl, start, len(payload),
                                    [(base + i, hex(self.block.rcv_array_entry(base + i))) for i in indexes],
                                    count, base)
            return self.RHF_TID_ERR
        written = 0
        for address, size in buffers:
            if start >= size:
                start -= size
                continue
            piece = payload[written:written + size - start]
            if piece:
                self.services.dma.write(address + start, piece)
            written += len(piece)
            start = 0
        self.expected += 1
        return 0

    def _tid_flow(self, arrival: Arrival) -> "FlowVerdict":
        """Judge an expected packet by its TidFlow entry (the context's user
        page, RCV_TID_FLOW_TABLE[BTH.DestQP[15:11]]) as it is now, without
        changing it yet (`FlowVerdict.commit`).

        A valid flow expects generation GenVal and sequence SeqNum. Its state
        machine, per packet of generation GenVal:

            IN_SEQUENCE (SeqMismatch 0)
              seq == SeqNum: payload placed, SeqNum + 1 once it has landed
                (not past a TidErr or a refused DMA); with HdrSuppEnabled
                and KDETH.SH no header is written
              seq != SeqNum: SeqMismatch set -> SEQ_ERROR; the packet is
                reported with RcvTypeErr FlowSeqErr, SeqNum stays (it names
                the first packet not received)
            SEQ_ERROR (SeqMismatch 1, until software writes 1 to it)
              every packet is reported with FlowSeqErr, its header always
                written (never suppressed);
              seq == SeqNum: SeqNum + 1 once the payload has landed, so
                that SeqNum keeps naming the first packet missing;
              seq != SeqNum: SeqNum stays.
            With KeepAfterSeqErr a packet reported with FlowSeqErr is kept
            whole (header and payload); without it, it is dropped whole
            (`flow_dropped`).

        [inferred, the chip specification is not public: the kernel's TID
        RDMA, hfi1_handle_kdeth_eflags and handle_read_kdeth_eflags, goes to
        "SW PSN" mode on a flow's first FlowSeqErr -- reads SeqNum back
        (read_r_next_psn) as the PSN to ask for again, then checks each
        later packet's PSN itself, accepts the one equal to its own next
        PSN (whose payload must then be in place) and treats the segment's
        last one as complete -- which works only if every later packet of
        the flow, the retransmitted ones with KDETH.SH included, comes with
        a header and FlowSeqErr until the flow is reprogrammed ("the flow
        is *not* reprogrammed ... to prevent continuous Flow Sequence
        errors"); PSM2's ips_protoexp_do_tf_seqerr reads SeqNum back as its
        restart point (so SeqNum must not move past a hole), and its
        hfi_tidflow_check_update_pkt_seq accepts a "false SeqErr" packet
        whose payload KeepAfterSeqErr kept and rewrites the entry
        (hfi_tidflow_set_entry, status bits written as 1) once in sequence
        again; the name KeepAfterSeqErr itself says packets *after* a
        sequence error are what it keeps.]

        A packet of another generation: GenMismatch set, RcvTidFlowGenMismatch,
        RcvTypeErr FlowGenErr; the payload is placed only with
        KeepPayloadOnGenErr, a header written only with KeepOnGenErr; GenVal,
        SeqNum and FlowValid stay. GenMismatch is sticky status only: later
        packets of the flow's own generation are judged as above, not
        reported with FlowGenErr. [inferred: the kernel "rides through
        generation mismatch" and drops only the stale packet
        (handle_read_kdeth_eflags), PSM2 drops a FlowGenErr packet as one
        "our NAK crossed on the wire" and goes on receiving the new
        generation after ips_protoexp_flow_newgen; a sticky FlowGenErr on
        the new generation's packets (whose payload neither keeps) would
        stall both until a timeout. PSM2's hfi_tidflow_reset marks a free
        flow with a generation no packet carries and KeepOnGenErr 0 so that
        "the header is not generated" for any stale packet.]

        An invalid flow (FlowValid 0) checks nothing."""
        data, hdr_len = arrival.packet.data, arrival.hdr_len
        bth = hdr_len - opa.KDETH_HEADER_BYTES + opa.LRH_BYTES
        kdeth0 = int.from_bytes(data[bth + opa.BTH_BYTES:bth + opa.BTH_BYTES + _KDETH0_BYTES], "little")
        psn = (int.from_bytes(data[bth:bth + opa.BTH_BYTES], "big") >> _PSN_SHIFT) & _PSN_MASK
        flow = (arrival.dest_qp >> FLOW_SHIFT) & FLOW_MASK
        offset = RCV_TID_FLOW_TABLE + self.user_csr_offset + 8 * flow
        entry = self.regs.get(offset)
        verdict = FlowVerdict(self, offset, entry)
        if not entry & TF_FLOW_VALID:
            return verdict
        seq, gen = psn & SEQ_MASK, (psn >> SEQ_BITS) & GEN_MASK
        verdict.in_sequence = seq == entry & SEQ_MASK
        if gen != (entry >> SEQ_BITS) & GEN_MASK:
            verdict.in_sequence = False
            verdict.error, verdict.kind, verdict.status = RTE_FLOW_GEN_ERR, "gen", TF_GEN_MISMATCH
            verdict.keep_header = bool(entry & TF_KEEP_ON_GEN_ERR)
            verdict.keep_payload = bool(entry & TF_KEEP_PAYLOAD_ON_GEN_ERR)
        elif not verdict.in_sequence or entry & TF_SEQ_MISMATCH:
            verdict.error, verdict.kind, verdict.status = RTE_FLOW_SEQ_ERR, "seq", TF_SEQ_MISMATCH
            verdict.keep_header = verdict.keep_payload = bool(entry & TF_KEEP_AFTER_SEQ_ERR)
        else:
            verdict.suppress = bool(entry & TF_HDR_SUPP_EN and kdeth0 >> _SH_SHIFT & 1)
        return verdict

    def _write_tail(self) -> None:
        address = self.regs.get(RCV_HDR_TAIL_ADDR + self.kernel_csr_offset)
        try:
            self.services.dma.write(address, self.tail.to_bytes(8, "little"))
        except (DmaError, AttributeError) as err:
            self.tail_write_errors += 1
            limited(self.block, self.block.log, "receive tail writes failed").warning(
                "receive context %d: tail write to RCV_HDR_TAIL_ADDR %#x failed: %s",
                self.index, address, err)

    # -- RcvAvail ---------------------------------------------------------------------
    def _interrupt(self, ctrl: int) -> None:
        if not ctrl & RCV_CTXT_CTRL_INTR_AVAIL_SMASK:
            return
        self.since_head += 1
        wanted = field(self.regs.get(RCV_HDR_HEAD + self.user_csr_offset), RCV_HDR_HEAD_COUNTER_SHIFT,
                       RCV_HDR_HEAD_COUNTER_MASK)
        reload = field(self.regs.get(RCV_AVAIL_TIME_OUT + self.kernel_csr_offset),
                       RCV_AVAIL_TIME_OUT_TIME_OUT_RELOAD_SHIFT, RCV_AVAIL_TIME_OUT_TIME_OUT_RELOAD_MASK)
        if self.since_head >= max(wanted, 1) or reload == 0:
            self.intr.raise_source(IS_RCVAVAIL_START + self.index)
        elif self._timer is None:
            self._timer = self.services.after(reload * TIMEOUT_TICK_S, self._timeout)

    def _urgent(self, arrival: Arrival) -> None:
        """RcvUrgent (source 416 + c) for a KDETH packet with KDETH.Intr, once
        it has landed -- with or without a header-queue entry. The driver
        enables the source for a user context that polls for urgent packets
        (HFI1_RCVCTRL_URGENT_ENB, POLL_URGENT); masked, it only latches in
        CCE_INT_STATUS (kernel contexts: TID RDMA sets Intr on its data
        packets exactly when the receiver's source is masked, is_urg_masked)."""
        if arrival.urgent:
            self.urgent += 1
            self.intr.raise_source(IS_RCVURGENT_START + self.index)

    def _timeout(self) -> None:
        self._timer = None
        ctrl = self.regs.get(RCV_CTXT_CTRL + self.kernel_csr_offset)
        if self.enabled and ctrl & RCV_CTXT_CTRL_INTR_AVAIL_SMASK and self._unread():
            self.intr.raise_source(IS_RCVAVAIL_START + self.index)


class FlowVerdict:
    """What a TidFlow entry says of one expected packet (`_tid_flow`), for
    the one attempt to deliver it that asked; `commit()` writes the entry's
    new state once that attempt is through."""

    def __init__(self, context: ReceiveContext, offset: int, entry: int):
        self.context, self.offset, self.entry = context, offset, entry
        self.error = 0  # RHF.RcvTypeErr
        self.kind = ""  # "seq" or "gen": the packet is reported with a flow error
        self.status = 0  # the mismatch status bit the packet sets
        self.in_sequence = False  # of the flow's generation, and seq == SeqNum
        self.suppress = False
        self.keep_header = True
        self.keep_payload = True

    def commit(self, placed: bool) -> None:
        """`placed`: the payload landed. A packet in sequence moves SeqNum
        on only then (with or without a sequence error reported); a
        reported error sets its status bit and counts either way."""
        entry = self.entry | self.status
        if self.kind:
            self.context.flow_errors[self.kind] += 1
            self.context.block.count32(RCV_TID_FLOW_GEN_MISMATCH_CNT if self.kind == "gen"
                                       else RCV_TID_FLOW_SEQ_MISMATCH_CNT)
        if self.in_sequence and placed:
            entry = (entry & ~SEQ_MASK) | ((entry & SEQ_MASK) + 1) & SEQ_MASK
        if entry != self.entry:
            self.context.regs.set(self.offset, entry)
