"""A port as the SMA sees it: its PortInfo, its tables and its logical state.

    link up --------------> INIT ---Set(Armed)---> ARMED ---Set(Active)---> ACTIVE
      ^   (neighbour known,  |                    | sends SMA_IDLE_ARM     | needs NeighborNormal,
      |    NeighborNormal 0) |                    | to the neighbour       | sends SMA_IDLE_ACTIVE
      +---- link down <------+--------------------+------------------------+  (any state: DOWN)

NeighborNormal comes only from the neighbour's SMA idle message (Armed or
Active), as hfi1's `handle_sma_message` takes it: the link layer's news that
the other end's SMA moved on. The owner (a switch port, a simulated HFI)
tells the port when the link comes up or drops and when an idle message
arrives; the port tells the owner what to send and when its state changed
(`PortEvents`), so the owner can put it on the wire and raise Trap 128.
"""
from __future__ import annotations

from typing import Protocol

import construct as c

from devmodel.fabric import NodeType, PortIdentity
from devmodel.wire.opa_sma import PORT_INFO, VL_ARB_BLOCK_BYTES, PhysState, PortInfo, PortState

#: chip.h SMA_IDLE_*: the payload of an SMA idle message ([47:8] of the 48-bit message)
SMA_IDLE_ARM = 1
SMA_IDLE_ACTIVE = 2
IDLE_SMA = 3
IDLE_PAYLOAD_SHIFT = 8


def sma_idle_message(payload: int) -> int:
    """The 48-bit idle message hfi1's `send_idle_sma` builds."""
    return (payload << IDLE_PAYLOAD_SHIFT) | IDLE_SMA


#: (from, to) logical transitions a Set(PortInfo) may ask for; ACTIVE also needs NeighborNormal
ALLOWED_TRANSITIONS = {
    (PortState.INIT, PortState.ARMED),
    (PortState.ARMED, PortState.ACTIVE),
    (PortState.INIT, PortState.INIT),
    (PortState.ARMED, PortState.ARMED),
    (PortState.ACTIVE, PortState.ACTIVE),
}

#: PortInfo fields a Set writes (the rest are read-only or live)
WRITABLE_PORT_INFO = (
    "lid", "flow_control_mask", "vl_high_limit", "vl_preempt_limit", "collectivemask_multicastmask",
    "mkeyprotect_lmc", "smsl", "partenforce_filterraw", "operational_vls", "pkey_8b", "pkey_10b", "sm_trap_qp",
    "sa_qp", "link_down_reason", "neigh_link_down_reason", "clientrereg_subnettimeout", "port_ltp_crc_mode",
    "port_mode", "packet_format_enabled", "flit_interleave", "flit_preemption", "max_lid", "port_error_action",
    "pass_through", "mkey_lease_period", "sm_lid", "mkey", "subnet_prefix", "neigh_mtu", "xmit_q",
)
#: written only when the Set gives a non-zero value (0 means "no change")
WRITABLE_IF_NONZERO = ("link_speed_enabled", "link_width_enabled", "lwd_enabled")


def default_port_info(port_type: int = 2) -> c.Container:
    """What a port reports before any SM wrote to it (values as hfi1 reports them)."""
    values = {name: 0 for name in PORT_INFO.names}
    values.update(
        vl_cap=8, vl_arb_high_cap=16, vl_arb_low_cap=16, port_phys_conf=port_type, collectivemask_multicastmask=(1 << 3) | 4,
        sa_qp=1, link_speed_supported=2, link_speed_enabled=2, link_width_supported=0xF, link_width_enabled=0xF,
        lwd_supported=0xF, lwd_enabled=0xF, port_link_mode=(4 << 10) | (4 << 5) | 4,
        port_ltp_crc_mode=(2 << 8) | (2 << 4) | 2, packet_format_supported=2 | 8, packet_format_enabled=2 | 8,
        flit_interleave=(1 << 12) | (1 << 10), flit_preemption=bytes(8), max_lid=0xBFFF,
        buffer_units=(0x80 << 11) | (1 << 3), neigh_mtu=bytes(7) + b"\x04" + bytes(8), xmit_q=bytes(32),
        ipv6=bytes(16), ipv4=bytes(4), reserved6_8=bytes(12), opa_cap_mask=1 << 3, overall_buffer_space=0x2000,
        replay_depth_buffer=0x80, replay_depth_wire=0x40, mtucap=7, resptimevalue=18,
    )
    return c.Container(values)


class PortEvents(Protocol):
    """What a port asks of its owner."""

    def send_idle(self, port: "ManagedPort", message: int) -> None: ...
    def state_changed(self, port: "ManagedPort", old: int, new: int) -> None: ...
    def bounce(self, port: "ManagedPort") -> None: ...


