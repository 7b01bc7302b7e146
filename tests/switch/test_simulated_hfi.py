"""Simulated HFIs answer as hfi1's SMA does: one port, the modifier's port
ignored, LID-routed SMPs once the SM gave them a LID, their PMA, P_Keys."""
from __future__ import annotations

import threading

import pytest

from devmodel.fabric import cable
from devmodel.simnode import SimulatedHfi
from devmodel.switch import Switch
from devmodel.switch.mad_packet import parse_mad_packet
from devmodel.wire import opa
from devmodel.wire import opa_sma as w
from devmodel.worker import ThreadScheduler
from testkit.switch_fabric import Fabric, FakeEnd, dr_smp, gmp_packet, lr_smp, response_data, smp_packet, status_of


def lids(fabric: Fabric) -> Fabric:
    """The SM has LID 1, the switch 2, the simulated HFI 5 (port 2)."""
    fabric.route({5: 2})
    hfi = fabric.hfi.port.live_port_info()
    hfi.lid, hfi.sm_lid, hfi.ps_phys_state = 5, 1, 0
    assert status_of(fabric.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | 1, [1, 2], w.PortInfo.build(hfi))) == 0
    return fabric


def test_the_hfi_ignores_the_modifiers_port_and_answers_for_the_port_it_has():
    fabric = Fabric()
    info = w.PortInfo.parse(response_data(fabric.dr(w.Method.GET, w.Attr.PORT_INFO, 1 << 24 | 7, [1, 2])))
    assert info.local_port_num == 1 and info.neigh_node_guid == fabric.switch.guid and info.neigh_port_num == 2
    assert info.port_neigh_mode & 3 == 1, "its neighbour is a switch"
    assert status_of(fabric.dr(w.Method.GET, w.Attr.PORT_INFO, 2 << 24 | 1, [1, 2])) == w.Status.INVALID_FIELD


def test_the_hfi_answers_lid_routed_smps_once_it_has_a_lid():
    fabric = lids(Fabric())
    reply = fabric.ask(lr_smp(w.Method.GET, w.Attr.NODE_INFO, 0), slid=1, dlid=5)
    assert w.NodeInfo.parse(reply[32:76]).node_guid == fabric.hfi.guid
    fabric.sm.send(smp_packet(lr_smp(w.Method.GET, w.Attr.NODE_INFO, 0), slid=1, dlid=6))
    fabric.run()
    assert fabric.switch.drops["unprogrammed DLID"] == 1


def test_the_hfi_p_key_table_and_sl_to_sc_as_hfi1_keeps_them():
    fabric = Fabric()
    keys = bytearray(64)
    keys[0:6] = bytes.fromhex("ffff7fff8001")
    assert status_of(fabric.dr(w.Method.SET, w.Attr.PKEY_TABLE, 1 << 24, [1, 2], bytes(keys))) == 0
    assert response_data(fabric.dr(w.Method.GET, w.Attr.PKEY_TABLE, 1 << 24, [1, 2]))[:64] == bytes(keys)
    table = bytes(range(31, -1, -1))
    assert status_of(fabric.dr(w.Method.SET, w.Attr.SL_TO_SC, 0, [1, 2], table)) == 0
    assert response_data(fabric.dr(w.Method.GET, w.Attr.SL_TO_SC, 0, [1, 2]))[:32] == table
    assert status_of(fabric.dr(w.Method.GET, w.Attr.SWITCH_INFO, 0, [1, 2])) == w.Status.UNSUPPORTED_METHOD_ATTR
    assert status_of(fabric.dr(w.Method.GET, w.Attr.SC_TO_VLR, 1 << 24, [1, 2])) == w.Status.UNSUPPORTED_METHOD_ATTR


def test_the_hfi_pma_counts_what_it_received():
    fabric = lids(Fabric())
    fabric.activate(1)
    assert fabric.set_switch_port_state(2, w.PortState.ARMED) == 0
    hfi = fabric.hfi.port.live_port_info()
    for state in (w.PortState.ARMED, w.PortState.ACTIVE):
        hfi.ps_phys_state = state
        assert status_of(fabric.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | 1, [1, 2], w.PortInfo.build(hfi))) == 0
    assert fabric.set_switch_port_state(2, w.PortState.ACTIVE) == 0
    select = (1 << 1).to_bytes(32, "big") + bytes(8)
    before = len(fabric.sm.received)
    fabric.sm.send(gmp_packet(lr_smp(w.Method.GET, w.PmaAttr.DATA_PORT_COUNTERS, 1 << 24, select, mgmt_class=4),
                              slid=1, dlid=5))
    fabric.run()
    reply = parse_mad_packet(fabric.sm.received[before])
    counters = w.PORT_DATA_COUNTERS.parse(reply.mad[24 + 40:24 + 40 + 136])
    assert counters["port_number"] == 1 and counters["port_rcv_pkts"] == fabric.hfi.counters.port_rcv_pkts > 0


