"""A cable between two ports, and what travels on it.

    end A                        Link                         end B
    polling(identity) ---> [DOWN: A polling] <--- polling(identity)
                           both ends polling: UP, epoch n
    linked(B's identity) <---                 ---> linked(A's identity)
    transmit(packet)  ---> counters A->B  ---> receive(packet)
    offline()         ---> DOWN, epoch n+1 ---> unlinked(REMOTE_OFFLINE)

Link-up is a handshake: the link comes up only once both ends poll, and
each end learns the other's identity (GUID, node type, port number) as the
neighbour registers of a real HFI do after link negotiation. One end going
offline takes the other down. A packet sent while the link is down is
dropped and counted. While the link is up it is lossless: a sender asks
`peer_has_room` first and waits for `room` (the receiver's buffer credits).

Threading: a link is called from its ends' worker threads. It keeps its own
small lock and never calls back into an end while holding it; ends only
post work to their own queues in `linked`, `unlinked` and `receive`, so two
devices sending to each other cannot deadlock.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class NodeType(int, Enum):
    """What the neighbour is (DC_DC8051_STS_REMOTE_NODE_TYPE, hfi.h NEIGHBOR_TYPE_*)."""

    HFI = 0
    SWITCH = 1


@dataclass(frozen=True)
class PortIdentity:
    """What link negotiation tells the other end about a port."""

    guid: int
    node_type: NodeType = NodeType.HFI
    port_no: int = 1
    device_id: int = 0x24F0
    device_rev: int = 0x11
    fm_security_disabled: bool = True
    mgmt_allowed: bool = True
    #: the port's VerifyCap offer (8051 fields VERIFY_CAP_LOCAL_PHY, _FABRIC,
    #: _LINK_MODE); None: whatever the receiving end offered itself
    verify_cap: tuple[int, int, int] | None = None


class LinkDownReason(Enum):
    REMOTE_OFFLINE = "the other end went offline"
    CABLE_PULLED = "the cable was pulled"


class Packet:
    """One packet on a link: the bytes from the first header byte through
    the ICRC, its service channel (5 bits; an OPA 9B header holds only
    SC[3:0], bit 4 travels out of band) and its format (`bypass`: a 16B
    packet; the link layer tells the formats apart, not the header bytes).

    `sealed`: the sender computed the ICRC over exactly these bytes and
    nothing on the way touched them, so a receiver may skip checking it (a
    CRC-32 over every packet is a good part of a Python receive path).
    Anything that alters a packet in flight (fault injection) must clear it."""

    __slots__ = ("data", "sc", "bypass", "sealed")

    def __init__(self, data: bytes, sc: int, bypass: bool = False, sealed: bool = False):
        self.data = data
        self.sc = sc
        self.bypass = bypass
        self.sealed = sealed

    def __repr__(self) -> str:
        return f"Packet({len(self.data)} bytes, SC {self.sc}{', 16B' if self.bypass else ''})"


class LinkEnd(Protocol):
    """What a link calls on the port at each end. Each call only queues work
    for that port's device (or reads a length); none may block or take the
    device's lock."""

    name: str

    def linked(self, peer: PortIdentity, epoch: int) -> None: ...
    def unlinked(self, reason: LinkDownReason, epoch: int) -> None: ...
    def receive(self, packet: Packet) -> None: ...
    def has_room(self) -> bool: ...  # may the other end send now (its buffer credits)?
    def room(self) -> None: ...  # the other end drained: senders waiting may go on


class LinkState(Enum):
    DOWN = "down"
    UP = "up"


@dataclass
class DirectionCounters:
    """One direction of a link (from the named end)."""

    packets: int = 0
    bytes: int = 0
    dropped_link_down: int = 0

    def as_dict(self) -> dict:
        return {"packets": self.packets, "bytes": self.bytes, "dropped_link_down": self.dropped_link_down}


@dataclass
class _EndState:
    end: LinkEnd
    polling: bool = False
    identity: PortIdentity | None = None
    sent: DirectionCounters = field(default_factory=DirectionCounters)


