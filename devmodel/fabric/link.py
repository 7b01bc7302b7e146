"""A cable between two ports, and what travels on it.

    end A                        Link                         end B
    polling(identity) ---> [DOWN: A polling] <--- polling(identity)
                           both ends polling: UP, epoch n
    linked(B's identity) <---                 ---> linked(A's identity)
    transmit(packet)  ---> counters A->B  ---> receive(packet)
    message(m, n)     ---> (epoch n only)  ---> link_message(m, n)
    offline()         ---> DOWN, epoch n+1 ---> unlinked(REMOTE_OFFLINE)

Link-up is a handshake: the link comes up only once both ends poll, and
each end learns the other's identity (GUID, node type, port number) as the
neighbour registers of a real HFI do after link negotiation. One end going
offline takes the other down. A packet sent while the link is down is
dropped and counted. While the link is up it is lossless: a sender asks
`peer_has_room` first and waits for `room` (the receiver's buffer credits).

Besides packets, the two ends' link layers talk to each other (`message`):
what a real cable carries in its link-layer flits rather than in packets
-- the ConfigLT handshake that ends link negotiation, idle messages (the
SMA's Armed/Active news for the neighbour), the reason an end gives when it
takes the link down on purpose. A message belongs to one link-up (its
epoch) and is delivered only while that link-up lasts; packet faults do not
touch it.

What tests and operators do to a link (`vfnic ctl`, pytest):

    set_fault(sender, Fault)  per direction: drop, corrupt, delay, duplicate,
                              reorder (faults.py); counted per direction
    take_down(seconds=None)   the cable goes dark: both ends see the link drop
                              (as when the far end's transmitter dies); it
                              stays down until bring_up(), or for `seconds`
    start_capture(path)       a pcap of what arrives (capture.py)

Delays need a clock: `timer` (a worker handle's `after`) runs deferred
deliveries and timed link-downs.

An end may be a relay (`attach(end, relay=True)`, a `RelayEnd`): it stands
in for a port elsewhere -- the other end of a remote cable, in another
process (remote_cable.py) -- and so hears more than an end does: the other
end's polling and going offline as they happen (`peer_polling`,
`peer_offline`), not only as link-up and link-down, and the host's hand on
the cable (`cable_enabled`), which it passes on to the far side.

Threading: a link is called from its ends' worker threads. It keeps its own
small lock and never calls back into an end while holding it; ends only
post work to their own queues in `linked`, `unlinked` and `receive`, so two
devices sending to each other cannot deadlock.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from .capture import LinkCapture
from .faults import Fault, apply_faults
from .packet import Packet


class NodeType(int, Enum):
    """What the neighbour is (DC_DC8051_STS_REMOTE_NODE_TYPE, hfi.h NEIGHBOR_TYPE_*)."""

    HFI = 0
    SWITCH = 1


class MessageKind(Enum):
    """What one end's link layer tells the other's (`LinkMessage`)."""

    #: the end's host has agreed to LinkUp (8051 ConfigLT); the link is up
    #: once both ends have said it
    CONFIGLT_READY = "ConfigLT ready"
    #: an idle message: `data` is the 48-bit message, type in [3:0]
    IDLE = "idle message"
    #: the end is going offline on purpose; `data` is its reason (OPA
    #: LinkDownReason, e.g. 35 reboot, 39 FM bounce)
    PLANNED_DOWN = "planned down"


@dataclass(frozen=True)
class LinkMessage:
    kind: MessageKind
    data: int = 0


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
    #: the port's VerifyCap frames, as the other end's 8051 stores them in
    #: VERIFY_CAP_REMOTE_PHY, _FABRIC and _LINK_WIDTH (the last: tx rate in
    #: [23:16], link widths in [15:0]); None: whatever the receiving end
    #: offers itself
    verify_cap: tuple[int, int, int] | None = None


class LinkDownReason(Enum):
    REMOTE_OFFLINE = "the other end went offline"
    CABLE_PULLED = "the cable was pulled"
    TAKEN_DOWN = "the link was taken down from the host"
    #: a remote cable's stream to the other process broke (remote_cable.py)
    STREAM_LOST = "the cable's stream to the other side broke"


class LinkEnd(Protocol):
    """What a link calls on the port at each end. Each call only queues work
    for that port's device (or reads a length); none may block or take the
    device's lock."""

    name: str

    def linked(self, peer: PortIdentity, epoch: int) -> None: ...
    def unlinked(self, reason: LinkDownReason, epoch: int) -> None: ...
    def link_message(self, message: LinkMessage, epoch: int) -> None: ...
    def receive(self, packet: Packet) -> None: ...
    def has_room(self) -> bool: ...  # may the other end send now (its buffer credits)?
    def room(self) -> None: ...  # the other end drained: senders waiting may go on


