"""A small fabric for switch tests: a switch, fake link ends that act as the
SM's HFI or as plain endpoints, simulated HFIs, all on one ManualScheduler."""
from __future__ import annotations

from devmodel.fabric import LinkMessage, MessageKind, NodeType, Packet, PortIdentity, cable
from devmodel.simnode import SimulatedHfi
from devmodel.switch import Switch, smi
from devmodel.switch.mad_packet import build_mad_packet, parse_mad_packet
from devmodel.switch.managed_port import SMA_IDLE_ACTIVE, SMA_IDLE_ARM, sma_idle_message
from devmodel.wire import opa
from devmodel.wire import opa_sma as w
from devmodel.worker import ManualScheduler

SWITCH_GUID = 0x0011750000100000
SM_GUID = 0x0011750000000001
PERMISSIVE = 0xFFFF
PS_PHYS_STATE_OFFSET = 19  # PortInfo: LID 4, FlowControlMask 4, VL 8, then the port states


class FakeEnd:
    """A link end a test drives: it records what arrives and sends what it is told."""

    def __init__(self, name: str, guid: int):
        self.name = name
        self.identity = PortIdentity(guid=guid, node_type=NodeType.HFI, port_no=1)
        self.link = None
        self.epoch = None
        self.received: list[Packet] = []
        self.messages: list[LinkMessage] = []
        self.room_available = True
        self.room_calls = 0

    def plug(self, link) -> None:
        link.attach(self)
        self.link = link
        link.polling(self, self.identity)

    def linked(self, peer, epoch) -> None:
        self.peer, self.epoch = peer, epoch

    def unlinked(self, reason, epoch) -> None:
        self.epoch = None

    def link_message(self, message, epoch) -> None:
        self.messages.append(message)

    def receive(self, packet) -> None:
        self.received.append(packet)

    def has_room(self) -> bool:
        return self.room_available

    def room(self) -> None:
        self.room_calls += 1

    def send(self, packet: Packet) -> bool:
        return self.link.transmit(self, packet)

    def idle(self, payload: int) -> None:
        self.link.message(self, LinkMessage(MessageKind.IDLE, sma_idle_message(payload)), self.epoch)

    def mads(self) -> list:
        return [m for m in (parse_mad_packet(p) for p in self.received) if m is not None]


def dr_smp(method: int, attr_id: int, am: int, path: list[int], data: bytes = b"", tid: int = 1) -> bytearray:
    """A directed-route SMP as the SM's HFI puts it on the wire (hop_ptr already 1)."""
    initial = bytearray(64)
    for hop, port in enumerate(path, start=1):
        initial[hop] = port
    mad = bytearray(w.SMP_DR.pack(0x80, 0x81, 0x80, method, 0, 0, len(path), tid, attr_id, 0, am, 0,
                                  w.PERMISSIVE_LID32, w.PERMISSIVE_LID32, bytes(initial), bytes(64), bytes(8)))
    mad += data.ljust(w.SMP_DR_DATA_BYTES, b"\0")
    verdict, _ = smi.send(smi.DrSmp(mad), False, path[0])
    assert verdict is smi.Verdict.HANDLE
    return mad


def lr_smp(method: int, attr_id: int, am: int, data: bytes = b"", tid: int = 1, mgmt_class: int = 0x01) -> bytearray:
    header = opa.MadHeader.build(dict(base_version=0x80, mgmt_class=mgmt_class, class_version=0x80, method=method,
                                      status=0, class_specific=0, tid=tid, attr_id=attr_id, attr_mod=am))
    if mgmt_class == opa.MGMT_CLASS_PERF_MGMT:
        return bytearray(header + data.ljust(w.PMA_DATA_BYTES, b"\0"))
    return bytearray(header + bytes(8) + data.ljust(w.SMP_LID_DATA_BYTES, b"\0"))


def smp_packet(mad: bytes, slid: int = PERMISSIVE, dlid: int = PERMISSIVE) -> Packet:
    return build_mad_packet(mad, slid=slid, dlid=dlid, sc=opa.SC_VL15)


def gmp_packet(mad: bytes, slid: int, dlid: int) -> Packet:
    return build_mad_packet(mad, slid=slid, dlid=dlid, sc=0, dest_qp=1, src_qp=1, qkey=0x80010000)


def data_packet(dlid: int, slid: int = 1, sc: int = 0, payload: bytes = b"hello!!!") -> Packet:
    header = (opa.LRH.build(sc=sc, lver=0, sl=0, lnh=opa.LNH_BTH, dlid=dlid, pkt_len=(20 + len(payload) + 4) // 4,
                            slid=slid)
              + opa.BTH.build(opcode=opa.Opcode.RC + opa.Opcode.SEND_ONLY, se=0, migreq=0, pad=0, tver=0,
                              pkey=0xFFFF, fecn=0, becn=0, dest_qp=5, ack_req=0, psn=0))
    return Packet(opa.append_icrc(header + payload), sc=sc, sealed=True)


