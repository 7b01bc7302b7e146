"""Forwarding: LFT and MFT, drops counted, SC mapping, PMA counters, credit back-pressure."""
from __future__ import annotations

from devmodel.fabric import Packet
from devmodel.switch import Drop
from devmodel.switch.mad_packet import parse_mad_packet
from devmodel.switch.port import EGRESS_LIMIT
from devmodel.wire import opa
from devmodel.wire import opa_sma as w
from testkit.switch_fabric import Fabric, data_packet, gmp_packet, lr_smp, response_data, status_of


def programmed(fabric: Fabric, routes: dict[int, int]) -> Fabric:
    """LIDs: the SM 1, the switch 2; `routes` LID -> port; ports 1, 3, 4 Active."""
    fabric.route(routes)
    for port in (1, 3, 4):
        fabric.activate(port)
    return fabric


def test_a_9b_packet_is_forwarded_by_dlid_through_the_lft():
    fabric = programmed(Fabric(), {3: 3, 4: 4})
    packet = data_packet(dlid=4)
    fabric.sm.send(packet)
    fabric.run()
    assert [p.data for p in fabric.ends[4].received] == [packet.data] and not fabric.ends[3].received
    assert opa.icrc_ok(fabric.ends[4].received[0].data)


def test_a_packet_the_model_fails_on_is_lost_and_counted_and_the_port_goes_on(monkeypatch):
    fabric = programmed(Fabric(), {4: 4})
    route = fabric.switch._route
    calls = []

    def failing_once(port, packet):
        calls.append(packet)
        if len(calls) == 1:
            raise RuntimeError("a bug in the model")
        return route(port, packet)
    monkeypatch.setattr(fabric.switch, "_route", failing_once)
    first, second = data_packet(dlid=4), data_packet(dlid=4, payload=b"second")
    fabric.sm.send(first)
    fabric.sm.send(second)
    fabric.run()
    assert fabric.switch.internal_errors == 1
    assert [p.data for p in fabric.ends[4].received] == [second.data], "the next packet is not stuck behind it"


def test_a_16b_packet_is_forwarded_by_its_24_bit_dlid():
    fabric = programmed(Fabric(), {3: 3})
    lrh = opa.LRH_16B.build(age=0, entropy=0, pkey=0x8001, dlid_high=0, slid_high=0, l4=9, l2=2, fecn=0, rc=0,
                            sc=0, dlid_low=3, becn=0, len_flits=4, slid_low=1)
    fabric.sm.send(Packet(lrh + bytes(16), sc=0, bypass=True))
    fabric.run()
    assert len(fabric.ends[3].received) == 1 and fabric.ends[3].received[0].bypass


def test_multicast_goes_to_every_port_in_the_mft_but_the_one_it_came_from():
    fabric = programmed(Fabric(), {})
    block = bytearray(64)
    block[0:8] = ((1 << 1) | (1 << 3) | (1 << 4)).to_bytes(8, "big")  # MFT entry 0 (DLID 0xC000)
    assert status_of(fabric.dr(w.Method.SET, w.Attr.MULTICAST_FWD, 1 << 24, [1], bytes(block))) == 0
    got = response_data(fabric.dr(w.Method.GET, w.Attr.MULTICAST_FWD, 1 << 24, [1]))[:64]
    assert got == bytes(block)
    fabric.sm.send(data_packet(dlid=0xC000))
    fabric.run()
    assert len(fabric.ends[3].received) == len(fabric.ends[4].received) == 1
    assert len([p for p in fabric.sm.received if p.sc == 0]) == 0, "not back out of its ingress port"


def test_unprogrammed_dlid_and_dead_port_are_dropped_and_counted():
    fabric = programmed(Fabric(), {4: 4})
    fabric.sm.send(data_packet(dlid=9))
    fabric.links[4].take_down()
    fabric.run()
    fabric.sm.send(data_packet(dlid=4))
    fabric.run()
    assert fabric.switch.drops[Drop.UNPROGRAMMED] == 1 and fabric.switch.drops[Drop.DEAD_PORT] == 1
    assert fabric.switch.ports[1].counters.port_rcv_switch_relay_errors == 1
    assert fabric.switch.ports[4].counters.port_xmit_discards == 1


def test_an_lft_entry_naming_a_port_that_does_not_exist_or_the_ingress_is_dropped():
    fabric = programmed(Fabric(), {5: 9, 6: 1})
    fabric.sm.send(data_packet(dlid=5))
    fabric.sm.send(data_packet(dlid=6))
    fabric.run()
    assert fabric.switch.drops[Drop.NO_PORT] == 1 and fabric.switch.drops[Drop.LOOP] == 1


def test_data_packets_wait_for_active_ports():
    fabric = Fabric()
    fabric.sm.send(data_packet(dlid=3))
    fabric.run()
    assert fabric.switch.drops[Drop.NOT_ACTIVE] == 1


