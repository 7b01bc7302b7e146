"""A link between two ports: link-up is a handshake, down goes both ways,
packets are counted per direction and dropped while the link is down."""
from __future__ import annotations

from devmodel.fabric import (
    BuiltInPartner,
    Link,
    LinkDownReason,
    LinkMessage,
    MessageKind,
    NodeType,
    Packet,
    PortIdentity,
)
from testkit.fabric_link import Port, cabled


def test_the_link_comes_up_only_once_both_ends_poll_and_each_learns_the_other():
    link, a, b = cabled()
    link.polling(a, a.identity)
    assert not a.events and link.state.value == "down"
    link.polling(b, b.identity)
    assert a.events == [("linked", 0x22, 0)] and b.events == [("linked", 0x11, 0)]
    assert link.is_up(0) and link.ups == 1


def test_one_end_going_offline_takes_the_other_down_and_old_news_is_recognisable():
    link, a, b = cabled()
    link.polling(a, a.identity)
    link.polling(b, b.identity)
    link.offline(a)
    assert b.events[-1] == ("unlinked", LinkDownReason.REMOTE_OFFLINE, 0)
    assert not link.is_up(0), "epoch 0 is over"
    link.polling(a, a.identity)  # b never stopped polling: the link trains again
    assert a.events[-1] == ("linked", 0x22, 1) and link.is_up(1)


def test_packets_cross_only_an_up_link_and_each_direction_is_counted():
    link, a, b = cabled()
    assert not link.transmit(a, Packet(b"x" * 40, 0))
    link.polling(a, a.identity)
    link.polling(b, b.identity)
    assert link.transmit(a, Packet(b"x" * 40, 0)) and link.transmit(a, Packet(b"y" * 60, 15))
    assert link.transmit(b, Packet(b"z" * 28, 0))
    assert [p.data[:1] for p in b.received] == [b"x", b"y"] and len(a.received) == 1
    counters = link.counters()
    assert counters["a->b"] == {"packets": 2, "bytes": 100, "dropped_link_down": 1, "faults_injected": {}}
    assert counters["b->a"] == {"packets": 1, "bytes": 28, "dropped_link_down": 0, "faults_injected": {}}


def test_a_link_joins_exactly_two_ends():
    link, a, b = cabled()
    try:
        link.attach(Port("c", 0x33))
    except ValueError as error:
        assert "already joins a and b" in str(error)
    else:
        raise AssertionError("a third end was attached")


def test_a_built_in_partner_always_polls_answers_and_absorbs_what_it_is_sent():
    link = Link("a<->partner")
    a = Port("a", 0x11)
    link.attach(a)
    partner = BuiltInPartner(PortIdentity(guid=0x99, node_type=NodeType.SWITCH))
    partner.plug_into(link)
    link.polling(a, a.identity)
    assert a.events == [("linked", 0x99, 0)]
    link.transmit(a, Packet(b"smp", 15))
    assert partner.absorbed == 1
    link.offline(a)
    link.polling(a, a.identity)
    assert a.events[-1] == ("linked", 0x99, 1), "the partner retrained at once"


def test_a_sender_asks_for_room_and_hears_when_the_receiver_drained():
    link, a, b = cabled()
    link.polling(a, a.identity)
    link.polling(b, b.identity)
    for _ in range(3):
        assert link.peer_has_room(a)
        link.transmit(a, Packet(b"x" * 40, 0))
    assert not link.peer_has_room(a), "b's buffer is full"
    b.received.clear()
    link.room_freed(b)
    assert a.events[-1] == ("room",) and link.peer_has_room(a)


