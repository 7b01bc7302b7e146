"""A capture of a link between two HFIs, read back by Debian's tshark: an SMP
and a verbs packet decode as Omni-Path (`opa`, `opa.mad`), with the fields
the sending driver put there."""
from __future__ import annotations

import pytest

from devmodel.wire import opa
from images.provision.tshark import provision_tshark
from testkit.hfi1.datapath import pair, pbc_for, settle, ud_packet

UD_QP = 0x12


@pytest.fixture(scope="module")
def tshark():
    return provision_tshark()  # unpacked by `python -m images provision`: from the cache, no network


def smp_get_node_info(slid: int, tid: int) -> bytes:
    """A directed-route SubnGet(NodeInfo) to QP0 on VL15, as opafm sends it."""
    mad = opa.MadHeader.build(dict(base_version=opa.OPA_MGMT_BASE_VERSION,
                                   mgmt_class=opa.MGMT_CLASS_SUBN_DIRECTED_ROUTE, class_version=0x80, method=1,
                                   status=0, class_specific=0x0001, tid=tid, attr_id=0x0011, attr_mod=0))
    return ud_packet(0xFFFF, slid, 0, mad + bytes(256 - len(mad)), src_qp=0, sc=15, qkey=0)


def test_tshark_decodes_an_smp_and_a_verbs_packet_from_the_capture(tshark, tmp_path):
    path = str(tmp_path / "ab.pcap")
    with pair() as (_, a, b):
        link = a.device.port.link
        link.start_capture(path)
        smp = smp_get_node_info(a.lid, tid=0x1234)
        a.driver.pio_copy(a.vl15_context, pbc_for(smp, vl=15, sc4=0), smp)
        verbs = ud_packet(b.lid, a.lid, UD_QP, b"hello over omni-path" + bytes(12), src_qp=0x45)
        a.driver.pio_copy(a.kernel_contexts[0], pbc_for(verbs), verbs)
        settle(a, b)
        assert link.stop_capture()["packets"] == 2
    rows = tshark.fields(path, "erf.flags.cap", "opa.9b.dlid", "opa.9b.slid", "opa.bth.opcode", "opa.bth.destqp",
                         "opa.mad.mgmtclass", "opa.mad.attributeid", "opa.mad.transactionid", "opa.deth.srcqp")
    smp_row, verbs_row = rows
    assert smp_row[:5] == ["0", "0xffff", f"{a.lid:#06x}", "0x64", "0x000000"]
    assert smp_row[5:8] == ["0x81", "0x0011", "0x0000000000001234"]
    assert verbs_row[:5] == ["0", f"{b.lid:#06x}", f"{a.lid:#06x}", "0x64", "0x000012"] and verbs_row[8] == "0x000045"
    protocols = tshark.fields(path, "frame.protocols")
    assert protocols[0] == ["erf:opa:opa.mad"] and protocols[1][0].startswith("erf:opa")
