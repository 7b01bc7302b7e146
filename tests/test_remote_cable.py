"""A cable whose far end is in another process: each side's own link, joined
by a stream of frames. The link trains only once both far-apart ports poll,
packets cross in order and none is lost however slow the receiver, a down
goes both ways and old news is not believed, a break takes both links down
and a reconnect trains them again, and whatever a hostile peer sends closes
the stream with the reason, never more.

The scenarios run twice where it matters: on streams of scheduler jobs
(testkit/remote_cable.py, the manual clock: the same steps every run) and on
real TCP over loopback (emulator/cable.py), where waits are bounded polls
of the condition awaited."""
from __future__ import annotations

import socket
import threading
import time
from functools import partial

import pytest

from devmodel.fabric import CableRole, Fault, FaultKind, LinkDownReason, LinkMessage, MessageKind, Packet, cable_remote
from devmodel.fabric import remote_cable as rc  # the module (the package exports cable_remote)
from devmodel.wire import cable as w
from devmodel.worker import ManualScheduler
from emulator import cable as tcp
from testkit.fabric_link import Port
from testkit.remote_cable import ManualNetwork

ADDRESS = ("net", 7470)


class SlowPort(Port):
    """A port that takes `limit` packets before it must drain (its credits)."""

    def __init__(self, name, guid, limit=3):
        super().__init__(name, guid)
        self.limit = limit
        self.most = 0

    def receive(self, packet):
        super().receive(packet)
        self.most = max(self.most, len(self.received))

    def has_room(self):
        return len(self.received) < self.limit


def events(port, kind):
    return [e for e in port.events if e[0] == kind]


@pytest.fixture
def manual():
    """Two ports far apart, cabled over a ManualNetwork; both cables connected."""
    scheduler = ManualScheduler()
    network = ManualNetwork(scheduler)
    a, b = Port("a", 0x11), Port("b", 0x22)
    ca = cable_remote(a, CableRole.LISTEN, ADDRESS, network.opener, scheduler.timer("ca"))
    cb = cable_remote(b, CableRole.CONNECT, ADDRESS, network.opener, scheduler.timer("cb"))
    scheduler.run()
    assert ca.status()["stream"] == cb.status()["stream"] == "connected"
    return scheduler, network, (a, ca), (b, cb)


def poll(port, cable):
    cable.link.polling(port, port.identity)


def up(manual):
    scheduler, _, (a, ca), (b, cb) = manual
    poll(a, ca)
    poll(b, cb)
    scheduler.run()
    assert ca.link.is_up(ca.link.epoch) and cb.link.is_up(cb.link.epoch)


# -- over streams of scheduler jobs -------------------------------------------------------------

def test_the_link_comes_up_only_once_both_far_apart_ports_poll_and_each_learns_the_other(manual):
    scheduler, _, (a, ca), (b, cb) = manual
    poll(a, ca)
    scheduler.run()
    assert not events(a, "linked") and ca.link.state.value == "down", "only a polls"
    assert cb.status()["far_port_polling"], "b's side knows a polls"
    poll(b, cb)
    scheduler.run()
    assert events(a, "linked") == [("linked", 0x22, 0)] and events(b, "linked") == [("linked", 0x11, 0)]
    assert ca.status()["peer_name"] == "b" and cb.status()["peer_name"] == "a", "each hello names its port"


def test_link_layer_messages_cross_during_their_link_up(manual):
    scheduler, _, (a, ca), (b, cb) = manual
    up(manual)
    assert ca.link.message(a, LinkMessage(MessageKind.CONFIGLT_READY), ca.link.epoch)
    assert ca.link.message(a, LinkMessage(MessageKind.IDLE, 1 << 8 | 3), ca.link.epoch)
    assert cb.link.message(b, LinkMessage(MessageKind.PLANNED_DOWN, 35), cb.link.epoch)
    scheduler.run()
    assert events(b, "message") == [("message", MessageKind.CONFIGLT_READY, 0, 0),
                                    ("message", MessageKind.IDLE, 0x103, 0)]
    assert events(a, "message") == [("message", MessageKind.PLANNED_DOWN, 35, 0)]
    assert cb.link.describe()["link_messages"] == {"ConfigLT ready": 1, "idle message": 1, "planned down": 1}


