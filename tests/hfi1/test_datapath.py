"""The data path block by block, on two directly attached models (testkit/hfi1/datapath.py):
PIO launch and credit return, SDMA rings, receive contexts and steering, and
what the chip does with a guest's mistakes."""
from __future__ import annotations

import logging

import pytest

from devmodel.fabric import Packet
from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import PBC, RcvType
from devmodel.wire import opa
from testkit.hfi1.datapath import (
    HDRQ_ENTRY_DWORDS,
    PAYLOADS,
    RCV_TAIL_DMA,
    SDMA_RING,
    pair,
    pbc_for,
    settle,
    ud_packet,
)
from testkit.host import GUEST_BASE

UD_QP = 0x12  # QP map: context 2
GENERAL_VECTOR = 0
SEND_CTXT_ERR_SOURCE = 32
SDMA_ENG_ERR_SOURCE = 16


@pytest.fixture
def fabric():
    with pair() as (scheduler, a, b):
        yield scheduler, a, b


def delivered(node, ctxt: int) -> int:
    return node.stats()["rcv"]["contexts"].get(ctxt, {}).get("delivered", 0)


def status_bit(node, source: int) -> int:
    return node.driver.read_csr(cr.CCE_INT_STATUS + 8 * (source // 64)) >> (source % 64) & 1


def inject(node, packet: bytes, sc: int = 0) -> None:
    """A packet arrives at `node` from the link (the ICRC a sender appends)."""
    node.device.port.receive(Packet(opa.append_icrc(packet), sc))


# -- PIO ----------------------------------------------------------------------------------

def test_a_pio_packet_launches_only_when_its_last_block_is_written(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    packet = ud_packet(b.lid, a.lid, UD_QP, bytes(100))  # PBC + 128 bytes: 3 blocks
    frame = pbc_for(packet).to_bytes(8, "little") + packet + bytes(-(len(packet) + 8) % 64)
    qwords = [int.from_bytes(frame[i:i + 8], "little") for i in range(0, len(frame), 8)]
    window = 0x2000000 + (hw << 16)
    for i, qword in enumerate(qwords[:-1]):
        a.device.bar_write(0, window + 8 * i + (0x1000000 if i < 8 else 0), 8, qword)
    settle(a, b)
    assert delivered(b, 2) == 0 and a.stats()["pio"]["packets"] == 0
    a.device.bar_write(0, window + 8 * (len(qwords) - 1), 8, qwords[-1])
    settle(a, b)
    assert delivered(b, 2) == 1


def test_packets_wrap_at_the_end_of_the_ring_and_keep_their_order(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]  # 18 blocks
    payloads = [bytes([n]) * 200 for n in range(9)]  # 4 blocks each: the ring wraps inside the 5th
    tail = b.driver.hdrq_head[2] // HDRQ_ENTRY_DWORDS
    for payload in payloads:
        packet = ud_packet(b.lid, a.lid, UD_QP, payload)
        a.driver.pio_copy(hw, pbc_for(packet), packet)
        settle(a, b)
    got = [b.driver.eager_bytes(2, b.driver.hdrq_entry(2, tail + i)[0], 1)[0] for i in range(len(payloads))]
    assert got == list(range(9))
    assert a.driver.credit_return(hw)["counter"] == 36


def test_credit_return_raises_the_credit_interrupt_only_while_the_driver_asks(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    source = 576 + hw
    packet = ud_packet(b.lid, a.lid, UD_QP, b"")
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    settle(a, b)
    assert not status_bit(a, source)
    ctrl = a.driver.read_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_CTRL)
    a.driver.write_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_CTRL, ctrl | cr.SEND_CTXT_CREDIT_CTRL_CREDIT_INTR_SMASK)
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    settle(a, b)
    assert status_bit(a, source)


@pytest.mark.parametrize("mistake,error", [
    ("write beyond the ring", cr.SEND_CTXT_ERR_STATUS_PIO_WRITE_OUT_OF_BOUNDS_ERR_SMASK),
    ("the same qword twice", cr.SEND_CTXT_ERR_STATUS_PIO_WRITE_OVERFLOW_ERR_SMASK),
    ("first block not through the SOP alias", cr.SEND_CTXT_ERR_STATUS_PIO_INCONSISTENT_SOP_ERR_SMASK),
    ("PBC length shorter than a header", cr.SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK),
    ("PBC length beyond the ring", cr.SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK),
    ("a new packet inside the last one's blocks", cr.SEND_CTXT_ERR_STATUS_PIO_INCONSISTENT_SOP_ERR_SMASK),
])
def test_a_pio_mistake_halts_the_context_with_its_error_and_the_driver_restart_works(fabric, mistake, error, caplog):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    window, sop = 0x2000000 + (hw << 16), 0x3000000 + (hw << 16)
    good = ud_packet(b.lid, a.lid, UD_QP, bytes(40))
    before = a.irq.count(GENERAL_VECTOR)

    def block(base, index, pbc=None):
        for q in range(8):
            value = pbc if (q == 0 and pbc is not None) else 0
            a.device.bar_write(0, base + 64 * index + 8 * q, 8, value)

    with caplog.at_level(logging.WARNING):
        if mistake == "write beyond the ring":
            a.device.bar_write(0, window + 64 * 18, 8, 0)
        elif mistake == "the same qword twice":
            a.device.bar_write(0, sop + 8, 8, 1)
            a.device.bar_write(0, sop + 8, 8, 2)
        elif mistake == "first block not through the SOP alias":
            block(window, 0, pbc_for(good))
        elif mistake == "PBC length shorter than a header":
            block(sop, 0, PBC.encode(length_dws=2))
        elif mistake == "PBC length beyond the ring":
            block(sop, 0, PBC.encode(length_dws=18 * 16 + 16))
        else:  # the PBC promises 3 blocks, the second starts a new packet
            block(sop, 0, PBC.encode(length_dws=40))
            block(sop, 1, pbc_for(good))
            block(window, 2)
        settle(a, b)
    assert a.driver.read_kctxt_csr(hw, cr.SEND_CTXT_STATUS) & cr.SEND_CTXT_STATUS_CTXT_HALTED_SMASK
    assert a.driver.read_kctxt_csr(hw, cr.SEND_CTXT_ERR_STATUS) == error
    assert status_bit(a, SEND_CTXT_ERR_SOURCE + hw) and a.irq.count(GENERAL_VECTOR) > before
    assert a.driver.credit_return(hw)["status"] == 1, "the credit word tells PSM2 the context halted"
    assert f"SEND_CTXT_STATUS[{hw}]: halted" in caplog.text
    assert delivered(b, 2) == 0

    # sc_restart: disable (errors cleared by the enable), PIO init, enable; the context sends again
    a.driver.sc_disable(hw)
    a.driver.pio_fill[hw] = 0
    a.driver.sc_enable(hw)
    a.driver.pio_copy(hw, pbc_for(good), good)
    settle(a, b)
    assert delivered(b, 2) == 1 and not a.stats()["internal_errors"]


def test_writes_to_a_disabled_context_are_dropped_and_counted(fabric):
    _, a, b = fabric
    hw = 10  # a user context: nobody opened it
    a.device.bar_write(0, 0x3000000 + (hw << 16), 8, pbc_for(bytes(32)))
    assert a.stats()["pio"]["contexts"][hw]["dropped_writes"] == 1
    a.device.bar_write(0, 0x2000000 + (200 << 16), 8, 0)  # a context number the chip does not have
    assert a.stats()["pio"]["stray_writes"] == 1


# -- SDMA ---------------------------------------------------------------------------------

def test_the_engine_waits_for_a_tail_that_covers_the_last_descriptor(fabric):
    _, a, b = fabric
    engine = 2
    packet = ud_packet(b.lid, a.lid, UD_QP, bytes(300))
    frame = pbc_for(packet).to_bytes(8, "little") + packet
    pieces = [(GUEST_BASE + PAYLOADS, 64), (GUEST_BASE + PAYLOADS + 64, len(frame) - 64)]
    a.memory.write(GUEST_BASE + PAYLOADS, frame)
    a.driver.sdma_descriptors(engine, pieces, flags1=1)
    a.driver.write_kctxt_csr(engine, cr.SEND_DMA_TAIL, 1)  # FIRST only
    settle(a, b)
    assert a.driver.sdma_head(engine) == 0 and delivered(b, 2) == 0
    a.driver.write_kctxt_csr(engine, cr.SEND_DMA_TAIL, 2)
    settle(a, b)
    assert a.driver.sdma_head(engine) == 2 and delivered(b, 2) == 1


def test_int_req_and_the_progress_period_raise_their_sources(fabric):
    _, a, b = fabric
    engine = 4
    packet = ud_packet(b.lid, a.lid, UD_QP, bytes(16))
    a.driver.write_kctxt_csr(engine, cr.SEND_DMA_RELOAD_CNT, 0)  # no Idle interrupt
    a.driver.sdma_send(engine, pbc_for(packet), packet, flags1=2)  # INT_REQ
    settle(a, b)
    assert status_bit(a, 192 + engine)
    a.driver.write_csr(cr.CCE_INT_CLEAR + 8 * 3, 1 << (192 + engine - 192))
    a.driver.write_kctxt_csr(engine, cr.SEND_DMA_DESC_CNT, 4)
    for _ in range(3):
        a.driver.sdma_send(engine, pbc_for(packet), packet, flags1=0)  # one descriptor each
    settle(a, b)
    assert not status_bit(a, 208 + engine)
    a.driver.sdma_send(engine, pbc_for(packet), packet, flags1=0)
    settle(a, b)
    assert status_bit(a, 208 + engine), "4 descriptors: one Progress interrupt"
    assert not status_bit(a, 192 + engine)


def test_a_ring_drained_by_a_full_engine_batch_still_raises_idle(fabric):
    """User SDMA (no INT_REQ, HEAD_TO_HOST only) learns of completions from
    the Idle interrupt alone: a request of exactly ENGINE_BATCH packets (a
    PSM2 1 MiB window: 128 packets) must not leave the engine drained and silent."""
    from devmodel.hfi1.sdma import ENGINE_BATCH
    _, a, b = fabric
    engine = 4
    packet = ud_packet(b.lid, a.lid, UD_QP, bytes(16))
    frame = pbc_for(packet).to_bytes(8, "little") + packet
    a.memory.write(GUEST_BASE + PAYLOADS, frame)
    a.driver.write_kctxt_csr(engine, cr.SEND_DMA_RELOAD_CNT, 0xc9)
    for _ in range(2 * ENGINE_BATCH):
        a.driver.sdma_descriptors(engine, [(GUEST_BASE + PAYLOADS, len(frame))], flags1=1)
    a.driver.write_kctxt_csr(engine, cr.SEND_DMA_TAIL, a.driver.sdma_tail[engine])
    settle(a, b)
    assert a.driver.sdma_head(engine) == 2 * ENGINE_BATCH and delivered(b, 2) == 2 * ENGINE_BATCH
    assert status_bit(a, 224 + engine), "drained: the Idle interrupt tells the driver"


@pytest.mark.parametrize("mistake,error", [
    ("a buffer outside guest memory", cr.SEND_DMA_ENG_ERR_STATUS_SDMA_MEM_READ_ERR_SMASK),
    ("no FIRST on the first descriptor", cr.SEND_DMA_ENG_ERR_STATUS_SDMA_FIRST_DESC_ERR_SMASK),
    ("a stale generation", cr.SEND_DMA_ENG_ERR_STATUS_SDMA_GEN_MISMATCH_ERR_SMASK),
    ("bytes that disagree with the PBC", cr.SEND_DMA_ENG_ERR_STATUS_SDMA_LENGTH_MISMATCH_ERR_SMASK),
    ("a tail beyond the ring", cr.SEND_DMA_ENG_ERR_STATUS_SDMA_TAIL_OUT_OF_BOUNDS_ERR_SMASK),
    ("65 descriptors without LAST", cr.SEND_DMA_ENG_ERR_STATUS_SDMA_PACKET_DESC_OVERFLOW_ERR_SMASK),
    ("an AHG descriptor", cr.SEND_DMA_ENG_ERR_STATUS_SDMA_HEADER_SELECT_ERR_SMASK),
])
def test_a_bad_descriptor_halts_the_engine_and_the_drivers_recovery_restarts_it(fabric, mistake, error):
    _, a, b = fabric
    engine = 5
    packet = ud_packet(b.lid, a.lid, UD_QP, bytes(64))
    frame = pbc_for(packet).to_bytes(8, "little") + packet
    buffer = GUEST_BASE + PAYLOADS + 0x80000
    a.memory.write(buffer, frame)
    ring = a.driver.sdma_ring(engine)
    from devmodel.hfi1.formats import SDMA_DESC0, SDMA_DESC1

    def descriptor(index, first=1, last=1, count=None, address=buffer, gen=0, ahg=0):
        count = len(frame) if count is None else count
        qw0 = SDMA_DESC0.encode(first=first, last=last, byte_count=count, address=address)
        qw1 = SDMA_DESC1.encode(generation=gen, ahg_mode=ahg)
        a.memory.write(ring + 16 * index, qw0.to_bytes(8, "little") + qw1.to_bytes(8, "little"))

    tail = 1
    if mistake == "a buffer outside guest memory":
        descriptor(0, address=0x10)
    elif mistake == "no FIRST on the first descriptor":
        descriptor(0, first=0)
    elif mistake == "a stale generation":
        descriptor(0, gen=1)
    elif mistake == "bytes that disagree with the PBC":
        descriptor(0, count=len(frame) - 4)
    elif mistake == "a tail beyond the ring":
        tail = SDMA_RING + 5
    elif mistake == "65 descriptors without LAST":
        for i in range(65):
            descriptor(i, first=int(i == 0), last=0, count=4)
        tail = 65
    else:
        descriptor(0, ahg=1)
    a.driver.write_kctxt_csr(engine, cr.SEND_DMA_TAIL, tail)
    settle(a, b)
    assert a.driver.read_kctxt_csr(engine, cr.SEND_DMA_STATUS) & cr.SEND_DMA_STATUS_ENG_HALTED_SMASK
    assert a.driver.read_kctxt_csr(engine, cr.SEND_DMA_ENG_ERR_STATUS) == error
    assert status_bit(a, SDMA_ENG_ERR_SOURCE + engine)
    assert a.driver.sdma_head(engine) == 0, "the head stays at the packet that failed"
    assert delivered(b, 2) == 0

    # the driver: clear the error, software clean-up, CLEANUP, then running from 0 again
    a.driver.write_kctxt_csr(engine, cr.SEND_DMA_ENG_ERR_CLEAR, error)
    a.driver.sdma_sendctrl(engine, intenable=True, cleanup=True)
    settle(a, b)
    assert a.driver.read_kctxt_csr(engine, cr.SEND_DMA_STATUS) & cr.SEND_DMA_STATUS_ENG_CLEANED_UP_SMASK
    a.driver.sdma_hw_start_up(engine)
    a.driver.sdma_running(engine)
    a.driver.sdma_send(engine, pbc_for(packet), packet)
    settle(a, b)
    assert delivered(b, 2) == 1 and a.driver.sdma_head(engine) == a.driver.sdma_tail[engine] == 2


# -- receive --------------------------------------------------------------------------------

def grh_ud_packet(dlid: int, slid: int, dest_qp: int, payload: bytes) -> bytes:
    """A 9B UD SEND_ONLY with a GRH (what IPoIB's multicast sends carry), without its ICRC."""
    body = opa.BTH.build(opcode=opa.Opcode.UD_SEND_ONLY, pad=0, pkey=0xFFFF, dest_qp=dest_qp, psn=7) \
        + opa.DETH.build(qkey=0x80010000, src_qp=1) + payload
    grh = bytes([0x60, 0, 0, 0]) + (len(body) + opa.ICRC_BYTES).to_bytes(2, "big") \
        + bytes([opa.GRH_NEXT_HEADER_BTH, 0xFF]) + bytes(range(32))
    lrh = opa.LRH.build(sc=0, lnh=opa.LNH_GRH, dlid=dlid, slid=slid, pkt_len=(8 + 40 + len(body)) // 4 + 1)
    return lrh + grh + body


@pytest.mark.parametrize("engine", ["pio", "sdma"])
def test_a_packet_with_a_grh_crosses_the_link_with_its_icrc_intact(fabric, engine):
    _, a, b = fabric
    packet = grh_ud_packet(b.lid, a.lid, UD_QP, bytes(range(64)))
    if engine == "pio":
        a.driver.pio_copy(a.kernel_contexts[0], pbc_for(packet), packet)
    else:
        a.driver.sdma_send(0, pbc_for(packet), packet)
    settle(a, b)
    assert a.stats()["internal_errors"] == [] and b.stats()["internal_errors"] == []
    assert delivered(b, 2) == 1
    rhf, _ = b.driver.hdrq_entry(2, b.driver.hdrq_head[2] // HDRQ_ENTRY_DWORDS)
    assert rhf["icrc_err"] == 0 and rhf["len_err"] == 0


def test_vl15_goes_to_context_0_whose_tail_is_dma_d(fabric):
    _, a, b = fabric
    smp = ud_packet(0xFFFF, a.lid, 0, bytes(256), sc=15)  # a directed-route SMP to QP0
    inject(b, smp, sc=15)
    settle(b)
    rhf, header = b.driver.hdrq_entry(0, 0)
    assert rhf["rcv_seq"] == 1 and header == smp[:28]
    assert int.from_bytes(b.memory.read(GUEST_BASE + RCV_TAIL_DMA, 8), "little") == HDRQ_ENTRY_DWORDS
    assert b.driver.read_uctxt_csr(0, cr.RCV_HDR_TAIL) == HDRQ_ENTRY_DWORDS


def test_a_tail_the_host_refuses_is_counted_apart_from_lost_packets(fabric):
    """The packet is in the header queue (the driver finds it by its
    RcvSeq); only the DMA'd tail went astray. The per-context drop counts
    are packets lost, each once."""
    _, a, b = fabric
    b.driver.write_kctxt_csr(0, cr.RCV_HDR_TAIL_ADDR, 1 << 44)  # no guest memory there
    inject(b, ud_packet(0xFFFF, a.lid, 0, bytes(64), sc=15), sc=15)
    settle(b)
    assert b.driver.hdrq_entry(0, 0)[0]["rcv_seq"] == 1
    stats = b.stats()["rcv"]["contexts"][0]
    assert stats["delivered"] == 1 and stats["tail_write_errors"] == 1 and "dma_error" not in stats


def test_a_head_inside_an_entry_still_stops_the_queue_at_that_entry(fabric):
    """RcvHdrHead counts dwords; software's head inside an entry (a process
    that wrote garbage) still means it owns that entry: the queue is full
    in front of it, not one lap later over entries software has not read."""
    _, a, b = fabric
    b.driver.write_uctxt_csr(2, cr.RCV_HDR_HEAD, 2 * HDRQ_ENTRY_DWORDS + 5)  # inside entry 2
    for i in range(3):
        inject(b, ud_packet(b.lid, a.lid, UD_QP, bytes(8 + i)))
    settle(b)
    assert delivered(b, 2) == 1, "entry 0; entry 1 is the slot a full queue keeps"
    assert len(b.device.rcv.contexts[2].held) == 2, "DONT_DROP_RHQ_FULL: the others wait"
    assert [b.driver.hdrq_entry(2, i)[0]["rcv_seq"] for i in range(3)] == [1, 0, 0]


def test_data_packets_wait_for_armed_and_vl15_does_not(fabric):
    _, a, b = fabric
    port = b.driver.read_csr(cr.DCC_CFG_PORT_CONFIG)
    b.device.dcc.set_logical_state(b.device.dcc.logical_state.__class__.INIT)  # as after a link bounce
    inject(b, ud_packet(b.lid, a.lid, UD_QP, bytes(8)))
    inject(b, ud_packet(0xFFFF, a.lid, 0, bytes(8), sc=15), sc=15)
    settle(b)
    assert delivered(b, 2) == 0 and delivered(b, 0) == 1
    assert "Init" in str(b.stats()["rcv"]["dropped"])
    b.driver.write_csr(cr.DCC_CFG_PORT_CONFIG, port)


def test_kdeth_packets_go_to_the_context_their_qp_names_with_a_56_byte_header(fabric):
    _, a, b = fabric
    kdeth = opa.KDETH0.build(kver=1, sh=0, intr=0, tid_ctrl=0, tid=0, om=0, offset=0) + bytes(4)
    body = opa.BTH.build(opcode=0xC0, pkey=0xFFFF, dest_qp=0x800001, psn=1) + kdeth + bytes(28) + b"psm2" * 8
    packet = opa.LRH.build(sc=0, lnh=2, dlid=b.lid, slid=a.lid, pkt_len=(8 + len(body)) // 4 + 1) + body
    inject(b, packet)
    settle(b)
    rhf, header = b.driver.hdrq_entry(1, 0)
    assert rhf["rcv_type"] == RcvType.EAGER and len(header) == 56 and header == packet[:56]
    assert b.driver.eager_bytes(1, rhf, 32) == b"psm2" * 8


def test_an_rsm_rule_like_ipoibs_steers_by_destination_qp_prefix(fabric):
    """hfi1_init_aip_rsm: rule 2, IB packets with LNH 2 and DestQP[23:16] 0x81,
    indexed by the DETH entropy byte into 8 map entries."""
    _, a, b = fabric
    d = b.driver
    d.write_csr(cr.RCV_RSM_CFG + 16, 2 << 60 | 1 << 2 | 16 << 32)  # type IB, enabled, map offset 16
    d.write_csr(cr.RCV_RSM_SELECT + 16, 48 | 80 << 16 | (248 + 3) << 32 | 3 << 44 | 248 << 48 | 3 << 60)
    d.write_csr(cr.RCV_RSM_MATCH + 16, 3 | 2 << 8 | 0xFF << 16 | 0x81 << 24)
    d.write_csr(cr.RCV_RSM_MAP_TABLE + 16, 0x0101010101010101)  # entries 16..23 -> context 1
    d.write_csr(cr.RCV_CTRL, d.read_csr(cr.RCV_CTRL) | cr.RCV_CTRL_RCV_RSM_ENABLE_SMASK)
    inject(b, ud_packet(b.lid, a.lid, 0x810002, bytes(16)))  # QP map alone would pick context 2
    inject(b, ud_packet(b.lid, a.lid, 0x000002, bytes(16)))
    settle(b)
    assert delivered(b, 1) == 1 and delivered(b, 2) == 1


def test_a_packet_for_another_lid_is_dropped_and_a_corrupted_one_is_flagged(fabric):
    _, a, b = fabric
    inject(b, ud_packet(b.lid + 7, a.lid, UD_QP, bytes(16)))
    packet = opa.append_icrc(ud_packet(b.lid, a.lid, UD_QP, bytes(16)))
    corrupted = packet[:30] + bytes([packet[30] ^ 1]) + packet[31:]
    b.device.port.receive(Packet(corrupted, 0))
    settle(b)
    assert delivered(b, 2) == 1
    rhf, _ = b.driver.hdrq_entry(2, 0)
    assert rhf["icrc_err"] == 1, "the driver sees the chip's verdict in the RHF"
    assert b.driver.read_csr(cr.RCV_COUNTER_ARRAY32 + 8 * 6) == 1, "RCV_ICRC_ERR_CNT"


def test_a_full_dont_drop_context_holds_packets_until_the_driver_moves_its_head(fabric):
    _, a, b = fabric
    b.driver.write_kctxt_csr(2, cr.RCV_CTXT_CTRL, 0)
    b.driver.rcvctrl_enable(2, dont_drop=True, hdrq_entries=32)
    for n in range(40):
        inject(b, ud_packet(b.lid, a.lid, UD_QP, bytes([n]) * 16))
    settle(b)
    assert delivered(b, 2) == 31 and b.stats()["rcv"]["contexts"][2]["held"] == 9
    b.driver.consume(2, 31)
    settle(b)
    assert delivered(b, 2) == 40
    firsts = [b.driver.eager_bytes(2, b.driver.hdrq_entry(2, i % 32)[0], 1)[0] for i in range(31, 40)]
    assert firsts == list(range(31, 40)), "held packets arrive in order"


def test_eager_buffers_are_not_reused_before_the_driver_frees_them(fabric):
    _, a, b = fabric
    payload = bytes(40000)  # one packet per 64 KiB eager buffer: 8 buffers
    for _ in range(9):
        inject(b, ud_packet(b.lid, a.lid, UD_QP, payload[:8000]) + bytes(0))
    settle(b)
    indexes = {b.driver.hdrq_entry(2, i)[0]["egr_index"] for i in range(delivered(b, 2))}
    assert delivered(b, 2) == 9 and indexes == {0, 1}, "8 KiB packets share buffers, 64-byte aligned"
    for _ in range(70):
        inject(b, ud_packet(b.lid, a.lid, UD_QP, payload[:8000]))
    settle(b)
    assert b.stats()["rcv"]["contexts"][2]["held"] > 0, "buffer 0 is still the driver's: eager full"
    b.driver.consume(2, delivered(b, 2), egr_head=4)
    settle(b)
    assert b.stats()["rcv"]["contexts"][2]["held"] < 28


def test_rcvavail_waits_for_the_coalescing_count_or_the_timer(fabric):
    scheduler, a, b = fabric
    vector = 17 + 2
    before = b.irq.count(vector)
    b.driver.write_csr(cr.CCE_INT_CLEAR + 8 * 4, ~0 & (1 << 64) - 1)
    inject(b, ud_packet(b.lid, a.lid, UD_QP, bytes(8)))
    b.driver.dev.bar_read(0, cr.CCE_REVISION, 8)
    scheduler.run()  # delivered, the timer (10 ticks of 64 clocks) not yet run out
    assert delivered(b, 2) == 1 and b.irq.count(vector) == before
    scheduler.advance(10 * 64 * 1.242e-9)
    assert b.irq.count(vector) == before + 1


# -- containment --------------------------------------------------------------------------

def test_an_exception_inside_the_model_freezes_the_chip_and_names_the_block(fabric, caplog, monkeypatch):
    _, a, b = fabric
    context = b.device.rcv.contexts[2]

    def broken(arrival):
        raise RuntimeError("a bug")
    monkeypatch.setattr(context, "_place", broken)
    with caplog.at_level(logging.ERROR):
        inject(b, ud_packet(b.lid, a.lid, UD_QP, bytes(8)))
        settle(b)
    assert "internal error in block rcv_context" in caplog.text and "RuntimeError: a bug" in caplog.text
    assert b.driver.read_csr(cr.CCE_STATUS) & 0xF == 0xF, "SPC frozen"
    assert b.driver.read_csr(cr.RCV_ERR_STATUS) & cr.RCV_ERR_STATUS_RX_RCV_FSM_ENCODING_ERR_SMASK
    assert status_bit(b, 1), "RXE error: the driver's freeze handling starts"
    assert b.stats()["internal_errors"] == ["rcv_context: RuntimeError: a bug"]
    # the driver unfreezes (handle_freeze); the chip answers as before
    monkeypatch.undo()
    b.driver.write_csr(cr.CCE_CTRL, cr.CCE_CTRL_SPC_UNFREEZE_SMASK)
    b.driver.wait_for_freeze_status(False)
    assert b.driver.read_csr(cr.CCE_REVISION) == b.device.config.revision


# -- review findings, kept as regressions --------------------------------------------------

def test_receive_works_again_after_a_reset_with_packets_in_flight(fabric):
    _, a, b = fabric
    inject(b, ud_packet(b.lid, a.lid, UD_QP, bytes(8)))  # queued, its ingress event pending
    b.device.reset()
    assert not b.device.port.inbound
    for _ in range(3):
        inject(b, ud_packet(b.lid, a.lid, UD_QP, bytes(8)))
    settle(b)
    assert b.stats()["rcv"]["received"] == 3, "the port posts ingress again after the reset"


def test_a_packet_too_short_for_its_headers_is_dropped_at_egress_not_a_chip_error(fabric):
    """Egress's own length checks, for a context without integrity checks
    (cap_mask NO_INTEGRITY); with them the context refuses it first
    (test_send_integrity)."""
    _, a, b = fabric
    a.driver.write_kctxt_csr(a.kernel_contexts[0], cr.SEND_CTXT_CHECK_ENABLE, 0)
    short = opa.LRH.build(sc=0, lnh=opa.LNH_GRH, dlid=b.lid, slid=a.lid, pkt_len=(20 - 8) // 4 + 1) + bytes(12)
    a.driver.pio_copy(a.kernel_contexts[0], pbc_for(short), short)
    settle(a, b)
    assert a.stats()["internal_errors"] == []
    assert "shorter than its LRH, GRH and BTH" in str(a.stats()["send"]["dropped"])
    assert a.driver.read_csr(cr.SEND_EGRESS_ERR_INFO) & cr.SEND_EGRESS_ERR_INFO_BAD_PKT_LEN_ERR_SMASK


def test_shrinking_a_send_context_under_a_pending_launch_is_harmless(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    a.driver.pio_copy(hw, pbc_for(ud_packet(b.lid, a.lid, UD_QP, bytes(8))), ud_packet(b.lid, a.lid, UD_QP, bytes(8)))
    a.driver.write_kctxt_csr(hw, cr.SEND_CTXT_CTRL, 1)  # depth 0, still enabled
    a.driver.write_csr(cr.SEND_PIO_INIT_CTXT, hw << 8 | cr.SEND_PIO_INIT_CTXT_PIO_SINGLE_CTXT_INIT_SMASK)
    settle(a, b)
    assert a.stats()["internal_errors"] == []


def test_an_invalid_eager_entry_is_never_written_to(fabric):
    _, a, b = fabric
    b.driver.hfi1_put_tid(64 * 2 + 0, 0, 0)  # context 2's first eager buffer: invalid (address 0, size 0)
    b.memory.write(GUEST_BASE, bytes(64))
    inject(b, ud_packet(b.lid, a.lid, UD_QP, b"\xaa" * 64))
    settle(b)
    assert b.memory.read(GUEST_BASE, 64) == bytes(64)
    assert b.stats()["rcv"]["contexts"][2]["dma_error"] == 1


def test_a_flooding_sender_waits_for_link_credits_and_nothing_is_dropped(fabric, monkeypatch):
    _, a, b = fabric
    from devmodel.hfi1.port import INBOUND_LIMIT
    packet = ud_packet(b.lid, a.lid, 0x800002, bytes(16))  # KDETH: context 2, eager 16 bytes each
    b.driver.write_kctxt_csr(2, cr.RCV_CTXT_CTRL, 0)
    b.driver.rcvctrl_enable(2)
    port, receive, high = b.device.port, b.device.port.receive, [0]

    def watched(packet):
        receive(packet)
        high[0] = max(high[0], len(port.inbound))
    monkeypatch.setattr(port, "receive", watched)
    for engine in range(8):
        for _ in range(120):
            a.driver.sdma_send(engine, pbc_for(packet), packet, flags1=0)
    settle(a, b)
    high = high[0]
    assert INBOUND_LIMIT // 2 < high <= INBOUND_LIMIT + 64, f"the peer's buffer peaked at {high} packets"
    assert b.stats()["rcv"]["received"] == 960, "every packet arrived"


# -- faults on the cable ------------------------------------------------------------------

def test_a_packet_the_link_corrupts_reaches_the_driver_with_the_chips_icrc_verdict(fabric):
    from devmodel.fabric import Fault, FaultKind
    _, a, b = fabric
    a.device.port.link.set_fault(a.device.port.name, Fault(FaultKind.CORRUPT, count=1, seed=1))
    hw = a.kernel_contexts[0]
    for _ in range(2):
        packet = ud_packet(b.lid, a.lid, UD_QP, bytes(64))
        a.driver.pio_copy(hw, pbc_for(packet), packet)
        settle(a, b)
    counters = a.device.port.link.counters()[f"{a.device.port.name}->{b.device.port.name}"]
    assert counters["faults_injected"] == {"corrupt": 1}
    # seed 1 flips a payload bit: the ICRC catches it (a flip in the LRH would be a DLID or length drop)
    assert delivered(b, 2) == 2 and not b.stats()["internal_errors"]
    first, _ = b.driver.hdrq_entry(2, 0)
    second, _ = b.driver.hdrq_entry(2, 1)
    assert (first["icrc_err"], second["icrc_err"]) == (1, 0), "the driver sees the chip's verdict in the RHF"
    assert b.driver.read_csr(cr.RCV_COUNTER_ARRAY32 + 8 * 6) == 1, "RCV_ICRC_ERR_CNT"


def test_a_link_taken_down_from_the_host_drops_both_ports_to_polling(fabric):
    scheduler, a, b = fabric
    link = a.device.port.link
    link.take_down()
    settle(a, b)
    for node in (a, b):
        assert node.stats()["logical_state"] == "DOWN"
        assert node.driver.read_csr(cr.DC_DC8051_DBG_ERR_INFO_SET_BY_8051) & (1 << 8), "HOST_MSG LINK_GOING_DOWN"
    assert link.counters()["state"] == "down" and link.counters()["downs_injected"] == 1
