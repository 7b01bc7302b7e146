"""Link ends for tests of devmodel/fabric's links: they record what the link tells them."""
from __future__ import annotations

from devmodel.fabric import Link, Packet, PortIdentity


class Port:
    """A LinkEnd that records what the link tells it."""

    def __init__(self, name: str, guid: int):
        self.name = name
        self.identity = PortIdentity(guid=guid)
        self.events: list[tuple] = []
        self.received: list[Packet] = []
        self.link: Link | None = None

    def plug(self, link):
        link.attach(self)
        self.link = link

    def linked(self, peer, epoch):
        self.events.append(("linked", peer.guid, epoch))

    def unlinked(self, reason, epoch):
        self.events.append(("unlinked", reason, epoch))

    def receive(self, packet):
        self.received.append(packet)

    def link_message(self, message, epoch):
        self.events.append(("message", message.kind, message.data, epoch))

    def has_room(self):
        return len(self.received) < 3

    def room(self):
        self.events.append(("room",))


def cabled() -> tuple[Link, Port, Port]:
    link = Link("a<->b")
    a, b = Port("a", 0x11), Port("b", 0x22)
    link.attach(a)
    link.attach(b)
    return link, a, b