def send_all(scheduler, sender, cable, receiver, count, drain_every=None):
    """`sender` sends `count` numbered packets as an engine does (waiting for
    room); `receiver` drains every `drain_every` scheduler rounds."""
    sent, rounds = 0, 0
    while len(receiver.received) + getattr(receiver, "drained", 0) < count:
        while sent < count and cable.link.peer_has_room(sender):
            cable.link.transmit(sender, Packet(sent.to_bytes(4, "big") + bytes(60), sent % 16))
            sent += 1
        scheduler.run()
        rounds += 1
        assert rounds < 100 * count, f"stuck after {sent} sent, {len(receiver.received)} received"
        if drain_every and rounds % drain_every == 0 and receiver.received:
            receiver.drained = getattr(receiver, "drained", 0) + len(receiver.received)
            receiver.numbers = getattr(receiver, "numbers", []) + [int.from_bytes(p.data[:4], "big")
                                                                   for p in receiver.received]
            receiver.received.clear()
            receiver.link.room_freed(receiver)
    return getattr(receiver, "numbers", []) + [int.from_bytes(p.data[:4], "big") for p in receiver.received]


def test_packets_cross_in_order_and_none_is_lost_when_the_receiver_is_slow():
    scheduler = ManualScheduler()
    network = ManualNetwork(scheduler)
    a, b = Port("a", 0x11), SlowPort("b", 0x22, limit=3)
    ca = cable_remote(a, CableRole.LISTEN, ADDRESS, network.opener, scheduler.timer("ca"), window=4)
    cb = cable_remote(b, CableRole.CONNECT, ADDRESS, network.opener, scheduler.timer("cb"), window=4)
    up((scheduler, network, (a, ca), (b, cb)))
    numbers = send_all(scheduler, a, ca, b, 200, drain_every=3)
    assert numbers == list(range(200)), "all of them, in order"
    assert b.most <= 3, "b's port was never given more than it had room for"
    assert cb.status()["inbound"] == 0 and ca.status()["credits"] == 4, "every credit came back"
    assert ca.status()["backlog"] == 0 and cb.link.counters()["remote->b"]["packets"] == 200
    assert cb.end.counters["packets_in"] == 200 and not cb.status()["dropped"]["packets_lost_in_break"]


def test_a_sender_out_of_credit_waits_and_hears_when_credit_comes_back(manual):
    scheduler, _, (a, ca), (b, cb) = manual
    up(manual)
    for n in range(rc.WINDOW):
        assert ca.link.peer_has_room(a)
        ca.link.transmit(a, Packet(n.to_bytes(4, "big"), 0))
    assert not ca.link.peer_has_room(a), "a spent b's credit before b could say anything"
    rooms = len(events(a, "room"))
    scheduler.run()
    assert len(events(a, "room")) == rooms + 1 and ca.link.peer_has_room(a), "CREDIT woke a's sender"


def test_the_far_port_going_offline_takes_this_link_down_with_its_reason(manual):
    scheduler, _, (a, ca), (b, cb) = manual
    up(manual)
    cb.link.offline(b, LinkDownReason.CABLE_PULLED)
    scheduler.run()
    assert events(a, "unlinked") == [("unlinked", LinkDownReason.CABLE_PULLED, 0)]
    assert not ca.status()["far_port_polling"]
    poll(b, cb)
    scheduler.run()
    assert events(a, "linked")[-1] == ("linked", 0x22, 1) and events(b, "linked")[-1] == ("linked", 0x11, 1)


def test_news_the_far_side_sent_before_it_heard_of_a_down_is_not_believed_after_it():
    """b's port says it polls (as an 8051 does again to finish training) and
    "ConfigLT ready", just as a's port goes offline and polls again. Were
    a's side to believe b's POLLING, its link would come back up and take
    that message for the new link-up's; it waits for b's DOWN_SEEN."""
    scheduler = ManualScheduler()
    network = ManualNetwork(scheduler)
    a, b = Port("a", 0x11), Port("b", 0x22)
    ca = cable_remote(a, CableRole.LISTEN, ADDRESS, network.opener, scheduler.timer("ca"))
    cb = cable_remote(b, CableRole.CONNECT, ADDRESS, network.opener, scheduler.timer("cb"))
    up((scheduler, network, (a, ca), (b, cb)))
    poll(b, cb)  # on their way to a: POLLING ...
    assert cb.link.message(b, LinkMessage(MessageKind.CONFIGLT_READY), cb.link.epoch)  # ... and MESSAGE
    ca.link.offline(a)
    poll(a, ca)
    scheduler.run()
    assert events(a, "message") == [], "the message of link-up 0 did not reach link-up 1"
    assert events(b, "unlinked") == [("unlinked", LinkDownReason.REMOTE_OFFLINE, 0)]
    assert events(a, "linked") == [("linked", 0x22, 0), ("linked", 0x22, 1)], "then it trained again"
    assert ca.end.counters["frames_in"] > 0 and ca.status()["stream"] == "connected"


