"""Faults injected on a link, a host-side link-down, and the capture file:
each does what it says to the packets of one direction, repeatably."""
from __future__ import annotations

import pytest

from devmodel.fabric import Fault, FaultError, FaultKind, Link, LinkDownReason, LinkError, Packet
from devmodel.wire.pcap import ERF_TYPE_OPA_9B, LINKTYPE_ERF, PCAP_FILE_HEADER, PCAP_MAGIC_NS, erf_records
from devmodel.worker import ManualScheduler
from testkit.fabric_link import Port


class BigPort(Port):
    def has_room(self):
        return True


def up_link(timer=None):
    link = Link("a<->b", timer=timer)
    a, b = BigPort("a", 0x11), BigPort("b", 0x22)
    link.attach(a)
    link.attach(b)
    link.polling(a, a.identity)
    link.polling(b, b.identity)
    return link, a, b


@pytest.fixture
def wire():
    scheduler = ManualScheduler()
    return (scheduler, *up_link(scheduler.worker("link").after))


def send(link, end, count, size=64):
    for i in range(count):
        link.transmit(end, Packet(i.to_bytes(4, "big") + bytes(size - 4), 0, sealed=True))


def numbers(port):
    return [int.from_bytes(p.data[:4], "big") for p in port.received]


def test_a_counted_drop_takes_exactly_the_next_packets_of_one_direction(wire):
    _, link, a, b = wire
    link.set_fault("a", Fault(FaultKind.DROP, count=3))
    send(link, a, 5)
    send(link, b, 2)
    assert numbers(b) == [3, 4] and numbers(a) == [0, 1]
    counters = link.counters()
    assert counters["a->b"]["faults_injected"] == {"drop": 3} and counters["a->b"]["packets"] == 5
    assert counters["b->a"]["faults_injected"] == {}


def test_a_random_drop_repeats_for_the_same_seed_and_differs_for_another():
    def survivors(seed):
        link, a, b = up_link()
        link.set_fault("a", Fault(FaultKind.DROP, rate=0.1, seed=seed))
        send(link, a, 2000)
        return numbers(b)
    first, again, other = survivors(7), survivors(7), survivors(8)
    assert first == again and first != other
    assert 1700 < len(first) < 1900, f"{2000 - len(first)} of 2000 dropped at 10 %"


def test_corruption_flips_one_bit_and_unseals_the_packet(wire):
    _, link, a, b = wire
    link.set_fault("a", Fault(FaultKind.CORRUPT, count=1, seed=3))
    send(link, a, 2)
    sent = Packet(bytes(64), 0).data
    corrupted, intact = b.received
    flipped = sum(bin(x ^ y).count("1") for x, y in zip(corrupted.data[4:], sent[4:]))
    flipped += bin(int.from_bytes(corrupted.data[:4], "big")).count("1")
    assert flipped == 1 and not corrupted.sealed
    assert intact.sealed and numbers(b)[1] == 1


def test_duplicates_arrive_twice(wire):
    _, link, a, b = wire
    link.set_fault("a", Fault(FaultKind.DUPLICATE, count=1))
    send(link, a, 2)
    assert numbers(b) == [0, 0, 1]


def test_a_delay_holds_packets_on_the_links_clock_and_keeps_their_order(wire):
    scheduler, link, a, b = wire
    link.set_fault("a", Fault(FaultKind.DELAY, rate=1.0, delay_ms=5))
    send(link, a, 3)
    assert numbers(b) == []
    scheduler.advance(0.004)
    assert numbers(b) == []
    scheduler.advance(0.002)
    assert numbers(b) == [0, 1, 2]


def test_reordered_packets_are_overtaken_by_later_ones(wire):
    scheduler, link, a, b = wire
    link.set_fault("a", Fault(FaultKind.REORDER, count=1))
    send(link, a, 3)
    scheduler.advance(0.01)
    assert numbers(b) == [1, 2, 0]


def test_faults_that_make_no_sense_are_refused_with_the_reason():
    with pytest.raises(FaultError, match="rate or a count"):
        Fault(FaultKind.DROP)
    with pytest.raises(FaultError, match="probability"):
        Fault(FaultKind.DROP, rate=1.5)
    with pytest.raises(FaultError, match="unknown fault 'melt'"):
        Fault("melt", rate=0.1)
    with pytest.raises(FaultError, match="needs delay_ms"):
        Fault(FaultKind.DELAY, rate=0.1)
    link = Link("a<->b")
    link.attach(Port("a", 1))
    with pytest.raises(LinkError, match="no end named 'c'"):
        link.set_fault("c", Fault(FaultKind.DROP, rate=0.1))
    with pytest.raises(LinkError, match="no clock"):
        link.set_fault("a", Fault(FaultKind.DELAY, rate=0.1, delay_ms=1))


def test_clearing_faults_restores_a_clean_link(wire):
    _, link, a, b = wire
    link.set_fault("a", Fault(FaultKind.DROP, rate=1.0))
    send(link, a, 2)
    link.clear_faults()
    send(link, a, 2)
    assert numbers(b) == [0, 1] and link.describe()["faults"] == {"a": [], "b": []}


def test_a_link_taken_down_drops_at_both_ends_and_trains_again_when_brought_up(wire):
    _, link, a, b = wire
    link.take_down()
    down = ("unlinked", LinkDownReason.TAKEN_DOWN, 0)
    assert down in a.events and down in b.events
    link.polling(a, a.identity)
    link.polling(b, b.identity)
    assert not link.transmit(a, Packet(bytes(8), 0)), "dark while taken down, even with both ends polling"
    link.bring_up()
    assert a.events[-1] == ("linked", 0x22, 1) and link.counters()["downs_injected"] == 1


def test_a_timed_link_down_comes_back_by_itself(wire):
    scheduler, link, a, b = wire
    link.take_down(seconds=2.0)
    link.polling(a, a.identity)
    link.polling(b, b.identity)
    scheduler.advance(1.9)
    assert link.counters()["state"] == "down"
    scheduler.advance(0.2)
    assert link.counters()["state"] == "up"


def test_a_capture_records_what_arrives_as_erf_opa_9b_records(wire, tmp_path):
    _, link, a, b = wire
    path = tmp_path / "ab.pcap"
    link.start_capture(str(path))
    link.set_fault("a", Fault(FaultKind.DROP, count=1))
    send(link, a, 3, size=40)
    send(link, b, 1, size=48)
    assert link.stop_capture() == {"file": str(path), "packets": 3, "bytes": 128, "active": False}
    data = path.read_bytes()
    header = PCAP_FILE_HEADER.parse(data)
    assert header["magic"] == PCAP_MAGIC_NS and header["linktype"] == LINKTYPE_ERF
    records = [(erf.type, erf.flags & 3, erf.wlen, int.from_bytes(payload[:4], "big"))
               for erf, payload in erf_records(data)]
    assert records == [(ERF_TYPE_OPA_9B, 0, 40, 1), (ERF_TYPE_OPA_9B, 0, 40, 2), (ERF_TYPE_OPA_9B, 1, 48, 0)]
