"""Expected receive: KDETH packets placed by TID straight into the pages an
RcvArray PT_EXPECTED entry names (what PSM2's rendezvous and the driver's
TID_UPDATE rely on), on two models driven as the driver does
(hfi1_datapath.py), and what the chip does with bad TIDs: TidErr in the RHF,
nothing written, never another context's memory."""
from __future__ import annotations

import pytest
from hfi1_datapath import GUEST_BASE, pair, settle

from devmodel.fabric import Packet
from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import RcvType
from devmodel.wire import opa

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
    return 64 * ctxt + 16  # after the context's eager entries (hfi1_datapath: 64 * ctxt, 8 of them)


def tid_ctrl(ctxt: int) -> int:
    """RCV_TID_CTRL as hfi1_rcvctrl writes it: base and entry count, each / 8."""
    return (2 * PAIRS >> 3) << cr.RCV_TID_CTRL_TID_PAIR_CNT_SHIFT | expected_base(ctxt) >> 3


def page(n: int) -> int:
    return PAGES + 0x1000 * n


def kdeth_packet(node, ctxt: int, payload: bytes, tid_ctrl: int, tid: int, offset: int, om: int = 0,
                 psn: int = 0) -> bytes:
    """What PSM2 or the driver's user SDMA puts on the wire for an expected
    transfer: LRH, BTH (KDETH QP prefix, context in DestQP[7:0]), KDETH with
    TIDCtrl/TID/Offset/OM, PSM2's 28-byte header rest, payload."""
    kdeth = opa.KDETH0.build(kver=1, sh=0, intr=0, tid_ctrl=tid_ctrl, tid=tid, om=om, offset=offset) + bytes(4)
    body = opa.BTH.build(opcode=0xC0, pkey=0xFFFF, dest_qp=opa.KDETH_QP_PREFIX << 16 | ctxt, psn=psn) \
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