def response_data(mad: bytes) -> bytes:
    start = w.SMP_DR_HEADER_BYTES if mad[1] == 0x81 else (w.SMP_HEADER_BYTES if mad[1] == 0x01 else 24)
    return bytes(mad[start:])


def status_of(mad: bytes) -> int:
    return int.from_bytes(mad[4:6], "big") & 0x7FFF


class Fabric:
    """switch (4 ports): port 1 the SM's HFI (FakeEnd), port 2 a simulated HFI,
    ports 3 and 4 plain FakeEnds."""

    def __init__(self, num_ports: int = 4):
        self.scheduler = ManualScheduler()
        self.switch = Switch("sw0", SWITCH_GUID, num_ports, self.scheduler.worker("sw0"))
        self.sm = FakeEnd("sm", SM_GUID)
        self.hfi = SimulatedHfi("node1", 0x0011750000000002, self.scheduler.worker("node1"))
        self.ends = {3: FakeEnd("h3", 0x0011750000000003), 4: FakeEnd("h4", 0x0011750000000004)}
        self.links = {1: cable(self.sm, self.switch.ports[1], name="sm<->sw0.p1"),
                      2: cable(self.hfi, self.switch.ports[2], name="node1<->sw0.p2")}
        for number, end in self.ends.items():
            self.links[number] = cable(end, self.switch.ports[number], name=f"{end.name}<->sw0.p{number}")
        self.run()

    def run(self) -> None:
        self.scheduler.run_until_idle()

    def ask(self, mad: bytearray, slid: int = PERMISSIVE, dlid: int = PERMISSIVE) -> bytearray:
        """Send an SMP from the SM's port; return the response MAD it gets back."""
        before = len(self.sm.received)
        assert self.sm.send(smp_packet(mad, slid, dlid))
        self.run()
        replies = [parse_mad_packet(p) for p in self.sm.received[before:]]
        assert len(replies) == 1, f"expected one reply, got {len(replies)} (drops: {dict(self.switch.drops)})"
        return replies[0].mad

    def dr(self, method, attr_id, am, path, data=b"") -> bytearray:
        reply = self.ask(dr_smp(method, attr_id, am, path, data))
        smp = smi.DrSmp(reply)
        assert smp.returning
        assert smi.receive(smp, False, 1, 1) == (smi.Verdict.HANDLE, None), "the SM's HFI accepts the response"
        return reply

    def route(self, routes: dict[int, int] | None = None) -> None:
        """What the SM does first: the switch's port 0 gets LID 2 (the SM's
        is 1), and LFT block 0 sends LID 1 out of port 1, LID 2 to port 0
        and each LID of `routes` out of its port."""
        info = self.switch.managed_port(0).live_port_info()
        info.lid, info.sm_lid, info.ps_phys_state = 2, 1, 0
        assert status_of(self.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24, [1], w.PortInfo.build(info))) == 0
        lft = bytearray([0xFF] * 64)
        lft[1], lft[2] = 1, 0
        for lid, port in (routes or {}).items():
            lft[lid] = port
        assert status_of(self.dr(w.Method.SET, w.Attr.LINEAR_FWD, 1 << 24, [1], bytes(lft))) == 0

    def set_switch_port_state(self, port: int, state: int) -> int:
        info = w.PortInfo.build(self.switch.managed_port(port).live_port_info())
        info = bytearray(info)
        info[PS_PHYS_STATE_OFFSET] = state  # PortPhysicalState NOP, PortState
        reply = self.dr(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | port, [1], bytes(info))
        return status_of(reply)

    def activate(self, port: int) -> None:
        """Arm and activate switch port `port`, the neighbour answering with its idle messages."""
        assert self.set_switch_port_state(port, w.PortState.ARMED) == 0
        end = self.sm if port == 1 else self.ends.get(port)
        if end is not None:
            end.idle(SMA_IDLE_ARM)
            self.run()
        assert self.set_switch_port_state(port, w.PortState.ACTIVE) == 0
        if end is not None:
            end.idle(SMA_IDLE_ACTIVE)
            self.run()


def set_port_state_in_the_sma(switch: Switch, port: int, state: int) -> int:
    """The SMA's Set(PortInfo) of switch port `port` to `state`, run as a
    switch event (what an SMP from the SM becomes there); its MAD status."""
    statuses = []

    def set_state():
        info = switch.managed_port(port).live_port_info()
        info.ps_phys_state = state
        statuses.append(switch.sma.process(w.Method.SET, w.Attr.PORT_INFO, 1 << 24 | port,
                                           w.PortInfo.build(info), 1)[0])
    switch.post(set_state)
    switch.worker.settle()
    return statuses[0]

