"""The fabric between emulated devices: ports joined by links.

    devmodel/fabric/link.py   Link (handshake, down propagation, counters),
                              Packet, PortIdentity, BuiltInPartner

A device's port implements `LinkEnd`; `cable(a, b)` joins two of them. The
transport of a link is in-process for now; the `LinkEnd` contract (post,
never block) is what lets a later transport carry it across processes.
"""
from .link import (
    BuiltInPartner,
    DirectionCounters,
    Link,
    LinkDownReason,
    LinkEnd,
    LinkState,
    NodeType,
    Packet,
    PortIdentity,
)

__all__ = ["BuiltInPartner", "DirectionCounters", "Link", "LinkDownReason", "LinkEnd", "LinkState", "NodeType",
           "Packet", "PortIdentity", "cable"]


def cable(a, b, name: str | None = None) -> Link:
    """Join two device ports (objects with `plug(link)`) with a new link."""
    link = Link(name or f"{a.name}<->{b.name}")
    a.plug(link)
    b.plug(link)
    return link
