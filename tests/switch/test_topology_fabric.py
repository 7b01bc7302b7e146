"""A fabric built from a topology: two edge switches linked directly, the
SM's port behind one, simulated HFIs behind both. Directed-route,
LID-routed and LR-DR SMPs cross both switches; hfi1 models come from the
registry with the topology's names; a 256-node fabric is built quickly and
then does nothing at all while nothing happens."""
from __future__ import annotations

import time

import pytest

from devmodel import registry
from devmodel.fabric.topology import GUID_SIMULATED, GUID_SWITCH, ServedHfis, build_fabric, edge_switch, parse_topology
from devmodel.switch import smi
from devmodel.switch.mad_packet import parse_mad_packet
from devmodel.wire import opa_sma as w
from devmodel.worker import ManualScheduler
from testkit.switch_fabric import FakeEnd, dr_smp, lr_smp, response_data, smp_packet, status_of

SM_GUID = 0x0011750000000001
SM_LID, EDGE1_LID, EDGE2_LID, SIM_LID = 1, 2, 3, 10
ISL = 8

TWO_TIER = {
    "switches": {"edge1": {"ports": ISL}, "edge2": {"ports": ISL}},
    "hfis": {"sm": "/unused/sm.sock"},
    "simulated": [{"prefix": "a", "count": 3, "switch": "edge1"}, {"prefix": "b", "count": 3, "switch": "edge2"}],
    "cables": {"sm": "edge1/1", f"edge1/{ISL}": f"edge2/{ISL}"},
}


class FakeDevice:
    """A served HFI that is only a port the test drives (the SM's)."""

    def __init__(self, end: FakeEnd):
        self.end = end

    def ports(self) -> list[FakeEnd]:
        return [self.end]


class TwoTier:
    """sm --- edge1/1; a0..a2 on edge1/2..4; edge1/8 === edge2/8; b0..b2 on edge2/1..3."""

    def __init__(self):
        self.scheduler = ManualScheduler()
        served = ServedHfis(lambda index, name, worker: FakeDevice(FakeEnd(name, SM_GUID + index)))
        self.fabric = build_fabric(parse_topology(TWO_TIER), served, self.scheduler)
        self.sm = self.fabric.devices[0].end
        self.edge1, self.edge2 = self.fabric.switches
        self.sims = {sim.name: sim for sim in self.fabric.simulated}
        self.scheduler.run_until_idle()

    def ask(self, mad, slid=0xFFFF, dlid=0xFFFF) -> bytearray:
        before = len(self.sm.received)
        assert self.sm.send(smp_packet(mad, slid, dlid))
        self.scheduler.run_until_idle()
        replies = [parse_mad_packet(p) for p in self.sm.received[before:]]
        assert len(replies) == 1, (dict(self.edge1.drops), dict(self.edge2.drops))
        return replies[0].mad

    def dr(self, method, attr_id, am, path, data=b"") -> bytearray:
        reply = self.ask(dr_smp(method, attr_id, am, path, data))
        assert smi.DrSmp(reply).returning and status_of(reply) == 0, status_of(reply)
        return reply

    def set_lid(self, path: list[int], port: int, info, lid: int) -> None:
        info.lid, info.sm_lid, info.ps_phys_state = lid, SM_LID, 0
        self.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | port, path, w.PortInfo.build(info))

    def set_lft(self, path: list[int], routes: dict[int, int]) -> None:
        lft = bytearray([0xFF] * 64)
        for lid, port in routes.items():
            lft[lid] = port
        self.dr(w.Method.SET, w.Attr.LINEAR_FWD, 1 << 24, path, bytes(lft))

    def route(self) -> None:
        """What the SM does: LIDs for both switches and b1 (on edge2/2), and LFTs across the link."""
        self.set_lid([1], 0, self.edge1.managed_port(0).live_port_info(), EDGE1_LID)
        self.set_lid([1, ISL], 0, self.edge2.managed_port(0).live_port_info(), EDGE2_LID)
        self.set_lid([1, ISL, 2], 1, self.sims["b1"].port.live_port_info(), SIM_LID)
        self.set_lft([1], {SM_LID: 1, EDGE1_LID: 0, EDGE2_LID: ISL, SIM_LID: ISL})
        self.set_lft([1, ISL], {SM_LID: ISL, EDGE1_LID: ISL, EDGE2_LID: 0, SIM_LID: 2})


def test_every_cable_trains_and_the_ports_facing_live_neighbours_reach_init():
    fabric = TwoTier()
    assert [link.name for link in fabric.fabric.links] == [
        "sm<->edge1.p1", f"edge1.p{ISL}<->edge2.p{ISL}", "a0<->edge1.p2", "a1<->edge1.p3", "a2<->edge1.p4",
        "b0<->edge2.p1", "b1<->edge2.p2", "b2<->edge2.p3"]
    assert all(link.state.value == "up" for link in fabric.fabric.links)
    states = {switch.name: [p["state"] for p in switch.status()["ports"]] for switch in fabric.fabric.switches}
    assert states == {"edge1": ["INIT"] * 4 + ["DOWN"] * 3 + ["INIT"], "edge2": ["INIT"] * 3 + ["DOWN"] * 4 + ["INIT"]}
    assert [sim.status()["ports"][0]["peer"] for sim in fabric.fabric.simulated] == [
        "edge1.p2", "edge1.p3", "edge1.p4", "edge2.p1", "edge2.p2", "edge2.p3"]
    assert fabric.edge1.guid == GUID_SWITCH and fabric.edge2.guid == GUID_SWITCH + (1 << 12)
    assert [sim.guid for sim in fabric.fabric.simulated] == [GUID_SIMULATED + n for n in range(6)]


