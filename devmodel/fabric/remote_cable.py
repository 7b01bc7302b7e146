"""A remote cable: a cable whose far end is a port in another `vfnic serve`
(another process, another host), carried over one byte stream.

    this process                                                   the other process
    port --- Link --- RemoteLinkEnd ===== stream ===== RemoteLinkEnd --- Link --- port
             faults, capture,    (a relay)   frames    (a relay)
             link-down, counters            (wire/cable.py)

Each side has a whole `Link` of its own, so faults, capture, `vfnic ctl
link-down` and the counters work on it as on a local cable. Its second end
is a `RemoteLinkEnd`, a relay (link.py `RelayEnd`) standing in for the far
port: it polls on its link while the far port polls, so each side's link is
up exactly when both ports poll and nothing holds the cable down, as one
`Link` would be; it passes its own port's polling, going offline, link-layer
messages and packets across, and the far side's back. The socket is the
transport's (emulator/cable.py), which hands over a `Stream` and the bytes
it reads, and calls `stream_idle` when it has sent nothing for a while.

The stream's state machine (`StreamState`):

    DISCONNECTED --stream_opened--> GREETING: our HELLO sent
    GREETING --the peer's HELLO--> CONNECTED: our port's state follows (POLLING,
             TAKEN_DOWN), the far side's comes in; credits, packets, messages flow
    GREETING --the peer's REFUSED--> closed, its reason logged
    GREETING --anything else--> closed: "not a vfnic cable end"
    GREETING, CONNECTED --a bad frame--> REFUSED(reason) to the peer, closed
    GREETING, CONNECTED --stream_closed--> DISCONNECTED: the link goes down
             (STREAM_LOST: the 8051 sees the physical link drop) until a new stream

A second stream while one is open is refused (REFUSED "already
connected"), so a stray connection never breaks a working cable.

Lossless, in order, with back-pressure, as OPA's link layer is (the stream
is in order; nothing is dropped while the link is up):

    credits   each HELLO grants the peer `window` packets; a PACKET spends one;
              the receiver returns CREDIT(n) once it has passed n packets on
              into its link, i.e. once its port took them (`peer_has_room`),
              so what waits on a side is bounded by the window it granted. A
              sender out of credit says so to its port (`has_room`: False)
              and wakes it when CREDIT comes (`room_freed`). A peer that sends
              beyond its credit is refused.

Downs and their acknowledgment: news crosses the stream while the far side
acts, so after this side's port goes offline (OFFLINE) or its host takes
the cable down (TAKEN_DOWN), frames already on their way belong to a link-up
that is over. This relay stops polling at once and the far side answers
each down with DOWN_SEEN once it has applied it; until then this relay does
not poll again, so its link cannot come up on old news (a late "ConfigLT
ready" or SMA idle message meeting a new link-up). A down from the far side
is applied as it came, even if the far port polls again right after: this
side's port sees the link drop, as on one cable.

Threads: `stream_data` runs on the transport's reader thread. It only
decodes (wire/cable.py `FrameDecoder`), updates this relay's state under its
lock, queues packets (`inbound`) and link events, and posts jobs to
`worker`; what the far side's frames do to the link runs as worker jobs, in
arrival order. Nothing calls the link under the relay's lock (`room_freed`
and a down of our own, `_withdraw`, run on the caller's thread after it);
whether the relay polls changes only under `_poll_lock`. `Stream.send` only
queues bytes. What a hostile peer can make this side hold is bounded: one
frame in the decoder, `window` packets, MAX_EVENTS link-layer messages and
downs; past that the stream is closed with a rate-limited error, and the
link goes down.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import construct as c

from common.ratelog import limited
from devmodel.wire import cable as w

from .inbound import InboundBuffer
from .link import Link, LinkDownReason, LinkMessage, MessageKind, NodeType, PortIdentity
from .packet import Packet

#: packets the far side may send before this side returns credit
WINDOW = 256
#: packets this side's link hands over beyond the far side's credit (a DELAY or
#: DUPLICATE fault lets more through than `has_room` allowed) that wait for
#: credit; beyond this they are dropped and counted
BACKLOG_LIMIT = 256
#: packets passed into the link per worker job
FORWARD_BATCH = 64
#: link-layer messages and downs waiting for the worker before the peer counts as flooding
MAX_EVENTS = 64

#: OFFLINE's reason byte
DOWN_REASONS = {LinkDownReason.REMOTE_OFFLINE: 1, LinkDownReason.CABLE_PULLED: 2, LinkDownReason.TAKEN_DOWN: 3,
                LinkDownReason.STREAM_LOST: 4}
#: MESSAGE's kind byte
MESSAGE_KINDS = {MessageKind.CONFIGLT_READY: 1, MessageKind.IDLE: 2, MessageKind.PLANNED_DOWN: 3}
_REASON_OF = {code: reason for reason, code in DOWN_REASONS.items()}
_KIND_OF = {code: kind for kind, code in MESSAGE_KINDS.items()}


class CableRole(Enum):
    """Which side of the stream a cable end is: the one that waits for the
    connection, or the one that makes it (and makes it again after a break)."""

    LISTEN = "listen"
    CONNECT = "connect"


class StreamState(Enum):
    DISCONNECTED = "disconnected"
    GREETING = "greeting"
    CONNECTED = "connected"


class Stream(Protocol):
    """One open connection, as the transport gives it (emulator/cable.py)."""

    peer: str  # the other side's address, for logs

    def send(self, data: bytes) -> None: ...  # queue bytes to write; never blocks

    def close(self, reason: str) -> None: ...  # end it; the transport then calls stream_closed


class StreamService(Protocol):
    """What keeps a cable's stream going: listens, or connects, again after each break."""

    def status(self) -> dict: ...

    def close(self) -> None: ...


