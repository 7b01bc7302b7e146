"""The subnet management agent: Get/Set per attribute, as a table.

    SMP (method, AttrID, modifier, data) --> ATTRIBUTES[AttrID] --> (status, reply data)
                                               get(agent, req)       Set: set(), then get()
    Aggregate: each segment through the same table; an error marks the
    segment and ends the walk (hfi1 mad.c `subn_get/set_opa_aggregate`)

One agent serves a switch (ports 0..N, SwitchInfo and the forwarding
tables) or a simulated HFI (one port; the modifier's port is ignored and the
port the SMP arrived on answers, as hfi1's SMA does). The node supplies what
the agent reads and writes (`SmaNode`): its identity, its ports
(`ManagedPort`), and for a switch its forwarding tables.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import construct as c

from devmodel.wire import opa_sma as w

from .managed_port import PORT_INFO_BYTES, ManagedPort

log = logging.getLogger("vfnic.switch.sma")


class SmaNode(Protocol):
    node_type: int  # w.NodeTypeCode
    guid: int
    num_ports: int
    description: bytes
    device_id: int

    def managed_port(self, number: int) -> ManagedPort | None: ...


@dataclass
class Request:
    method: int
    attr_id: int
    am: int
    data: bytes  # the request's data area (zero-padded to its full size)
    in_port: int  # the port the SMP arrived on


class SmaError(Exception):
    """A request the agent refuses: `status` goes into the reply."""

    def __init__(self, status: int, why: str = ""):
        super().__init__(why)
        self.status = status


def invalid(why: str) -> SmaError:
    return SmaError(w.Status.INVALID_FIELD, why)


@dataclass(frozen=True)
class AttributeSpec:
    get: Callable[["SubnetManagementAgent", Request], bytes]
    set: Callable[["SubnetManagementAgent", Request], None] | None = None


class SubnetManagementAgent:
    def __init__(self, node: SmaNode, is_switch: bool, forwarding=None, congestion_setting_bytes: int = 0):
        self.node = node
        self.is_switch = is_switch
        self.forwarding = forwarding  # ForwardingTables, switches only
        self.switch_info = default_switch_info(forwarding) if is_switch else None
        self.congestion_setting = bytearray(congestion_setting_bytes or (
            w.SWITCH_CONGESTION_SETTING_BYTES if is_switch else w.HFI_CONGESTION_SETTING_BYTES))
        self.table = dict(COMMON_ATTRIBUTES)
        self.table.update(SWITCH_ATTRIBUTES if is_switch else HFI_ATTRIBUTES)
        self.requests = 0
        self.errors = 0

    # -- one SMP's data ------------------------------------------------------------------
    def process(self, method: int, attr_id: int, am: int, data: bytes, in_port: int,
                room: int = 0) -> tuple[int, bytes]:
        """(status, reply data). `data` is the request's data area as it came
        (opafm's Gets carry none, its Aggregates only their segments' start);
        `room` the most the SMP can hold (0: just `data`). The request is read
        zero-padded to `room`, as hfi1's SMA reads it in a full-size MAD, and
        the reply is as long as `data` or as long as the answer needs, if
        longer (hfi1 adds the attribute's size to the request's)."""
        self.requests += 1
        room = max(room, len(data))
        request = Request(method, attr_id, am, bytes(data).ljust(room, b"\0"), in_port)
        try:
            if method not in (w.Method.GET, w.Method.SET):
                raise SmaError(w.Status.UNSUPPORTED_METHOD, f"method {method:#x}")
            if attr_id == w.Attr.AGGREGATE:
                status, reply, used = self._aggregate(request)
                return status, reply[:max(len(data), used)]
            reply = self._one(request)
            return 0, _fit(reply, max(len(data), min(len(reply), room)))
        except SmaError as error:
            self.errors += 1
            log.info("%s: method %#x attr %#x am %#x: status %#x (%s)", self.node.description.decode(errors="replace"),
                     method, attr_id, am, error.status, error)
            return error.status, _fit(b"", len(data))

    def _one(self, request: Request) -> bytes:
        spec = self.table.get(request.attr_id)
        if spec is None or (request.method == w.Method.SET and spec.set is None):
            raise SmaError(w.Status.UNSUPPORTED_METHOD_ATTR, f"attribute {request.attr_id:#x}")
        try:
            if request.method == w.Method.SET:
                spec.set(self, request)
            return spec.get(self, request)
        except (c.ConstructError, ValueError, IndexError, struct.error) as error:
            raise invalid(f"malformed attribute data: {error}") from None

    def _aggregate(self, request: Request) -> tuple[int, bytes, int]:
        """(status, the data area, the bytes its segments take)."""
        count = request.am & 0xFF
        if count == 0 or count > w.AGGREGATE_MAX_SEGMENTS:
            raise invalid("aggregate segment count")
        out = bytearray(request.data)
        offset = 0
        for _ in range(count):
            if offset + 8 > len(out):
                raise invalid("aggregate longer than the SMP")
            attr_id, err_len, am = w.AGGREGATE_SEGMENT.unpack_from(out, offset)
            length = (err_len & w.AGGREGATE_LENGTH_MASK) * 8
            start, end = offset + 8, offset + 8 + length
            if end > len(out):
                raise invalid("aggregate segment beyond the SMP")
            if attr_id == w.Attr.AGGREGATE:
                raise invalid("nested aggregate")
            segment = Request(request.method, attr_id, am, bytes(out[start:end]), request.in_port)
            try:
                reply = self._one(segment)
            except SmaError as error:
                self.errors += 1
                out[offset + 2:offset + 4] = (err_len | w.AGGREGATE_ERROR).to_bytes(2, "big")
                out[start:end] = bytes(length)
                status = error.status if error.status != w.Status.INVALID_FIELD else 0
                return status, bytes(out), end
            out[start:end] = _fit(reply, length)
            offset = end
        return 0, bytes(out), offset

    # -- helpers for the handlers ------------------------------------------------------------
    def ports_of(self, request: Request, stride: int) -> list[ManagedPort]:
        """The ports a per-port attribute's modifier names (N [31:24], start [7:0])."""
        count = (request.am >> 24) & 0xFF
        if count == 0:
            raise invalid("zero ports")
        if not self.is_switch:
            if count != 1:
                raise invalid("an HFI answers for one port")
            port = self.node.managed_port(request.in_port)
            if port is None:
                raise invalid("no such port")
            return [port]
        start = request.am & 0xFF
        if count * stride > len(request.data):
            raise invalid("reply does not fit")
        ports = [self.node.managed_port(n) for n in range(start, start + count)]
        if any(p is None for p in ports):
            raise invalid("port out of range")
        return ports