def test_a_directed_route_smp_crosses_both_switches_to_a_simulated_hfi_and_back():
    fabric = TwoTier()
    edge2 = w.NodeInfo.parse(response_data(fabric.dr(w.Method.GET, w.Attr.NODE_INFO, 0, [1, ISL])))
    assert (edge2.node_type, edge2.node_guid, edge2.local_port_num, edge2.num_ports) == (2, fabric.edge2.guid, ISL, ISL)
    b2 = w.NodeInfo.parse(response_data(fabric.dr(w.Method.GET, w.Attr.NODE_INFO, 0, [1, ISL, 3])))
    assert (b2.node_type, b2.node_guid) == (1, fabric.sims["b2"].guid)
    port = w.PortInfo.parse(response_data(fabric.dr(w.Method.GET, w.Attr.PORT_INFO, 1 << 24 | 1, [1, ISL, 3])))
    assert (port.neigh_node_guid, port.neigh_port_num) == (fabric.edge2.guid, 3)


def test_lid_routed_and_lr_dr_smps_cross_both_switches_by_their_forwarding_tables():
    fabric = TwoTier()
    fabric.route()
    reply = fabric.ask(lr_smp(w.Method.GET, w.Attr.NODE_INFO, 0), slid=SM_LID, dlid=SIM_LID)
    assert w.NodeInfo.parse(reply[32:76]).node_guid == fabric.sims["b1"].guid
    assert parse_mad_packet(fabric.sm.received[-1]).slid == SIM_LID
    # LR-DR, as opafm reaches the HFIs behind a switch: LID-routed to edge2, directed from there to b2 (edge2/3)
    initial = bytearray(64)
    initial[1] = 3
    mad = bytearray(w.SMP_DR.pack(0x80, 0x81, 0x80, w.Method.GET, 0, 0, 1, 9, w.Attr.NODE_INFO, 0, 0, 0,
                                  SM_LID, w.PERMISSIVE_LID32, bytes(initial), bytes(64), bytes(8)))
    reply = fabric.ask(mad, slid=SM_LID, dlid=EDGE2_LID)
    assert status_of(reply) == 0 and w.NodeInfo.parse(response_data(reply)).node_guid == fabric.sims["b2"].guid
    packet = parse_mad_packet(fabric.sm.received[-1])
    assert (packet.slid, packet.dlid) == (EDGE2_LID, SM_LID), "LID-routed back from edge2 across edge1"
    assert fabric.edge1.forwarded >= 4 and fabric.edge2.drops == {} and fabric.edge1.drops == {}


def test_hfi1_models_take_the_topologys_names_and_hfi1s_guids():
    scheduler = ManualScheduler()
    topology = parse_topology({"switches": {"e": {"ports": 4}}, "hfis": {"left": "/l.sock", "right": "/r.sock"},
                               "simulated": [{"prefix": "s", "count": 1, "switch": "e"}],
                               "cables": {"left": "e/1", "right": "e/2"}})
    fabric = registry.create_topology_fabric("hfi1", topology, ["icode=simulator"], scheduler=scheduler)
    try:
        scheduler.run_until_idle()
        assert [d.device_name for d in fabric.devices] == ["left", "right"]
        assert [d.config.guid for d in fabric.devices] == [0x0011750000000001, 0x0011750000000002]
        assert fabric.sockets == ["/l.sock", "/r.sock"]
        assert [link.name for link in fabric.links] == ["left<->e.p1", "right<->e.p2", "s0<->e.p3"]
        (switch,) = fabric.switches
        assert [switch.ports[n].managed.normal_at_armed for n in (1, 2, 3)] == [True, True, False], \
            "only the ports facing simulator-mode hfi1s take NeighborNormal at Armed"
    finally:
        for device in fabric.devices:
            device.close()
        for node in fabric.nodes:
            node.close()


@pytest.mark.parametrize("device,options,message", [
    ("testdev", [], "testdev cannot be cabled to a switch"),
    ("hfi1", ["link-partner=none"], "link-partner=none does not apply on a switch"),
])
def test_a_device_or_option_that_cannot_be_on_a_switch_is_refused(device, options, message):
    with pytest.raises(registry.OptionError, match=message):
        registry.create_topology_fabric(device, edge_switch(["/a"]), options, scheduler=ManualScheduler())


def test_a_fabric_of_254_simulated_hfis_builds_quickly_and_is_idle_when_nothing_happens():
    """No per-node timer: once the links have trained, a day passes on the
    manual clock without one job (`vfnic serve` does the same on its thread)."""
    scheduler = ManualScheduler()
    topology = parse_topology({
        "switches": {f"edge{k}": {"ports": 128} for k in (1, 2)},
        "simulated": [{"prefix": f"s{k}_", "count": 127, "switch": f"edge{k}"} for k in (1, 2)],
        "cables": {"edge1/128": "edge2/128"}})
    start = time.monotonic()
    fabric = build_fabric(topology, scheduler=scheduler)
    built = time.monotonic() - start
    trained = scheduler.run_until_idle()
    assert len(fabric.simulated) == 254 and len(fabric.links) == 255
    assert all(link.state.value == "up" for link in fabric.links)
    assert trained > 0 and scheduler.pending() == 0
    assert scheduler.advance(24 * 3600) == 0, "nothing runs while nothing happens"
    assert built < 10, f"{built:.2f} s to build 256 nodes"
