"""Framing: the server reads whatever the client has sent at once and frames
messages out of it (emulator/server.py, Connection._fill).

A burst of posted writes arrives in one read; a message may straddle reads
and outgrow the room left in the inbox; file descriptors belong to the
message their `sendmsg` carried, however many messages one read returns.
"""
from __future__ import annotations

import errno
import os

from devmodel.testdev import SCRATCH, SharedMemoryTestDevice
from emulator.protocol import DMA_MAP, REGION_ACCESS, Command, DmaMapFlags, MsgFlags, header
from emulator.server import MAX_DATA_XFER_SIZE
from images.lab.wait import wait_until
from testkit.client import Client

BAR0, BAR2 = 0, 2


def posted_write(offset: int, value: int, region: int = BAR0, msg_id: int = 0) -> bytes:
    payload = REGION_ACCESS.pack(offset, region, 8) + value.to_bytes(8, "little")
    return header(msg_id, Command.REGION_WRITE, len(payload), MsgFlags.NO_REPLY) + payload


def dma_map(address: int, size: int, msg_id: int) -> bytes:
    payload = DMA_MAP.build(argsz=DMA_MAP.size, flags=DmaMapFlags.READ | DmaMapFlags.WRITE, offset=0,
                            address=address, size=size)
    return header(msg_id, Command.DMA_MAP, len(payload)) + payload


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_burst_of_posted_writes_sent_at_once_is_applied_in_order(testdev, client: Client):
    before = testdev.server.connection.counts["messages"]
    client.send_raw(b"".join(posted_write(SCRATCH, value) for value in range(1, 201)))
    assert client.read64(BAR0, SCRATCH) == 200
    assert testdev.server.connection.counts["messages"] - before == 201


def test_fds_go_to_the_message_their_sendmsg_carried_when_one_read_returns_more(testdev, client: Client, guest_ram):
    # QEMU's pattern: a posted write, then at once a DMA_MAP with its fd. The
    # server is held in a first write (the model's lock) while both arrive,
    # so that its next read returns the two together: the write must not take the fd.
    before = testdev.server.connection.counts["messages"]
    with testdev.model._lock:
        client.send_raw(posted_write(SCRATCH, 1))
        wait_until(lambda: testdev.server.connection.counts["messages"] > before, 5, "the server to take the first write")
        client.send_raw(posted_write(SCRATCH, 7))
        client.send_raw(dma_map(0x100000, guest_ram.size, msg_id=41), (guest_ram.fd,))
    msg_id, reply = client.receive()
    assert (msg_id, reply.error_no) == (41, 0)
    assert client.read64(BAR0, SCRATCH) == 7
    testdev.function.dma.write(0x100000, b"mapped")
    assert guest_ram.mem[:6] == b"mapped"


def test_a_message_that_outgrows_the_room_left_is_framed_after_the_inbox_moves(serve):
    served = serve("testdev-shm")
    client = served.client()
    size = SharedMemoryTestDevice.BAR2_SIZE - 0x1000
    assert size <= MAX_DATA_XFER_SIZE
    data = bytes(range(256)) * (size // 256)
    payload = REGION_ACCESS.pack(0x1000, BAR2, size) + data
    # 200 small messages first, so that the large one starts deep in the inbox
    client.send_raw(b"".join(posted_write(SCRATCH, value) for value in range(200)))
    client.send_raw(header(9, Command.REGION_WRITE, len(payload)) + payload)
    msg_id, reply = client.receive()
    assert (msg_id, reply.error_no) == (9, 0)
    assert client.read(BAR2, 0x1000 + size - 256, 256) == bytes(range(256))
    assert client.read64(BAR0, SCRATCH) == 199
    client.close()


def test_fds_on_a_message_that_straddles_a_move_are_refused_and_closed(serve):
    served = serve("testdev-shm")
    client = served.client()
    size = SharedMemoryTestDevice.BAR2_SIZE - 0x1000
    payload = REGION_ACCESS.pack(0x1000, BAR2, size) + bytes(size)
    efd = os.eventfd(0)
    fds_before = open_fds()
    client.send_raw(b"".join(posted_write(SCRATCH, value) for value in range(200)))
    client.send_raw(header(9, Command.REGION_WRITE, len(payload)) + payload, (efd,))
    msg_id, reply = client.receive()
    assert (msg_id, reply.error_no) == (9, errno.EINVAL)
    assert open_fds() == fds_before  # the server's copy of the eventfd is closed
    assert client.read64(BAR0, SCRATCH) == 199
    os.close(efd)
    client.close()
