"""Expected receive: KDETH packets placed by TID straight into the pages an
RcvArray PT_EXPECTED entry names (what PSM2's rendezvous and the driver's
TID_UPDATE rely on), on two models driven as the driver does
(testkit/hfi1/datapath.py), and what the chip does with bad TIDs: TidErr in the RHF,
nothing written, never another context's memory."""
from __future__ import annotations

import pytest

from devmodel.fabric import Packet
from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import RcvType
from devmodel.hfi1.rcv_context import (
    FLOW_SHIFT,
    RCV_TID_FLOW_GEN_MISMATCH_CNT,
    RCV_TID_FLOW_SEQ_MISMATCH_CNT,
    TF_FLOW_VALID,
    TF_GEN_MISMATCH,
    TF_HDR_SUPP_EN,
    TF_KEEP_AFTER_SEQ_ERR,
    TF_KEEP_ON_GEN_ERR,
    TF_SEQ_MISMATCH,
)
from devmodel.wire import opa
from testkit.hfi1.datapath import HDRQ_ENTRY_DWORDS, pair, settle
from testkit.host import GUEST_BASE

#: user-like contexts of the small config (0..2 are the kernel's)
USER_A, USER_B = 3, 4
PAIRS = 8  # TID pairs each context gets (16 RcvArray entries)
PAGES = GUEST_BASE + 0x1800000  # expected buffers, 4 KiB pages


#: a scenario of the trapped RcvArray's store rules alone (how QEMU hands
#: write-combined and split stores to it; mapped, the guest's stores are plain
#: RAM stores, devmodel/hfi1/rcv.py): the trapped fabric only
trapped_only = pytest.mark.parametrize("fabric", [()], indirect=True, ids=["trapped"])


@pytest.fixture(params=[(), ("rcvarray",)], ids=["trapped", "mapped"])
def fabric(request):
    """Trapped, and with the RcvArray in shared memory (`ChipConfig.mapped`):
    every scenario must read the same either way."""
    with pair(mapped=request.param) as (scheduler, a, b):
        # the probe walk's catch-all rule 0 as the driver's verbs (QOS) rule is: IB packets only
        b.driver.write_csr(cr.RCV_RSM_CFG, 1 | 2 << cr.RCV_RSM_CFG_PACKET_TYPE_SHIFT)
        for ctxt in (USER_A, USER_B):
            b.driver.rcvctrl_enable(ctxt)
            b.driver.write_kctxt_csr(ctxt, cr.RCV_TID_CTRL, tid_ctrl(ctxt))
        yield scheduler, a, b


def expected_base(ctxt: int) -> int:
    return 64 * ctxt + 16  # after the context's eager entries (testkit.hfi1.datapath: 64 * ctxt, 8 of them)


def tid_ctrl(ctxt: int) -> int:
    """RCV_TID_CTRL as hfi1_rcvctrl writes it: base and entry count, each / 8."""
    return (2 * PAIRS >> 3) << cr.RCV_TID_CTRL_TID_PAIR_CNT_SHIFT | expected_base(ctxt) >> 3


def page(n: int) -> int:
    return PAGES + 0x1000 * n


