"""The fabric between emulated devices: ports joined by links.

    devmodel/fabric/link.py     Link (handshake, down propagation, link-layer
                                messages, counters, faults, take-down,
                                capture), PortIdentity, BuiltInPartner
    devmodel/fabric/packet.py   Packet
    devmodel/fabric/inbound.py  InboundBuffer: a link end's receive buffer and credits
    devmodel/fabric/faults.py   Fault: drop, corrupt, delay, duplicate, reorder
    devmodel/fabric/capture.py  LinkCapture: pcap files Wireshark reads as OPA
    devmodel/fabric/topology.py a fabric from its description (switches, served and
                                simulated HFIs, cables): vfnic serve --topology, --switch
    devmodel/fabric/remote_cable.py  RemoteLinkEnd, cable_remote(): a cable to a
                                port in another process, over a byte stream

A device's port implements `LinkEnd`; `cable(a, b)` joins two of them in
one process, `cable_remote(port, role, address, opener, worker)` joins one
to a port of another `vfnic serve` (the stream's transport is the caller's:
emulator/cable.py).
"""
from .capture import LinkCapture
from .faults import Fault, FaultError, FaultKind
from .inbound import InboundBuffer
from .link import (
    BuiltInPartner,
    DirectionCounters,
    Link,
    LinkDownReason,
    LinkEnd,
    LinkError,
    LinkMessage,
    LinkState,
    MessageKind,
    NodeType,
    PortIdentity,
    RelayEnd,
)
from .packet import Packet
from .remote_cable import CableRole, RemoteCable, RemoteLinkEnd, cable_remote

__all__ = ["BuiltInPartner", "DirectionCounters", "Fault", "FaultError", "FaultKind", "InboundBuffer", "Link", "LinkCapture",
           "LinkDownReason", "LinkEnd", "LinkError", "LinkMessage", "LinkState", "MessageKind", "NodeType", "Packet",
           "PortIdentity", "cable"]
__all__ += ["CableRole", "RelayEnd", "RemoteCable", "RemoteLinkEnd", "cable_remote"]


def cable(a, b, name: str | None = None, timer=None) -> Link:
    """Join two device ports (objects with `plug(link)`) with a new link;
    `timer` (a worker's `after`) runs its delayed deliveries."""
    link = Link(name or f"{a.name}<->{b.name}", timer=timer)
    a.plug(link)
    b.plug(link)
    return link