#: (role, (host, port), the end) -> the running service; raises OSError if it cannot start
StreamOpener = Callable[[CableRole, tuple[str, int], "RemoteLinkEnd"], StreamService]


class _PeerRefused(w.CableProtocolError):
    """The peer sent REFUSED: it closes; nothing is sent back."""


def encode_identity(identity: PortIdentity) -> bytes:
    flags = (w.IDENTITY_FM_SECURITY_DISABLED * identity.fm_security_disabled
             | w.IDENTITY_MGMT_ALLOWED * identity.mgmt_allowed
             | (w.IDENTITY_VERIFY_CAP if identity.verify_cap is not None else 0))
    return w.IDENTITY.pack(identity.guid, int(identity.node_type), identity.port_no, identity.device_id,
                           identity.device_rev, flags, *(identity.verify_cap or (0, 0, 0)))


def decode_identity(payload: bytes) -> PortIdentity:
    guid, node_type, port_no, device_id, device_rev, flags, *verify_cap = w.IDENTITY.unpack_from(payload)
    if node_type not in NodeType._value2member_map_:
        raise w.CableProtocolError(f"POLLING names node type {node_type}, neither HFI (0) nor switch (1)")
    return PortIdentity(guid=guid, node_type=NodeType(node_type), port_no=port_no, device_id=device_id,
                        device_rev=device_rev, fm_security_disabled=bool(flags & w.IDENTITY_FM_SECURITY_DISABLED),
                        mgmt_allowed=bool(flags & w.IDENTITY_MGMT_ALLOWED),
                        verify_cap=tuple(verify_cap) if flags & w.IDENTITY_VERIFY_CAP else None)


_STATE = "state"  # a link event: bring the link in line with what is known of the far side


@dataclass(frozen=True)
class _Down:
    """A link event: the far side went down (applied even if it polls again right after)."""

    reason: LinkDownReason