def kdeth_packet(node, ctxt: int, payload: bytes, tid_ctrl: int, tid: int, offset: int, om: int = 0,
                 psn: int = 0, flow: int = 0, sh: int = 0, jkey: int = 0) -> bytes:
    """What PSM2 or the driver's user SDMA puts on the wire for an expected
    transfer: LRH, BTH (KDETH QP prefix, context in DestQP[7:0]), KDETH with
    TIDCtrl/TID/Offset/OM, PSM2's 28-byte header rest, payload."""
    kdeth = opa.KDETH0.build(kver=1, sh=sh, intr=0, tid_ctrl=tid_ctrl, tid=tid, om=om, offset=offset) \
        + opa.KDETH1.build(hcrc=0, jkey=jkey)
    dest_qp = opa.KDETH_QP_PREFIX << 16 | flow << FLOW_SHIFT | ctxt
    body = opa.BTH.build(opcode=0xC0, pkey=0xFFFF, dest_qp=dest_qp, psn=psn) \
        + kdeth + bytes(28) + payload
    return opa.LRH.build(sc=0, lnh=opa.LNH_BTH, dlid=node.lid, slid=1, pkt_len=(8 + len(body)) // 4 + 1) + body


def inject(node, packet: bytes) -> None:
    node.device.port.receive(Packet(opa.append_icrc(packet), 0))
    settle(node)


def counters(node, ctxt: int) -> dict:
    return node.stats()["rcv"]["contexts"].get(ctxt, {})


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((seed * 7 + i * 13) & 0xFF for i in range(n))


def test_a_kdeth_packet_with_a_tid_lands_in_the_expected_pages_and_only_its_header_is_queued(fabric):
    _, _, b = fabric
    b.driver.hfi1_put_tid(expected_base(USER_A) + 0, page(0), 0x1000)  # pair 0, first half
    b.driver.hfi1_put_tid(expected_base(USER_A) + 1, page(4), 0x2000)  # pair 0, second half (8 KiB)
    data = pattern(512)
    inject(b, kdeth_packet(b, USER_A, data, tid_ctrl=2, tid=0, offset=0x400 // 4))
    rhf, header = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_type"] == RcvType.EXPECTED and not rhf["use_egr_buf"] and not rhf["tid_err"]
    assert len(header) == 56
    assert b.memory.read(page(4) + 0x400, 512) == data, "TIDCtrl 2: the pair's second entry, 4-byte offset"
    assert b.memory.read(page(0), 512) == bytes(512)
    assert counters(b, USER_A)["expected"] == 1


def test_tidctrl_3_treats_the_pair_as_one_buffer_and_a_packet_may_cross_into_the_second_half(fabric):
    _, _, b = fabric
    b.driver.hfi1_put_tid(expected_base(USER_A) + 2, page(8), 0x1000)  # pair 1
    b.driver.hfi1_put_tid(expected_base(USER_A) + 3, page(12), 0x1000)
    data = pattern(1024, seed=3)
    inject(b, kdeth_packet(b, USER_A, data, tid_ctrl=3, tid=1, offset=(0x1000 - 256) // 64, om=1))
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_type"] == RcvType.EXPECTED and not rhf["tid_err"]
    assert b.memory.read(page(8) + 0x1000 - 256, 256) == data[:256], "OM: 64-byte units into the first half"
    assert b.memory.read(page(12), 768) == data[256:], "the rest continues at the second half's start"


@pytest.mark.parametrize("mistake", ["an invalid (never written) entry", "a TID past the context's pairs",
                                     "a payload past the end of the entry", "TIDCtrl 3 past the pair's end"])
def test_a_bad_tid_gets_tid_err_and_nothing_is_written(fabric, mistake):
    _, _, b = fabric
    for ctxt, first in ((USER_A, 16), (USER_B, 32)):
        for i in range(2 * PAIRS):
            b.driver.hfi1_put_tid(expected_base(ctxt) + i, page(first + i), 0x1000)
    b.driver.hfi1_put_tid(expected_base(USER_A) + 5, 0, 0)  # PT_INVALID
    tid, ctrl, offset = {
        "an invalid (never written) entry": (2, 2, 0),
        "a TID past the context's pairs": (PAIRS, 1, 0),  # the entries after its range are not its own
        "a payload past the end of the entry": (0, 1, (0x1000 - 64) // 4),
        "TIDCtrl 3 past the pair's end": (1, 3, (0x2000 - 64) // 4),
    }[mistake]
    inject(b, kdeth_packet(b, USER_A, pattern(256), tid_ctrl=ctrl, tid=tid, offset=offset))
    rhf, header = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["tid_err"] and rhf["rcv_type"] == RcvType.EXPECTED and rhf["rcv_seq"] == 1, mistake
    assert len(header) == 56, "the header still reaches the context, for PSM2's recovery"
    assert b.memory.read(page(16), 0x1000 * 32).count(0) == 0x1000 * 32, "no byte of any context's pages"
    assert counters(b, USER_A)["tid_error"] == 1 and counters(b, USER_A)["expected"] == 0
    assert b.stats()["internal_errors"] == []


def test_an_entry_pointing_outside_guest_memory_loses_the_packet_and_nothing_else(fabric):
    _, _, b = fabric
    b.driver.hfi1_put_tid(expected_base(USER_A), 1 << 44, 0x1000)  # no guest memory there
    inject(b, kdeth_packet(b, USER_A, pattern(128), tid_ctrl=1, tid=0, offset=0))
    assert counters(b, USER_A)["dma_error"] == 1
    assert b.stats()["internal_errors"] == []
    b.driver.hfi1_put_tid(expected_base(USER_A), page(0), 0x1000)
    inject(b, kdeth_packet(b, USER_A, pattern(128), tid_ctrl=1, tid=0, offset=0))
    assert b.memory.read(page(0), 128) == pattern(128), "the context still works"


def test_a_kdeth_packet_for_a_context_that_does_not_exist_is_dropped_and_counted(fabric):
    _, _, b = fabric
    inject(b, kdeth_packet(b, 0xF0, pattern(64), tid_ctrl=1, tid=0, offset=0))
    assert any("does not exist" in why for why in b.stats()["rcv"]["dropped"])
    assert b.stats()["internal_errors"] == []


@pytest.mark.parametrize("cut", [4, 8])  # KDETH word 1, or all of KDETH, missing
def test_a_kdeth_packet_cut_inside_its_headers_is_dropped_as_short_and_nothing_lands(fabric, cut):
    """The J_KEY, TID and flow checks read KDETH where it would be: a packet
    that ends inside LRH+BTH+KDETH is a short packet, not a TID to follow."""
    _, a, b = fabric
    whole = kdeth_packet(b, USER_A, b"", tid_ctrl=1, tid=0, offset=0)
    headers = opa.LRH_BYTES + opa.BTH_BYTES + opa.KDETH0.size + opa.KDETH1.size
    body = whole[opa.LRH_BYTES:headers - cut]
    short = opa.LRH.build(sc=0, lnh=opa.LNH_BTH, dlid=b.lid, slid=1,
                          pkt_len=(opa.LRH_BYTES + len(body) + opa.ICRC_BYTES) // 4) + body  # PktLen agrees
    before = bytes(b.memory.read(page(0), 4096))
    inject(b, short)
    assert b.stats()["rcv"]["dropped"].get("KDETH packet shorter than its headers") == 1
    assert bytes(b.memory.read(page(0), 4096)) == before
    assert b.stats()["internal_errors"] == []


@trapped_only
def test_a_write_combined_line_changes_only_the_entries_with_write_enable(fabric):
    """hfi1_put_tid writes the RcvArray through a write-combining map; QEMU
    may hand a flushed 64-byte line to the device with the qwords the CPU
    did not write as zeros. Only WriteEnable (bit 63) makes a qword an entry
    write, so programming entry 1 of a line leaves entry 0 of it alone."""
    from devmodel.hfi1.formats import RCV_ARRAY_ENTRY
    from emulator.pci.function import split_access
    _, _, b = fabric
    first = expected_base(USER_A)
    b.driver.hfi1_put_tid(first, page(0), 0x1000)
    line = bytearray(64)
    entry1 = RCV_ARRAY_ENTRY.encode(write_enable=1, size_code=1, address_4k=page(1) >> 12)
    line[8:16] = entry1.to_bytes(8, "little")
    offset = cr.RCV_ARRAY + 8 * first
    for off, size in split_access(offset, 64):  # what the transport does with a 64-byte REGION_WRITE
        b.driver.dev.bar_write(0, off, size, int.from_bytes(line[off - offset:off - offset + size], "little"))
    assert b.driver.read_csr(offset + 8) == entry1
    assert b.driver.read_csr(offset) & (1 << 36) - 1 == page(0) >> 12, "entry 0 kept"
    # an entry written in two halves takes effect with the half that holds WriteEnable
    entry2 = RCV_ARRAY_ENTRY.encode(write_enable=1, size_code=1, address_4k=page(2) >> 12)
    before = b.driver.read_csr(offset + 16)
    b.driver.dev.bar_write(0, offset + 16, 4, entry2 & 0xFFFFFFFF)
    assert b.driver.read_csr(offset + 16) == before
    b.driver.dev.bar_write(0, offset + 20, 4, entry2 >> 32)
    assert b.driver.read_csr(offset + 16) == entry2
    inject(b, kdeth_packet(b, USER_A, pattern(64), tid_ctrl=3, tid=0, offset=0x1000 // 4))
    assert b.memory.read(page(1), 64) == pattern(64)


@trapped_only
def test_an_entry_takes_effect_only_from_a_whole_64_bit_value(fabric):
    """hfi1_put_tid writes an entry with one writeq; QEMU hands a store
    wider than the region takes to the device in ascending pieces (the low
    half first). An entry changes only once all eight bytes of one value
    have come, in ascending pieces: a lone upper half -- WriteEnable and the
    size, over whatever low half the entry had -- changes nothing, nor does
    a low half whose store was cut short by a write to another entry."""
    from devmodel.hfi1.formats import RCV_ARRAY_ENTRY
    _, _, b = fabric
    first = expected_base(USER_A)
    offset = cr.RCV_ARRAY + 8 * first
    b.driver.hfi1_put_tid(first, page(0), 0x1000)
    old = b.driver.read_csr(offset)
    bigger = RCV_ARRAY_ENTRY.encode(write_enable=1, size_code=2, address_4k=page(0) >> 12)  # 8 KiB
    b.driver.dev.bar_write(0, offset + 4, 4, bigger >> 32)
    assert b.driver.read_csr(offset) == old, "a lone upper half: the entry keeps its old 64-bit value"
    inject(b, kdeth_packet(b, USER_A, pattern(64), tid_ctrl=1, tid=0, offset=0x1000 // 4))
    assert b.driver.hdrq_entry(USER_A, 0)[0]["tid_err"], "still a 4 KiB buffer: an offset of 4 KiB is past it"
    elsewhere = RCV_ARRAY_ENTRY.encode(write_enable=1, size_code=1, address_4k=page(3) >> 12)
    b.driver.dev.bar_write(0, offset, 4, elsewhere & 0xFFFFFFFF)  # a low half for this entry ...
    b.driver.dev.bar_write(0, offset + 8 + 4, 4, 0)  # ... then a write to the next entry
    b.driver.dev.bar_write(0, offset + 4, 4, elsewhere >> 32)
    assert b.driver.read_csr(offset) == old, "halves of two different stores do not make an entry"
    b.driver.dev.bar_write(0, offset, 4, elsewhere & 0xFFFFFFFF)  # one store, split as QEMU splits it
    b.driver.dev.bar_write(0, offset + 4, 4, elsewhere >> 32)
    assert b.driver.read_csr(offset) == elsewhere
    for byte in range(8):  # and as eight byte stores
        b.driver.dev.bar_write(0, offset + byte, 1, (bigger >> 8 * byte) & 0xFF)
    assert b.driver.read_csr(offset) == bigger


# -- TidFlow and header suppression ------------------------------------------------------

FLOW = 5
GENERATION = 0x1234


def enable_tid_flow(b, entry: int) -> None:
    """user_init's RCV_CTXT_CTRL TidFlowEnable, and PSM2's tidflow entry (hfi_tidflow_set_entry)."""
    ctrl = b.driver.read_kctxt_csr(USER_A, cr.RCV_CTXT_CTRL)
    b.driver.write_kctxt_csr(USER_A, cr.RCV_CTXT_CTRL, ctrl | cr.RCV_CTXT_CTRL_TID_FLOW_ENABLE_SMASK)
    b.driver.write_uctxt_csr(USER_A, cr.RCV_TID_FLOW_TABLE + 8 * FLOW, entry)


def flow_entry(b) -> int:
    return b.driver.read_uctxt_csr(USER_A, cr.RCV_TID_FLOW_TABLE + 8 * FLOW)


def psn(seq: int, gen: int = GENERATION) -> int:
    return gen << 11 | seq


def rhf_seqs(b, entries: int) -> list[int]:
    return [b.driver.hdrq_entry(USER_A, i)[0]["rcv_seq"] for i in range(entries)]


@pytest.fixture
def flow_fabric(fabric):
    _, _, b = fabric
    b.driver.hfi1_put_tid(expected_base(USER_A), page(0), 0x4000)
    enable_tid_flow(b, TF_FLOW_VALID | TF_HDR_SUPP_EN | TF_KEEP_AFTER_SEQ_ERR | GENERATION << 11)
    return b


def test_in_sequence_packets_with_sh_land_without_headers_and_the_last_one_reports(flow_fabric):
    b = flow_fabric
    for seq in range(3):
        inject(b, kdeth_packet(b, USER_A, pattern(1024, seq), tid_ctrl=1, tid=0, offset=seq * 256,
                               psn=psn(seq), flow=FLOW, sh=int(seq < 2)))
    assert rhf_seqs(b, 2) == [1, 0], "one header: the packet without KDETH.SH"
    rhf, header = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_type"] == RcvType.EXPECTED and not rhf["rcv_type_err"] and header[8 + 8:8 + 12] == \
        psn(2).to_bytes(4, "big")
    for seq in range(3):
        assert b.memory.read(page(0) + 1024 * seq, 1024) == pattern(1024, seq)
    assert flow_entry(b) & 0x7FF == 3, "SeqNum moved past the last packet"
    stats = counters(b, USER_A)
    assert stats["expected"] == 3 and stats["headers_suppressed"] == 2


def test_a_sequence_gap_reports_flow_seq_err_keeps_the_payload_and_keeps_seqnum(flow_fabric):
    """KeepAfterSeqErr (which PSM2 and the kernel always set): the packet is
    kept -- header with FlowSeqErr and payload -- and SeqNum stays at the
    first packet missing, the restart point software reads back (PSM2's
    ips_protoexp_do_tf_seqerr, the kernel's read_r_next_psn)."""
    b = flow_fabric
    inject(b, kdeth_packet(b, USER_A, pattern(512), tid_ctrl=1, tid=0, offset=0, psn=psn(0), flow=FLOW, sh=1))
    inject(b, kdeth_packet(b, USER_A, pattern(512, 2), tid_ctrl=1, tid=0, offset=256, psn=psn(2), flow=FLOW, sh=1))
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_type"] == RcvType.EXPECTED and rhf["rcv_type_err"] == 0x2, "RHF_RTE_EXPECTED_FLOW_SEQ_ERR"
    assert b.memory.read(page(0) + 1024, 512) == pattern(512, 2), "KeepAfterSeqErr: the payload is kept"
    entry = flow_entry(b)
    assert entry & TF_SEQ_MISMATCH and entry & 0x7FF == 1 and entry & TF_FLOW_VALID
    assert b.driver.read_csr(cr.RCV_COUNTER_ARRAY32 + 8 * RCV_TID_FLOW_SEQ_MISMATCH_CNT) == 1


def test_after_a_sequence_error_every_packet_of_the_flow_reports_it_until_software_writes_1(flow_fabric):
    """SeqMismatch is sticky: once set, every later packet of the flow --
    the missing one arriving late, with KDETH.SH, included -- gets a header
    with FlowSeqErr and its payload placed, and SeqNum still moves on over
    packets in sequence. A write of the entry with SeqMismatch 0 leaves it
    set; a write of 1 clears it (write-1-to-clear), and the flow is back to
    suppressing headers."""
    b = flow_fabric
    for seq in (0, 2, 1, 2, 3):  # 1 late: arrives after 2, then the sender repeats 2 and goes on
        inject(b, kdeth_packet(b, USER_A, pattern(256, seq), tid_ctrl=1, tid=0, offset=64 * seq, psn=psn(seq),
                               flow=FLOW, sh=1))
    rhfs = [b.driver.hdrq_entry(USER_A, i)[0] for i in range(5)]
    assert [r["rcv_seq"] for r in rhfs] == [1, 2, 3, 4, 0], "a header for each packet after the gap"
    assert [r["rcv_type_err"] for r in rhfs[:4]] == [0x2] * 4
    assert b.memory.read(page(0), 1024) == b"".join(pattern(256, s) for s in range(4))
    assert flow_entry(b) & 0x7FF == 4 and flow_entry(b) & TF_SEQ_MISMATCH, "SeqNum moved over 1, 2 and 3"
    assert counters(b, USER_A)["flow_seq_errors"] == 4
    # software rewrites the flow where it is, but without the status bits: still sticky
    control = TF_FLOW_VALID | TF_HDR_SUPP_EN | TF_KEEP_AFTER_SEQ_ERR | GENERATION << 11
    b.driver.write_uctxt_csr(USER_A, cr.RCV_TID_FLOW_TABLE + 8 * FLOW, control | 4)
    assert flow_entry(b) == control | TF_SEQ_MISMATCH | 4
    inject(b, kdeth_packet(b, USER_A, pattern(256, 4), tid_ctrl=1, tid=0, offset=256, psn=psn(4), flow=FLOW, sh=1))
    assert b.driver.hdrq_entry(USER_A, 4)[0]["rcv_type_err"] == 0x2
    # ... and with them written as 1 (hfi_tidflow_set_entry): cleared, headers suppressed again
    b.driver.write_uctxt_csr(USER_A, cr.RCV_TID_FLOW_TABLE + 8 * FLOW, control | 5 | TF_SEQ_MISMATCH | TF_GEN_MISMATCH)
    assert flow_entry(b) == control | 5
    inject(b, kdeth_packet(b, USER_A, pattern(256, 5), tid_ctrl=1, tid=0, offset=320, psn=psn(5), flow=FLOW, sh=1))
    assert rhf_seqs(b, 6)[5] == 0 and counters(b, USER_A)["headers_suppressed"] == 2
    assert flow_entry(b) == control | 6


def test_psm2s_seqerr_recovery_restarts_a_lost_packet_in_a_new_generation(flow_fabric):
    """PSM2's recovery (ips_protoexp_do_tf_seqerr): on the first FlowSeqErr
    it reads SeqNum back as the restart point, swaps the flow to a new
    generation there (ips_protoexp_flow_newgen: hfi_tidflow_set_entry, the
    status bits written as 1) and NAKs; the sender's packets of the old
    generation still on the wire report FlowGenErr without their payload
    (KeepOnGenErr, no KeepPayloadOnGenErr: ips_protoexp_handle_tf_generr
    drops them), and the retransmission in the new generation lands as
    a clean transfer: headers suppressed but the last, no error."""
    b = flow_fabric
    sent = {seq: pattern(512, 10 + seq) for seq in range(6)}

    def send(seq: int, gen: int, last: bool = False) -> None:
        inject(b, kdeth_packet(b, USER_A, sent[seq], tid_ctrl=1, tid=0, offset=128 * seq, psn=psn(seq, gen),
                               flow=FLOW, sh=int(not last)))

    for seq in (0, 1, 3):  # 2 is lost
        send(seq, GENERATION)
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_type_err"] == 0x2 and rhf_seqs(b, 2) == [1, 0]
    restart = flow_entry(b) & 0x7FF  # hfi_tidflow_get_seqnum
    assert restart == 2
    b.driver.write_uctxt_csr(USER_A, cr.RCV_TID_FLOW_TABLE + 8 * FLOW,
                             TF_FLOW_VALID | TF_HDR_SUPP_EN | TF_KEEP_AFTER_SEQ_ERR | TF_KEEP_ON_GEN_ERR
                             | TF_SEQ_MISMATCH | TF_GEN_MISMATCH | (GENERATION + 1) << 11 | restart)
    assert not flow_entry(b) & (TF_SEQ_MISMATCH | TF_GEN_MISMATCH), "the new generation starts clean"
    b.memory.write(page(0) + 128 * 4 * 4, bytes(512))
    send(4, GENERATION)  # stale: the old generation, still in flight
    rhf, _ = b.driver.hdrq_entry(USER_A, 1)
    assert rhf["rcv_type_err"] == 0x4 and b.memory.read(page(0) + 128 * 4 * 4, 512) == bytes(512)
    for seq in range(restart, 6):
        send(seq, GENERATION + 1, last=seq == 5)
    assert rhf_seqs(b, 4)[2:] == [3, 0], "one header for the retransmission: its last packet's"
    rhf, _ = b.driver.hdrq_entry(USER_A, 2)
    assert rhf["rcv_type_err"] == 0 and not rhf["tid_err"]
    assert b.memory.read(page(0), 6 * 512) == b"".join(sent[s] for s in range(6))
    assert flow_entry(b) & 0x7FF == 6 and not flow_entry(b) & TF_SEQ_MISMATCH
    assert flow_entry(b) & TF_GEN_MISMATCH, "GenMismatch: status the stale packet left, nothing more"


def test_without_keep_after_seq_err_an_out_of_sequence_packet_is_dropped_whole(fabric):
    """hfi_tidflow_reset's comment: KeepAfterSeqErr=1 is what makes sure a
    header is generated on a SeqNum mismatch; without it the packet goes,
    counted (RcvTidFlowSeqMismatch, SeqMismatch, the context's flow drops)."""
    _, _, b = fabric
    b.driver.hfi1_put_tid(expected_base(USER_A), page(0), 0x4000)
    enable_tid_flow(b, TF_FLOW_VALID | TF_HDR_SUPP_EN | GENERATION << 11 | 4)
    inject(b, kdeth_packet(b, USER_A, pattern(512), tid_ctrl=1, tid=0, offset=0, psn=psn(6), flow=FLOW))
    assert rhf_seqs(b, 1) == [0], "no header"
    assert b.memory.read(page(0), 512) == bytes(512), "no payload"
    assert flow_entry(b) & TF_SEQ_MISMATCH and flow_entry(b) & 0x7FF == 4
    assert counters(b, USER_A)["flow_seq_errors"] == 1 and counters(b, USER_A)["flow_dropped"] == 1


@pytest.mark.parametrize("keep_on_gen_err", [False, True])
def test_an_old_generation_reports_flow_gen_err_only_with_keep_on_gen_err_and_the_flow_stays(fabric,
                                                                                            keep_on_gen_err):
    """A generation mismatch drops the payload (no KeepPayloadOnGenErr) and
    reports FlowGenErr only with KeepOnGenErr; without it the packet goes
    whole. The flow stays valid with its generation and SeqNum either way:
    PSM2 marks a free flow with FlowValid and a generation no packet uses
    (hfi_tidflow_reset, KeepOnGenErr 0) precisely so that every stale
    packet of an old transfer keeps being dropped."""
    _, _, b = fabric
    b.driver.hfi1_put_tid(expected_base(USER_A), page(0), 0x4000)
    entry = TF_FLOW_VALID | TF_KEEP_AFTER_SEQ_ERR | GENERATION << 11 | 3
    enable_tid_flow(b, entry | (TF_KEEP_ON_GEN_ERR if keep_on_gen_err else 0))
    for _ in range(2):
        inject(b, kdeth_packet(b, USER_A, pattern(256), tid_ctrl=1, tid=0, offset=0, psn=psn(3, GENERATION - 1),
                               flow=FLOW, sh=1))
    rhfs = [b.driver.hdrq_entry(USER_A, i)[0] for i in range(2)]
    if keep_on_gen_err:
        assert [r["rcv_type_err"] for r in rhfs] == [0x4, 0x4] and [r["rcv_seq"] for r in rhfs] == [1, 2]
    else:
        assert [r["rcv_seq"] for r in rhfs] == [0, 0], "no header for either stale packet"
        assert counters(b, USER_A)["flow_dropped"] == 2
    assert b.memory.read(page(0), 256) == bytes(256), "no stale payload, the second time either"
    now = flow_entry(b)
    assert now & TF_GEN_MISMATCH and now & TF_FLOW_VALID and now >> 11 & 0xFFFFF == GENERATION and now & 0x7FF == 3
    assert counters(b, USER_A)["flow_gen_errors"] == 2
    assert b.driver.read_csr(cr.RCV_COUNTER_ARRAY32 + 8 * RCV_TID_FLOW_GEN_MISMATCH_CNT) == 2


def test_an_invalid_flow_checks_nothing_and_suppresses_nothing(fabric):
    _, _, b = fabric
    b.driver.hfi1_put_tid(expected_base(USER_A), page(0), 0x1000)
    enable_tid_flow(b, TF_HDR_SUPP_EN)  # FlowValid clear
    inject(b, kdeth_packet(b, USER_A, pattern(256), tid_ctrl=1, tid=0, offset=0, psn=psn(7, 3), flow=FLOW, sh=1))
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_seq"] == 1 and not rhf["rcv_type_err"] and b.memory.read(page(0), 256) == pattern(256)


def test_a_tid_error_is_reported_even_on_a_packet_whose_header_would_be_suppressed(flow_fabric):
    """...and the flow does not move past a packet whose payload did not
    land: the retransmission, once software has fixed the entry, is the
    packet the flow still expects."""
    b = flow_fabric
    inject(b, kdeth_packet(b, USER_A, pattern(256), tid_ctrl=2, tid=0, offset=0, psn=psn(0), flow=FLOW, sh=1))
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_seq"] == 1 and rhf["tid_err"], "entry 1 of the pair was never written"
    assert flow_entry(b) & 0x7FF == 0, "SeqNum still names the packet whose payload was refused"
    b.driver.hfi1_put_tid(expected_base(USER_A) + 1, page(8), 0x1000)
    inject(b, kdeth_packet(b, USER_A, pattern(256), tid_ctrl=2, tid=0, offset=0, psn=psn(0), flow=FLOW, sh=1))
    assert rhf_seqs(b, 2) == [1, 0], "accepted in sequence, header suppressed"
    assert b.memory.read(page(8), 256) == pattern(256) and flow_entry(b) & 0x7FF == 1


def test_a_suppressed_packet_whose_pages_are_not_guest_memory_does_not_move_the_flow(flow_fabric):
    b = flow_fabric
    b.driver.hfi1_put_tid(expected_base(USER_A), 1 << 44, 0x4000)  # no guest memory there
    inject(b, kdeth_packet(b, USER_A, pattern(256), tid_ctrl=1, tid=0, offset=0, psn=psn(0), flow=FLOW, sh=1))
    assert counters(b, USER_A)["dma_error"] == 1 and counters(b, USER_A).get("headers_suppressed", 0) == 0
    assert flow_entry(b) & 0x7FF == 0, "the packet was lost: the flow still expects it"


@pytest.mark.parametrize("damage", ["ICRC", "PktLen"])
def test_a_damaged_expected_packet_neither_moves_the_flow_nor_lands(flow_fabric, damage):
    """A packet the chip knows is bad (RHF IcrcErr / LenErr) is not trusted:
    its TidFlow entry is neither checked nor moved, its payload not placed.
    PSM2 answers such an RHF by restarting the flow from the SeqNum it reads
    back from the table (ips_protoexp_handle_data_err), which only works if
    the chip did not count the bad packet as received."""
    b = flow_fabric
    good = kdeth_packet(b, USER_A, pattern(512), tid_ctrl=1, tid=0, offset=0, psn=psn(0), flow=FLOW, sh=1)
    if damage == "ICRC":
        wire = bytearray(opa.append_icrc(good))
        wire[-1] ^= 0xFF
    else:  # LRH.PktLen one dword short of what arrived, under a good ICRC
        lrh = int.from_bytes(good[:opa.LRH_BYTES], "big")
        field = opa.LRH.mask["pkt_len"] << opa.LRH.shift["pkt_len"]
        lrh = lrh & ~field | ((len(good) + opa.ICRC_BYTES) // 4 - 1) << opa.LRH.shift["pkt_len"]
        wire = opa.append_icrc(lrh.to_bytes(opa.LRH_BYTES, "big") + good[opa.LRH_BYTES:])
    b.device.port.receive(Packet(bytes(wire), 0))
    settle(b)
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_seq"] == 1 and rhf["icrc_err" if damage == "ICRC" else "len_err"] and not rhf["rcv_type_err"]
    assert b.memory.read(page(0), 512) == bytes(512), "nothing of a damaged packet lands"
    assert flow_entry(b) & 0x7FF == 0 and not flow_entry(b) & (TF_SEQ_MISMATCH | TF_GEN_MISMATCH)
    inject(b, good)  # the retransmission
    assert b.memory.read(page(0), 512) == pattern(512) and flow_entry(b) & 0x7FF == 1


def test_a_held_packet_is_judged_by_the_flow_entry_software_wrote_while_it_waited(flow_fabric):
    """A packet waiting for a header-queue slot (DONT_DROP_RHQ_FULL) meets
    the TidFlow entry when it is delivered, not the one of its arrival: PSM2
    swaps a flow's generation (ips_protoexp_flow_newgen) while packets of
    the old one may still be about, and the chip must not write the old
    generation back over the new entry."""
    b = flow_fabric
    b.driver.write_uctxt_csr(USER_A, cr.RCV_HDR_HEAD, HDRQ_ENTRY_DWORDS)  # tail 0, next tail = head: full
    inject(b, kdeth_packet(b, USER_A, pattern(512), tid_ctrl=1, tid=0, offset=0, psn=psn(0), flow=FLOW))
    assert len(b.device.rcv.contexts[USER_A].held) == 1
    new_generation = TF_FLOW_VALID | TF_HDR_SUPP_EN | TF_KEEP_AFTER_SEQ_ERR | TF_KEEP_ON_GEN_ERR \
        | (GENERATION + 1) << 11
    b.driver.write_uctxt_csr(USER_A, cr.RCV_TID_FLOW_TABLE + 8 * FLOW, new_generation)
    b.driver.write_uctxt_csr(USER_A, cr.RCV_HDR_HEAD, 0)  # room again: the held packet goes
    settle(b)
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_seq"] == 1 and rhf["rcv_type_err"] == 0x4, "an old generation, by the new entry"
    assert flow_entry(b) == new_generation | TF_GEN_MISMATCH, "the new generation and SeqNum 0 stay"
    assert b.memory.read(page(0), 512) == bytes(512)


def test_random_kdeth_packets_write_only_into_their_own_contexts_pages(fabric):
    """A fuzz of expected packets from a peer that lies (random TIDs, TIDCtrl,
    offsets, offset modes, flows, PSNs, lengths, contexts) into a context with
    a random mix of valid, invalid and too-small entries and a TidFlow table
    in random states: nothing fails inside, and no byte changes outside that
    context's own pages, header queue, eager buffers and tail word."""
    import os
    import random

    from testkit.hfi1.datapath import DUMMY_TAIL
    from testkit.host import GUEST_SIZE
    _, _, b = fabric
    rng = random.Random(13)
    sequences = int(os.environ.get("VFNIC_FUZZ_SEQUENCES", "3000")) // 10 or 1
    own = [page(i) for i in range(2 * PAIRS)]
    for ctxt, first in ((USER_A, 0), (USER_B, 32)):
        for i in range(2 * PAIRS):
            b.driver.hfi1_put_tid(expected_base(ctxt) + i, page(first + i), 0x1000)
    ctrl = b.driver.read_kctxt_csr(USER_A, cr.RCV_CTXT_CTRL)
    b.driver.write_kctxt_csr(USER_A, cr.RCV_CTXT_CTRL, ctrl | cr.RCV_CTXT_CTRL_TID_FLOW_ENABLE_SMASK)
    before = bytes(b.memory.memory)
    for _ in range(sequences):
        index = rng.randrange(2 * PAIRS)  # reprogram one of the context's entries: valid, invalid or small
        size = rng.choice([0x1000, 0x2000, 0])
        address = own[index] if size != 0x2000 else own[index & ~1]
        b.driver.hfi1_put_tid(expected_base(USER_A) + index, address, 0x1000 if size == 0x2000 else size)
        b.driver.write_uctxt_csr(USER_A, cr.RCV_TID_FLOW_TABLE + 8 * rng.randrange(32), rng.getrandbits(39))
        for _ in range(10):
            ctxt = USER_A if rng.random() < 0.9 else rng.choice([0xF0, 0x7F])
            payload = rng.randbytes(4 * rng.randrange(1, 1025))
            tid = rng.randrange(PAIRS + 1) if rng.random() < 0.7 else rng.randrange(1024)
            inject(b, kdeth_packet(b, ctxt, payload, tid_ctrl=rng.randrange(4), tid=tid,
                                   offset=rng.randrange(1 << 15) if rng.random() < 0.3 else rng.randrange(2048),
                                   om=rng.randrange(2), psn=rng.getrandbits(31), flow=rng.randrange(32),
                                   sh=rng.randrange(2)))
        # the process consumes what arrived (header queue, and the eager buffers of TIDCtrl 0 packets)
        b.driver.write_uctxt_csr(USER_A, cr.RCV_HDR_HEAD, b.driver.read_uctxt_csr(USER_A, cr.RCV_HDR_TAIL))
        b.driver.write_uctxt_csr(USER_A, cr.RCV_EGR_INDEX_HEAD, b.device.rcv.contexts[USER_A].egr_index)
    assert b.stats()["internal_errors"] == []
    allowed = [(page(0), page(2 * PAIRS)), (b.driver.hdrq_address(USER_A), b.driver.hdrq_address(USER_A + 1)),
               (b.driver.eager_address(USER_A, 0), b.driver.eager_address(USER_A + 1, 0)),
               (GUEST_BASE + DUMMY_TAIL, GUEST_BASE + DUMMY_TAIL + 8)]
    after = bytes(b.memory.memory)
    changed = [i for i in range(0, GUEST_SIZE, 4096) if before[i:i + 4096] != after[i:i + 4096]]
    for offset in changed:
        address = GUEST_BASE + offset
        assert any(lo <= address < hi for lo, hi in allowed), f"page {address:#x} changed"
    stats = counters(b, USER_A)
    assert stats["expected"] and stats["tid_error"] and stats.get("flow_seq_errors", 0) + \
        stats.get("flow_gen_errors", 0), stats


def test_a_context_with_a_job_key_takes_only_kdeth_packets_that_carry_it(fabric):
    """hfi1_set_ctxt_jkey: RCV_KEY_CTRL JobKeyEnable and the job's key; a
    packet from another job (another J_KEY) never reaches the queues."""
    _, _, b = fabric
    b.driver.hfi1_put_tid(expected_base(USER_A), page(0), 0x1000)
    b.driver.write_kctxt_csr(USER_A, cr.RCV_KEY_CTRL, cr.RCV_KEY_CTRL_JOB_KEY_ENABLE_SMASK | 0x1234)
    inject(b, kdeth_packet(b, USER_A, pattern(256, 1), tid_ctrl=1, tid=0, offset=0, jkey=0x4321))
    inject(b, kdeth_packet(b, USER_A, pattern(64, 2), tid_ctrl=0, tid=0, offset=0, jkey=0x4321))
    assert b.memory.read(page(0), 256) == bytes(256) and counters(b, USER_A)["job_key"] == 2
    assert counters(b, USER_A)["delivered"] == 0
    inject(b, kdeth_packet(b, USER_A, pattern(256, 3), tid_ctrl=1, tid=0, offset=0, jkey=0x1234))
    assert b.memory.read(page(0), 256) == pattern(256, 3) and b.driver.hdrq_entry(USER_A, 0)[0]["rcv_seq"] == 1
    inject(b, kdeth_packet(b, USER_B, pattern(64, 4), tid_ctrl=0, tid=0, offset=0, jkey=0x4321))
    assert counters(b, USER_B)["delivered"] == 1, "no JobKeyEnable: any J_KEY"
