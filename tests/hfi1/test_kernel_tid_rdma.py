"""Kernel TID RDMA (hfi1 with cap_mask TID_RDMA; tid_rdma.c) on two models
cabled back to back: what the driver sets up on a *kernel* receive context,
and what the chip does with the KDETH packets the peer's driver sends it
through SDMA -- the same expected-receive hardware PSM2 uses from user
contexts (test_expected_receive.py), driven the kernel's way:

- hfi1_rcvctrl(TIDFLOW_ENB) on every kernel context, RCV_TID_CTRL with the
  context's expected range; hfi1_kern_exp_rcv_init: hfi1_set_ctxt_jkey with
  TID_RDMA_JKEY (32); hfi1_kern_init_ctxt_generations: all 32 flows valid
  with the reserved generation, KeepAfterSeqErr, KeepOnGenErr, no header
  suppression (kern_set_hw_flow);
- per segment: kern_program_rcvarray (PT_EXPECTED entries) and
  kern_setup_hw_flow (the flow's generation, HdrSuppEn); the data arrive as
  KDETH packets to DestQP 0x80 << 16 | flow << 11 | context, PSN generation
  << 11 | sequence, KDETH.SH on all but the last, J_Key 32;
- hfi1_kern_clear_hw_flow puts the reserved generation back; stale packets
  then report FlowGenErr; read_r_next_psn reads the flow's next PSN.

The guest-level acceptance is guest-tests/test_tid_rdma.py.
"""
from __future__ import annotations

import pytest

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import RcvType
from devmodel.hfi1.intr import IS_RCVURGENT_START
from devmodel.hfi1.rcv_context import (
    RCV_TID_FLOW_GEN_MISMATCH_CNT,
    TF_FLOW_VALID,
    TF_GEN_MISMATCH,
    TF_HDR_SUPP_EN,
    TF_KEEP_AFTER_SEQ_ERR,
    TF_KEEP_ON_GEN_ERR,
    TF_SEQ_MISMATCH,
)
from devmodel.wire import opa
from testkit.hfi1.datapath import pair, pbc_for, settle
from testkit.host import GUEST_BASE

KCTXT = 1  # a kernel receive context of the small config (0 is the control context)
TID_RDMA_JKEY = 32
KDETH_QP = opa.KDETH_QP_PREFIX
FLOW_SHIFT = 11  # TID_RDMA_DESTQP_FLOW_SHIFT
KERN_GENERATION_RESERVED = 0xFFFFF  # mask_generation(U32_MAX)
#: tid_rdma.h / ib_hdrs.h opcodes
WRITE_RESP, WRITE_DATA, WRITE_DATA_LAST, READ_REQ, READ_RESP = 0xE1, 0xE2, 0xE3, 0xE4, 0xE5
EXPECTED_BASE = 64 * KCTXT + 16  # after the context's 8 eager entries (testkit.hfi1.datapath: 64 * ctxt)
EXPECTED_ENTRIES = 32
SEGMENT = GUEST_BASE + 0x1800000  # the pages a segment lands in (a verbs MR's pages)
ENGINE = 2  # the SDMA engine the sending QP uses
MTU = 4096
#: RHF.RcvTypeErr of expected packets (common.h RHF_RTE_EXPECTED_FLOW_*)
RTE_FLOW_GEN_ERR, RTE_FLOW_SEQ_ERR = 0x4, 0x2


def kern_set_hw_flow(node, flow: int, generation: int) -> None:
    """tid_rdma.c kern_set_hw_flow: the whole entry in one write."""
    reg = (generation << 11 | TF_FLOW_VALID | TF_KEEP_AFTER_SEQ_ERR | TF_KEEP_ON_GEN_ERR
           | TF_SEQ_MISMATCH | TF_GEN_MISMATCH)
    if generation != KERN_GENERATION_RESERVED:
        reg |= TF_HDR_SUPP_EN
    node.driver.write_uctxt_csr(KCTXT, cr.RCV_TID_FLOW_TABLE + 8 * flow, reg)


def read_r_next_psn(node, flow: int) -> int:
    return node.driver.read_uctxt_csr(KCTXT, cr.RCV_TID_FLOW_TABLE + 8 * flow) & 0x7FFFFFFF