class Link:
    """A cable joining two ends (`attach` each, then they may poll)."""

    def __init__(self, name: str = "link"):
        self.name = name
        self.log = logging.getLogger(f"vfnic.fabric.{name}")
        self._lock = threading.Lock()
        self._ends: list[_EndState] = []
        self.state = LinkState.DOWN
        #: bumps on every UP -> DOWN, so late news about an old link-up is recognised
        self.epoch = 0
        self.ups = 0

    def attach(self, end: LinkEnd) -> None:
        with self._lock:
            if len(self._ends) == 2:
                raise ValueError(f"{self.name} already joins {self._ends[0].end.name} and {self._ends[1].end.name}")
            if any(s.end is end for s in self._ends):
                raise ValueError(f"{end.name} is already on {self.name}")
            self._ends.append(_EndState(end))

    def _pair(self, end: LinkEnd) -> tuple[_EndState, _EndState | None]:
        mine = next((s for s in self._ends if s.end is end), None)
        if mine is None:
            raise ValueError(f"{getattr(end, 'name', end)} is not attached to {self.name}")
        other = next((s for s in self._ends if s.end is not end), None)
        return mine, other

    def peer_name(self, end: LinkEnd) -> str | None:
        with self._lock:
            _, other = self._pair(end)
            return other.end.name if other else None

    # -- the ends' requests ----------------------------------------------------
    def polling(self, end: LinkEnd, identity: PortIdentity) -> None:
        """`end` is ready to train (its physical state is Polling)."""
        with self._lock:
            mine, other = self._pair(end)
            mine.polling, mine.identity = True, identity
            if self.state is LinkState.UP or other is None or not other.polling:
                return
            self.state = LinkState.UP
            self.ups += 1
            epoch = self.epoch
            notify = [(mine.end, other.identity), (other.end, identity)]
        self.log.info("%s: link up between %s and %s", self.name, end.name, other.end.name)
        for target, peer in notify:
            target.linked(peer, epoch)

    def offline(self, end: LinkEnd, reason: LinkDownReason = LinkDownReason.REMOTE_OFFLINE) -> None:
        """`end` stops polling or leaves LinkUp (host request, reset, power off)."""
        with self._lock:
            mine, other = self._pair(end)
            mine.polling = False
            if self.state is not LinkState.UP:
                return
            self.state = LinkState.DOWN
            epoch = self.epoch
            self.epoch += 1
        self.log.info("%s: link down (%s went offline)", self.name, end.name)
        if other is not None:
            other.end.unlinked(reason, epoch)

    def is_up(self, epoch: int) -> bool:
        return self.state is LinkState.UP and self.epoch == epoch

    # -- packets -------------------------------------------------------------
    def transmit(self, end: LinkEnd, packet: Packet) -> bool:
        """Carry `packet` from `end` to the other end; False if it was dropped."""
        with self._lock:
            mine, other = self._pair(end)
            if self.state is not LinkState.UP or other is None:
                mine.sent.dropped_link_down += 1
                return False
            mine.sent.packets += 1
            mine.sent.bytes += len(packet.data)
            target = other.end
        target.receive(packet)
        return True

    def peer_has_room(self, end: LinkEnd) -> bool:
        """Flow control: does the other end take packets now? (A real link
        stops a sender when the receiver's buffer credits run out; the
        sender waits, nothing is dropped.)"""
        with self._lock:
            _, other = self._pair(end)
        return other is None or other.end.has_room()

    def room_freed(self, end: LinkEnd) -> None:
        """`end` drained its receive buffer: tell the other end."""
        with self._lock:
            _, other = self._pair(end)
        if other is not None:
            other.end.room()

    def counters(self) -> dict:
        """Per direction ("A->B"): packets, bytes, drops; and the link's state."""
        with self._lock:
            out = {"state": self.state.value, "ups": self.ups}
            for mine in self._ends:
                other = next((s for s in self._ends if s is not mine), None)
                out[f"{mine.end.name}->{other.end.name if other else '-'}"] = mine.sent.as_dict()
            return out


class BuiltInPartner:
    """The far end of a cable with nothing behind it but a port that trains:
    it always polls, presents `identity`, and absorbs whatever it is sent.
    This is how a lone HFI reaches LinkUp/Init with no second device."""

    def __init__(self, identity: PortIdentity, name: str = "partner"):
        self.name = name
        self.identity = identity
        self.absorbed = 0
        self.link: Link | None = None

    def plug_into(self, link: Link) -> None:
        self.link = link
        link.attach(self)
        link.polling(self, self.identity)

    def linked(self, peer: PortIdentity, epoch: int) -> None:
        pass

    def unlinked(self, reason: LinkDownReason, epoch: int) -> None:
        # A real partner would retrain: poll again at once.
        if self.link is not None:
            self.link.polling(self, self.identity)

    def receive(self, packet: Packet) -> None:
        self.absorbed += 1

    def has_room(self) -> bool:
        return True

    def room(self) -> None:
        pass