def test_link_down_on_one_side_darkens_both_and_link_up_trains_both_again(manual):
    scheduler, _, (a, ca), (b, cb) = manual
    up(manual)
    ca.link.take_down()
    scheduler.run()
    dark = [("unlinked", LinkDownReason.TAKEN_DOWN, 0)]
    assert events(a, "unlinked") == dark and events(b, "unlinked") == dark
    assert cb.status()["far_side_taken_down"] and cb.link.state.value == "down"
    ca.link.bring_up()
    scheduler.run()
    assert events(a, "linked")[-1] == ("linked", 0x22, 1) and events(b, "linked")[-1] == ("linked", 0x11, 1)


def test_faults_and_capture_on_one_sides_link_act_on_what_crosses_the_cable(manual, tmp_path):
    scheduler, _, (a, ca), (b, cb) = manual
    up(manual)
    ca.link.set_fault("a", Fault(FaultKind.DROP, count=2))
    cb.link.start_capture(str(tmp_path / "b.pcap"))
    for n in range(5):
        ca.link.transmit(a, Packet(n.to_bytes(4, "big") + bytes(36), 0, sealed=True))
    scheduler.run()
    assert [int.from_bytes(p.data[:4], "big") for p in b.received] == [2, 3, 4]
    assert not any(p.sealed for p in b.received), "what crossed a stream has its ICRC checked"
    assert ca.link.counters()["a->remote"]["faults_injected"] == {"drop": 2}
    assert cb.link.stop_capture()["packets"] == 3


def test_a_stream_break_takes_both_links_down_and_a_reconnect_trains_them_again(manual):
    scheduler, network, (a, ca), (b, cb) = manual
    up(manual)
    network.cut("the cable was unplugged")
    scheduler.run()
    lost = [("unlinked", LinkDownReason.STREAM_LOST, 0)]
    assert events(a, "unlinked") == lost and events(b, "unlinked") == lost
    assert ca.status()["stream"] == "disconnected" and ca.status()["last_break"] == "the cable was unplugged"
    network.reconnect()
    scheduler.run()
    assert events(a, "linked")[-1] == ("linked", 0x22, 1) and events(b, "linked")[-1] == ("linked", 0x11, 1), \
        "both ports still poll: the link trains as soon as the stream is back"
    assert ca.status()["connects"] == 2 and ca.status()["breaks"] == 1


def test_a_second_stream_is_refused_while_one_is_connected(manual):
    scheduler, network, (a, ca), (b, cb) = manual
    up(manual)
    intruder = Port("c", 0x33)
    cc = cable_remote(intruder, CableRole.CONNECT, ADDRESS, network.opener, scheduler.timer("cc"))
    scheduler.run()
    assert ca.status()["stream"] == "connected" and ca.status()["peer_name"] == "b", "a's cable is b's still"
    assert cc.status()["stream"] == "disconnected" and cc.end.counters["refusals_received"] == 1
    assert ca.link.is_up(ca.link.epoch)


# -- hostile or mistaken peers -------------------------------------------------------------------

class RecordingStream:
    peer = "192.0.2.9:4242"

    def __init__(self, end):
        self.end = end
        self.sent = b""
        self.closed: str | None = None

    def send(self, data):
        self.sent += data

    def close(self, reason):
        self.closed = reason
        self.end.stream_closed(self, reason)

    def frames(self):
        return w.FrameDecoder().feed(self.sent)


def identity(guid=0x22, node_type=0):
    return w.IDENTITY.pack(guid, node_type, 1, 0x24F0, 0x11, 3, 0, 0, 0)


