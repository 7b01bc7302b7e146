"""The vfio-user message fuzzer (tests/test_fuzz.py runs it in CI,
benchmarks/soak at length): random, valid and mutated messages to a live
server. The seed is fixed, so a failure reproduces."""
from __future__ import annotations

import os
import random

from emulator.protocol import (
    DMA_MAP,
    DMA_UNMAP,
    IRQ_INFO,
    IRQ_SET,
    REGION_ACCESS,
    REGION_INFO,
    Command,
    MsgFlags,
    header,
)
from testkit.client import GuestMemory

COMMANDS = [int(c) for c in Command] + [0, 14, 19, 0xFFFF]


def valid_payloads(rng: random.Random) -> list[tuple[int, bytes]]:
    return [
        (Command.DEVICE_GET_INFO, (16).to_bytes(4, "little") + bytes(12)),
        (Command.DEVICE_GET_REGION_INFO, REGION_INFO.build(argsz=rng.choice([32, 64]), index=rng.randrange(10))),
        (Command.DEVICE_GET_IRQ_INFO, IRQ_INFO.build(argsz=16, index=rng.randrange(6))),
        (Command.DEVICE_SET_IRQS, IRQ_SET.build(argsz=20, flags=rng.choice([0x21, 0x24, 0x09, 0x11]),
                                                index=rng.randrange(5), start=rng.randrange(4), count=rng.randrange(3))),
        (Command.REGION_READ, REGION_ACCESS.pack(rng.randrange(0, 0x10000, 8), rng.choice([0, 7]), rng.choice([1, 2, 4, 8]))),
        (Command.REGION_WRITE, REGION_ACCESS.pack(rng.randrange(0, 0x48, 8), 0, 8) + rng.randbytes(8)),
        (Command.REGION_WRITE, REGION_ACCESS.pack(rng.randrange(0, 0x100), 7, 1) + rng.randbytes(1)),
        (Command.DMA_MAP, DMA_MAP.build(argsz=32, flags=rng.randrange(4), offset=rng.randrange(0, 1 << 21, 4096),
                                        address=rng.randrange(0, 1 << 32, 4096), size=rng.randrange(0, 1 << 21, 4096))),
        (Command.DMA_UNMAP, DMA_UNMAP.build(argsz=24, flags=rng.randrange(3), address=rng.randrange(0, 1 << 32, 4096),
                                            size=rng.randrange(0, 1 << 21, 4096))),
        (Command.REGION_WRITE_MULTI, (2).to_bytes(8, "little") + b"".join(
            REGION_ACCESS.pack(8, 0, 8) + rng.randbytes(8) for _ in range(2))),
        (Command.DEVICE_RESET, b""),
    ]


def mutate(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randrange(1, 4)):
        if data and rng.random() < 0.7:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif rng.random() < 0.5:
            del data[rng.randrange(len(data) + 1):]
        else:
            data += rng.randbytes(rng.randrange(1, 24))
    return bytes(data)


def fuzz_messages(served, count: int, seed: int = 20261120) -> dict:
    """`count` random, valid and mutated messages to `served` (a ServedDevice),
    from one client that now and then hangs up mid-message and reconnects.
    Every message that asks for an answer must get one within the client's
    deadline (a hang raises TimeoutError). Returns what was sent."""
    rng = random.Random(seed)
    memory = GuestMemory(2 << 20)
    client = served.client(timeout=5.0)
    sent = replies = reconnects = 0
    try:
        while sent < count:
            kind = rng.random()
            fds: tuple[int, ...] = ()
            if kind < 0.4:
                command, payload = rng.choice(valid_payloads(rng))
                if command == Command.DMA_MAP and rng.random() < 0.7:
                    fds = (memory.fd,)
            elif kind < 0.8:
                command, payload = rng.choice(valid_payloads(rng))
                payload = mutate(rng, payload)
            else:
                command, payload = rng.choice(COMMANDS), rng.randbytes(rng.randrange(0, 64))
            if rng.random() < 0.05:
                fds += tuple(os.eventfd(0) for _ in range(rng.randrange(1, 3)))
            flags = rng.choice([0, 0, 0, MsgFlags.NO_REPLY, MsgFlags.TYPE_REPLY, rng.randrange(1 << 32)])
            msg_id = sent & 0xFFFF
            client.send_raw(header(msg_id, command, len(payload), flags) + payload, fds)
            for fd in fds:
                if fd != memory.fd:
                    os.close(fd)
            sent += 1
            if not flags & MsgFlags.NO_REPLY:
                got_id, _reply = client.receive()  # raises TimeoutError on a hang
                assert got_id == msg_id
                replies += 1
            if rng.random() < 0.002:  # now and then: a half-sent message, then hang up
                client.send_raw(header(1, Command.REGION_WRITE, 64)[:10])
                client.close()
                client = served.client(timeout=5.0)
                reconnects += 1
        return {"sent": sent, "replies": replies, "reconnects": reconnects, "client": client}
    finally:
        memory.close()
