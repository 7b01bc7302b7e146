"""The switch's SMA as opafm's sweep uses it: directed-route discovery, Aggregate,
PortInfo, the forwarding tables, port states and Trap 128."""
from __future__ import annotations

from devmodel.switch import smi
from devmodel.switch.mad_packet import parse_mad_packet
from devmodel.switch.managed_port import SMA_IDLE_ARM
from devmodel.wire import opa_sma as w
from testkit.switch_fabric import SM_GUID, SWITCH_GUID, Fabric, dr_smp, lr_smp, response_data, smp_packet, status_of


def test_dr_get_node_info_of_the_switch_names_the_arrival_port():
    fabric = Fabric()
    reply = fabric.dr(w.Method.GET, w.Attr.NODE_INFO, 0, [1])
    assert reply[3] == w.Method.GET_RESP and status_of(reply) == 0
    info = w.NodeInfo.parse(response_data(reply))
    assert (info.node_type, info.num_ports, info.node_guid, info.local_port_num) == (2, 4, SWITCH_GUID, 1)
    assert info.base_version == info.class_version == 0x80


def test_a_header_only_get_as_opafm_sends_it_gets_the_whole_attribute_back():
    """opafm's Gets carry no data: the response grows by the attribute (hfi1's
    SMA adds the attribute's size to the request's), in whole 8-byte units."""
    fabric = Fabric()
    for path in ([1], [1, 2]):
        request = dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, path)[:w.SMP_DR_HEADER_BYTES]
        reply = fabric.ask(request)
        assert len(reply) == w.SMP_DR_HEADER_BYTES + -(-w.NodeInfo.sizeof() // 8) * 8 and status_of(reply) == 0
        assert w.NodeInfo.parse(response_data(reply)).node_type == (2 if path == [1] else 1)
    request = dr_smp(w.Method.GET, w.Attr.PORT_INFO, 4 << 24 | 1, [1])[:w.SMP_DR_HEADER_BYTES]
    assert len(response_data(fabric.ask(request))) == 4 * w.PortInfo.sizeof()


def test_dr_get_node_info_through_the_switch_reaches_a_simulated_hfi_and_comes_back():
    fabric = Fabric()
    reply = fabric.dr(w.Method.GET, w.Attr.NODE_INFO, 0, [1, 2])
    info = w.NodeInfo.parse(response_data(reply))
    assert (info.node_type, info.num_ports, info.node_guid, info.port_guid, info.local_port_num) == (
        1, 1, fabric.hfi.guid, fabric.hfi.guid, 1)
    smp = smi.DrSmp(reply)
    assert smp.ret(1) == 1, "the switch recorded the port the SMP came in on"


def test_the_switch_port_facing_the_sm_shows_the_neighbour_opafm_checks_against():
    fabric = Fabric()
    reply = fabric.dr(w.Method.GET, w.Attr.PORT_INFO, 1 << 24 | 1, [1])
    info = w.PortInfo.parse(response_data(reply))
    assert info.neigh_node_guid == SM_GUID and info.neigh_port_num == 1 and info.port_neigh_mode & 3 == 0
    assert info.ps_phys_state == (w.PhysState.LINKUP << 4) | w.PortState.INIT
    assert info.local_port_num == 1 and info.mtucap >= 4 and info.packet_format_supported & 2


def test_aggregate_get_of_node_description_port_info_and_switch_info():
    fabric = Fabric()
    segments = [(w.Attr.NODE_DESCRIPTION, 0, 64), (w.Attr.PORT_INFO, 1 << 24 | 0, 248), (w.Attr.SWITCH_INFO, 0, 88)]
    data = b"".join(w.AGGREGATE_SEGMENT.pack(attr, length // 8, am) + bytes(length) for attr, am, length in segments)
    reply = fabric.dr(w.Method.GET, w.Attr.AGGREGATE, len(segments), [1], data)
    assert status_of(reply) == 0
    body = response_data(reply)
    assert body[8:8 + 64].rstrip(b"\0") == b"vfnic switch sw0"
    port0 = w.PortInfo.parse(body[8 + 64 + 8:8 + 64 + 8 + 242])
    assert port0.local_port_num == 0
    offset = 8 + 64 + 8 + 248
    assert w.AGGREGATE_SEGMENT.unpack_from(body, offset)[0] == w.Attr.SWITCH_INFO
    switch_info = w.SwitchInfo.parse(body[offset + 8:offset + 8 + 84])
    assert switch_info.linear_fdb_cap >= 0xBFFF + 1, "opafm's default MaxSupportedLID fits"
    assert switch_info.u2 & w.SWITCH_INFO_ENHANCED_PORT0 and switch_info.routing_mode_supported == w.ROUTE_LINEAR


def test_an_aggregate_get_cut_after_its_last_segment_header_is_answered_in_full():
    """What opafm's discovery sends: the segments' data need not be there; the
    SMA reads the SMP as full-size, and the reply holds every segment."""
    fabric = Fabric()
    segments = [(w.Attr.NODE_DESCRIPTION, 0, 64), (w.Attr.PORT_INFO, 1 << 24 | 0, 248), (w.Attr.SWITCH_INFO, 0, 88)]
    data = b"".join(w.AGGREGATE_SEGMENT.pack(attr, length // 8, am) + bytes(length) for attr, am, length in segments)
    request = dr_smp(w.Method.GET, w.Attr.AGGREGATE, len(segments), [1], data)[:w.SMP_DR_HEADER_BYTES + 64 + 248 + 24]
    reply = fabric.ask(request)
    assert status_of(reply) == 0 and len(response_data(reply)) == len(data)
    assert response_data(reply)[8:8 + 64].rstrip(b"\0") == b"vfnic switch sw0"
    assert w.SwitchInfo.parse(response_data(reply)[-88:][:84]).linear_fdb_cap >= 0xC000


def test_aggregate_marks_the_failing_segment_and_stops():
    fabric = Fabric()
    data = w.AGGREGATE_SEGMENT.pack(w.Attr.NODE_INFO, 44 // 8 + 1, 0) + bytes(48)
    data += w.AGGREGATE_SEGMENT.pack(0x7777, 1, 0) + bytes(8)
    reply = fabric.dr(w.Method.GET, w.Attr.AGGREGATE, 2, [1], data)
    body = response_data(reply)
    assert w.AGGREGATE_SEGMENT.unpack_from(body, 0)[1] & w.AGGREGATE_ERROR == 0
    assert w.AGGREGATE_SEGMENT.unpack_from(body, 56)[1] & w.AGGREGATE_ERROR


def test_set_port_info_gives_port_0_its_lid_and_the_sm_lid():
    fabric = Fabric()
    info = fabric.switch.managed_port(0).live_port_info()
    info.lid, info.sm_lid, info.ps_phys_state = 7, 1, 0
    reply = fabric.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24, [1], w.PortInfo.build(info))
    assert status_of(reply) == 0
    assert w.PortInfo.parse(response_data(reply)).lid == 7 and fabric.switch.lid == 7
    got = w.PortInfo.parse(response_data(fabric.dr(w.Method.GET, w.Attr.PORT_INFO, 1 << 24, [1])))
    assert (got.lid, got.sm_lid) == (7, 1)


def test_port_state_info_for_every_port():
    fabric = Fabric()
    reply = fabric.dr(w.Method.GET, w.Attr.PORT_STATE_INFO, 5 << 24 | 0, [1])
    body = response_data(reply)
    states = [w.PORT_STATE_INFO.unpack_from(body, 8 * i)[3] & 0xF for i in range(5)]
    assert states == [w.PortState.INIT] * 5


def test_set_port_state_info_arms_then_activates_ports_at_once_as_opafms_cascade_activation():
    fabric = Fabric()

    def set_states(state: int) -> int:
        data = b"".join(w.PORT_STATE_INFO.pack(0, 0, 0, state, 0, 0) for _ in range(5))  # ports 0..4
        reply = fabric.dr(w.Method.SET, w.Attr.PORT_STATE_INFO, 5 << 24 | 0, [1], data)
        return status_of(reply)

    assert set_states(w.PortState.ARMED) == 0
    assert [fabric.switch.managed_port(n).state for n in range(5)] == [w.PortState.ARMED] * 5
    for end in fabric.ends.values():
        end.idle(SMA_IDLE_ARM)
    fabric.sm.idle(SMA_IDLE_ARM)
    fabric.run()
    assert set_states(w.PortState.ACTIVE) == w.Status.INVALID_FIELD, "port 2's simulated HFI has not armed"
    states = [fabric.switch.managed_port(n).state for n in range(5)]
    assert states == [w.PortState.ACTIVE, w.PortState.ACTIVE, w.PortState.ARMED, w.PortState.ACTIVE,
                      w.PortState.ACTIVE], "the other ports moved"
    assert set_states(w.PortState.NOP) == 0, "NOP leaves every port as it is"
    assert fabric.switch.managed_port(2).state == w.PortState.ARMED


def test_armed_to_active_only_after_the_neighbours_idle_message():
    fabric = Fabric()
    assert fabric.set_switch_port_state(3, w.PortState.ARMED) == 0
    assert fabric.ends[3].messages[-1].data == (SMA_IDLE_ARM << 8) | 3, "the switch told its neighbour it is Armed"
    assert fabric.set_switch_port_state(3, w.PortState.ACTIVE) == w.Status.INVALID_FIELD, "no NeighborNormal yet"
    assert fabric.switch.ports[3].managed.state == w.PortState.ARMED
    fabric.ends[3].idle(SMA_IDLE_ARM)
    fabric.run()
    assert fabric.switch.ports[3].managed.neighbor_normal
    assert fabric.set_switch_port_state(3, w.PortState.ACTIVE) == 0
    assert fabric.switch.ports[3].managed.state == w.PortState.ACTIVE


def test_a_simulated_hfi_goes_active_once_the_switch_port_is_armed():
    fabric = Fabric()
    hfi_info = fabric.hfi.port.live_port_info()
    hfi_info.ps_phys_state = w.PortState.ARMED
    assert status_of(fabric.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | 1, [1, 2], w.PortInfo.build(hfi_info))) == 0
    hfi_info.ps_phys_state = w.PortState.ACTIVE
    assert status_of(fabric.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | 1, [1, 2], w.PortInfo.build(hfi_info))) \
        == w.Status.INVALID_FIELD, "the switch port has not been armed"
    assert fabric.set_switch_port_state(2, w.PortState.ARMED) == 0
    assert fabric.switch.ports[2].managed.neighbor_normal, "the HFI's Armed idle message arrived first"
    assert status_of(fabric.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | 1, [1, 2], w.PortInfo.build(hfi_info))) == 0
    assert fabric.hfi.port.state == w.PortState.ACTIVE
    assert fabric.set_switch_port_state(2, w.PortState.ACTIVE) == 0


def test_trap_128_goes_to_the_sm_when_a_port_goes_down():
    fabric = Fabric()
    fabric.route()
    before = len(fabric.sm.received)
    fabric.links[3].take_down()
    fabric.run()
    traps = [m for m in (parse_mad_packet(p) for p in fabric.sm.received[before:]) if m.mad[3] == w.Method.TRAP]
    assert len(traps) == 1 and traps[0].dlid == 1 and traps[0].slid == 2
    notice = w.Notice.parse(traps[0].mad[32:32 + 96])
    assert notice.trap_num == 128 and notice.issuer_lid == 2 and notice.data[:4] == (2).to_bytes(4, "big")
    switch_info = w.SwitchInfo.parse(response_data(fabric.dr(w.Method.GET, w.Attr.SWITCH_INFO, 0, [1])))
    assert switch_info.u1 & w.SWITCH_INFO_PORT_STATE_CHANGE
    # opafm echoes PortStateChange to clear it
    fabric.dr(w.Method.SET, w.Attr.SWITCH_INFO, 0, [1], w.SwitchInfo.build(switch_info))
    assert not fabric.switch.sma.switch_info.u1 & w.SWITCH_INFO_PORT_STATE_CHANGE


def test_lid_routed_smp_to_port_0_is_answered_back_along_the_lft():
    fabric = Fabric()
    fabric.route()
    reply = fabric.ask(lr_smp(w.Method.GET, w.Attr.NODE_INFO, 0), slid=1, dlid=2)
    assert w.NodeInfo.parse(reply[32:32 + 44]).node_guid == SWITCH_GUID
    got = response_data(fabric.dr(w.Method.GET, w.Attr.LINEAR_FWD, 1 << 24, [1]))[:64]
    assert got == bytes([0xFF, 1, 0] + [0xFF] * 61), "LID 1 out of port 1, LID 2 to port 0, the rest unprogrammed"


def test_unknown_attribute_and_method_get_error_statuses_not_silence():
    fabric = Fabric()
    assert status_of(fabric.dr(w.Method.GET, 0x7777, 0, [1])) == w.Status.UNSUPPORTED_METHOD_ATTR
    assert status_of(fabric.dr(0x04, w.Attr.NODE_INFO, 0, [1])) == w.Status.UNSUPPORTED_METHOD
    assert status_of(fabric.dr(w.Method.GET, w.Attr.PORT_INFO, 2 << 24 | 4, [1])) == w.Status.INVALID_FIELD


def test_a_dr_smp_through_a_dead_port_is_dropped_and_counted():
    fabric = Fabric()
    fabric.links[4].take_down()
    fabric.run()
    fabric.sm.send(smp_packet(dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, [1, 4])))
    fabric.run()
    assert fabric.switch.drops[smi.DropReason.DEAD_PORT.value] == 1
    assert not fabric.ends[4].received


def test_an_lr_dr_smp_starts_its_directed_part_at_the_switch_and_its_answer_is_lid_routed_back():
    """opafm initializes the HFIs behind a switch with LR-DR first: LID-routed
    to the switch (LRH DLID = its LID, DrSLID = the SM's LID), directed from
    there; the response leaves the directed part at the switch and goes on
    LID-routed to DrSLID."""
    fabric = Fabric()
    info = fabric.switch.managed_port(0).live_port_info()
    info.lid, info.sm_lid, info.ps_phys_state = 7, 1, 0
    assert status_of(fabric.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24, [1], w.PortInfo.build(info))) == 0
    lft = bytearray([0xFF] * 64)
    lft[1], lft[7] = 1, 0
    assert status_of(fabric.dr(w.Method.SET, w.Attr.LINEAR_FWD, 1 << 24, [1], bytes(lft))) == 0
    initial = bytearray(64)
    initial[1] = 2  # out of the switch's port 2: the simulated HFI
    mad = bytearray(w.SMP_DR.pack(0x80, 0x81, 0x80, w.Method.GET, 0, 0, 1, 9, w.Attr.NODE_INFO, 0, 0, 0,
                                  1, w.PERMISSIVE_LID32, bytes(initial), bytes(64), bytes(8)))
    reply = fabric.ask(mad, slid=1, dlid=7)
    smp = smi.DrSmp(reply)
    assert smp.returning and smp.hop_ptr == 0 and status_of(reply) == 0
    assert w.NodeInfo.parse(response_data(reply)).node_guid == fabric.hfi.guid
    (packet,) = [parse_mad_packet(p) for p in fabric.sm.received[-1:]]
    assert (packet.dlid, packet.slid) == (1, 7), "LID-routed from the switch to DrSLID"
    assert "hop pointer out of range" not in fabric.switch.drops
