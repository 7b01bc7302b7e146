"""More than one switch, and many simulated HFIs: discovery across switches, a
routing loop that must not hang, port 0 activation, a sweep of a 48-port switch."""
from __future__ import annotations

import time

from devmodel.fabric import cable
from devmodel.simnode import SimulatedHfi
from devmodel.switch import Drop, Switch, smi
from devmodel.switch.mad_packet import parse_mad_packet
from devmodel.wire import opa_sma as w
from devmodel.worker import ManualScheduler
from testkit.switch_fabric import PS_PHYS_STATE_OFFSET, FakeEnd, data_packet, dr_smp, response_data, smp_packet, status_of


class TwoSwitches:
    """SM --p1 [A] p3 -- p1 [B] p2 -- HFI; A.p2 -- HFI; A.p4 -- B.p3 (a second link)"""

    def __init__(self):
        self.scheduler = ManualScheduler()
        self.a = Switch("A", 0x0011750000100000, 4, self.scheduler.worker("A"))
        self.b = Switch("B", 0x0011750000200000, 4, self.scheduler.worker("B"))
        self.sm = FakeEnd("sm", 0x0011750000000001)
        self.hfis = {name: SimulatedHfi(name, guid, self.scheduler.worker(name))
                     for name, guid in (("a2", 0x0011750000000002), ("b2", 0x0011750000000003))}
        cable(self.sm, self.a.ports[1])
        cable(self.hfis["a2"], self.a.ports[2])
        self.isl = cable(self.a.ports[3], self.b.ports[1])
        cable(self.hfis["b2"], self.b.ports[2])
        self.isl2 = cable(self.a.ports[4], self.b.ports[3])
        self.scheduler.run_until_idle()

    def dr(self, method, attr_id, am, path, data=b""):
        before = len(self.sm.received)
        self.sm.send(smp_packet(dr_smp(method, attr_id, am, path, data)))
        self.scheduler.run_until_idle()
        replies = [parse_mad_packet(p).mad for p in self.sm.received[before:]]
        assert len(replies) == 1, (dict(self.a.drops), dict(self.b.drops))
        return replies[0]

    def set_state(self, path, port, state):
        switch = self.a if len(path) == 1 else self.b
        info = bytearray(w.PortInfo.build(switch.managed_port(port).live_port_info()))
        info[PS_PHYS_STATE_OFFSET] = state
        return status_of(self.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | port, path, bytes(info)))


def test_dr_discovery_crosses_two_switches_and_comes_back():
    fabric = TwoSwitches()
    b = w.NodeInfo.parse(response_data(fabric.dr(w.Method.GET, w.Attr.NODE_INFO, 0, [1, 3])))
    assert (b.node_type, b.node_guid, b.local_port_num) == (2, fabric.b.guid, 1)
    hfi = w.NodeInfo.parse(response_data(fabric.dr(w.Method.GET, w.Attr.NODE_INFO, 0, [1, 3, 2])))
    assert (hfi.node_type, hfi.node_guid) == (1, fabric.hfis["b2"].guid)
    a3 = w.PortInfo.parse(response_data(fabric.dr(w.Method.GET, w.Attr.PORT_INFO, 1 << 24 | 3, [1])))
    assert a3.neigh_node_guid == fabric.b.guid and a3.neigh_port_num == 1 and a3.port_neigh_mode & 3 == 1


def test_the_inter_switch_link_goes_active_on_both_ends_through_idle_messages():
    fabric = TwoSwitches()
    assert fabric.set_state([1], 3, w.PortState.ARMED) == 0
    assert fabric.set_state([1, 3], 1, w.PortState.ARMED) == 0
    assert fabric.a.ports[3].managed.neighbor_normal and fabric.b.ports[1].managed.neighbor_normal
    assert fabric.set_state([1], 3, w.PortState.ACTIVE) == 0
    assert fabric.set_state([1, 3], 1, w.PortState.ACTIVE) == 0


def test_port_0_goes_armed_and_active_without_a_neighbour():
    fabric = TwoSwitches()
    assert fabric.set_state([1], 0, w.PortState.ARMED) == 0
    assert fabric.set_state([1], 0, w.PortState.ACTIVE) == 0
    assert fabric.a.port0.state == w.PortState.ACTIVE


def test_a_routing_loop_between_two_switches_ends_in_a_counted_drop_not_a_hang():
    """A sends LID 9 to B over one link, B sends it back over the other: a loop."""
    fabric = TwoSwitches()
    ports = (([1], 1), ([1], 3), ([1], 4), ([1, 3], 1), ([1, 3], 3))
    for path, port in ports:
        assert fabric.set_state(path, port, w.PortState.ARMED) == 0
    fabric.sm.idle(1)
    fabric.scheduler.run_until_idle()
    for path, port in ports:
        assert fabric.set_state(path, port, w.PortState.ACTIVE) == 0
    lft = bytearray([0xFF] * 64)
    lft[9] = 3
    assert status_of(fabric.dr(w.Method.SET, w.Attr.LINEAR_FWD, 1 << 24, [1], bytes(lft))) == 0
    assert status_of(fabric.dr(w.Method.SET, w.Attr.LINEAR_FWD, 1 << 24, [1, 3], bytes(lft))) == 0
    before = fabric.a.forwarded + fabric.b.forwarded
    fabric.sm.send(data_packet(dlid=9))
    fabric.scheduler.run_until_idle()
    assert fabric.a.drops[Drop.LIFETIME] + fabric.b.drops[Drop.LIFETIME] == 1
    assert fabric.a.forwarded + fabric.b.forwarded - before == 64, "64 hops, then the packet's lifetime ends"


def test_an_end_node_drops_a_dr_smp_that_asks_it_to_forward():
    fabric = TwoSwitches()
    fabric.sm.send(smp_packet(dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, [1, 2, 1])))
    fabric.scheduler.run_until_idle()
    assert fabric.hfis["a2"].drops[smi.DropReason.NOT_A_SWITCH.value] == 1


def test_a_48_port_switch_with_47_simulated_hfis_is_swept_quickly():
    scheduler = ManualScheduler()
    switch = Switch("big", 0x0011750000100000, 48, scheduler.worker("big"))
    sm = FakeEnd("sm", 0x0011750000000001)
    cable(sm, switch.ports[1])
    hfis = [SimulatedHfi(f"n{n}", 0x0011750000001000 + n, scheduler.worker(f"n{n}")) for n in range(2, 49)]
    for n, hfi in zip(range(2, 49), hfis):
        cable(hfi, switch.ports[n])
    scheduler.run_until_idle()
    start = time.monotonic()
    guids = []
    for n in range(2, 49):
        sm.send(smp_packet(dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, [1, n])))
        sm.send(smp_packet(dr_smp(w.Method.GET, w.Attr.PORT_INFO, 1 << 24 | 1, [1, n])))
    scheduler.run_until_idle()
    for packet in sm.received:
        mad = parse_mad_packet(packet).mad
        if int.from_bytes(mad[16:18], "big") == w.Attr.NODE_INFO:
            guids.append(w.NodeInfo.parse(response_data(mad)).node_guid)
    elapsed = time.monotonic() - start
    assert sorted(guids) == [hfi.guid for hfi in hfis]
    assert len(sm.received) == 2 * 47 and elapsed < 5