@pytest.fixture
def fabric():
    """B's kernel context as hfi1 sets it up with TID RDMA on."""
    with pair() as (scheduler, a, b):
        d = b.driver
        ctrl = d.read_kctxt_csr(KCTXT, cr.RCV_CTXT_CTRL)
        d.write_kctxt_csr(KCTXT, cr.RCV_TID_CTRL, (EXPECTED_ENTRIES >> 3) << cr.RCV_TID_CTRL_TID_PAIR_CNT_SHIFT
                          | EXPECTED_BASE >> 3)
        d.write_kctxt_csr(KCTXT, cr.RCV_CTXT_CTRL, ctrl | cr.RCV_CTXT_CTRL_TID_FLOW_ENABLE_SMASK)
        d.write_kctxt_csr(KCTXT, cr.RCV_KEY_CTRL, cr.RCV_KEY_CTRL_JOB_KEY_ENABLE_SMASK | TID_RDMA_JKEY)
        for flow in range(32):
            kern_set_hw_flow(b, flow, KERN_GENERATION_RESERVED)
        yield scheduler, a, b


def tid_packet(node, opcode: int, flow: int, psn: int, payload: bytes = b"", tid: int = 0, tid_ctrl: int = 0,
               offset: int = 0, om: int = 1, sh: int = 0, intr: int = 0, jkey: int = TID_RDMA_JKEY,
               rest: bytes = bytes(range(28))) -> bytes:
    """A TID RDMA packet as hfi1_build_tid_rdma_* builds it (without the
    ICRC): LRH, BTH to the peer's KDETH QP, KDETH (KVer 1, the TID fields,
    SH, Intr, J_Key), the opcode's own 7 dwords (`rest`: verbs QP, PSNs,
    AETH), payload."""
    kdeth = opa.KDETH0.build(kver=1, sh=sh, intr=intr, tid_ctrl=tid_ctrl, tid=tid, om=om, offset=offset) \
        + opa.KDETH1.build(hcrc=0, jkey=jkey)
    dest_qp = KDETH_QP << 16 | flow << FLOW_SHIFT | KCTXT
    body = opa.BTH.build(opcode=opcode, pkey=0xFFFF, dest_qp=dest_qp, psn=psn) + kdeth + rest + payload
    return opa.LRH.build(sc=0, lnh=opa.LNH_BTH, dlid=node.lid, slid=3 - node.lid,
                         pkt_len=(opa.LRH_BYTES + len(body)) // 4 + 1) + body


def send(a, b, packet: bytes) -> None:
    """A's driver sends one packet through its SDMA engine (verbs' path)."""
    a.driver.sdma_send(ENGINE, pbc_for(packet), packet)
    settle(a, b)


def pattern(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))


def counters(node) -> dict:
    return node.stats()["rcv"]["contexts"].get(KCTXT, {})