def _fit(data: bytes, size: int) -> bytes:
    return data[:size].ljust(size, b"\0")


def default_switch_info(forwarding) -> c.Container:
    return c.Container(
        linear_fdb_cap=forwarding.linear_cap, port_group_fdb_cap=0, multicast_fdb_cap=forwarding.multicast_cap,
        linear_fdb_top=0, multicast_fdb_top=0, collective_cap=0, collective_top=0, reserved=0, ipv6=bytes(16),
        ipv4=bytes(4), reserved26_28=bytes(12), reserved21_23=bytes(3), u1=0x13 << w.SWITCH_INFO_LIFETIME_SHIFT,
        reserved24=0, partition_enforcement_cap=0, port_group_cap=0, port_group_top=0,
        routing_mode_supported=w.ROUTE_LINEAR, routing_mode_enabled=w.ROUTE_LINEAR,
        u2=w.SWITCH_INFO_ENHANCED_PORT0, multi_collect_mask=(1 << 3) | 4, adaptive_routing=0, capability_mask=0,
        capability_mask_collectives=0)


# -- handlers ---------------------------------------------------------------------------------
def get_node_description(agent: SubnetManagementAgent, req: Request) -> bytes:
    return agent.node.description[:63].ljust(64, b"\0")


def get_node_info(agent: SubnetManagementAgent, req: Request) -> bytes:
    node = agent.node  # one GUID for node and port: hfi1's port 1, a switch's port 0
    return w.NodeInfo.build(dict(
        base_version=0x80, class_version=0x80, node_type=node.node_type, num_ports=node.num_ports, reserved=0,
        system_image_guid=node.guid, node_guid=node.guid, port_guid=node.guid,
        partition_cap=32 if agent.is_switch else 16, device_id=node.device_id, revision=0,
        local_port_num=req.in_port, vendor_id=0x001175))


def get_switch_info(agent: SubnetManagementAgent, req: Request) -> bytes:
    return w.SwitchInfo.build(agent.switch_info)