class RemoteLinkEnd:
    """The near end of a remote cable (see the module docstring): a relay on
    `link`, talking to the far side over the stream the transport opens.
    `worker` (a scheduler handle: `submit`) runs everything that calls the link."""

    def __init__(self, name: str, link: Link, worker, window: int = WINDOW):
        if not 1 <= window <= 0xFFFF:
            raise ValueError(f"a cable window of {window} packets does not fit HELLO (1..65535)")
        self.name = name
        self.link = link
        self.worker = worker
        self.window = window
        self.log = logging.getLogger(f"vfnic.fabric.remote.{name}")
        #: the transport that keeps the stream going, once opened (status only)
        self.service: StreamService | None = None
        #: this side is shutting the cable down: its stream's end is no news
        self.closing = False
        self.counters: Counter[str] = Counter()
        self.last_break: str | None = None
        #: the latest bad frame or refusal, whichever side found it
        self.last_error: str | None = None
        self.inbound = InboundBuffer(window)
        self._lock = threading.Lock()
        self.state = StreamState.DISCONNECTED
        self._stream: Stream | None = None
        self._connection = 0  # bumps with every stream accepted
        self._decoder = w.FrameDecoder()
        self._first_bytes = b""
        # this side, as the link tells it (relay hooks)
        self._local: PortIdentity | None = None  # our port polls with this identity
        self._local_dark = False  # our host took the cable down
        # the far side, as its frames tell it (this connection)
        self._remote: PortIdentity | None = None
        self._remote_dark = False
        self._remote_name: str | None = None
        self._downs_sent = self._downs_acked = 0
        self._downs_received = self._downs_answered = 0
        # credits (this connection)
        self._credits = 0  # packets we may still send
        self._peer_window = 0
        self._granted = 0  # packets the far side may still send us
        self._backlog: deque[Packet] = deque()
        self._waiting_for_room = False
        self._room_due = False  # our port's senders may go on: tell them once the lock is released
        # link events for the worker, in arrival order
        self._events: deque = deque()
        self._events_queued = 0  # messages and downs among them
        self._events_posted = False
        # what the link knows of us: whether we poll, and as whom; changed
        # only under _poll_lock, which no one takes while holding _lock
        self._poll_lock = threading.Lock()
        self._polling_as: PortIdentity | None = None
        self._epoch = -1

    # -- the transport's side ----------------------------------------------------------------
    def stream_opened(self, stream: Stream) -> bool:
        """A new connection; False (after queueing REFUSED on it) if another
        is open: the transport closes it once that is sent."""
        with self._lock:
            if self._stream is not None:
                busy = f"{self._remote_name or '?'} at {self._stream.peer}"
                stream.send(w.refused(f"this cable end is already connected to {busy}"))
                self.counters["streams_refused"] += 1
                refused = True
            else:
                refused = False
                self._stream = stream
                self._connection += 1
                self.state = StreamState.GREETING
                self._decoder = w.FrameDecoder()
                self._first_bytes = b""
                port = next((n for n in self.link.end_names() if n != self.name), self.name)
                self._send(w.hello(self.window, port))  # the far side's logs name our port
        if refused:
            limited(self, self.log, "refused streams").warning(
                "%s: a second stream from %s refused: already connected to %s", self.name, stream.peer, busy)
            return False
        self.log.info("%s: stream open with %s; waiting for its hello", self.name, stream.peer)
        return True

    def stream_data(self, stream: Stream, data: bytes) -> None:
        """Bytes the transport read from `stream` (its reader thread)."""
        error = None
        with self._lock:
            if stream is not self._stream:
                return
            greeting = self.state is StreamState.GREETING
            if greeting and len(self._first_bytes) < 32:
                self._first_bytes += data[:32 - len(self._first_bytes)]
            try:
                try:
                    frames = self._decoder.feed(data)
                except w.CableProtocolError as e:
                    raise (self._not_a_cable(e) if greeting else e) from None
                for kind, flags, payload in frames:
                    self.counters["frames_in"] += 1
                    self._frame(kind, flags, payload)
            except _PeerRefused as e:
                error = e
                self.counters["refusals_received"] += 1
            except w.CableProtocolError as e:
                error = e
                self.counters["protocol_errors"] += 1
                self._send(w.refused(str(e)))  # so that the peer's log says why, if it is a vfnic
            if error is not None:
                self.last_error = str(error)
            room, self._room_due = self._room_due, False
        if room:
            self.link.room_freed(self)
        if isinstance(error, _PeerRefused):
            limited(self, self.log, "refusals from the peer").warning("%s: %s", self.name, error)
        elif error is not None:
            limited(self, self.log, "cable stream errors").error("%s: %s; closing the stream", self.name, error)
        if error is not None:
            stream.close(str(error))

    def _not_a_cable(self, error: object) -> w.CableProtocolError:
        return w.CableProtocolError(f"{self._stream.peer} is not a vfnic cable end: it sent {self._first_bytes!r} "
                                    f"({error})")

    def stream_idle(self, stream: Stream) -> None:
        """The transport has sent nothing for a while: a HEARTBEAT keeps the peer sure the stream lives."""
        with self._lock:
            if stream is self._stream:
                self._send(w.frame(w.FrameType.HEARTBEAT))

    def stream_closed(self, stream: Stream, reason: str) -> None:
        """The stream ended (the peer left, a timeout, a bad frame): the link goes down."""
        with self._lock:
            if stream is not self._stream:
                return
            was = self.state
            self._stream = None
            self.state = StreamState.DISCONNECTED
            self._remote, self._remote_dark, self._remote_name = None, False, None
            self._credits = 0
            self.counters["packets_lost_in_break"] += len(self._backlog) + self.inbound.discard()
            self._backlog.clear()
            if was is StreamState.CONNECTED:
                self.counters["breaks"] += 1
                self.last_break = reason
            # messages of the link-up that just ended go nowhere now
            self._events = deque(e for e in self._events if not isinstance(e, LinkMessage))
            self._events_queued = 0
            self._events.append(_Down(LinkDownReason.STREAM_LOST))
            self._queue_event(_STATE)
        if was is StreamState.CONNECTED and self.closing:
            self.log.info("%s: the stream to %s closed (%s)", self.name, stream.peer, reason)
        elif was is StreamState.CONNECTED:
            limited(self, self.log, "stream breaks").warning(
                "%s: the stream to %s broke (%s); the link goes down until it is back", self.name, stream.peer, reason)
        else:
            self.log.info("%s: stream with %s closed before the hello (%s)", self.name, stream.peer, reason)
        self.link.room_freed(self)  # senders waiting for credit go on (and find the link down)

    # -- frames from the far side (reader thread, under the lock) ----------------------------------
    def _frame(self, kind: int, flags: int, payload: bytes) -> None:
        if self.state is StreamState.GREETING and kind != w.FrameType.REFUSED:
            if kind != w.FrameType.HELLO:
                raise self._not_a_cable(f"its first frame is {w.FrameType(kind).name}, not HELLO")
            self._hello(payload)
            return
        FRAME_HANDLERS[kind](self, flags, payload)

    def _hello(self, payload: bytes) -> None:
        try:
            hello = w.Hello.parse(payload)
        except (c.ConstructError, UnicodeError):
            raise self._not_a_cable("its HELLO lacks the vfnic cable magic") from None
        if hello.version != w.VERSION:
            raise w.CableProtocolError(f"it speaks cable protocol version {hello.version}; this vfnic speaks "
                                       f"{w.VERSION}")
        if hello.credits == 0:
            raise w.CableProtocolError("its HELLO grants no credits")
        self._peer_window = self._credits = hello.credits
        self._granted = self.window
        self._remote_name = hello.name
        self._downs_sent = self._downs_acked = self._downs_received = self._downs_answered = 0
        self.state = StreamState.CONNECTED
        self.counters["connects"] += 1
        if self._local is not None:
            self._send(w.frame(w.FrameType.POLLING, encode_identity(self._local)))
        if self._local_dark:
            self._send(w.frame(w.FrameType.TAKEN_DOWN))
        self._queue_event(_STATE)
        self._room_due = True
        self.log.info("%s: cabled to %s at %s (it takes %d packets on credit)", self.name, hello.name,
                      self._stream.peer, hello.credits)

    def _second_hello(self, _flags: int, _payload: bytes) -> None:
        raise w.CableProtocolError("a second HELLO")

    def _remote_polling(self, _flags: int, payload: bytes) -> None:
        identity = decode_identity(payload)
        if self._local is not None and identity.guid == self._local.guid:
            limited(self, self.log, "GUID clashes").warning(
                "%s: both ends of the cable have GUID %#018x; a fabric manager will not take them", self.name,
                identity.guid)
        self._remote = identity
        self._queue_event(_STATE)

    def _remote_offline(self, _flags: int, payload: bytes) -> None:
        (code,) = w.OFFLINE.unpack_from(payload)
        if code not in _REASON_OF:
            raise w.CableProtocolError(f"OFFLINE gives reason {code}, which is none of {sorted(_REASON_OF)}")
        self._remote = None
        self._downs_received += 1
        self._queue_event(_Down(_REASON_OF[code]))
        self._queue_event(_STATE)

    def _remote_taken_down(self, _flags: int, _payload: bytes) -> None:
        self._remote_dark = True
        self._downs_received += 1
        self._queue_event(_Down(LinkDownReason.TAKEN_DOWN))
        self._queue_event(_STATE)

    def _remote_brought_up(self, _flags: int, _payload: bytes) -> None:
        self._remote_dark = False
        self._queue_event(_STATE)

    def _down_seen(self, _flags: int, payload: bytes) -> None:
        (count,) = w.COUNT.unpack_from(payload)
        if not self._downs_acked <= count <= self._downs_sent:
            raise w.CableProtocolError(f"DOWN_SEEN {count}, but {self._downs_sent} downs were sent and "
                                       f"{self._downs_acked} seen")
        self._downs_acked = count
        self._queue_event(_STATE)

    def _remote_message(self, _flags: int, payload: bytes) -> None:
        code, data = w.MESSAGE.unpack_from(payload)
        if code not in _KIND_OF:
            raise w.CableProtocolError(f"MESSAGE of kind {code}, which is none of {sorted(_KIND_OF)}")
        self._queue_event(LinkMessage(_KIND_OF[code], data))

    def _remote_packet(self, flags: int, payload: bytes) -> None:
        if flags & ~(w.PACKET_SC_MASK | w.PACKET_16B):
            raise w.CableProtocolError(f"a PACKET with reserved flags {flags:#04x}")
        if self._granted <= 0:
            raise w.CableProtocolError(f"a PACKET beyond the {self.window} credits it was given")
        self._granted -= 1
        self.counters["packets_in"] += 1
        # not sealed: the receiving chip checks the ICRC of what came over a stream
        if self.inbound.push(Packet(payload, flags & w.PACKET_SC_MASK, bool(flags & w.PACKET_16B))):
            self.worker.submit(self._forward)

    def _credit(self, _flags: int, payload: bytes) -> None:
        (count,) = w.COUNT.unpack_from(payload)
        if count == 0 or self._credits + count > self._peer_window:
            raise w.CableProtocolError(f"CREDIT {count} on top of {self._credits} exceeds the "
                                       f"{self._peer_window} packets it takes")
        waiting = self._credits <= 0 or bool(self._backlog)
        self._credits += count
        while self._backlog and self._credits > 0:
            self._send_packet(self._backlog.popleft())
        if waiting and self._credits > 0 and not self._backlog:
            self._room_due = True

    def _heartbeat(self, _flags: int, _payload: bytes) -> None:
        pass

    def _refused(self, _flags: int, payload: bytes) -> None:
        raise _PeerRefused(f"the peer refused the cable: {payload.decode(errors='replace')}")

    # -- this side's link (LinkEnd and RelayEnd) -----------------------------------------------
    def linked(self, peer: PortIdentity, epoch: int) -> None:
        with self._lock:
            self._epoch = epoch

    def unlinked(self, reason: LinkDownReason, epoch: int) -> None:
        pass  # what took the link down is passed on by peer_offline and cable_enabled, or came from the far side

    def link_message(self, message: LinkMessage, epoch: int) -> None:
        with self._lock:
            if self.state is StreamState.CONNECTED:
                self._send(w.frame(w.FrameType.MESSAGE, w.MESSAGE.pack(MESSAGE_KINDS[message.kind], message.data)))

    def receive(self, packet: Packet) -> None:
        """A packet from our port for the far one: sent on credit, else held (bounded)."""
        with self._lock:
            if self.state is not StreamState.CONNECTED:
                self.counters["packets_dropped_no_stream"] += 1
                return
            if self._credits > 0 and not self._backlog:
                self._send_packet(packet)
                return
            if len(self._backlog) < BACKLOG_LIMIT:
                self._backlog.append(packet)
                return
            self.counters["packets_dropped_overrun"] += 1
        limited(self, self.log, "packets beyond the cable's credit").warning(
            "%s: a packet dropped: more than %d sent beyond the far side's credit (a delay or duplicate fault?)",
            self.name, BACKLOG_LIMIT)

    def has_room(self) -> bool:
        with self._lock:
            return self.state is not StreamState.CONNECTED or (self._credits > 0 and not self._backlog)

    def room(self) -> None:
        """Our port drained its buffer: packets waiting here go on."""
        with self._lock:
            waiting, self._waiting_for_room = self._waiting_for_room, False
        if waiting:
            self.worker.submit(self._forward)

    def peer_polling(self, identity: PortIdentity) -> None:
        with self._lock:
            self._local = identity
            if self.state is StreamState.CONNECTED:
                self._send(w.frame(w.FrameType.POLLING, encode_identity(identity)))

    def peer_offline(self, reason: LinkDownReason) -> None:
        with self._lock:
            if self._local is None:
                return
            self._local = None
            if self.state is not StreamState.CONNECTED:
                return
            self._send(w.frame(w.FrameType.OFFLINE, w.OFFLINE.pack(DOWN_REASONS[reason])))
            self._downs_sent += 1
        self._withdraw(reason)  # the link is down already: our port hears nothing

    def cable_enabled(self, enabled: bool) -> None:
        with self._lock:
            if self._local_dark != enabled:
                return
            self._local_dark = not enabled
            if self.state is not StreamState.CONNECTED:
                return
            self._send(w.frame(w.FrameType.BROUGHT_UP if enabled else w.FrameType.TAKEN_DOWN))
            if enabled:
                return
            self._downs_sent += 1
        self._withdraw(LinkDownReason.TAKEN_DOWN)  # the link is dark already: our port hears nothing

    def status(self) -> dict:
        with self._lock:
            out = {
                "stream": self.state.value,
                "peer": self._stream.peer if self._stream is not None else None,
                "peer_name": self._remote_name,
                "far_port_polling": self._remote is not None,
                "far_side_taken_down": self._remote_dark,
                "credits": self._credits,
                "backlog": len(self._backlog),
                "inbound": len(self.inbound),
                "last_break": self.last_break,
                "last_error": self.last_error,
                **{k: self.counters[k] for k in ("connects", "breaks", "frames_in", "frames_out", "packets_in",
                                                 "packets_out", "protocol_errors")},
                "dropped": {k: self.counters[k] for k in ("packets_dropped_no_stream", "packets_dropped_overrun",
                                                          "packets_lost_in_break")},
            }
        if self.service is not None:
            out["transport"] = self.service.status()
        return out

    # -- worker jobs: everything that calls the link ---------------------------------------------
    def _queue_event(self, event) -> None:
        """Under the lock: a link event for the worker, after those before it
        (a STATE right after a STATE is the same news)."""
        if event is _STATE:
            if self._events and self._events[-1] is _STATE:
                return
        elif self._events_queued >= MAX_EVENTS:
            raise w.CableProtocolError(f"more than {MAX_EVENTS} link-layer messages and downs at once")
        else:
            self._events_queued += 1
        self._events.append(event)
        if not self._events_posted:
            self._events_posted = True
            self.worker.submit(self._run_events)

    def _run_events(self) -> None:
        with self._lock:
            events, self._events = self._events, deque()
            self._events_posted = False
            self._events_queued = 0
        for event in events:
            if event is _STATE:
                self._sync()
            elif isinstance(event, _Down):
                self._withdraw(event.reason)
            else:
                self.link.message(self, event, self._epoch)

    def _sync(self) -> None:
        """Poll on the link while the far port polls, the far side holds
        nothing down and every down this side sent has been seen; else not.
        Then acknowledge the far side's downs, now applied."""
        with self._poll_lock:
            with self._lock:
                connected = self.state is StreamState.CONNECTED
                settled = self._downs_acked == self._downs_sent
                want = self._remote if connected and settled and not self._remote_dark else None
                connection = self._connection
                answer = self._downs_received if connected and self._downs_received > self._downs_answered else None
                was, self._polling_as = self._polling_as, want
            if want is not None and want != was:
                self.link.polling(self, want)
            elif want is None and was is not None:
                self.link.offline(self, LinkDownReason.REMOTE_OFFLINE)
        if answer is not None:
            with self._lock:
                if self._connection == connection and self.state is StreamState.CONNECTED:
                    self._send(w.count(w.FrameType.DOWN_SEEN, answer))
                    self._downs_answered = answer

    def _withdraw(self, reason: LinkDownReason) -> None:
        """Stop polling on the link: the far side went down (`reason` is what
        our port hears), or this side just did -- then at once, not as a
        worker job, so that our port polling again cannot bring the link up
        before the far side has seen the down (its DOWN_SEEN runs `_sync`)."""
        with self._poll_lock:
            with self._lock:
                was, self._polling_as = self._polling_as, None
            if was is not None:
                self.link.offline(self, reason)

    def _forward(self) -> None:
        """Pass packets from the far side into the link while our port has
        room (a bounded batch), then return their credit."""
        with self._lock:
            connection = self._connection
        self.inbound.begin()
        link, packets = self.link, self.inbound.packets
        passed, blocked = 0, False
        while packets and passed < FORWARD_BATCH:
            if not link.peer_has_room(self):
                blocked = True
                break
            try:
                packet = packets.popleft()
            except IndexError:  # the stream broke meanwhile: discarded
                break
            link.transmit(self, packet)
            passed += 1
        if passed:
            with self._lock:
                if self._connection == connection and self.state is StreamState.CONNECTED:
                    self._granted += passed
                    self._send(w.count(w.FrameType.CREDIT, passed))
        if blocked:
            with self._lock:
                self._waiting_for_room = True
            if link.peer_has_room(self):  # our port drained meanwhile
                self.room()
        elif self.inbound.repost():
            self.worker.submit(self._forward)

    # -- sending (under the lock) -----------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self.counters["frames_out"] += 1
        self._stream.send(data)

    def _send_packet(self, packet: Packet) -> None:
        self._credits -= 1
        self.counters["packets_out"] += 1
        self._send(w.packet(packet.data, packet.sc, packet.bypass))