def program_segment(b, pages: int) -> None:
    """kern_program_rcvarray for one segment in 4-page (16 KiB) entries:
    entry i covers SEGMENT + i * 16 KiB, pair i // 2, half i % 2."""
    for i in range(pages // 4):
        b.driver.hfi1_put_tid(EXPECTED_BASE + i, SEGMENT + i * 0x4000, 0x4000)


def write_segment(a, b, flow: int, generation: int, packets: int, skip: tuple[int, ...] = ()) -> list[bytes]:
    """The peer's hfi1_build_tid_rdma_write_data for one segment: MTU-sized
    packets into the 16-KiB entries in order, each naming its entry (pair,
    half) and its 64-byte offset there; SH on all but the last."""
    payloads = [pattern(MTU, seq) for seq in range(packets)]
    for seq, payload in enumerate(payloads):
        if seq in skip:
            continue
        entry, within = divmod(seq * MTU, 0x4000)
        last = seq == packets - 1
        send(a, b, tid_packet(b, WRITE_DATA_LAST if last else WRITE_DATA, flow, generation << 11 | seq, payload,
                              tid=entry // 2, tid_ctrl=1 << entry % 2, offset=within // 64, sh=int(not last)))
    return payloads


def test_a_write_segment_lands_in_the_expected_pages_and_only_its_last_header_is_queued(fabric):
    _, a, b = fabric
    program_segment(b, 16)
    kern_set_hw_flow(b, 3, 0x12345)
    payloads = write_segment(a, b, flow=3, generation=0x12345, packets=16)
    assert b.memory.read(SEGMENT, 16 * MTU) == b"".join(payloads)
    rhf, header = b.driver.hdrq_entry(KCTXT, 0)
    assert rhf["rcv_type"] == RcvType.EXPECTED and not (rhf["tid_err"] or rhf["rcv_type_err"] or rhf["use_egr_buf"])
    assert len(header) == opa.KDETH_HEADER_BYTES and header[opa.LRH_BYTES] == WRITE_DATA_LAST
    assert header[-28:] == bytes(range(28)), "the opcode's own dwords reach the driver untouched"
    assert b.driver.hdrq_entry(KCTXT, 1)[0]["rcv_seq"] == 0, "one entry for the whole segment"
    assert read_r_next_psn(b, 3) == 0x12345 << 11 | 16, "the flow moved past the segment"
    stats = counters(b)
    assert (stats["expected"], stats["headers_suppressed"], stats["delivered"]) == (16, 15, 1)
    assert b.stats()["internal_errors"] == []


def test_eager_tid_rdma_packets_reach_the_kernel_context_as_eager_kdeth(fabric):
    """READ REQ (no payload) and WRITE RESP (its TID list as payload): TIDCtrl
    0, so RHF type EAGER -- the driver's kdeth_process_eager, which hands
    them to the TID RDMA handler by opcode."""
    _, a, b = fabric
    send(a, b, tid_packet(b, READ_REQ, flow=0, psn=5))
    tid_list = pattern(16, 9)
    send(a, b, tid_packet(b, WRITE_RESP, flow=0, psn=6, payload=tid_list))
    (req, req_header), (resp, resp_header) = (b.driver.hdrq_entry(KCTXT, i) for i in range(2))
    assert req["rcv_type"] == resp["rcv_type"] == RcvType.EAGER
    assert req_header[opa.LRH_BYTES] == READ_REQ and not req["use_egr_buf"]
    assert resp_header[opa.LRH_BYTES] == WRITE_RESP and resp["use_egr_buf"]
    assert b.driver.eager_bytes(KCTXT, resp, 16) == tid_list
    assert counters(b)["expected"] == 0


def test_a_cleared_flow_reports_stale_packets_as_generation_errors_and_stays_valid(fabric):
    """After hfi1_kern_clear_hw_flow the flow holds the reserved generation
    (KeepOnGenErr): a late packet of the old segment gets its header queued
    with FlowGenErr for hfi1_handle_kdeth_eflags, its payload is not
    placed, and the flow stays valid for the next segment."""
    _, a, b = fabric
    program_segment(b, 4)
    kern_set_hw_flow(b, 7, 0x777)
    write_segment(a, b, flow=7, generation=0x777, packets=4)
    kern_set_hw_flow(b, 7, KERN_GENERATION_RESERVED)  # hfi1_kern_clear_hw_flow
    b.memory.write(SEGMENT, bytes(MTU))
    send(a, b, tid_packet(b, WRITE_DATA, 7, 0x777 << 11 | 1, pattern(MTU, 50), tid=0, tid_ctrl=1, sh=1))
    rhf, _ = b.driver.hdrq_entry(KCTXT, 1)
    assert rhf["rcv_type"] == RcvType.EXPECTED and rhf["rcv_type_err"] == RTE_FLOW_GEN_ERR
    assert b.memory.read(SEGMENT, MTU) == bytes(MTU)
    entry = b.driver.read_uctxt_csr(KCTXT, cr.RCV_TID_FLOW_TABLE + 8 * 7)
    assert entry & TF_FLOW_VALID and entry & TF_GEN_MISMATCH
    assert b.driver.read_csr(cr.RCV_COUNTER_ARRAY32 + 8 * RCV_TID_FLOW_GEN_MISMATCH_CNT) == 1
    # the next segment on the flow, with its new generation, lands as before
    kern_set_hw_flow(b, 7, 0x778)
    payloads = write_segment(a, b, flow=7, generation=0x778, packets=4)
    assert b.memory.read(SEGMENT, 4 * MTU) == b"".join(payloads)
    assert b.driver.hdrq_entry(KCTXT, 2)[0]["rcv_type_err"] == 0


def test_a_lost_packet_shows_as_a_sequence_error_and_the_flow_tells_where_to_resume(fabric):
    """The packet after a lost one arrives out of sequence: its header is
    queued with FlowSeqErr (no suppression), and read_r_next_psn -- "the
    only sane way to get the amount of progress" -- gives the lost
    packet's PSN, from which the driver asks the sender to resume."""
    _, a, b = fabric
    program_segment(b, 8)
    kern_set_hw_flow(b, 2, 0x4242)
    write_segment(a, b, flow=2, generation=0x4242, packets=8, skip=(3,))
    rhf, header = b.driver.hdrq_entry(KCTXT, 0)
    assert rhf["rcv_type"] == RcvType.EXPECTED and rhf["rcv_type_err"] == RTE_FLOW_SEQ_ERR
    assert int.from_bytes(header[opa.LRH_BYTES + 8:opa.LRH_BYTES + 12], "big") & 0x7FFFFFFF == 0x4242 << 11 | 4
    assert read_r_next_psn(b, 2) == 0x4242 << 11 | 3
    assert b.memory.read(SEGMENT, 3 * MTU) == b"".join(pattern(MTU, s) for s in range(3)), "the packets before it"
    assert counters(b)["flow_seq_errors"] >= 1


def test_a_write_segment_with_a_lost_packet_resumes_under_the_drivers_sw_psn_recovery(fabric):
    """The responder's recovery of a TID RDMA WRITE segment
    (hfi1_handle_kdeth_eflags): on the flow's first FlowSeqErr the driver
    goes to "SW PSN" mode, reads the flow's next PSN (read_r_next_psn) and
    NAKs it; the flow is *not* reprogrammed. The requester resends from
    that PSN in the same generation, KDETH.SH as before: each packet must
    still come with a header and FlowSeqErr -- the driver checks its PSN
    against its own next PSN and completes the segment on the last one --
    and its payload in place. Once the segment is done the driver clears
    the flow (hfi1_kern_clear_hw_flow: the reserved generation, status bits
    written as 1) and the next segment is a clean one again."""
    _, a, b = fabric
    program_segment(b, 8)
    kern_set_hw_flow(b, 2, 0x4242)
    write_segment(a, b, flow=2, generation=0x4242, packets=8, skip=(3,))
    first = [b.driver.hdrq_entry(KCTXT, i)[0] for i in range(4)]
    assert [r["rcv_type_err"] for r in first] == [RTE_FLOW_SEQ_ERR] * 4, "packets 4..7 after the hole"
    r_next_psn = read_r_next_psn(b, 2)
    assert r_next_psn == 0x4242 << 11 | 3, "the NAK's PSN: the lost packet"
    # the requester resends from the NAK'd PSN (hfi1_tid_rdma_restart_req): packets 3..7
    b.memory.write(SEGMENT + 4 * MTU, bytes(4 * MTU))  # so that the second copies must land
    for seq in range(3, 8):
        last = seq == 7
        entry, within = divmod(seq * MTU, 0x4000)
        send(a, b, tid_packet(b, WRITE_DATA_LAST if last else WRITE_DATA, 2, 0x4242 << 11 | seq,
                              pattern(MTU, seq), tid=entry // 2, tid_ctrl=1 << entry % 2, offset=within // 64,
                              sh=int(not last)))
    sw_next_psn = r_next_psn
    for i, seq in enumerate(range(3, 8)):
        rhf, header = b.driver.hdrq_entry(KCTXT, 4 + i)
        assert rhf["rcv_seq"] and rhf["rcv_type_err"] == RTE_FLOW_SEQ_ERR, f"packet {seq}: a header, FlowSeqErr"
        psn = int.from_bytes(header[opa.LRH_BYTES + 8:opa.LRH_BYTES + 12], "big") & 0x7FFFFFFF
        assert psn == sw_next_psn, "the driver's SW PSN check accepts it"
        sw_next_psn += 1
    assert b.memory.read(SEGMENT, 8 * MTU) == b"".join(pattern(MTU, s) for s in range(8))
    assert read_r_next_psn(b, 2) == 0x4242 << 11 | 8, "the flow's next PSN moved over the resent packets"
    # the segment is complete: hfi1_kern_clear_hw_flow, then the next segment's flow
    kern_set_hw_flow(b, 2, KERN_GENERATION_RESERVED)
    assert not b.driver.read_uctxt_csr(KCTXT, cr.RCV_TID_FLOW_TABLE + 8 * 2) & (TF_SEQ_MISMATCH | TF_GEN_MISMATCH)
    kern_set_hw_flow(b, 2, 0x4243)
    payloads = write_segment(a, b, flow=2, generation=0x4243, packets=8)
    assert b.memory.read(SEGMENT, 8 * MTU) == b"".join(payloads)
    rhf, _ = b.driver.hdrq_entry(KCTXT, 9)
    assert rhf["rcv_type_err"] == 0 and b.driver.hdrq_entry(KCTXT, 10)[0]["rcv_seq"] == 0, "one clean header"
    assert counters(b)["headers_suppressed"] == 3 + 7
    assert b.stats()["internal_errors"] == []


def test_a_resync_reprograms_the_flow_and_the_new_generation_lands_clean(fabric):
    """The requester's RESYNC (after its retry timer): the responder
    reprograms the flow with the next generation (hfi1_rc_rcv_tid_rdma_resync
    -> kern_setup_hw_flow, status bits written as 1) and leaves SW PSN mode;
    the segment's packets resent in the new generation land with their
    headers suppressed, and the stale ones of the old generation still on
    the wire report FlowGenErr without touching the pages."""
    _, a, b = fabric
    program_segment(b, 4)
    kern_set_hw_flow(b, 6, 0x600)
    write_segment(a, b, flow=6, generation=0x600, packets=4, skip=(1,))
    assert b.driver.hdrq_entry(KCTXT, 0)[0]["rcv_type_err"] == RTE_FLOW_SEQ_ERR
    kern_set_hw_flow(b, 6, 0x601)  # the RESYNC's generation
    assert read_r_next_psn(b, 6) == 0x601 << 11
    assert not b.driver.read_uctxt_csr(KCTXT, cr.RCV_TID_FLOW_TABLE + 8 * 6) & TF_SEQ_MISMATCH
    b.memory.write(SEGMENT, bytes(4 * MTU))
    send(a, b, tid_packet(b, WRITE_DATA, 6, 0x600 << 11 | 2, pattern(MTU, 99), tid=0, tid_ctrl=1,
                          offset=2 * MTU // 64, sh=1))
    assert b.driver.hdrq_entry(KCTXT, 2)[0]["rcv_type_err"] == RTE_FLOW_GEN_ERR, "after packets 2 and 3"
    payloads = write_segment(a, b, flow=6, generation=0x601, packets=4)
    assert b.memory.read(SEGMENT, 4 * MTU) == b"".join(payloads)
    rhf, _ = b.driver.hdrq_entry(KCTXT, 3)
    assert rhf["rcv_type_err"] == 0 and b.driver.hdrq_entry(KCTXT, 4)[0]["rcv_seq"] == 0


def test_a_kdeth_packet_without_the_kernel_contexts_job_key_is_dropped(fabric):
    """hfi1_set_ctxt_jkey(rcd, TID_RDMA_JKEY) on the kernel context: a
    KDETH packet carrying another J_Key (a user job's) never reaches it."""
    _, a, b = fabric
    program_segment(b, 4)
    kern_set_hw_flow(b, 1, 0x100)
    send(a, b, tid_packet(b, WRITE_DATA_LAST, 1, 0x100 << 11, pattern(MTU, 3), tid=0, tid_ctrl=1, jkey=0x1234))
    assert counters(b)["job_key"] == 1 and counters(b)["delivered"] == 0
    assert b.memory.read(SEGMENT, MTU) == bytes(MTU)


def test_kdeth_intr_raises_the_contexts_urgent_interrupt_once_the_packet_has_landed(fabric):
    """KDETH.Intr (tid_rdma.c sets it on data packets when the receiver's
    urgent source is masked; PSM2 on packets that must wake a poller) ->
    RcvUrgent, source 416 + context, latched in CCE_INT_STATUS -- even for
    a packet whose header the flow suppressed."""
    _, a, b = fabric
    source = IS_RCVURGENT_START + KCTXT
    status = cr.CCE_INT_STATUS + 8 * (source // 64)
    program_segment(b, 4)
    kern_set_hw_flow(b, 4, 0x44)
    send(a, b, tid_packet(b, WRITE_DATA, 4, 0x44 << 11, pattern(MTU, 1), tid=0, tid_ctrl=1, sh=1))
    assert not b.driver.read_csr(status) >> source % 64 & 1, "no Intr, no urgent interrupt"
    send(a, b, tid_packet(b, WRITE_DATA, 4, 0x44 << 11 | 1, pattern(MTU, 2), tid=0, tid_ctrl=1, offset=MTU // 64,
                          sh=1, intr=1))
    assert counters(b)["headers_suppressed"] == 2
    assert b.driver.read_csr(status) >> source % 64 & 1
    assert b.memory.read(SEGMENT + MTU, MTU) == pattern(MTU, 2)