class RelayEnd(LinkEnd, Protocol):
    """An end standing in for a port elsewhere (a remote cable's near end):
    besides what any end hears, it is told, outside the link's lock, what
    the other end and the host do that it must pass on. None may block."""

    def peer_polling(self, identity: PortIdentity) -> None: ...  # the other end polls (again)
    def peer_offline(self, reason: LinkDownReason) -> None: ...  # the other end stopped polling
    def cable_enabled(self, enabled: bool) -> None: ...  # take_down (False) or bring_up (True)
    def status(self) -> dict: ...  # what `counters` shows of it


class LinkState(Enum):
    DOWN = "down"
    UP = "up"


class LinkError(ValueError):
    """A request about a link that names no end of it, or cannot be done."""


@dataclass
class DirectionCounters:
    """One direction of a link (from the named end)."""

    packets: int = 0
    bytes: int = 0
    dropped_link_down: int = 0
    #: packets the direction's faults dropped, corrupted, ... (by fault kind)
    injected: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"packets": self.packets, "bytes": self.bytes, "dropped_link_down": self.dropped_link_down,
                "faults_injected": dict(self.injected)}


@dataclass
class _EndState:
    end: LinkEnd
    relay: bool = False
    polling: bool = False
    identity: PortIdentity | None = None
    sent: DirectionCounters = field(default_factory=DirectionCounters)
    faults: list[Fault] = field(default_factory=list)


