"""Two HFI models cabled back to back, each driven through the project's
vfio-user client the way the hfi1 driver drives it (testkit/hfi1/datapath.py): probe,
receive contexts, send contexts, SDMA start-up, LinkUp, LIDs, Active; then
packets from A's guest memory land in B's. Time is a ManualScheduler shared by
both devices, so every run takes the same steps."""
from __future__ import annotations

import pytest

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import RcvType
from devmodel.wire import opa
from testkit.hfi1.datapath import EAGER_BUFFER_BYTES, HDRQ_ENTRY_DWORDS, IS_RCVAVAIL_START, pair, pbc_for, settle, ud_packet

GENERAL, RCV_VECTOR_BASE = 0, 17  # set_up_interrupts: kernel receive context c on 1 + 16 engines + c
UD_QP = 0x12  # QPN bit 1 set: the QP map sends it to kernel context 2
HEAD_TO_HOST, INT_REQ = 1, 2


@pytest.fixture(scope="module")
def wire():
    with pair(over_the_wire=True) as fabric:
        yield fabric


def test_both_ports_are_active_with_each_other_as_neighbour(wire):
    _, a, b = wire
    for me, peer in ((a, b), (b, a)):
        stats = me.stats()
        assert (stats["physical_state"], stats["logical_state"]) == ("LINKUP", "ACTIVE")
        assert me.driver.read_csr(cr.DC_DC8051_STS_REMOTE_GUID) == peer.device.config.guid
        assert me.driver.read_csr(cr.DC_DC8051_STS_REMOTE_NODE_TYPE) == 0  # an HFI
    assert a.stats()["undeclared_csr_accesses"] == b.stats()["undeclared_csr_accesses"] == 0


def test_a_ud_packet_sent_by_pio_lands_in_bs_header_queue_and_eager_buffer_with_an_interrupt(wire):
    scheduler, a, b = wire
    payload = bytes(range(100))
    packet = ud_packet(dlid=b.lid, slid=a.lid, dest_qp=UD_QP, payload=payload)
    ctxt = 2
    before = b.irq.count(RCV_VECTOR_BASE + ctxt)
    tail = b.driver.hdrq_head[ctxt] // HDRQ_ENTRY_DWORDS
    a.driver.pio_copy(a.kernel_contexts[0], pbc_for(packet), packet)
    settle(a, b)

    rhf, header = b.driver.hdrq_entry(ctxt, tail)
    assert rhf["rcv_seq"] == 1 and rhf["rcv_type"] == RcvType.IB
    assert rhf["pkt_len"] == (len(packet) + opa.ICRC_BYTES) // 4, "LRH through ICRC, in dwords"
    assert header == packet[:28], "split after the DETH: LRH 8 + BTH 12 + DETH 8"
    assert rhf["hdrq_offset"] == HDRQ_ENTRY_DWORDS - 2 - 7
    assert rhf["use_egr_buf"] == 1 and rhf["egr_index"] == 0 and rhf["egr_offset"] == 0
    assert rhf["icrc_err"] == rhf["len_err"] == 0
    eager = b.driver.eager_bytes(ctxt, rhf, len(payload) + opa.ICRC_BYTES)
    assert eager[:len(payload)] == payload
    assert opa.icrc_ok(packet + eager[len(payload):]), "the ICRC the sending chip appended"
    assert b.irq.count(RCV_VECTOR_BASE + ctxt) == before + 1, "RcvAvail on context 2's vector"
    assert b.driver.read_csr(cr.CCE_INT_STATUS + 8 * ((IS_RCVAVAIL_START + ctxt) // 64)) >> (
        (IS_RCVAVAIL_START + ctxt) % 64) & 1
    b.driver.consume(ctxt)


def test_pio_credits_come_back_to_the_address_the_driver_gave(wire):
    scheduler, a, b = wire
    hw = a.kernel_contexts[0]
    packet = ud_packet(dlid=b.lid, slid=a.lid, dest_qp=UD_QP, payload=bytes(200))  # 4 blocks with the PBC
    before = a.driver.credit_return(hw)["counter"]
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    settle(a, b)
    returned = a.driver.credit_return(hw)
    assert (returned["counter"] - before) % 2048 == 4 and returned["status"] == 0
    assert a.driver.read_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_STATUS) & 0x7FF == returned["counter"]
    b.driver.consume(2)


def test_an_sdma_packet_reaches_b_and_a_learns_its_head_and_idle(wire):
    scheduler, a, b = wire
    engine, ctxt = 3, 2
    payload = b"vfnic" * 400  # 2000 bytes: header and payload in two descriptors
    packet = ud_packet(dlid=b.lid, slid=a.lid, dest_qp=UD_QP, payload=payload)
    tail = b.driver.hdrq_head[ctxt] // HDRQ_ENTRY_DWORDS
    idle_before = a.irq.count(1 + engine)
    a.driver.sdma_send(engine, pbc_for(packet), packet, flags1=HEAD_TO_HOST)
    settle(a, b)

    assert a.driver.sdma_head(engine) == a.driver.sdma_tail[engine] == 2
    head_dma = a.memory.read(a.driver.memory.base + 0x800 + 64 * engine, 8)
    assert int.from_bytes(head_dma, "little") == 2, "HEAD_TO_HOST wrote the head"
    assert a.irq.count(1 + engine) == idle_before + 1, "SDmaIdle on the engine's vector"
    rhf, header = b.driver.hdrq_entry(ctxt, tail)
    assert header == packet[:28]
    assert b.driver.eager_bytes(ctxt, rhf, len(payload)) == payload
    b.driver.consume(ctxt)


def test_a_full_header_queue_without_dont_drop_drops_and_counts_and_overwrites_nothing(wire):
    scheduler, a, b = wire
    ctxt = 1
    b.driver.write_kctxt_csr(ctxt, cr.RCV_CTXT_CTRL, 0)  # disable, then re-enable with a 32-entry queue
    b.driver.rcvctrl_enable(ctxt, dont_drop=False, hdrq_entries=32)
    packets = [ud_packet(dlid=b.lid, slid=a.lid, dest_qp=0x10, payload=bytes([n]) * 64) for n in range(40)]
    for packet in packets:
        a.driver.pio_copy(a.kernel_contexts[0], pbc_for(packet), packet)
        settle(a, b)
    # 31 entries fit (the 32nd would make the tail reach the head)
    seqs = [b.driver.hdrq_entry(ctxt, i)[0]["rcv_seq"] for i in range(32)]
    assert seqs[:31] == [n % 13 + 1 for n in range(31)] and seqs[31] == 0
    firsts = [b.driver.eager_bytes(ctxt, b.driver.hdrq_entry(ctxt, i)[0], 1)[0] for i in range(31)]
    assert firsts == list(range(31)), "the entries the driver owns still hold the first 31 packets"
    assert b.driver.read_kctxt_csr(ctxt, cr.RCV_HDR_OVFL_CNT) == 9
    assert b.stats()["rcv"]["contexts"][ctxt]["hdrq_full"] == 9

    b.driver.consume(ctxt, 31)  # the driver catches up: the queue takes packets again
    a.driver.pio_copy(a.kernel_contexts[0], pbc_for(packets[0]), packets[0])
    settle(a, b)
    assert b.driver.hdrq_entry(ctxt, 31)[0]["rcv_seq"] == 31 % 13 + 1
    assert EAGER_BUFFER_BYTES  # (eager space is 64 KiB a buffer: 40 small packets fit in the first)
