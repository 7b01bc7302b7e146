"""A simulated HFI: one port on a cable, an SMA and a PMA, no guest (ibsim's idea, for OPA).

    Link --receive--> event on the worker:
        SC15 QP0 DR SMP  --> smi.receive/forward/send (an end node: never forwards)
                             --> SMA (hfi1's answers: one port, AM port ignored) --> reply
        LID-routed SMP to our LID or the permissive LID --> SMA --> reply to the SLID
        GMP (class 0x04) to our LID --> PMA --> reply
        anything else: counted (`received_other`), dropped
    link up/down, idle messages --> ManagedPort (NeighborNormal from the neighbour's Armed)

It answers like hfi1 in simulator-free mode: NeighborNormal comes only from
the neighbour's SMA idle message, and going Armed/Active sends its own, so
the switch port facing it goes Active the same way a real HFI's would.
Replies wait in a small queue for the link's credits, as the switch's do.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter, deque

from devmodel.fabric import InboundBuffer, Link, LinkDownReason, LinkMessage, MessageKind, NodeType, Packet, PortIdentity
from devmodel.switch import smi
from devmodel.switch.device import PORT_STATE_NAMES
from devmodel.switch.mad_packet import build_mad_packet, parse_mad_packet, reply_packet
from devmodel.switch.managed_port import ManagedPort
from devmodel.switch.management import answer
from devmodel.switch.pma import PerformanceAgent, PortCounters
from devmodel.switch.sma import SubnetManagementAgent
from devmodel.wire import opa
from devmodel.wire import opa_sma as w

PERMISSIVE = 0xFFFF
INBOUND_LIMIT = 64


class SimulatedHfi:
    node_type = w.NodeTypeCode.HFI
    num_ports = 1
    #: what `vfnic serve` calls it (registry.FabricNode)
    kind = "simulated HFI"

    def __init__(self, name: str, guid: int, worker, description: str | None = None):
        if guid & (3 << 30):
            raise ValueError("opafm wants GUID bits 30-31 clear (it derives the port GUID by clearing them)")
        self.name = name
        self.guid = guid
        self.device_id = 0x24F0
        self.description = (description or f"{name} hfi1_0").encode()
        self.worker = worker
        self.log = logging.getLogger(f"vfnic.simnode.{name}")
        self._lock = threading.Lock()
        self.port = ManagedPort(1, self, port_type=2)
        self.counters = PortCounters()
        self.sma = SubnetManagementAgent(self, is_switch=False)
        self.pma = PerformanceAgent({1: self.counters}, is_hfi=True)
        self.link: Link | None = None
        self.epoch = -1
        self.inbound = InboundBuffer(INBOUND_LIMIT)
        self.outbox: deque[Packet] = deque()
        self.drops: Counter[str] = Counter()
        self.internal_errors = 0

    @property
    def identity(self) -> PortIdentity:
        return PortIdentity(guid=self.guid, node_type=NodeType.HFI, port_no=1)

    # -- SmaNode / PortEvents ----------------------------------------------------------------------
    def managed_port(self, number: int) -> ManagedPort | None:
        return self.port if number == 1 else None

    def send_idle(self, port: ManagedPort, message: int) -> None:
        link, epoch = self.link, self.epoch
        if link is not None:
            self.worker.submit(lambda: link.message(self, LinkMessage(MessageKind.IDLE, message), epoch))

    def state_changed(self, port: ManagedPort, old: int, new: int) -> None:
        self.log.debug("%s: port state %d -> %d", self.name, old, new)

    def bounce(self, port: ManagedPort) -> None:
        link = self.link
        port.link_down()
        if link is not None:
            self.worker.submit(lambda: (link.offline(self, LinkDownReason.TAKEN_DOWN), link.polling(self, self.identity)))

    # -- cabling and LinkEnd ------------------------------------------------------------------------
    def plug(self, link: Link) -> None:
        link.attach(self)
        self.link = link
        link.polling(self, self.identity)

    def _post(self, fn) -> None:
        def run():
            try:
                with self._lock:
                    fn()
            except Exception:
                self.internal_errors += 1
                self.log.exception("%s: internal error", self.name)
            self._flush()
        self.worker.submit(run)

    def linked(self, peer: PortIdentity, epoch: int) -> None:
        def up():
            self.epoch = epoch
            self.port.link_up(peer)
        self._post(up)

    def unlinked(self, reason: LinkDownReason, epoch: int) -> None:
        def down():
            if epoch == self.epoch:
                self.port.link_down()
                self.counters.link_downed += 1
                self.epoch = -1
                link = self.link
                if link is not None:
                    self.worker.submit(lambda: link.polling(self, self.identity))
        self._post(down)

    def link_message(self, message: LinkMessage, epoch: int) -> None:
        def arrived():
            if message.kind is MessageKind.IDLE:
                self.port.idle_message(message.data)
            elif message.kind is MessageKind.CONFIGLT_READY and self.link is not None:
                link = self.link
                self.worker.submit(lambda: link.message(self, message, epoch))
        self._post(arrived)

    def receive(self, packet: Packet) -> None:
        if self.inbound.push(packet):
            self._post(self._ingress)

    def has_room(self) -> bool:
        return self.inbound.has_room()

    def room(self) -> None:
        self.worker.submit(self._flush)

    # -- packets ------------------------------------------------------------------------------------
    def _ingress(self) -> None:
        self.inbound.begin()
        packets = self.inbound.packets
        while packets:
            packet = packets.popleft()
            self.counters.received(len(packet.data))
            reply = self._handle(packet)
            if reply is not None:
                self.outbox.append(reply)
        if self.link is not None:
            link = self.link
            self.worker.submit(lambda: link.room_freed(self))

    def _handle(self, packet: Packet) -> Packet | None:
        request = parse_mad_packet(packet)
        if request is None:
            self.drops["not a MAD"] += 1
            return None
        lid = self.port.lid
        mad = request.mad
        if mad[1] == opa.MGMT_CLASS_SUBN_DIRECTED_ROUTE and request.dest_qp == 0:
            try:
                smp = smi.DrSmp(mad)
            except ValueError:
                self.drops[smi.DropReason.TRUNCATED.value] += 1
                return None
            verdict, reason = smi.receive(smp, False, 1, 1)
            if verdict is smi.Verdict.DISCARD:
                self.drops[reason.value] += 1
                return None
            if smi.forward(smp) is smi.Next.SEND:
                verdict, reason = smi.send(smp, False, 1)
                if verdict is smi.Verdict.DISCARD:
                    self.drops[reason.value] += 1
                    return None
            if smp.returning:
                self.drops[smi.DropReason.NO_SM.value] += 1
                return None
            response = answer(mad, 1, self.sma, None)
            if response is None:
                return None
            verdict, reason = smi.send(smp, False, 1)
            if verdict is smi.Verdict.DISCARD:
                self.drops[reason.value] += 1
                return None
            return build_mad_packet(response, slid=PERMISSIVE, dlid=PERMISSIVE, sc=opa.SC_VL15, sl=request.sl)
        if request.dlid not in (lid, PERMISSIVE) or not lid and request.dlid != PERMISSIVE:
            self.drops["not for this LID"] += 1
            return None
        if (mad[1] == opa.MGMT_CLASS_SUBN_LID_ROUTED) != (request.dest_qp == 0):
            self.drops["wrong QP for the class"] += 1
            return None
        response = answer(mad, 1, self.sma, self.pma)
        if response is None:
            return None
        return reply_packet(request, response, slid=lid)

    def _flush(self) -> None:
        link = self.link
        while self.outbox and link is not None:
            if not link.peer_has_room(self):
                return
            packet = self.outbox.popleft()
            if link.transmit(self, packet):
                self.counters.transmitted(len(packet.data))
            else:
                self.drops["link down"] += 1

    # -- what tools read (registry.FabricNode) ---------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {"name": self.name, "guid": f"{self.guid:#018x}", "lid": self.port.lid,
                    "state": PORT_STATE_NAMES.get(self.port.state, str(self.port.state)),
                    "counters": dict(vars(self.counters)), "drops": dict(self.drops),
                    "sma": {"requests": self.sma.requests, "errors": self.sma.errors},
                    "internal_errors": self.internal_errors}

    def status(self) -> dict:
        """What `vfnic ctl C query` shows of it: its one port's state, neighbour, link and counters."""
        with self._lock:
            neighbor, link = self.port.neighbor, self.link
            port = {"port": 1, "state": PORT_STATE_NAMES.get(self.port.state, str(self.port.state)),
                    "neighbor_normal": bool(self.port.neighbor_normal),
                    "neighbor_guid": f"{neighbor.guid:#018x}" if neighbor is not None else None,
                    "link": link.name if link is not None else None,
                    "peer": link.peer_of(self.name) if link is not None else None,
                    "outbox": len(self.outbox), "inbound": len(self.inbound),
                    "counters": dict(vars(self.counters))}
            return {"name": self.name, "kind": self.kind, "guid": f"{self.guid:#018x}", "lid": self.port.lid,
                    "num_ports": 1, "ports": [port], "drops": dict(self.drops),
                    "internal_errors": self.internal_errors}

    def close(self) -> None:
        """Stop its worker handle (a shared scheduler's thread ends with the last user)."""
        self.worker.stop()