class ManagedPort:
    """One port's management state. `number` 0 is a switch's management port."""

    def __init__(self, number: int, owner: PortEvents, port_type: int = 2):
        self.number = number
        self.owner = owner
        self.port_info = default_port_info(port_type)
        self.state = PortState.DOWN
        self.phys_state = PhysState.POLLING
        self.neighbor_normal = False
        self.sm_config_started = False
        self.neighbor: PortIdentity | None = None
        self.pkeys = [0] * 32
        self.pkeys[0] = 0xFFFF  # hfi1: the full management key until the SM writes the table
        self.sl_to_sc = bytearray(range(32))
        self.sc_to_sl = bytearray(range(32))
        self.sc_to_vlr = bytearray(32)
        self.sc_to_vlt = bytearray(32)
        self.sc_to_vlnt = bytearray(32)
        self.vl_arb = {section: bytearray(VL_ARB_BLOCK_BYTES) for section in range(4)}
        self.buffer_control = bytearray(132)
        self.state_changes = 0
        #: take NeighborNormal at Armed without the neighbour's idle message: the shortcut
        #: hfi1 takes in functional-simulator mode (chip.c set_link_state(HLS_UP_ARMED)),
        #: for neighbours that do not send idle messages (vfnic's hfi1 in that mode)
        self.normal_at_armed = False

    # -- the link's news ---------------------------------------------------------------
    def link_up(self, neighbor: PortIdentity) -> None:
        self.neighbor = neighbor
        self.neighbor_normal = False
        self.sm_config_started = False
        self.phys_state = PhysState.LINKUP
        self._enter(PortState.INIT)

    def link_down(self) -> None:
        self.neighbor = None
        self.neighbor_normal = False
        self.sm_config_started = False
        self.phys_state = PhysState.POLLING
        self._enter(PortState.DOWN)

    def idle_message(self, message: int) -> None:
        """An idle message from the neighbour (hfi1 `handle_sma_message`)."""
        if message & 0xF != IDLE_SMA:
            return
        payload = message >> IDLE_PAYLOAD_SHIFT
        if payload == SMA_IDLE_ARM and self.state in (PortState.INIT, PortState.ARMED):
            self.neighbor_normal = True
        elif payload == SMA_IDLE_ACTIVE and self.state in (PortState.ARMED, PortState.ACTIVE):
            self.neighbor_normal = True

    # -- the SMA's requests ------------------------------------------------------------
    def request_state(self, state: int, phys: int = PhysState.NOP) -> bool:
        """Set(PortInfo).PortState / PortPhysicalState; False: an invalid transition."""
        if phys == PhysState.POLLING:  # bounce the link
            self.owner.bounce(self)
            return True
        if phys not in (PhysState.NOP,):
            return False
        if state == PortState.NOP:
            return True
        if state == PortState.DOWN:
            if self.state != PortState.DOWN:
                self.owner.bounce(self)
            return True
        if (self.state, state) not in ALLOWED_TRANSITIONS:
            return False
        if state == PortState.ACTIVE and self.state == PortState.ARMED and not self.neighbor_normal:
            return False  # hfi1: "Cannot move to Active with NeighborNormal 0"
        old = self.state
        self._enter(state)
        if state == PortState.ARMED and self.normal_at_armed:
            self.neighbor_normal = True
        if old != state and state == PortState.ARMED:
            self.owner.send_idle(self, sma_idle_message(SMA_IDLE_ARM))
        elif old != state and state == PortState.ACTIVE:
            self.owner.send_idle(self, sma_idle_message(SMA_IDLE_ACTIVE))
        return True

    def _enter(self, state: int) -> None:
        old, self.state = self.state, state
        if old != state:
            self.state_changes += 1
            self.owner.state_changed(self, old, state)

    # -- PortInfo -----------------------------------------------------------------------
    def live_port_info(self) -> c.Container:
        """PortInfo as a Get returns it: the stored values and the live ones."""
        info = c.Container(self.port_info)
        up = self.state != PortState.DOWN
        info.ps_flags = (PS_FLAGS_NN if self.neighbor_normal else 0) | (PS_FLAGS_SMC if self.sm_config_started else 0)
        info.ps_phys_state = (self.phys_state << 4) | self.state
        info.local_port_num = self.number
        info.link_speed_active = 2 if up else 0
        info.link_width_active = 8 if up else 0
        info.lwd_tx_active = info.lwd_rx_active = 8 if up else 0
        if self.neighbor is not None:
            info.neigh_port_num = self.neighbor.port_no
            info.neigh_node_guid = self.neighbor.guid
            info.port_neigh_mode = ((1 << 3) if self.neighbor.mgmt_allowed else 0) | (
                (1 << 2) if self.neighbor.fm_security_disabled else 0) | int(self.neighbor.node_type)
        else:
            info.neigh_port_num, info.neigh_node_guid, info.port_neigh_mode = 0, 0, 0
        return info

    def write_port_info(self, request: c.Container) -> None:
        for name in WRITABLE_PORT_INFO:
            self.port_info[name] = request[name]
        for name in WRITABLE_IF_NONZERO:
            if request[name]:
                self.port_info[name] = request[name]
        self.port_info.clientrereg_subnettimeout &= 0x7F  # ClientReregister is an event, not state

    @property
    def lid(self) -> int:
        return self.port_info.lid

    @property
    def neighbor_is_switch(self) -> bool:
        return self.neighbor is not None and self.neighbor.node_type is NodeType.SWITCH


PS_FLAGS_NN = 1 << 4
PS_FLAGS_SMC = 1 << 5
PORT_INFO_BYTES = PortInfo.sizeof()
