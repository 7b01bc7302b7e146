"""Hostile SMPs at a switch: 100 000 of them, seeded. Nothing escapes, every one
is answered or counted, nothing leaves by a port the switch does not have."""
from __future__ import annotations

import random
import time

from devmodel.fabric import Packet
from devmodel.switch import smi
from devmodel.wire import opa_sma as w
from testkit.switch_fabric import Fabric, dr_smp, lr_smp, smp_packet

ATTRS = [w.Attr.NODE_INFO, w.Attr.PORT_INFO, w.Attr.SWITCH_INFO, w.Attr.LINEAR_FWD, w.Attr.MULTICAST_FWD,
         w.Attr.AGGREGATE, w.Attr.PKEY_TABLE, w.Attr.SC_TO_SC, w.Attr.VL_ARB, w.Attr.BUFFER_CONTROL, 0x7777]


def hostile(rng: random.Random) -> Packet:
    kind = rng.randrange(8)
    if kind == 0:  # hop count beyond 63, or a hop pointer out of range
        mad = dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, [1])
        mad[7] = rng.randrange(64, 256) if rng.random() < 0.5 else mad[7]
        mad[6] = rng.randrange(256)
    elif kind == 1:  # a path through ports that do not exist, or dead ones, or back where it came from
        path = [1] + [rng.choice([0, 1, 2, 3, 4, 5, 200, 255]) for _ in range(rng.randrange(1, 8))]
        mad = dr_smp(w.Method.GET, rng.choice(ATTRS), rng.getrandbits(32), path)
    elif kind == 2:  # a returning SMP with a made-up return path
        mad = dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, [1, 3])
        mad[4] |= 0x80
        mad[6] = rng.randrange(0, 4)
        mad[104:168] = bytes(rng.getrandbits(8) for _ in range(64))
    elif kind == 3:  # Sets with random modifiers and data (tables pointing at nonexistent ports)
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice([64, 300, 1872])))
        mad = dr_smp(w.Method.SET, rng.choice(ATTRS), rng.getrandbits(32), [1], data)
    elif kind == 4:  # aggregates with lying segment lengths
        data = b"".join(w.AGGREGATE_SEGMENT.pack(rng.choice(ATTRS), rng.randrange(128), rng.getrandbits(32))
                        + bytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 6)))
        mad = dr_smp(rng.choice([w.Method.GET, w.Method.SET]), w.Attr.AGGREGATE, rng.randrange(256), [1], data)
    elif kind == 5:  # LID-routed to random LIDs
        mad = lr_smp(rng.choice([1, 2, 5, 7, 0x81]), rng.choice(ATTRS), rng.getrandbits(32))
        return smp_packet(mad, slid=rng.getrandbits(16), dlid=rng.getrandbits(16))
    elif kind == 6:  # truncated
        mad = dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, [1, 2])[:rng.randrange(0, 200)]
    else:  # random bytes with a plausible header
        mad = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(24, 400)))
        mad[0], mad[1] = 0x80, rng.choice([0x01, 0x81, 0x04])
    return smp_packet(bytes(mad))


def test_100000_hostile_smps_are_dropped_or_answered_never_crash_or_leak():
    fabric = Fabric()
    fabric.links[4].take_down()  # a dead port to aim at
    fabric.run()
    switch = fabric.switch
    rng = random.Random(14)
    start = time.monotonic()
    count = 100_000
    for i in range(count):
        fabric.sm.send(hostile(rng))
        if i % 64 == 63:
            fabric.run()
        if i % 5000 == 4999:  # the SM's side drains, as a real HFI would
            fabric.sm.received.clear()
            fabric.hfi.outbox.clear()
    fabric.run()
    elapsed = time.monotonic() - start
    assert switch.internal_errors == 0, "an exception reached the switch's guard"
    assert fabric.hfi.internal_errors == 0
    counted = sum(switch.drops.values())
    assert switch.ports[1].counters.port_rcv_pkts == count
    assert counted > count // 4, "the hostile ones are counted"
    received = sum(p.counters.port_rcv_pkts for p in switch.ports.values())  # with the HFI's answers
    assert counted + switch.answered + switch.forwarded == received, "every packet is answered, forwarded or counted"
    assert not fabric.ends[4].received and switch.ports[4].counters.port_xmit_pkts == 0
    assert all(n in (1, 2, 3, 4) for n in switch.ports)
    assert elapsed < 50, f"{elapsed:.1f} s"
    print(f"{count} hostile SMPs in {elapsed:.1f} s; drops {dict(switch.drops)}")
    # the switch still works afterwards
    reply = fabric.dr(w.Method.GET, w.Attr.NODE_INFO, 0, [1])
    assert reply[3] == w.Method.GET_RESP


def test_drop_reasons_name_the_smi_rule():
    fabric = Fabric()
    mad = dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, [1])
    mad[7] = 64
    fabric.sm.send(smp_packet(bytes(mad)))
    mad = dr_smp(w.Method.GET, w.Attr.NODE_INFO, 0, [1, 9])
    fabric.sm.send(smp_packet(bytes(mad)))
    fabric.run()
    assert fabric.switch.drops[smi.DropReason.HOP_COUNT.value] == 1
    assert fabric.switch.drops[smi.DropReason.PATH_PORT.value] == 1
