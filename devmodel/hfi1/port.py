"""The HFI's end of its cable: where the chip meets the fabric.

    chip (under the model lock)            Hfi1Port                 Link
    8051 CHANGE_PHY_STATE(Polling) --> start_polling(identity) --> polling
    8051 goes offline              --> stop()                  --> offline
    8051 link layer (ConfigLT,     --> send_message(m, epoch)  --> message
      idle messages, planned down)
    egress (outbox, after unlock)  --> transmit(packet)        --> transmit
               linked / unlinked / link_message / receive  <-- any thread
                          (queued on the chip's worker, never run inline)

The link calls `linked`, `unlinked`, `link_message` and `receive` from
whatever thread the other end runs on; each only queues a chip event
(`ChipServices.post`), so no device ever runs another device's code or takes
its lock. Received packets
wait in `inbound` and are handed to the receive block in bounded batches,
so a flood from the peer cannot starve this chip's other work; a full
`inbound` makes the peer's engines wait (`has_room`, `wait_for_room`), as
link credits do on silicon, so the queue stays bounded and nothing is lost.

Collaborators: the chip's services (`post`: every piece of news becomes a chip
event) and, wired by the device once they exist (`connect`), the 8051's link
state machine (`PhysicalLinkEvents`, lni.py), the receive block's
`receive_packet`, and the device's status view. PIO and SDMA ask the port
for room at the peer before each packet (`peer_has_room`, `wait_for_room`).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from devmodel.fabric import BuiltInPartner, InboundBuffer, Link, LinkDownReason, LinkMessage, Packet, PortIdentity

from .services import ChipServices

#: packets handed to the receive block per worker step
INGRESS_BATCH = 64
#: packets a port buffers from the link before its peer must wait (the link's
#: credits: senders stall, nothing is dropped), and where they may go on
INBOUND_LIMIT = 512


class PhysicalLinkEvents(Protocol):
    """The other end's news, as the 8051's link state machine takes it (`lni.PhysicalLink`)."""

    def cable_plugged(self) -> None: ...

    def partner_linked(self, peer: PortIdentity, epoch: int) -> None: ...

    def partner_lost(self, reason: LinkDownReason, epoch: int) -> None: ...

    def message_received(self, message: LinkMessage, epoch: int) -> None: ...


class Hfi1Port:
    def __init__(self, services: ChipServices, name: str):
        self.services = services
        self.name = name
        #: wired by `connect` once the 8051 and the receive block exist
        self.physical: PhysicalLinkEvents | None = None
        self._receive: Callable[[Packet], None] | None = None
        self._status: Callable[[], dict] | None = None
        self.log = logging.getLogger(f"vfnic.hfi1.port.{name}")
        self.link: Link | None = None
        self.partner: BuiltInPartner | None = None
        self.inbound = InboundBuffer(INBOUND_LIMIT)
        self._waiting: list = []  # engines waiting for room at the peer
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped_link_down = 0

    def connect(self, physical: PhysicalLinkEvents, receive: Callable[[Packet], None],
                status: Callable[[], dict]) -> None:
        """Wire the port to the 8051's link state machine, the receive block and
        the device's status view (all built after the port)."""
        self.physical = physical
        self._receive = receive
        self._status = status

    def status(self) -> dict:
        return self._status()

    # -- cabling (set-up, tests, fault injection) --------------------------------
    def plug(self, link: Link) -> None:
        if self.link is not None:
            self.unplug()
        link.attach(self)
        self.link = link

    def plug_partner(self, identity: PortIdentity) -> None:
        """A cable to a built-in link partner (`BuiltInPartner`)."""
        link = Link(f"{self.name}<->partner")
        self.plug(link)
        self.partner = BuiltInPartner(identity, name=f"{self.name}-partner")
        self.partner.plug_into(link)
        self.services.post(self.physical.cable_plugged)

    def unplug(self) -> None:
        """Pull the cable: an up link goes down at both ends."""
        link, self.link, self.partner = self.link, None, None
        if link is None:
            return
        epoch = link.epoch
        was_up = link.is_up(epoch)
        link.offline(self, LinkDownReason.CABLE_PULLED)
        if was_up:
            self.unlinked(LinkDownReason.CABLE_PULLED, epoch)

    # -- the 8051's side (under the chip lock) -------------------------------------
    def start_polling(self, identity: PortIdentity) -> bool:
        """Offer the link; False if there is no cable to offer it on."""
        if self.link is None:
            return False
        self.link.polling(self, identity)
        return True

    def stop(self) -> None:
        if self.link is not None:
            self.link.offline(self)

    def link_is_up(self, epoch: int) -> bool:
        return self.link is not None and self.link.is_up(epoch)

    def send_message(self, message: LinkMessage, epoch: int) -> bool:
        """A link-layer message to the other end (lost if link-up `epoch` is over)."""
        return self.link is not None and self.link.message(self, message, epoch)

    # -- egress (after the chip lock is released) -------------------------------------
    def transmit(self, packet: Packet) -> None:
        link = self.link
        if link is not None and link.transmit(self, packet):
            self.sent += 1
        else:
            self.dropped_link_down += 1

    # -- LinkEnd: called by the link from any thread; only queues work -----------------
    def linked(self, peer: PortIdentity, epoch: int) -> None:
        self.services.post(lambda: self.physical.partner_linked(peer, epoch))

    def unlinked(self, reason: LinkDownReason, epoch: int) -> None:
        self.services.post(lambda: self.physical.partner_lost(reason, epoch))

    def link_message(self, message: LinkMessage, epoch: int) -> None:
        self.services.post(lambda: self.physical.message_received(message, epoch))

    def receive(self, packet: Packet) -> None:
        if self.inbound.push(packet):
            self.services.post(self._ingress)

    def _ingress(self) -> None:
        """Chip event: hand a batch of inbound packets to the receive block
        (as many as were waiting when it started, at most INGRESS_BATCH)."""
        self.inbound.begin()
        batch = min(len(self.inbound), INGRESS_BATCH)
        receive, packets = self._receive, self.inbound.packets
        try:
            for _ in range(batch):
                receive(packets.popleft())
        finally:
            if self.inbound.repost():
                self.services.post(self._ingress)
            if self.inbound.drained() and self.link is not None:
                self.link.room_freed(self)

    def discard_inbound(self) -> int:
        """Reset: packets in flight to this chip are lost."""
        return self.inbound.discard()

    # -- flow control: a link is lossless, a sender waits for room ---------------------
    def has_room(self) -> bool:
        """May the other end send to us (LinkEnd)? Like a link's buffer credits."""
        return self.inbound.has_room()

    def peer_has_room(self) -> bool:
        return self.link is None or self.link.peer_has_room(self)

    def wait_for_room(self, resume) -> None:
        """An engine found the peer's buffer full: run `resume` (a chip event)
        once the peer has drained."""
        with self._lock:
            if resume not in self._waiting:
                self._waiting.append(resume)
        if self.peer_has_room():  # drained meanwhile
            self.room()

    def room(self) -> None:
        """LinkEnd: the other end drained its buffer; waiting engines go on."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for resume in waiting:
            self.services.post(resume)
