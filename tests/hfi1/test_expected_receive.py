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
    RCV_TID_FLOW_SEQ_MISMATCH_CNT,
    TF_FLOW_VALID,
    TF_GEN_MISMATCH,
    TF_HDR_SUPP_EN,
    TF_KEEP_AFTER_SEQ_ERR,
    TF_SEQ_MISMATCH,
)
from devmodel.wire import opa
from testkit.hfi1.datapath import pair, settle
from testkit.host import GUEST_BASE

#: user-like contexts of the small config (0..2 are the kernel's)
USER_A, USER_B = 3, 4
PAIRS = 8  # TID pairs each context gets (16 RcvArray entries)
PAGES = GUEST_BASE + 0x1800000  # expected buffers, 4 KiB pages


@pytest.fixture
def fabric():
    with pair() as (scheduler, a, b):
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


def test_a_sequence_gap_reports_flow_seq_err_drops_the_payload_and_keeps_seqnum(flow_fabric):
    b = flow_fabric
    inject(b, kdeth_packet(b, USER_A, pattern(512), tid_ctrl=1, tid=0, offset=0, psn=psn(0), flow=FLOW, sh=1))
    inject(b, kdeth_packet(b, USER_A, pattern(512, 2), tid_ctrl=1, tid=0, offset=256, psn=psn(2), flow=FLOW, sh=1))
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_type"] == RcvType.EXPECTED and rhf["rcv_type_err"] == 0x2, "RHF_RTE_EXPECTED_FLOW_SEQ_ERR"
    assert b.memory.read(page(0) + 1024, 512) == bytes(512), "the out-of-sequence payload is not placed"
    entry = flow_entry(b)
    assert entry & TF_SEQ_MISMATCH and entry & 0x7FF == 1 and entry & TF_FLOW_VALID
    assert b.driver.read_csr(cr.RCV_COUNTER_ARRAY32 + 8 * RCV_TID_FLOW_SEQ_MISMATCH_CNT) == 1
    # the retransmission from the expected sequence is accepted
    inject(b, kdeth_packet(b, USER_A, pattern(512, 1), tid_ctrl=1, tid=0, offset=128, psn=psn(1), flow=FLOW))
    assert b.driver.hdrq_entry(USER_A, 1)[0]["rcv_type_err"] == 0
    assert b.memory.read(page(0) + 512, 512) == pattern(512, 1)


def test_an_old_generation_reports_flow_gen_err_and_invalidates_the_flow(flow_fabric):
    b = flow_fabric
    inject(b, kdeth_packet(b, USER_A, pattern(256), tid_ctrl=1, tid=0, offset=0, psn=psn(0, GENERATION - 1),
                           flow=FLOW, sh=1))
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_type_err"] == 0x4 and rhf["rcv_seq"] == 1, "RHF_RTE_EXPECTED_FLOW_GEN_ERR, header kept"
    assert b.memory.read(page(0), 256) == bytes(256)
    entry = flow_entry(b)
    assert entry & TF_GEN_MISMATCH and not entry & TF_FLOW_VALID, "no KeepOnGenErr: the flow is closed"
    assert counters(b, USER_A)["flow_gen_errors"] == 1


def test_an_invalid_flow_checks_nothing_and_suppresses_nothing(fabric):
    _, _, b = fabric
    b.driver.hfi1_put_tid(expected_base(USER_A), page(0), 0x1000)
    enable_tid_flow(b, TF_HDR_SUPP_EN)  # FlowValid clear
    inject(b, kdeth_packet(b, USER_A, pattern(256), tid_ctrl=1, tid=0, offset=0, psn=psn(7, 3), flow=FLOW, sh=1))
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_seq"] == 1 and not rhf["rcv_type_err"] and b.memory.read(page(0), 256) == pattern(256)


def test_a_tid_error_is_reported_even_on_a_packet_whose_header_would_be_suppressed(flow_fabric):
    b = flow_fabric
    inject(b, kdeth_packet(b, USER_A, pattern(256), tid_ctrl=2, tid=0, offset=0, psn=psn(0), flow=FLOW, sh=1))
    rhf, _ = b.driver.hdrq_entry(USER_A, 0)
    assert rhf["rcv_seq"] == 1 and rhf["tid_err"], "entry 1 of the pair was never written"


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
            inject(b, kdeth_packet(b, ctxt, payload, tid_ctrl=rng.randrange(4), tid=rng.randrange(1024),
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