def set_switch_info(agent: SubnetManagementAgent, req: Request) -> None:
    new = w.SwitchInfo.parse(req.data)
    info = agent.switch_info
    if new.linear_fdb_top >= info.linear_fdb_cap:
        raise invalid("LinearFDBTop beyond LinearFDBCap")
    info.linear_fdb_top = new.linear_fdb_top
    info.multicast_fdb_top = new.multicast_fdb_top
    lifetime = new.u1 & ~0x7
    change = info.u1 & w.SWITCH_INFO_PORT_STATE_CHANGE
    if new.u1 & w.SWITCH_INFO_PORT_STATE_CHANGE:
        change = 0  # writing 1 clears it
    info.u1 = lifetime | change
    if new.routing_mode_enabled:
        if new.routing_mode_enabled & ~info.routing_mode_supported:
            raise invalid("routing mode")
        info.routing_mode_enabled = new.routing_mode_enabled
    info.multi_collect_mask = new.multi_collect_mask
    info.adaptive_routing = new.adaptive_routing


def get_port_info(agent: SubnetManagementAgent, req: Request) -> bytes:
    ports = agent.ports_of(req, PORT_INFO_BYTES)
    if req.am & w.AM_START_OF_SM_CONFIG:
        for port in ports:
            if port.state == w.PortState.INIT:
                port.sm_config_started = True
    return b"".join(w.PortInfo.build(port.live_port_info()) for port in ports)


def set_port_info(agent: SubnetManagementAgent, req: Request) -> None:
    ports = agent.ports_of(req, PORT_INFO_BYTES)
    all_ports = agent.is_switch and req.am & 0x100
    refused = False
    for i, port in enumerate(ports):
        block = req.data[0:PORT_INFO_BYTES] if all_ports else req.data[i * PORT_INFO_BYTES:(i + 1) * PORT_INFO_BYTES]
        new = w.PortInfo.parse(block)
        if new.lid >= 0xF00000:
            raise invalid("LID in the multicast range")
        port.write_port_info(new)
        if not port.request_state(new.ps_phys_state & 0xF, new.ps_phys_state >> 4):
            refused = True
    if refused:
        raise invalid("port state transition")


def get_port_state_info(agent: SubnetManagementAgent, req: Request) -> bytes:
    out = []
    for port in agent.ports_of(req, w.PORT_STATE_INFO.size):
        info = port.live_port_info()
        out.append(w.PORT_STATE_INFO.pack(0, info.ps_flags, 0, info.ps_phys_state, info.lwd_tx_active,
                                          info.lwd_rx_active))
    return b"".join(out)


def set_port_state_info(agent: SubnetManagementAgent, req: Request) -> None:
    """Each named port's PortState / PortPhysicalState at once (opafm's
    cascade activation of a switch: all its ports Armed, then Active); NOP
    leaves a port as it is. As Set(PortInfo), a refused transition makes the
    status InvalidField, the other ports still move (hfi1 `__subn_set_opa_psi`)."""
    refused = False
    for i, port in enumerate(agent.ports_of(req, w.PORT_STATE_INFO.size)):
        states = w.PORT_STATE_INFO.unpack_from(req.data, i * w.PORT_STATE_INFO.size)[3]
        if not port.request_state(states & 0xF, states >> 4):
            refused = True
    if refused:
        raise invalid("port state transition")


def _pkey_port(agent: SubnetManagementAgent, req: Request) -> tuple[ManagedPort, int, int]:
    count, block = (req.am >> 24) & 0xFF, req.am & 0x7FF
    number = (req.am >> 16) & 0xFF if agent.is_switch else req.in_port
    port = agent.node.managed_port(number)
    if port is None or count != 1 or block != 0:
        raise invalid("P_Key block")
    if agent.is_switch and number != 0 and agent.switch_info.partition_enforcement_cap == 0:
        raise invalid("no partition enforcement on external ports")
    return port, count, block


def get_pkey_table(agent: SubnetManagementAgent, req: Request) -> bytes:
    port, _, _ = _pkey_port(agent, req)
    return b"".join(k.to_bytes(2, "big") for k in port.pkeys)


def set_pkey_table(agent: SubnetManagementAgent, req: Request) -> None:
    port, _, _ = _pkey_port(agent, req)
    port.pkeys = [int.from_bytes(req.data[i:i + 2], "big") for i in range(0, w.PKEY_BLOCK_BYTES, 2)]