#: frame type -> its handler once CONNECTED (data, not an if-chain)
FRAME_HANDLERS: dict[int, Callable[[RemoteLinkEnd, int, bytes], None]] = {
    w.FrameType.HELLO: RemoteLinkEnd._second_hello,
    w.FrameType.POLLING: RemoteLinkEnd._remote_polling,
    w.FrameType.OFFLINE: RemoteLinkEnd._remote_offline,
    w.FrameType.TAKEN_DOWN: RemoteLinkEnd._remote_taken_down,
    w.FrameType.BROUGHT_UP: RemoteLinkEnd._remote_brought_up,
    w.FrameType.DOWN_SEEN: RemoteLinkEnd._down_seen,
    w.FrameType.MESSAGE: RemoteLinkEnd._remote_message,
    w.FrameType.PACKET: RemoteLinkEnd._remote_packet,
    w.FrameType.CREDIT: RemoteLinkEnd._credit,
    w.FrameType.HEARTBEAT: RemoteLinkEnd._heartbeat,
    w.FrameType.REFUSED: RemoteLinkEnd._refused,
}
assert set(FRAME_HANDLERS) == set(w.FrameType), "every frame type has a handler"


@dataclass
class RemoteCable:
    """A port's remote cable, as `remote_cable` made it: its link (what
    `vfnic ctl` acts on), the relay, and the transport's service."""

    link: Link
    end: RemoteLinkEnd
    service: StreamService

    @property
    def name(self) -> str:
        return self.link.name

    def status(self) -> dict:
        return self.end.status()

    def stats(self) -> dict:
        return self.link.counters()

    def close(self) -> None:
        """Stop the transport (what is queued is sent first: a port that went
        offline says so)."""
        self.end.closing = True
        self.service.close()


def cable_remote(port, role: CableRole, address: tuple[str, int], opener: StreamOpener, worker,
                 name: str = "remote", window: int = WINDOW) -> RemoteCable:
    """Cable `port` (an object with `name` and `plug(link)`) to the port of
    another `vfnic serve` at `address`, waiting for it (LISTEN) or connecting
    to it (CONNECT) through `opener` (the transport: emulator/cable.py
    `open_tcp`). `worker` (a scheduler handle: `submit`, `after`) runs the
    relay's jobs and the link's delayed deliveries. The link is named
    "PORT<->NAME"; raises OSError if the transport cannot start (an address
    in use)."""
    link = Link(f"{port.name}<->{name}", timer=worker.after)
    end = RemoteLinkEnd(name, link, worker, window)
    port.plug(link)
    link.attach(end, relay=True)
    end.service = opener(role, address, end)
    return RemoteCable(link, end, end.service)