HELLO = w.hello(8, "far")
POLLING = w.frame(w.FrameType.POLLING, identity())

HOSTILE = [
    ("an HTTP client", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "is not a vfnic cable end: it sent b'GET /"),
    ("an SSH server", b"SSH-2.0-OpenSSH_9.6\r\n", "is not a vfnic cable end"),
    ("a hello without the magic", w.frame(w.FrameType.HELLO, b"NOTVFNIC" + bytes(5)), "lacks the vfnic cable magic"),
    ("a frame before the hello", POLLING, "its first frame is POLLING, not HELLO"),
    ("another protocol version", w.frame(w.FrameType.HELLO, w.Hello.build(dict(version=2, credits=8, name="x"))),
     "speaks cable protocol version 2; this vfnic speaks 1"),
    ("a hello granting nothing", w.hello(0, "x"), "grants no credits"),
    ("an oversized packet length", HELLO + bytes([w.FrameType.PACKET, 0, 0xFF, 0xFF]),
     "a PACKET frame of 65535 bytes (it has 1..16384"),
    ("an unknown frame type", HELLO + bytes([0x7F, 0, 0, 0]), "unknown frame type 0x7f"),
    ("a second hello", HELLO + HELLO, "a second HELLO"),
    ("a count of the wrong size", HELLO + w.frame(w.FrameType.CREDIT, b"\0\0\1"), "a CREDIT frame of 3 bytes"),
    ("packets beyond its credit", HELLO + w.packet(b"x", 0, False) * (rc.WINDOW + 1), "beyond the 256 credits"),
    ("credit never earned", HELLO + w.count(w.FrameType.CREDIT, 1), "CREDIT 1 on top of 8 exceeds"),
    ("an acknowledgment of downs never sent", HELLO + w.count(w.FrameType.DOWN_SEEN, 1), "DOWN_SEEN 1, but 0"),
    ("a flood of link-layer messages", HELLO + w.frame(w.FrameType.MESSAGE, w.MESSAGE.pack(2, 0)) * 65,
     "more than 64 link-layer messages"),
    ("an unknown message kind", HELLO + w.frame(w.FrameType.MESSAGE, w.MESSAGE.pack(9, 0)), "MESSAGE of kind 9"),
    ("an unknown down reason", HELLO + w.frame(w.FrameType.OFFLINE, b"\x63"), "OFFLINE gives reason 99"),
    ("an unknown node type", HELLO + w.frame(w.FrameType.POLLING, identity(node_type=7)), "node type 7"),
    ("reserved packet flags", HELLO + w.frame(w.FrameType.PACKET, b"x", flags=0x40), "reserved flags 0x40"),
]