def test_a_link_layer_message_reaches_the_other_end_only_during_its_link_up():
    link, a, b = cabled()
    idle = LinkMessage(MessageKind.IDLE, 1 << 8 | 3)
    assert not link.message(a, idle, 0), "the link is down"
    link.polling(a, a.identity)
    link.polling(b, b.identity)
    assert link.message(a, idle, 0)
    assert b.events[-1] == ("message", MessageKind.IDLE, 0x103, 0) and not [e for e in a.events if e[0] == "message"]
    link.offline(b)
    link.polling(b, b.identity)
    assert not link.message(a, idle, 0), "news of link-up 0 is lost once link-up 1 has begun"
    assert link.message(a, LinkMessage(MessageKind.CONFIGLT_READY), 1)
    assert link.describe()["link_messages"] == {"idle message": 1, "ConfigLT ready": 1}


def test_the_built_in_partner_agrees_to_linkup_and_echoes_idle_messages():
    link = Link("hfi<->partner")
    hfi = Port("hfi", 0x11)
    link.attach(hfi)
    partner = BuiltInPartner(PortIdentity(guid=0x22), name="partner")
    partner.plug_into(link)
    link.polling(hfi, hfi.identity)
    link.message(hfi, LinkMessage(MessageKind.CONFIGLT_READY), 0)
    link.message(hfi, LinkMessage(MessageKind.IDLE, 1 << 8 | 3), 0)
    link.message(hfi, LinkMessage(MessageKind.PLANNED_DOWN, 35), 0)
    assert [e for e in hfi.events if e[0] == "message"] == [
        ("message", MessageKind.CONFIGLT_READY, 0, 0), ("message", MessageKind.IDLE, 0x103, 0)]
    assert [m.kind for m in partner.messages_received] == [
        MessageKind.CONFIGLT_READY, MessageKind.IDLE, MessageKind.PLANNED_DOWN]


def test_an_inbound_buffer_queues_one_ingress_event_per_burst_and_gives_credits_back_at_half():
    from devmodel.fabric import InboundBuffer, Packet
    buffer = InboundBuffer(limit=4)
    posts = [buffer.push(Packet(bytes([n]), sc=0)) for n in range(4)]
    assert posts == [True, False, False, False], "a burst costs one queued ingress event"
    assert not buffer.has_room(), "four packets: the sender's credits are spent"
    buffer.begin()
    buffer.packets.popleft()
    assert buffer.repost(), "packets still wait and no event is queued: post another"
    assert not buffer.repost() and not buffer.push(Packet(b"x", sc=0)), "one queued at a time"
    assert buffer.has_room() is False and not buffer.drained()
    buffer.begin()
    for _ in range(2):
        buffer.packets.popleft()
    assert buffer.drained() and buffer.has_room() and len(buffer) == 2
    assert buffer.discard() == 2 and buffer.push(Packet(b"y", sc=0)), "after a reset the next packet posts again"


class Relay(Port):
    """A RelayEnd that records what it is told beyond an end's news."""

    def peer_polling(self, identity):
        self.events.append(("peer polling", identity.guid))

    def peer_offline(self, reason):
        self.events.append(("peer offline", reason))

    def cable_enabled(self, enabled):
        self.events.append(("cable enabled", enabled))

    def status(self):
        return {"relay": self.name}


def test_a_relay_hears_the_other_end_poll_and_leave_and_the_hosts_hand_on_the_cable():
    link, a = Link("a<->r"), Port("a", 0x11)
    link.attach(a)
    link.polling(a, a.identity)
    relay = Relay("r", 0x22)
    link.attach(relay, relay=True)
    assert relay.events == [("peer polling", 0x11)], "a polled before the relay was attached"
    link.polling(a, a.identity)
    link.offline(a, LinkDownReason.CABLE_PULLED)
    link.take_down()
    link.bring_up()
    assert relay.events[1:] == [("peer polling", 0x11), ("peer offline", LinkDownReason.CABLE_PULLED),
                                ("cable enabled", False), ("cable enabled", True)]
    assert not [e for e in a.events if e[0].startswith(("peer", "cable"))], "a plain end hears none of it"
    assert link.counters()["remote"] == {"relay": "r"}
