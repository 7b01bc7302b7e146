"""A vfio-user client: what QEMU's vfio-user-pci does, for tests and benchmarks.

    client = Client(path); client.connect()            # VERSION
    mem = GuestMemory(1 << 20); client.dma_map(mem, 0x100000)
    client.read(0, 0x08, 8); client.write(0, 0x08, b"...", posted=True)
    efd = client.enable_msix(vector=0)                 # SET_IRQS with an eventfd

Requests wait for their reply with a deadline (`timeout`); an error reply
raises `VfioUserError` carrying the server's errno. `send_raw` lets
conformance tests put arbitrary bytes on the wire.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from emulator import protocol as vfio_user

QEMU_CAPABILITIES = {
    "max_msg_fds": 16,
    "max_data_xfer_size": 1048576,
    "pgsizes": 4096,
    "max_dma_maps": 65535,
    "write_multiple": True,
    "migration": {"pgsize": 4096, "max_bitmap_size": 268435456},
}


_NO_REPLY, _ERROR = int(vfio_user.MsgFlags.NO_REPLY), int(vfio_user.MsgFlags.ERROR)
_REGION_READ = int(vfio_user.Command.REGION_READ)
_READ_REQUEST_SIZE = vfio_user.REGION_ACCESS_MESSAGE.size
_RECV_SIZE = 1 << 16
_CMSG_SPACE = socket.CMSG_SPACE(16 * 4)
_TYPE_REPLY = int(vfio_user.MsgFlags.TYPE_REPLY)


class VfioUserError(Exception):
    def __init__(self, command: int, errno_: int):
        super().__init__(f"{vfio_user.command_name(command)} failed: "
                         f"{errno.errorcode.get(errno_, errno_)}")
        self.errno = errno_


@dataclass
class Reply:
    command: int
    flags: int
    error_no: int
    payload: bytes
    fds: list[int]


class GuestMemory:
    """memfd-backed "guest RAM" the client maps into the server."""

    def __init__(self, size: int, name: str = "vfnic-guest-ram"):
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.mem = mmap.mmap(self.fd, size, mmap.MAP_SHARED)

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


class Client:
    def __init__(self, path: str, timeout: float = 5.0):
        self.path, self.timeout = path, timeout
        self.sock: socket.socket | None = None
        self._next_id = 0
        self.server_caps: dict = {}
        self._buf = bytearray()
        #: what one recvmsg_into lands in before it joins _buf
        self._landing = memoryview(bytearray(_RECV_SIZE))
        self._fds: list[int] = []
        self._rcvtimeo = -1

    # -- connection ---------------------------------------------------------------
    def open(self) -> "Client":
        """Connect the socket without negotiating (conformance tests send their own VERSION)."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)
        self._buf.clear()
        self._rcvtimeo = -1
        return self

    def connect(self, caps: dict | None = None) -> dict:
        """Connect (unless open already) and negotiate VERSION; the server's capabilities."""
        if self.sock is None:
            self.open()
        reply = self.request(vfio_user.Command.VERSION, vfio_user.Version.build(dict(
            major=0, minor=0, caps=json.dumps({"capabilities": QEMU_CAPABILITIES if caps is None else caps}))))
        self.server_caps = json.loads(vfio_user.Version.parse(reply.payload).caps)["capabilities"]
        return self.server_caps

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- messages ------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFF
        return self._next_id

    def send_raw(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        if not fds:
            self.sock.sendall(data)
            return
        sent = self.sock.sendmsg([data], vfio_user.fds_ancillary(fds))
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def send(self, command: int, payload: bytes = b"", fds: tuple[int, ...] = (), no_reply: bool = False) -> int:
        msg_id = self._new_id()
        self.send_raw(vfio_user.header(msg_id, command, len(payload), _NO_REPLY if no_reply else 0) + payload, fds)
        return msg_id

    def _fill(self, deadline: float) -> None:
        """Read whatever the server sent (blocking in the kernel, bounded by
        SO_RCVTIMEO); fds arrive with the first byte of the message that
        carried them, which is the last message started in this read."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no reply from {self.path} within {self.timeout} s")
        self._set_timeout(remaining)
        self._buf += self._landing[:self._land()]

    def _land(self) -> int:
        """One read into the landing buffer (bounded by SO_RCVTIMEO); how many bytes it took."""
        try:
            n, anc, _, _ = self.sock.recvmsg_into([self._landing], _CMSG_SPACE)
        except BlockingIOError:
            raise TimeoutError(f"no reply from {self.path} within {self.timeout} s") from None
        if not n:
            raise ConnectionError("server closed the connection")
        if anc:
            self._fds += vfio_user.fds_received(anc)
        return n

    def _set_timeout(self, seconds: float) -> None:
        # Coarse: a recv that blocks in the kernel costs one system call,
        # where Python's own socket timeout adds a poll() before each.
        whole = max(int(seconds), 0)
        if whole != self._rcvtimeo:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole + 1, 0))
            self._rcvtimeo = whole

    def receive(self, timeout: float | None = None) -> tuple[int, Reply]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < vfio_user.HEADER_SIZE:
            self._fill(deadline)
        msg_id, command, size, flags, error_no = vfio_user.HEADER.unpack_from(self._buf)
        while len(self._buf) < size:
            self._fill(deadline)
        payload = bytes(self._buf[vfio_user.HEADER_SIZE:size])
        del self._buf[:size]
        fds, self._fds = self._fds, []
        return msg_id, Reply(command, flags, error_no, payload, fds)

    def request(self, command: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> Reply:
        return self._reply_to(self.send(command, payload, fds), command)

    def _reply_to(self, msg_id: int, command: int) -> Reply:
        """The reply to message `msg_id`; replies to earlier messages still unread are skipped."""
        while True:
            got_id, reply = self.receive()
            if got_id == msg_id:
                break
        if reply.flags & _ERROR:
            raise VfioUserError(command, reply.error_no)
        return reply

    # -- commands ------------------------------------------------------------------
    def get_info(self) -> dict:
        reply = self.request(vfio_user.Command.DEVICE_GET_INFO, vfio_user.DEVICE_INFO.build(argsz=16))
        return vfio_user.DEVICE_INFO.parse(reply.payload)

    def region_info(self, index: int, argsz: int = 32) -> tuple[dict, list, list[int]]:
        """(info, sparse mmap areas, fds); asks again with a larger argsz if caps did not fit."""
        reply = self.request(vfio_user.Command.DEVICE_GET_REGION_INFO, vfio_user.REGION_INFO.build(argsz=argsz, index=index))
        info = vfio_user.REGION_INFO.parse(reply.payload)
        if info["argsz"] > argsz:
            for fd in reply.fds:
                os.close(fd)
            return self.region_info(index, info["argsz"])
        areas = []
        if info["cap_offset"]:
            areas = [(a.offset, a.size) for a in vfio_user.SparseMmapCap.parse(reply.payload[info["cap_offset"]:]).areas]
        return info, areas, reply.fds

    def irq_info(self, index: int) -> dict:
        reply = self.request(vfio_user.Command.DEVICE_GET_IRQ_INFO, vfio_user.IRQ_INFO.build(argsz=16, index=index))
        return vfio_user.IRQ_INFO.parse(reply.payload)

    def set_irqs(self, index: int, flags: int, start: int = 0, count: int = 0, fds: tuple[int, ...] = (),
                 data: bytes = b"") -> None:
        body = vfio_user.IRQ_SET.build(argsz=20, flags=flags, index=index, start=start, count=count) + data
        self.request(vfio_user.Command.DEVICE_SET_IRQS, body, fds)

    def enable_msix(self, vector: int) -> int:
        """Give the server an eventfd for one MSI-X vector, as QEMU does when the guest unmasks it."""
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        trigger = vfio_user.IrqSetFlags.DATA_EVENTFD | vfio_user.IrqSetFlags.ACTION_TRIGGER
        self.set_irqs(vfio_user.IrqIndex.MSIX, trigger, vector, 1, (efd,))
        return efd

    def dma_map(self, memory: GuestMemory | None, address: int, size: int | None = None, offset: int = 0,
                writable: bool = True) -> None:
        size = memory.size - offset if size is None else size
        flags = vfio_user.DmaMapFlags.READ | (vfio_user.DmaMapFlags.WRITE if writable else 0)
        self.request(vfio_user.Command.DMA_MAP,
                     vfio_user.DMA_MAP.build(argsz=32, flags=flags, offset=offset, address=address, size=size),
                     (memory.fd,) if memory else ())

    def dma_unmap(self, address: int, size: int, flags: int = 0) -> None:
        self.request(vfio_user.Command.DMA_UNMAP, vfio_user.DMA_UNMAP.build(argsz=24, flags=flags, address=address, size=size))

    def read(self, region: int, offset: int, count: int) -> bytes:
        msg_id = self._new_id()  # the request in one pack: this is benchmarks/mmio's loop
        self.sock.sendall(vfio_user.REGION_ACCESS_MESSAGE.pack(msg_id, _REGION_READ, _READ_REQUEST_SIZE, 0, 0,
                                                               offset, region, count))
        if not self._buf and not self._fds and self._rcvtimeo + 1 >= self.timeout:
            # Nothing else unread and SO_RCVTIMEO covers the timeout: the reply
            # usually comes whole in one read; anything else joins the buffer for receive().
            n, landing = self._land(), self._landing
            if n == _READ_REQUEST_SIZE + count and not self._fds \
                    and vfio_user.HEADER.unpack_from(landing) == (msg_id, _REGION_READ, n, _TYPE_REPLY, 0):
                return bytes(landing[_READ_REQUEST_SIZE:n])
            self._buf += landing[:n]
        return self._reply_to(msg_id, _REGION_READ).payload[vfio_user.REGION_ACCESS.size:]

    def write(self, region: int, offset: int, data: bytes, posted: bool = False) -> None:
        payload = vfio_user.REGION_ACCESS.pack(offset, region, len(data)) + data
        if posted:
            self.send(vfio_user.Command.REGION_WRITE, payload, no_reply=True)
        else:
            self.request(vfio_user.Command.REGION_WRITE, payload)

    def read64(self, region: int, offset: int) -> int:
        return int.from_bytes(self.read(region, offset, 8), "little")

    def write64(self, region: int, offset: int, value: int, posted: bool = False) -> None:
        self.write(region, offset, value.to_bytes(8, "little"), posted)

    def write_multi(self, writes: list[tuple[int, int, bytes]]) -> None:
        """Posted, like QEMU's."""
        body = vfio_user.WRITE_MULTI_COUNT.pack(len(writes)) + b"".join(
            vfio_user.WRITE_MULTI_ENTRY.pack(off, region, len(d), d) for region, off, d in writes)
        self.send(vfio_user.Command.REGION_WRITE_MULTI, body, no_reply=True)

    def reset(self) -> None:
        self.request(vfio_user.Command.DEVICE_RESET)


def wait_eventfd(fd: int, timeout: float) -> int:
    """Wait (with a deadline) for an eventfd to be signalled; return its count, 0 on timeout."""
    if not select.select([fd], [], [], timeout)[0]:
        return 0
    return os.eventfd_read(fd)