@pytest.mark.parametrize("what,data,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_what_a_hostile_peer_sends_closes_the_stream_with_the_reason_and_nothing_else(what, data, reason, caplog):
    scheduler = ManualScheduler()
    port = Port("a", 0x11)
    cable = cable_remote(port, CableRole.LISTEN, ADDRESS, lambda *_: _Idle(), scheduler.timer("ca"))
    poll(port, cable)
    stream = RecordingStream(cable.end)
    assert cable.end.stream_opened(stream)
    for i in range(0, len(data), 7):  # the bytes come in pieces, as TCP may cut them
        if stream.closed is None:
            cable.end.stream_data(stream, data[i:i + 7])
    scheduler.run()
    assert stream.closed is not None and reason in stream.closed, stream.closed
    kinds = [kind for kind, _, _ in stream.frames()]
    assert kinds[0] == w.FrameType.HELLO and kinds[-1] == w.FrameType.REFUSED, "the peer is told why"
    assert reason in stream.frames()[-1][2].decode()
    assert cable.status()["stream"] == "disconnected" and not cable.link.is_up(cable.link.epoch)
    assert cable.end.counters["protocol_errors"] == 1
    assert any(reason in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert cable.end.stream_opened(RecordingStream(cable.end)), "the next stream is welcome"


def test_a_broken_stream_while_up_takes_the_link_down_as_stream_lost():
    scheduler = ManualScheduler()
    port = Port("a", 0x11)
    cable = cable_remote(port, CableRole.LISTEN, ADDRESS, lambda *_: _Idle(), scheduler.timer("ca"))
    poll(port, cable)
    stream = RecordingStream(cable.end)
    cable.end.stream_opened(stream)
    cable.end.stream_data(stream, HELLO + POLLING)
    scheduler.run()
    assert events(port, "linked") == [("linked", 0x22, 0)]
    cable.end.stream_data(stream, bytes([w.FrameType.PACKET, 0, 0xFF, 0xFF]))
    scheduler.run()
    assert events(port, "unlinked") == [("unlinked", LinkDownReason.STREAM_LOST, 0)]


def test_the_decoder_holds_at_most_one_bounded_frame():
    decoder = w.FrameDecoder()
    assert decoder.feed(w.packet(bytes(w.MAX_PACKET_BYTES), 0, False)[:-1]) == []
    assert decoder.pending == w.HEADER_BYTES + w.MAX_PACKET_BYTES - 1
    ((kind, _, payload),) = decoder.feed(b"\0")
    assert kind == w.FrameType.PACKET and len(payload) == w.MAX_PACKET_BYTES and decoder.pending == 0


class _Idle:
    def status(self):
        return {}

    def close(self):
        pass


# -- over TCP ---------------------------------------------------------------------------------

#: short enough for tests, long enough that a loaded machine's stall is no break
FAST = tcp.Timing(heartbeat_s=0.1, idle_timeout_s=2.0, connect_timeout_s=2.0, first_backoff_s=0.02,
                  max_backoff_s=0.2)


def until(scheduler, condition, what, timeout=10.0):
    """Run the scheduler until `condition()`: the frames come on TCP's time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if not scheduler.run():
            time.sleep(0.002)


@pytest.fixture
def over_tcp():
    scheduler = ManualScheduler()
    opener = partial(tcp.open_tcp, timing=FAST)
    a, b = Port("a", 0x11), SlowPort("b", 0x22, limit=3)
    ca = cable_remote(a, CableRole.LISTEN, ("127.0.0.1", 0), opener, scheduler.timer("ca"), window=8)
    host, port = tcp.parse_address(ca.service.address)
    cb = cable_remote(b, CableRole.CONNECT, (host, port), opener, scheduler.timer("cb"), window=8)
    yield scheduler, (a, ca), (b, cb)
    cb.close()
    ca.close()


def test_over_tcp_the_ports_train_and_packets_cross_in_order_under_back_pressure(over_tcp):
    scheduler, (a, ca), (b, cb) = over_tcp
    poll(a, ca)
    poll(b, cb)
    until(scheduler, lambda: events(a, "linked") and events(b, "linked"), "the link to train")
    assert events(a, "linked") == [("linked", 0x22, 0)] and events(b, "linked") == [("linked", 0x11, 0)]
    deadline = time.monotonic() + 20
    sent, numbers = 0, []
    while len(numbers) < 500:
        assert time.monotonic() < deadline, f"{sent} sent, {len(numbers)} received"
        while sent < 500 and ca.link.peer_has_room(a):
            ca.link.transmit(a, Packet(sent.to_bytes(4, "big") + bytes(1000), 0))
            sent += 1
        if not scheduler.run():
            time.sleep(0.001)
        if b.received:  # b's chip takes what arrived
            numbers += [int.from_bytes(p.data[:4], "big") for p in b.received]
            b.received.clear()
            cb.link.room_freed(b)
    assert numbers == list(range(500)) and b.most <= 3
    assert cb.status()["protocol_errors"] == ca.status()["protocol_errors"] == 0


def test_over_tcp_a_break_takes_both_links_down_and_the_connector_reconnects_and_trains_again(over_tcp):
    scheduler, (a, ca), (b, cb) = over_tcp
    poll(a, ca)
    poll(b, cb)
    until(scheduler, lambda: events(a, "linked") and events(b, "linked"), "the link to train")
    (stream,) = ca.service.streams
    stream.sock.shutdown(socket.SHUT_RDWR)  # as if the network went away under it
    until(scheduler, lambda: events(a, "unlinked") and events(b, "unlinked"), "both links to go down")
    assert events(a, "unlinked")[0][1] is events(b, "unlinked")[0][1] is LinkDownReason.STREAM_LOST
    until(scheduler, lambda: len(events(a, "linked")) == len(events(b, "linked")) == 2, "the link to train again")
    assert ca.status()["connects"] == cb.status()["connects"] == 2
    assert cb.status()["transport"]["attempts"] >= 2


def test_over_tcp_heartbeats_keep_an_idle_cable_connected(over_tcp):
    scheduler, (a, ca), (b, cb) = over_tcp
    until(scheduler, lambda: ca.status()["stream"] == "connected", "the hellos")
    time.sleep(1.5 * FAST.idle_timeout_s)  # nothing to send: only heartbeats cross
    assert ca.status()["breaks"] == cb.status()["breaks"] == 0
    assert ca.status()["frames_in"] >= 10, "b's heartbeats"


def test_over_tcp_a_peer_that_says_hello_and_then_nothing_is_given_up():
    scheduler = ManualScheduler()
    port = Port("a", 0x11)
    ca = cable_remote(port, CableRole.LISTEN, ("127.0.0.1", 0), partial(tcp.open_tcp, timing=FAST),
                      scheduler.timer("ca"))
    try:
        started = time.monotonic()
        said = raw_client(tcp.parse_address(ca.service.address), w.hello(8, "mute"), timeout=10 * FAST.idle_timeout_s)
        assert time.monotonic() - started >= FAST.idle_timeout_s
        assert w.FrameDecoder().feed(said)[0][0] == w.FrameType.HELLO
        until(scheduler, lambda: ca.status()["breaks"] == 1, "a to give the mute stream up")
        assert ca.status()["last_break"].startswith("nothing heard from 127.0.0.1:")
    finally:
        ca.close()


def raw_client(address, data, timeout=5.0):
    """Connect, send `data`, read until the server closes; what it said."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        said = b""
        while chunk := sock.recv(65536):
            said += chunk
    return said


def test_over_tcp_an_http_client_is_told_why_and_the_cable_end_keeps_listening(over_tcp):
    scheduler, (a, ca), (b, cb) = over_tcp
    until(scheduler, lambda: ca.status()["stream"] == "connected", "the hellos")
    cb.close()
    until(scheduler, lambda: ca.status()["stream"] == "disconnected", "b to leave")
    said = raw_client(tcp.parse_address(ca.service.address), b"GET / HTTP/1.1\r\nHost: cable\r\n\r\n")
    (hello, refused) = w.FrameDecoder().feed(said)
    assert hello[0] == w.FrameType.HELLO and refused[0] == w.FrameType.REFUSED
    assert "is not a vfnic cable end: it sent b'GET / HTTP/1.1" in refused[2].decode()
    assert ca.end.counters["protocol_errors"] == 1 and ca.status()["transport"]["accepted"] == 2


def test_over_tcp_a_connector_that_reaches_something_else_says_so_and_keeps_trying():
    scheduler = ManualScheduler()
    heard = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        def web_server():
            for _ in range(2):
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(10)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    said = b""
                    while chunk := conn.recv(65536):
                        said += chunk
                    heard.append(said)
        thread = threading.Thread(target=web_server, daemon=True)
        thread.start()
        port = Port("b", 0x22)
        cb = cable_remote(port, CableRole.CONNECT, server.getsockname(), partial(tcp.open_tcp, timing=FAST),
                          scheduler.timer("cb"))
        try:
            until(scheduler, lambda: len(heard) == 2, "two tries, both refused")
        finally:
            cb.close()
        thread.join(5)
    assert cb.end.counters["protocol_errors"] == 2 and cb.status()["connects"] == 0
    assert "is not a vfnic cable end: it sent b'HTTP/1.1 400" in cb.status()["last_error"]
    for said in heard:  # what the web server was told: our hello, then why we leave
        (hello, refused) = w.FrameDecoder().feed(said)
        assert hello[0] == w.FrameType.HELLO and b"is not a vfnic cable end" in refused[2]


def test_a_listen_address_in_use_is_an_error_at_once():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(OSError):
            cable_remote(Port("a", 0x11), CableRole.LISTEN, taken.getsockname(), tcp.open_tcp,
                         ManualScheduler().timer("ca"))


@pytest.mark.parametrize("text,listening,expected", [
    ("10.77.0.1:7470", False, ("10.77.0.1", 7470)),
    ("[fd00::1]:7470", False, ("fd00::1", 7470)),
    ("0.0.0.0:0", True, ("0.0.0.0", 0)),
    ("host-a:1", False, ("host-a", 1)),
])
def test_an_address_is_host_and_port(text, listening, expected):
    assert tcp.parse_address(text, listening) == expected


@pytest.mark.parametrize("text,listening,message", [
    ("nohost", False, "is not HOST:PORT"),
    (":7470", False, "is not HOST:PORT"),
    ("h:port", False, "is not a number"),
    ("h:0", False, "outside 1..65535"),
    ("h:70000", True, "outside 0..65535"),
])
def test_a_bad_address_says_what_is_wrong(text, listening, message):
    with pytest.raises(ValueError, match=message):
        tcp.parse_address(text, listening)


# -- two HFI models on a remote cable -------------------------------------------------------------

def test_two_hfis_on_a_remote_cable_go_active_and_a_pio_packet_lands_with_its_icrc_checked():
    """The data path of testkit/hfi1/datapath.py over a remote cable: what
    crossed a stream is not trusted to be sealed, so B's chip checks the
    ICRC (a bit flipped on A's side of the cable is B's ICRC error)."""
    from devmodel.hfi1 import chip_registers as cr
    from testkit.hfi1.datapath import HDRQ_ENTRY_DWORDS, pair, pbc_for, settle, ud_packet

    with pair(remote=True) as (scheduler, a, b):
        for me, peer in ((a, b), (b, a)):
            stats = me.stats()
            assert (stats["physical_state"], stats["logical_state"]) == ("LINKUP", "ACTIVE")
            assert me.driver.read_csr(cr.DC_DC8051_STS_REMOTE_GUID) == peer.device.config.guid
        ctxt, link = 2, a.device.port.link
        link.set_fault("hfi1_a", Fault(FaultKind.CORRUPT, count=1, seed=5))
        rhfs = []
        for payload in (b"flipped" * 10, b"intact" * 10):
            packet = ud_packet(dlid=b.lid, slid=a.lid, dest_qp=0x12, payload=payload)
            tail = b.driver.hdrq_head[ctxt] // HDRQ_ENTRY_DWORDS
            a.driver.pio_copy(a.kernel_contexts[0], pbc_for(packet), packet)
            settle(a, b)
            rhf, header = b.driver.hdrq_entry(ctxt, tail)
            rhfs.append(rhf)
            b.driver.consume(ctxt)
        assert rhfs[0]["icrc_err"] == 1 and rhfs[1]["icrc_err"] == 0
        assert link.counters()["hfi1_a->remote"]["faults_injected"] == {"corrupt": 1}
        assert b.device.port.link.counters()["remote"]["packets_in"] >= 2


def test_over_tcp_a_peer_that_takes_credit_but_never_reads_is_cut_off(monkeypatch):
    """A HELLO granting 65535 packets, then silence on the reading side: what
    waits to be sent is bounded (MAX_QUEUED_BYTES), then the stream counts as broken."""
    monkeypatch.setattr(tcp, "MAX_QUEUED_BYTES", 1 << 20)
    scheduler = ManualScheduler()
    port = Port("a", 0x11)
    ca = cable_remote(port, CableRole.LISTEN, ("127.0.0.1", 0), partial(tcp.open_tcp, timing=FAST),
                      scheduler.timer("ca"))
    try:
        with socket.create_connection(tcp.parse_address(ca.service.address)) as greedy:
            greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            greedy.sendall(w.hello(0xFFFF, "greedy") + POLLING)
            poll(port, ca)
            until(scheduler, lambda: events(port, "linked"), "the link to come up")
            sent = 0
            while ca.status()["stream"] == "connected":
                assert sent < 2000, "2000 packets of 16 KiB queued and still connected"
                ca.link.transmit(port, Packet(bytes(w.MAX_PACKET_BYTES), 0))
                sent += 1
                scheduler.run()
            until(scheduler, lambda: events(port, "unlinked"), "the link to go down")
            assert events(port, "unlinked") == [("unlinked", LinkDownReason.STREAM_LOST, 0)]
            assert ca.status()["breaks"] == 1 and "bytes unread" in ca.status()["last_break"]
    finally:
        ca.close()