def _table_attribute(name: str, per_port: bool, size: int = w.SC_TABLE_BYTES) -> AttributeSpec:
    """A 32-byte table kept per port (SCtoVLx: N ports | port) or on the answering port
    (SLtoSC, SCtoSL: port 0 of a switch, the receiving port of an HFI)."""

    def targets(agent: SubnetManagementAgent, req: Request) -> list[ManagedPort]:
        if per_port:
            return agent.ports_of(req, size)
        port = agent.node.managed_port(0 if agent.is_switch else req.in_port)
        return [port]

    def get(agent: SubnetManagementAgent, req: Request) -> bytes:
        return b"".join(bytes(getattr(p, name)) for p in targets(agent, req))

    def set_(agent: SubnetManagementAgent, req: Request) -> None:
        for i, port in enumerate(targets(agent, req)):
            setattr(port, name, bytearray(req.data[i * size:(i + 1) * size]))

    return AttributeSpec(get, set_)


def _vl_arb_section(agent: SubnetManagementAgent, req: Request) -> tuple[list[ManagedPort], int, int]:
    section = (req.am >> 16) & 0xFF
    if section not in (0, 1, 2, 3):
        raise invalid("VLArb section")
    return agent.ports_of(req, w.VL_ARB_BLOCK_BYTES), section, w.VL_ARB_BLOCK_BYTES


def get_vl_arb(agent: SubnetManagementAgent, req: Request) -> bytes:
    ports, section, size = _vl_arb_section(agent, req)
    return b"".join(bytes(p.vl_arb[section]) for p in ports)


def set_vl_arb(agent: SubnetManagementAgent, req: Request) -> None:
    ports, section, size = _vl_arb_section(agent, req)
    if section in (2, 3):
        raise SmaError(w.Status.UNSUPPORTED_METHOD_ATTR, "preemption tables are read-only (as on hfi1)")
    for i, port in enumerate(ports):
        port.vl_arb[section] = bytearray(req.data[i * size:(i + 1) * size])


def get_buffer_control(agent: SubnetManagementAgent, req: Request) -> bytes:
    return b"".join(bytes(p.buffer_control).ljust(w.BUFFER_CONTROL_STRIDE, b"\0")
                    for p in agent.ports_of(req, w.BUFFER_CONTROL_STRIDE))


def set_buffer_control(agent: SubnetManagementAgent, req: Request) -> None:
    for i, port in enumerate(agent.ports_of(req, w.BUFFER_CONTROL_STRIDE)):
        offset = i * w.BUFFER_CONTROL_STRIDE
        port.buffer_control = bytearray(req.data[offset:offset + w.BUFFER_CONTROL_BYTES])


def get_congestion_info(agent: SubnetManagementAgent, req: Request) -> bytes:
    return w.CongestionInfo.build(dict(congestion_info=0, control_table_cap=0, congestion_log_length=0))


def get_congestion_setting(agent: SubnetManagementAgent, req: Request) -> bytes:
    return bytes(agent.congestion_setting)


def set_congestion_setting(agent: SubnetManagementAgent, req: Request) -> None:
    agent.congestion_setting[:] = req.data[:len(agent.congestion_setting)].ljust(len(agent.congestion_setting), b"\0")


# -- switch forwarding tables ---------------------------------------------------------------
def _lft_blocks(agent: SubnetManagementAgent, req: Request) -> tuple[int, int]:
    count, block = (req.am >> 24) & 0xFF, req.am & 0x3FFFF
    if count == 0 or count * w.LFT_BLOCK_BYTES > len(req.data):
        raise invalid("LinearFwdTbl block count")
    if (block + count) * w.LFT_BLOCK_BYTES > agent.forwarding.linear_cap:
        raise invalid("LinearFwdTbl block beyond LinearFDBCap")
    return block, count


def get_lft(agent: SubnetManagementAgent, req: Request) -> bytes:
    block, count = _lft_blocks(agent, req)
    return agent.forwarding.lft_blocks(block, count)


def set_lft(agent: SubnetManagementAgent, req: Request) -> None:
    block, count = _lft_blocks(agent, req)
    agent.forwarding.set_lft_blocks(block, req.data[:count * w.LFT_BLOCK_BYTES])