def pma_get(fabric: Fabric, attr: int, am: int, data: bytes, dlid: int) -> bytearray:
    before = len(fabric.sm.received)
    fabric.sm.send(gmp_packet(lr_smp(w.Method.GET, attr, am, data, mgmt_class=4), slid=1, dlid=dlid))
    fabric.run()
    (reply,) = [parse_mad_packet(p).mad for p in fabric.sm.received[before:]]
    return reply


def test_the_hfi_pma_answers_port_status_as_hfi1_does_and_the_switch_does_not():
    """opafm's PM asks every HFI for PortStatus (0x40) and warns of each one that refuses."""
    fabric = lids(Fabric())
    fabric.activate(1)
    assert fabric.set_switch_port_state(2, w.PortState.ARMED) == 0
    hfi = fabric.hfi.port.live_port_info()
    for state in (w.PortState.ARMED, w.PortState.ACTIVE):
        hfi.ps_phys_state = state
        assert status_of(fabric.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | 1, [1, 2], w.PortInfo.build(hfi))) == 0
    assert fabric.set_switch_port_state(2, w.PortState.ACTIVE) == 0
    request = w.PortStatusRequest.build(dict(port_num=0, reserved=bytes(3), vl_select_mask=0x8001))
    reply = pma_get(fabric, w.PmaAttr.PORT_STATUS, 1 << 24, request, dlid=5)
    assert status_of(reply) == 0
    status = w.PORT_STATUS.parse(reply[24:24 + w.PORT_STATUS.size])
    assert (status["port_num"], status["vl_select_mask"], status["link_quality_indicator"]) == (1, 0x8001, 5)
    assert status["port_rcv_pkts"] == fabric.hfi.counters.port_rcv_pkts > 0
    assert reply[24 + w.PORT_STATUS.size:24 + w.PORT_STATUS.size + 2 * w.VL_PORT_STATUS_BYTES] == bytes(224)
    for am, port, mask in ((2 << 24, 0, 1), (1 << 24, 2, 1), (1 << 24, 1, 0x100)):
        bad = w.PortStatusRequest.build(dict(port_num=port, reserved=bytes(3), vl_select_mask=mask))
        assert status_of(pma_get(fabric, w.PmaAttr.PORT_STATUS, am, bad, dlid=5)) == w.Status.INVALID_FIELD
    assert status_of(pma_get(fabric, w.PmaAttr.PORT_STATUS, 1 << 24, request, dlid=2)) == \
        w.Status.UNSUPPORTED_METHOD_ATTR, "a switch's PMA has no PortStatus"


def test_guid_bits_30_and_31_must_be_clear():
    with pytest.raises(ValueError, match="bits 30-31"):
        SimulatedHfi("bad", 1 << 30, worker=None)


def test_a_switch_and_hfis_on_the_process_scheduler_thread_answer_without_deadlock():
    scheduler = ThreadScheduler("switch-test")
    try:
        switch = Switch("sw", 0x0011750000100000, 4, scheduler.worker("sw"))
        sm = FakeEnd("sm", 0x0011750000000001)
        cable(sm, switch.ports[1])
        hfis = [SimulatedHfi(f"n{n}", 0x0011750000000010 + n, scheduler.worker(f"n{n}")) for n in (2, 3, 4)]
        for n, hfi in zip((2, 3, 4), hfis):
            cable(hfi, switch.ports[n])
        done = threading.Event()
        original = sm.receive

        def receive(packet):
            original(packet)
            if len(sm.received) == 30:
                done.set()
        sm.receive = receive
        switch.worker.settle(0.0, 5.0)
        for _ in range(10):
            for n in (2, 3, 4):
                sm.send(smp_packet(dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, [1, n])))
        assert done.wait(10), f"{len(sm.received)} replies"
        assert switch.internal_errors == 0 and all(h.internal_errors == 0 for h in hfis)
        assert all(parse_mad_packet(p).mad[1] == opa.MGMT_CLASS_SUBN_DIRECTED_ROUTE for p in sm.received)
    finally:
        scheduler.stop()