def test_sc_to_sc_rewrites_the_service_channel_on_the_way_out():
    fabric = programmed(Fabric(), {3: 3})
    table = bytearray(range(32))
    table[0] = 5
    assert status_of(fabric.dr(w.Method.SET, w.Attr.SC_TO_SC, 1 << 24 | 1 << 8 | 3, [1], bytes(table))) == 0
    fabric.sm.send(data_packet(dlid=3, sc=0))
    fabric.run()
    out = fabric.ends[3].received[0]
    assert out.sc == 5 and out.data[0] >> 4 == 5 and opa.icrc_ok(out.data)


def test_pma_counters_reflect_forwarded_traffic_and_clear():
    fabric = programmed(Fabric(), {3: 3})
    for _ in range(5):
        fabric.sm.send(data_packet(dlid=3))
    fabric.run()
    select = (1 << 3).to_bytes(32, "big")
    request = lr_smp(w.Method.GET, w.PmaAttr.DATA_PORT_COUNTERS, 1 << 24, select + (1).to_bytes(4, "big") + bytes(4),
                     mgmt_class=opa.MGMT_CLASS_PERF_MGMT)
    before = len(fabric.sm.received)
    fabric.sm.send(gmp_packet(request, slid=1, dlid=2))
    fabric.run()
    reply = parse_mad_packet(fabric.sm.received[before])
    assert reply.dest_qp == 1 and status_of(reply.mad) == 0
    counters = w.PORT_DATA_COUNTERS.parse(reply.mad[24 + 40:24 + 40 + 136])
    assert counters["port_number"] == 3 and counters["port_xmit_pkts"] == 5 and counters["port_xmit_data"] > 0
    clear = lr_smp(w.Method.SET, w.PmaAttr.CLEAR_PORT_STATUS, 0, select + (0xFFFFFFE0).to_bytes(4, "big"),
                   mgmt_class=opa.MGMT_CLASS_PERF_MGMT)
    fabric.sm.send(gmp_packet(clear, slid=1, dlid=2))
    fabric.run()
    assert fabric.switch.ports[3].counters.port_xmit_pkts == 0


def test_pma_class_port_info_error_counters_and_error_info():
    fabric = programmed(Fabric(), {})
    select = (1 << 1).to_bytes(32, "big") + bytes(8)
    for attr in (w.PmaAttr.CLASS_PORT_INFO, w.PmaAttr.ERROR_PORT_COUNTERS, w.PmaAttr.ERROR_INFO):
        before = len(fabric.sm.received)
        fabric.sm.send(gmp_packet(lr_smp(w.Method.GET, attr, 1 << 24, select, mgmt_class=4), slid=1, dlid=2))
        fabric.run()
        reply = parse_mad_packet(fabric.sm.received[before])
        assert status_of(reply.mad) == 0, attr
    assert w.ClassPortInfo.parse(b"\x80\x80" + bytes(78)).base_version == 0x80


def test_credit_back_pressure_holds_packets_instead_of_dropping_them():
    fabric = programmed(Fabric(), {3: 3})
    end = fabric.ends[3]
    end.room_available = False
    total = EGRESS_LIMIT + 300
    for _ in range(total):
        fabric.sm.send(data_packet(dlid=3))
    fabric.run()
    assert not end.received and not fabric.switch.drops
    assert len(fabric.switch.ports[3].egress) == EGRESS_LIMIT, "the egress queue is full..."
    assert fabric.switch.ports[1].inbound, "... and the rest waits in the ingress buffer (credits)"
    end.room_available = True
    fabric.links[3].room_freed(end)
    fabric.run()
    assert len(end.received) == total and not fabric.switch.drops


def test_a_multicast_held_for_a_full_egress_counts_its_dead_member_once():
    fabric = programmed(Fabric(), {4: 4})
    block = bytearray(64)
    block[0:8] = ((1 << 1) | (1 << 3) | (1 << 4)).to_bytes(8, "big")  # MFT entry 0 (DLID 0xC000)
    assert status_of(fabric.dr(w.Method.SET, w.Attr.MULTICAST_FWD, 1 << 24, [1], bytes(block))) == 0
    fabric.links[3].take_down()  # a member before the full one
    end = fabric.ends[4]
    end.room_available = False
    for _ in range(EGRESS_LIMIT):
        fabric.sm.send(data_packet(dlid=4))
    fabric.sm.send(data_packet(dlid=0xC000))
    fabric.run()
    assert len(fabric.switch.ports[4].egress) == EGRESS_LIMIT and fabric.switch.ports[1].inbound, "held"
    end.room_available = True
    fabric.links[4].room_freed(end)
    fabric.run()
    assert len(end.received) == EGRESS_LIMIT + 1
    assert fabric.switch.drops[Drop.DEAD_PORT] == 1
    assert fabric.switch.ports[3].counters.port_xmit_discards == 1