def _mft_blocks(agent: SubnetManagementAgent, req: Request) -> tuple[int, int, int]:
    count, position, block = (req.am >> 24) & 0xFF, (req.am >> 22) & 0x3, req.am & 0xFFFFF
    if count == 0 or count * w.MFT_BLOCK_BYTES > len(req.data):
        raise invalid("MulticastFwdTbl block count")
    if (block + count) * w.MFT_BLOCK_ENTRIES > agent.forwarding.multicast_cap:
        raise invalid("MulticastFwdTbl block beyond MulticastFDBCap")
    if position * 64 > agent.node.num_ports:
        raise invalid("MulticastFwdTbl position beyond the ports")
    return block, count, position


def get_mft(agent: SubnetManagementAgent, req: Request) -> bytes:
    block, count, position = _mft_blocks(agent, req)
    return agent.forwarding.mft_blocks(block, count, position)


def set_mft(agent: SubnetManagementAgent, req: Request) -> None:
    block, count, position = _mft_blocks(agent, req)
    agent.forwarding.set_mft_blocks(block, position, req.data[:count * w.MFT_BLOCK_BYTES])


def _sc_to_sc_pairs(agent: SubnetManagementAgent, req: Request) -> list[tuple[int, int]]:
    count, ingress, egress = (req.am >> 24) & 0xFF, (req.am >> 8) & 0xFF, req.am & 0xFF
    if count == 0 or count * w.SC_TABLE_BYTES > len(req.data):
        raise invalid("SCtoSC block count")
    pairs = [(ingress, egress + i) for i in range(count)]
    if any(not (1 <= i <= agent.node.num_ports and 1 <= e <= agent.node.num_ports) for i, e in pairs):
        raise invalid("SCtoSC port out of range")
    return pairs


def get_sc_to_sc(agent: SubnetManagementAgent, req: Request) -> bytes:
    return b"".join(agent.forwarding.sc_to_sc(i, e) for i, e in _sc_to_sc_pairs(agent, req))


def set_sc_to_sc(agent: SubnetManagementAgent, req: Request) -> None:
    for n, (i, e) in enumerate(_sc_to_sc_pairs(agent, req)):
        agent.forwarding.set_sc_to_sc(i, e, req.data[n * w.SC_TABLE_BYTES:(n + 1) * w.SC_TABLE_BYTES])


COMMON_ATTRIBUTES: dict[int, AttributeSpec] = {
    w.Attr.NODE_DESCRIPTION: AttributeSpec(get_node_description),
    w.Attr.NODE_INFO: AttributeSpec(get_node_info),
    w.Attr.PORT_INFO: AttributeSpec(get_port_info, set_port_info),
    w.Attr.PORT_STATE_INFO: AttributeSpec(get_port_state_info, set_port_state_info),
    w.Attr.PKEY_TABLE: AttributeSpec(get_pkey_table, set_pkey_table),
    w.Attr.SL_TO_SC: _table_attribute("sl_to_sc", per_port=False),
    w.Attr.SC_TO_SL: _table_attribute("sc_to_sl", per_port=False),
    w.Attr.SC_TO_VLT: _table_attribute("sc_to_vlt", per_port=True),
    w.Attr.SC_TO_VLNT: _table_attribute("sc_to_vlnt", per_port=True),
    w.Attr.VL_ARB: AttributeSpec(get_vl_arb, set_vl_arb),
    w.Attr.BUFFER_CONTROL: AttributeSpec(get_buffer_control, set_buffer_control),
    w.Attr.CONGESTION_INFO: AttributeSpec(get_congestion_info),
}
SWITCH_ATTRIBUTES: dict[int, AttributeSpec] = {
    w.Attr.SWITCH_INFO: AttributeSpec(get_switch_info, set_switch_info),
    w.Attr.LINEAR_FWD: AttributeSpec(get_lft, set_lft),
    w.Attr.MULTICAST_FWD: AttributeSpec(get_mft, set_mft),
    w.Attr.SC_TO_SC: AttributeSpec(get_sc_to_sc, set_sc_to_sc),
    w.Attr.SC_TO_VLR: _table_attribute("sc_to_vlr", per_port=True),
    w.Attr.SWITCH_CONGESTION_SETTING: AttributeSpec(get_congestion_setting, set_congestion_setting),
}
HFI_ATTRIBUTES: dict[int, AttributeSpec] = {
    w.Attr.HFI_CONGESTION_SETTING: AttributeSpec(get_congestion_setting, set_congestion_setting),
}
