"""A switch port: one end of a cable, with an inbound buffer and an egress queue.

    Link --receive(packet)--> inbound (bounded: has_room = the link's credits)
                                 | switch event: ingress batch (Switch.ingress)
                              egress queue (bounded; a full one holds the ingress
                                 | that feeds it: head-of-line, nothing dropped)
    Link <--transmit------ pump (while the peer has room; `room()` resumes it)

    linked / unlinked / link_message  --> queued on the switch's worker
    link-layer messages out: CONFIGLT_READY echoed, SMA idle messages (Armed/Active)

A switch port always trains: it polls as soon as it is cabled and again
after every link-down, as a switch's link layer does on its own.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

from devmodel.fabric import InboundBuffer, Link, LinkDownReason, LinkMessage, NodeType, Packet, PortIdentity

from .managed_port import ManagedPort
from .pma import PortCounters

if TYPE_CHECKING:
    from .device import Switch

INBOUND_LIMIT = 256
EGRESS_LIMIT = 256
EGRESS_BATCH = 64
SWITCH_DEVICE_ID = 0x2718


class SwitchPort:
    def __init__(self, switch: "Switch", number: int):
        self.switch = switch
        self.number = number
        self.name = f"{switch.name}.p{number}"
        self.managed = ManagedPort(number, switch)
        self.counters = PortCounters()
        self.link: Link | None = None
        self.epoch = -1
        self.inbound = InboundBuffer(INBOUND_LIMIT)
        self.egress: deque[Packet] = deque()
        self.blocked: set[int] = set()  # ingress ports waiting for room in this egress queue
        self._lock = threading.Lock()
        self._pump_posted = False

    @property
    def identity(self) -> PortIdentity:
        return PortIdentity(guid=self.switch.guid, node_type=NodeType.SWITCH, port_no=self.number,
                            device_id=SWITCH_DEVICE_ID, device_rev=0)

    # -- cabling --------------------------------------------------------------------------
    def plug(self, link: Link) -> None:
        link.attach(self)
        self.link = link
        link.polling(self, self.identity)

    # -- LinkEnd: only queue work ---------------------------------------------------------------
    def linked(self, peer: PortIdentity, epoch: int) -> None:
        self.switch.post(lambda: self.switch.port_linked(self, peer, epoch))

    def unlinked(self, reason: LinkDownReason, epoch: int) -> None:
        self.switch.post(lambda: self.switch.port_unlinked(self, epoch))

    def link_message(self, message: LinkMessage, epoch: int) -> None:
        self.switch.post(lambda: self.switch.port_message(self, message, epoch))

    def receive(self, packet: Packet) -> None:
        if self.inbound.push(packet):
            self.switch.post(lambda: self.switch.ingress(self))

    def has_room(self) -> bool:
        return self.inbound.has_room()

    def room(self) -> None:
        self.schedule_pump()

    # -- the switch's side ----------------------------------------------------------------------
    def repost_ingress(self) -> None:
        if self.inbound.repost():
            self.switch.post(lambda: self.switch.ingress(self))

    def schedule_pump(self) -> None:
        with self._lock:
            if self._pump_posted:
                return
            self._pump_posted = True
        self.switch.post_unlocked(self.pump)

    def egress_full(self) -> bool:
        return len(self.egress) >= EGRESS_LIMIT

    def pump(self) -> None:
        """Send what the egress queue holds while the peer has room (not under the
        switch's lock: the link calls the peer's `receive`, which only queues)."""
        with self._lock:
            self._pump_posted = False
        link, sent = self.link, 0
        while self.egress and sent < EGRESS_BATCH:
            if link is None or not link.is_up(self.epoch):
                dropped = len(self.egress)
                self.egress.clear()
                self.switch.count_drop("egress port went down", dropped)
                self.counters.port_xmit_discards += dropped
                break
            if not link.peer_has_room(self):
                self.counters.port_xmit_wait += 1
                break  # `room()` will reschedule
            packet = self.egress.popleft()
            if link.transmit(self, packet):
                self.counters.transmitted(len(packet.data))
            else:
                self.counters.port_xmit_discards += 1
                self.switch.count_drop("egress port went down")
            sent += 1
        if self.egress and sent == EGRESS_BATCH:
            self.schedule_pump()
        if len(self.egress) < EGRESS_LIMIT and self.blocked:
            waiting, self.blocked = self.blocked, set()
            for number in waiting:
                self.switch.ports[number].repost_ingress()

    def send_message(self, message: LinkMessage) -> None:
        if self.link is not None:
            self.link.message(self, message, self.epoch)

    def retrain(self) -> None:
        if self.link is not None:
            self.link.polling(self, self.identity)

    def bounce(self) -> None:
        if self.link is not None:
            self.link.offline(self, LinkDownReason.TAKEN_DOWN)
            self.link.polling(self, self.identity)