class Link:
    """A cable joining two ends (`attach` each, then they may poll)."""

    def __init__(self, name: str = "link", timer: Callable[[float, Callable[[], None]], object] | None = None):
        self.name = name
        self.log = logging.getLogger(f"vfnic.fabric.{name}")
        self.timer = timer
        self._lock = threading.Lock()
        self._ends: list[_EndState] = []
        #: id(end) -> (its state, the other end's or None): every packet asks
        self._pairs: dict[int, tuple[_EndState, _EndState | None]] = {}
        self.state = LinkState.DOWN
        #: bumps on every UP -> DOWN, so late news about an old link-up is recognised
        self.epoch = 0
        self.ups = 0
        #: False while taken down from the host: the ends may poll, the link stays dark
        self.enabled = True
        self.downs_injected = 0
        self._bring_up_job = None
        self.capture: LinkCapture | None = None
        #: link-layer messages carried, by kind (`message`)
        self.messages: dict[str, int] = {}

    def attach(self, end: LinkEnd, relay: bool = False) -> None:
        """Join `end` to the link; a `relay` (a RelayEnd) hears at once if the
        other end already polls."""
        with self._lock:
            if len(self._ends) == 2:
                raise ValueError(f"{self.name} already joins {self._ends[0].end.name} and {self._ends[1].end.name}")
            if any(s.end is end for s in self._ends):
                raise ValueError(f"{end.name} is already on {self.name}")
            self._ends.append(_EndState(end, relay))
            other = self._ends[0] if len(self._ends) == 2 else None
            self._pairs = {id(s.end): (s, next((o for o in self._ends if o is not s), None)) for s in self._ends}
            polling = other.identity if relay and other is not None and other.polling else None
        if polling is not None:
            end.peer_polling(polling)

    def _pair(self, end: LinkEnd) -> tuple[_EndState, _EndState | None]:
        pair = self._pairs.get(id(end))  # ends are never detached, so their ids stay theirs
        if pair is None:
            raise ValueError(f"{getattr(end, 'name', end)} is not attached to {self.name}")
        return pair

    # -- the ends' requests ----------------------------------------------------
    def polling(self, end: LinkEnd, identity: PortIdentity) -> None:
        """`end` is ready to train (its physical state is Polling)."""
        with self._lock:
            mine, other = self._pair(end)
            mine.polling, mine.identity = True, identity
        if other is not None and other.relay:
            other.end.peer_polling(identity)
        self._train()

    def _train(self) -> None:
        """Bring the link up if both ends poll and nothing holds it down."""
        with self._lock:
            if self.state is LinkState.UP or not self.enabled or len(self._ends) < 2:
                return
            a, b = self._ends
            if not (a.polling and b.polling):
                return
            self.state = LinkState.UP
            self.ups += 1
            epoch = self.epoch
            notify = [(a.end, b.identity), (b.end, a.identity)]
        self.log.info("%s: link up between %s and %s", self.name, a.end.name, b.end.name)
        for target, peer in notify:
            target.linked(peer, epoch)

    def offline(self, end: LinkEnd, reason: LinkDownReason = LinkDownReason.REMOTE_OFFLINE) -> None:
        """`end` stops polling or leaves LinkUp (host request, reset, power off)."""
        with self._lock:
            mine, other = self._pair(end)
            mine.polling = False
            was_up = self.state is LinkState.UP
            if was_up:
                self.state = LinkState.DOWN
                epoch = self.epoch
                self.epoch += 1
        if other is not None and other.relay:
            other.end.peer_offline(reason)
        if not was_up:
            return
        self.log.info("%s: link down (%s went offline)", self.name, end.name)
        if other is not None:
            other.end.unlinked(reason, epoch)

    def is_up(self, epoch: int) -> bool:
        return self.state is LinkState.UP and self.epoch == epoch

    def message(self, end: LinkEnd, message: LinkMessage, epoch: int) -> bool:
        """Carry a link-layer message from `end` to the other end, if the
        link is still up in `epoch`; False if it was lost with the link."""
        with self._lock:
            _, other = self._pair(end)
            if self.state is not LinkState.UP or self.epoch != epoch or other is None:
                return False
            self.messages[message.kind.value] = self.messages.get(message.kind.value, 0) + 1
            target = other.end
        target.link_message(message, epoch)
        return True

    # -- the host's hand on the cable (fault injection, link flaps) -------------------
    def take_down(self, seconds: float | None = None) -> None:
        """The link goes dark: both ends see it drop and it stays down until
        `bring_up()` (or for `seconds`, if given)."""
        if seconds is not None and (seconds <= 0 or self.timer is None):
            raise LinkError("a timed link-down needs seconds > 0 and a link with a clock")
        with self._lock:
            self.enabled = False
            self.downs_injected += 1
            if self._bring_up_job is not None:
                self._bring_up_job.cancel()
                self._bring_up_job = None
            was_up = self.state is LinkState.UP
            if was_up:
                self.state = LinkState.DOWN
                epoch = self.epoch
                self.epoch += 1
            ends = [s.end for s in self._ends]
            relays = [s.end for s in self._ends if s.relay]
        self.log.info("%s: taken down%s", self.name, f" for {seconds} s" if seconds else "")
        for relay in relays:
            relay.cable_enabled(False)
        if was_up:
            for end in ends:
                end.unlinked(LinkDownReason.TAKEN_DOWN, epoch)
        if seconds is not None:
            self._bring_up_job = self.timer(seconds, self.bring_up)

    def bring_up(self) -> None:
        """Undo `take_down`: the link trains again once both ends poll."""
        with self._lock:
            self.enabled = True
            self._bring_up_job = None
            relays = [s.end for s in self._ends if s.relay]
        self.log.info("%s: brought back up", self.name)
        for relay in relays:
            relay.cable_enabled(True)
        self._train()

    def _end_named(self, sender: str) -> _EndState:
        for state in self._ends:
            if state.end.name == sender:
                return state
        raise LinkError(f"{self.name} has no end named {sender!r} (ends: {', '.join(self.end_names())})")

    def end_names(self) -> list[str]:
        return [s.end.name for s in self._ends]

    def peer_of(self, name: str) -> str | None:
        """The name of the end across the link from the end named `name` (None: none attached yet)."""
        return next((other for other in self.end_names() if other != name), None)

    def set_fault(self, sender: str, fault: Fault) -> None:
        """Add `fault` to the packets `sender` sends on this link."""
        if fault.delay_ms and self.timer is None:
            raise LinkError(f"{self.name} has no clock for delayed packets")
        with self._lock:
            self._end_named(sender).faults.append(fault)
        self.log.info("%s: fault on packets from %s: %s", self.name, sender, fault.describe())

    def clear_faults(self, sender: str | None = None) -> None:
        with self._lock:
            for state in [self._end_named(sender)] if sender is not None else self._ends:
                state.faults.clear()

    def start_capture(self, path: str) -> LinkCapture:
        with self._lock:
            if self.capture is not None:
                raise LinkError(f"{self.name} is already captured to {self.capture.path}")
            names = [s.end.name for s in self._ends] + ["-", "-"]
            self.capture = LinkCapture(path, (names[0], names[1]))
            return self.capture

    def stop_capture(self) -> dict:
        with self._lock:
            capture, self.capture = self.capture, None
        if capture is None:
            raise LinkError(f"{self.name} is not being captured")
        return capture.stop()

    # -- packets -------------------------------------------------------------
    def transmit(self, end: LinkEnd, packet: Packet) -> bool:
        """Carry `packet` from `end` to the other end; False if it was dropped
        (the link is down; a fault's drops count as sent)."""
        with self._lock:
            mine, other = self._pair(end)
            if self.state is not LinkState.UP or other is None:
                mine.sent.dropped_link_down += 1
                return False
            mine.sent.packets += 1
            mine.sent.bytes += len(packet.data)
            target = other.end
            deliveries = None
            if mine.faults:
                before = [f.injected for f in mine.faults]
                deliveries = apply_faults(mine.faults, packet)
                for fault, n in zip(mine.faults, before):
                    if fault.injected != n:
                        kind = fault.kind.value
                        mine.sent.injected[kind] = mine.sent.injected.get(kind, 0) + fault.injected - n
            capture = self.capture
        if deliveries is None:
            if capture is not None:
                capture.record(end.name, packet)
            target.receive(packet)
            return True
        for delay, arriving in deliveries:
            if capture is not None:
                capture.record(end.name, arriving)
            if delay:
                self.timer(delay, lambda p=arriving: target.receive(p))
            else:
                target.receive(arriving)
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
        """Per direction ("A->B"): packets, bytes, drops, faults injected; and
        the link's state."""
        with self._lock:
            out = {"state": self.state.value, "ups": self.ups, "taken_down": not self.enabled,
                   "downs_injected": self.downs_injected}
            for mine in self._ends:
                other = next((s for s in self._ends if s is not mine), None)
                out[f"{mine.end.name}->{other.end.name if other else '-'}"] = mine.sent.as_dict()
            relays = [s.end for s in self._ends if s.relay]
        for relay in relays:  # a remote cable's stream: connected, to whom, its credits
            out["remote"] = relay.status()
        return out

    def describe(self) -> dict:
        """Counters, plus the faults set on each direction, the capture, and
        the link-layer messages carried (by kind)."""
        out = self.counters()
        with self._lock:
            out["name"] = self.name
            out["ends"] = [s.end.name for s in self._ends]
            out["faults"] = {s.end.name: [f.describe() for f in s.faults] for s in self._ends}
            out["capture"] = self.capture.describe() if self.capture is not None else None
            out["link_messages"] = dict(self.messages)
        return out


class BuiltInPartner:
    """The far end of a cable with nothing behind it but a port that trains:
    it always polls, presents `identity`, and absorbs whatever it is sent.
    This is how a lone HFI reaches LinkUp/Init with no second device.

    Its link layer answers as a peer's would: it agrees to LinkUp as soon as
    the other end does (ConfigLT), and echoes each idle message, so an SMA
    Armed message comes back as the neighbour's Armed (NeighborNormal) and
    a lone port can be taken to Active."""

    def __init__(self, identity: PortIdentity, name: str = "partner"):
        self.name = name
        self.identity = identity
        self.absorbed = 0
        self.link: Link | None = None
        self.messages_received: list[LinkMessage] = []

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

    def link_message(self, message: LinkMessage, epoch: int) -> None:
        self.messages_received = [*self.messages_received[-63:], message]
        if self.link is not None and message.kind in (MessageKind.CONFIGLT_READY, MessageKind.IDLE):
            self.link.message(self, message, epoch)  # the answer only queues work at the other end

    def receive(self, packet: Packet) -> None:
        self.absorbed += 1

    def has_room(self) -> bool:
        return True

    def room(self) -> None:
        pass
