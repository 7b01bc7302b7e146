"""The vfio-user server: one AF_UNIX socket, one PCI function, one client at a time.

    LISTENING --accept--> NEGOTIATING --VERSION--> RUNNING --EOF/fatal--> LISTENING
         \\                                                                  |
          +--------------------------- stop() ----------------------> CLOSED

Messages are read and handled strictly in order on one thread: QEMU posts BAR
writes without waiting for a reply, and a later read must observe them. A
malformed message gets an error reply carrying an errno and the connection
goes on; only a message that cannot be framed (a size below the header or
above what we accept) ends the connection, since the rest of the stream can no
longer be trusted. When a client goes, its DMA maps and eventfds are released
and the server accepts the next client; device state survives.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import select
import socket
import threading
from dataclasses import dataclass
from enum import Enum

from common.ratelog import RateLimitedLog

from .errors import ErrnoError
from .pci.function import PciFunction, RegionAccessError
from .protocol import (
    DEVICE_INFO,
    DMA_MAP,
    DMA_UNMAP,
    HEADER,
    HEADER_SIZE,
    IRQ_INFO,
    IRQ_SET,
    MSG_TYPE_MASK,
    NUM_IRQS,
    NUM_REGIONS,
    REGION_ACCESS,
    REGION_ACCESS_MESSAGE,
    REGION_INFO,
    WRITE_MULTI_COUNT,
    WRITE_MULTI_ENTRY,
    WRITE_MULTI_MAX,
    Command,
    DeviceFlags,
    DmaMapFlags,
    DmaUnmapFlags,
    IrqIndex,
    IrqInfoFlags,
    MsgFlags,
    RegionCap,
    RegionFlags,
    SparseMmapCap,
    Version,
    command_name,
    fds_ancillary,
    fds_received,
    header,
)
from .tuning import ClientVcpus, peer_pid

MAX_MSG_FDS = 8
MAX_DATA_XFER_SIZE = 1 << 20
MAX_DMA_MAPS = 65535
PGSIZES = 4096
#: the largest message we read: a full-size REGION_WRITE, with room for headers
MAX_MESSAGE_SIZE = MAX_DATA_XFER_SIZE + 4096
_CMSG_SPACE = socket.CMSG_SPACE(MAX_MSG_FDS * 4)
# Plain ints: IntFlag arithmetic costs microseconds, and this is the MMIO path.
_NO_REPLY, _TYPE_REPLY, _ERROR = int(MsgFlags.NO_REPLY), int(MsgFlags.TYPE_REPLY), int(MsgFlags.ERROR)
_REGION_READ, _REGION_WRITE = int(Command.REGION_READ), int(Command.REGION_WRITE)
_ACCESS_SIZE = REGION_ACCESS.size
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_NO_FDS: tuple[tuple[int, ...], bool] = ((), False)


class RunState(Enum):
    LISTENING = "listening"
    NEGOTIATING = "negotiating"
    RUNNING = "running"
    CLOSED = "closed"


class ProtocolError(ErrnoError):
    """A command the server refuses; answered with an error reply."""


class StateError(ProtocolError):
    """A command that is not valid in the connection's current runstate."""

    def __init__(self, command: int, state: RunState):
        super().__init__(errno.EINVAL, f"{command_name(command)} is not valid while {state.value}")


class FramingError(Exception):
    """The stream cannot be parsed any further: the connection must end."""


class Disconnected(Exception):
    pass


@dataclass
class Message:
    msg_id: int
    command: int
    flags: int
    payload: bytes
    fds: list[int]
    fds_truncated: bool = False

    @property
    def wants_reply(self) -> bool:
        return not self.flags & _NO_REPLY


@dataclass
class Reply:
    payload: bytes = b""
    fds: tuple[int, ...] = ()


class Connection:
    """One client's session: framing, runstate, dispatch."""

    def __init__(self, sock: socket.socket, function: PciFunction, log: logging.Logger, write_multiple: bool = True,
                 refused: RateLimitedLog | None = None):
        self.sock, self.function, self.log = sock, function, log
        #: refused messages: the first lines, then a summary a minute (the server's, across its clients)
        self.refused = refused or RateLimitedLog(log, "refused messages")
        self.state = RunState.NEGOTIATING
        self.write_multiple = write_multiple
        self.client_caps: dict = {}
        self.counts = {"messages": 0, "errors": 0}
        #: what the client sent and we have not handled yet (`_fill`), room for the largest message
        self._inbox = bytearray(MAX_MESSAGE_SIZE)
        self._view = memoryview(self._inbox)
        #: (inbox offset a read ended at, its fds, whether some were cut off), oldest first
        self._pending_fds: list[tuple[int, list[int], bool]] = []
        self._handlers = {
            Command.VERSION: self.version,
            Command.DMA_MAP: self.dma_map,
            Command.DMA_UNMAP: self.dma_unmap,
            Command.DEVICE_GET_INFO: self.get_info,
            Command.DEVICE_GET_REGION_INFO: self.get_region_info,
            Command.DEVICE_GET_IRQ_INFO: self.get_irq_info,
            Command.DEVICE_SET_IRQS: self.set_irqs,
            Command.REGION_READ: self.region_read,
            Command.REGION_WRITE: self.region_write,
            Command.REGION_WRITE_MULTI: self.region_write_multi,
            Command.DEVICE_RESET: self.device_reset,
        }

    # -- framing ------------------------------------------------------------------
    def _fill(self, start: int, end: int, need: int) -> tuple[int, int]:
        """Read until the inbox holds `need` bytes from `start`; (start, end) after.

        One `recvmsg_into` takes whatever the client has sent so far: a
        burst of QEMU's posted writes is one system call, not two a message.
        File descriptors come with the read that reaches the first byte of
        the `sendmsg` that carried them, and that read ends inside that
        `sendmsg` (net/unix/af_unix.c, unix_stream_read_generic), so they
        belong to the message holding the read's last byte: noted as
        (that byte's end, fds, truncated) for `_fds_until`. QEMU sends each
        message, fds and all, with one `sendmsg`.
        """
        inbox, view, pending = self._inbox, self._view, self._pending_fds
        if start == end:  # (serve reads into an empty inbox itself)
            start = end = 0
        elif start + need > len(inbox):  # make room: the partial message moves to the front
            inbox[:end - start] = inbox[start:end]
            self._pending_fds = pending = [(e - start, fds, cut) for e, fds, cut in pending]
            start, end = 0, end - start
        while end - start < need:
            n, ancdata, msg_flags, _ = self.sock.recvmsg_into([view[end:]], _CMSG_SPACE)
            if ancdata or msg_flags & _MSG_CTRUNC:
                self._note_fds(end + n, ancdata, msg_flags)
            if not n:
                raise Disconnected("client closed the connection mid-message" if end > start
                                   else "client closed the connection")
            end += n
        return start, end

    def _note_fds(self, end: int, ancdata: list, msg_flags: int) -> None:
        """A read that ended at inbox offset `end` brought fds (or lost some)."""
        self._pending_fds.append((end, fds_received(ancdata), bool(msg_flags & _MSG_CTRUNC)))

    def _fds_until(self, stop: int) -> tuple[list[int], bool]:
        """The fds (and whether some were cut off) that came with reads
        ending inside the message that ends at `stop`."""
        fds, truncated, pending = [], False, self._pending_fds
        while pending and pending[0][0] <= stop:
            _, more, cut = pending.pop(0)
            fds += more
            truncated |= cut
        return fds, truncated

    def _close_pending_fds(self) -> None:
        """Close the fds of messages never framed (the connection ended first)."""
        for _, fds, _ in self._pending_fds:
            for fd in fds:
                os.close(fd)
        self._pending_fds = []

    def release(self) -> None:
        """The client is gone: close the fds no message took, and give back
        the inbox (MAX_MESSAGE_SIZE bytes) now. The handlers are bound
        methods, a reference cycle that only the garbage collector would
        break: a server that outlives many clients (guest after guest) would
        hold an inbox per client until it ran."""
        self._close_pending_fds()
        self._handlers = {}
        try:
            self._view.release()
        except BufferError:
            pass  # a slice of it is still referenced somewhere; dropping ours is enough
        self._inbox = bytearray()
        self._view = memoryview(self._inbox)

    def send(self, msg_id: int, command: int, reply: Reply) -> None:
        data = header(msg_id, command, len(reply.payload), _TYPE_REPLY) + reply.payload
        if reply.fds:
            sent = self.sock.sendmsg([data], fds_ancillary(reply.fds))
            data = data[sent:]
        if data:
            self.sock.sendall(data)

    def send_error(self, msg_id: int, command: int, err: int) -> None:
        self.sock.sendall(header(msg_id, command, 0, _TYPE_REPLY | _ERROR, err))

    @staticmethod
    def _close_fds(msg: Message) -> None:
        for fd in msg.fds:
            os.close(fd)
        msg.fds = []

    # -- loop -----------------------------------------------------------------------
    def serve(self) -> None:
        """Handle messages until the client goes.

        BAR reads and writes -- the guest's MMIO, most of the traffic -- take a
        short path: no fds, a well-formed header, RUNNING; their fields are
        unpacked straight from the inbox. Anything unusual about them (bad
        bounds, wrong sizes) falls through to the general dispatch, which
        answers with the right errno.
        """
        inbox, view, sendall, function = self._inbox, self._view, self.sock.sendall, self.function
        unpack_header, unpack_access, pack_reply = HEADER.unpack_from, REGION_ACCESS.unpack_from, REGION_ACCESS_MESSAGE.pack
        counts, fill, recvmsg_into, whole_inbox = self.counts, self._fill, self.sock.recvmsg_into, [view]
        start = end = 0
        try:
            while True:
                if start == end:  # all handled: what comes next lands at the front (_fill's common case, inline)
                    start, (end, ancdata, msg_flags, _) = 0, recvmsg_into(whole_inbox, _CMSG_SPACE)
                    if ancdata or msg_flags & _MSG_CTRUNC:
                        self._note_fds(end, ancdata, msg_flags)
                    if not end:
                        raise Disconnected("client closed the connection")
                if end - start < HEADER_SIZE:
                    start, end = fill(start, end, HEADER_SIZE)
                msg_id, command, size, flags, _ = unpack_header(inbox, start)
                if size < HEADER_SIZE or size > MAX_MESSAGE_SIZE:
                    raise FramingError(f"message {msg_id} ({command_name(command)}) claims size {size}")
                if end - start < size:
                    start, end = fill(start, end, size)
                body, start = start + HEADER_SIZE, start + size
                counts["messages"] += 1
                fds, truncated = self._fds_until(start) if self._pending_fds else _NO_FDS
                if not fds and not truncated and self.state is RunState.RUNNING \
                        and (command == _REGION_READ or command == _REGION_WRITE) and not flags & ~_NO_REPLY \
                        and size >= HEADER_SIZE + _ACCESS_SIZE:
                    offset, region, count = unpack_access(inbox, body)
                    try:
                        if command == _REGION_READ and size == HEADER_SIZE + _ACCESS_SIZE and count <= MAX_DATA_XFER_SIZE:
                            data = function.region_read(region, offset, count)
                            if not flags:
                                sendall(pack_reply(msg_id, command, size + count, _TYPE_REPLY, 0, offset, region, count) + data)
                            continue
                        if command == _REGION_WRITE and size == HEADER_SIZE + _ACCESS_SIZE + count:
                            function.region_write(region, offset, bytes(view[body + _ACCESS_SIZE:start]))
                            if not flags:
                                sendall(pack_reply(msg_id, command, size - count, _TYPE_REPLY, 0, offset, region, count))
                            continue
                    except RegionAccessError:
                        pass  # answered with its errno below
                self.dispatch(Message(msg_id, command, flags, bytes(view[body:start]), list(fds), truncated))
        finally:
            self._close_pending_fds()

    def dispatch(self, msg: Message) -> None:
        """Validate and handle one message; refusals become error replies."""
        try:
            if msg.fds_truncated:
                self._close_fds(msg)
                raise ProtocolError(errno.EINVAL, f"more than {MAX_MSG_FDS} file descriptors")
            if msg.flags & MSG_TYPE_MASK:
                self._close_fds(msg)
                raise ProtocolError(errno.EINVAL, f"message type {msg.flags & MSG_TYPE_MASK} from a client")
            handler = self._handlers.get(msg.command)
            if handler is None:
                self._close_fds(msg)
                raise ProtocolError(*self._unsupported(msg.command))
            if self.state is not RunState.RUNNING and msg.command != Command.VERSION:
                self._close_fds(msg)
                raise StateError(msg.command, self.state)
            reply = handler(msg)
            if msg.wants_reply:
                self.send(msg.msg_id, msg.command, reply or Reply())
        except ErrnoError as e:  # ProtocolError, and the DMA map's and IRQ lines' refusals
            self.counts["errors"] += 1
            self.refused.warning("%s refused: %s (%s)", command_name(msg.command), e, errno.errorcode.get(e.errno, e.errno))
            if msg.wants_reply:
                self.send_error(msg.msg_id, msg.command, e.errno)

    @staticmethod
    def _unsupported(command: int) -> tuple[int, str]:
        if command in (Command.DEVICE_FEATURE,):
            return errno.ENOTTY, "device features are not supported"
        if command in (Command.DEVICE_GET_REGION_IO_FDS, Command.MIG_DATA_READ, Command.MIG_DATA_WRITE):
            return errno.ENOTSUP, f"{command_name(command)} is not supported"
        if command in (Command.DMA_READ, Command.DMA_WRITE):
            return errno.EINVAL, f"{command_name(command)} goes from server to client"
        return errno.ENOSYS, f"unknown command {command}"

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def _fixed(msg: Message, layout, what: str = "") -> tuple:
        if len(msg.payload) < layout.size:
            raise ProtocolError(errno.EINVAL,
                                f"{what or command_name(msg.command)}: payload of {len(msg.payload)} bytes, need {layout.size}")
        return layout.unpack_from(msg.payload)

    def _no_fds(self, msg: Message) -> None:
        if msg.fds:
            self._close_fds(msg)
            raise ProtocolError(errno.EINVAL, f"{command_name(msg.command)} carries no file descriptors")

    # -- handlers --------------------------------------------------------------------
    def version(self, msg: Message) -> Reply:
        self._no_fds(msg)
        if self.state is RunState.RUNNING:
            raise StateError(msg.command, self.state)
        try:
            v = Version.parse(msg.payload)
            caps = json.loads(v.caps) if v.caps else {}
        except Exception as e:
            raise ProtocolError(errno.EINVAL, f"malformed VERSION: {e}") from None
        if v.major != 0:
            raise ProtocolError(errno.ENOTSUP, f"protocol major version {v.major} (we speak 0)")
        if not isinstance(caps, dict) or not isinstance(caps.get("capabilities", {}), dict):
            raise ProtocolError(errno.EINVAL, "VERSION capabilities are not a JSON object")
        self.client_caps = caps.get("capabilities", {})
        pgsizes = self.client_caps.get("pgsizes", PGSIZES)
        if not isinstance(pgsizes, int) or not pgsizes & PGSIZES:
            raise ProtocolError(errno.EINVAL, f"client page sizes {pgsizes!r} exclude 4 KiB")
        ours = {"max_msg_fds": MAX_MSG_FDS, "max_data_xfer_size": MAX_DATA_XFER_SIZE,
                "pgsizes": PGSIZES, "max_dma_maps": MAX_DMA_MAPS}
        if self.write_multiple:
            ours["write_multiple"] = True
        self.state = RunState.RUNNING
        self.log.info("negotiated protocol 0.0 with client capabilities %s", self.client_caps)
        return Reply(Version.build(dict(major=0, minor=0, caps=json.dumps({"capabilities": ours}, separators=(",", ":")))))

    def dma_map(self, msg: Message) -> Reply:
        argsz, flags, offset, address, size = self._fixed(msg, DMA_MAP, "DMA_MAP")
        if len(msg.fds) > 1:
            self._close_fds(msg)
            raise ProtocolError(errno.EINVAL, f"DMA_MAP with {len(msg.fds)} file descriptors")
        fd = msg.fds[0] if msg.fds else None
        msg.fds = []
        if argsz < DMA_MAP.size or flags & ~int(DmaMapFlags.READ | DmaMapFlags.WRITE):
            if fd is not None:
                os.close(fd)
            raise ProtocolError(errno.EINVAL, f"DMA_MAP argsz {argsz} flags {flags:#x}")
        self.function.dma.add(address, size, bool(flags & DmaMapFlags.WRITE), fd, offset)  # DmaMapError: its errno
        self.log.debug("DMA_MAP [%#x, +%#x) %s%s", address, size, "rw" if flags & DmaMapFlags.WRITE else "ro",
                       "" if fd is not None else " (no fd)")
        return Reply()

    def dma_unmap(self, msg: Message) -> Reply:
        self._no_fds(msg)
        argsz, flags, address, size = self._fixed(msg, DMA_UNMAP, "DMA_UNMAP")
        if flags & DmaUnmapFlags.GET_DIRTY_BITMAP:
            raise ProtocolError(errno.ENOTSUP, "dirty page tracking is not supported")
        if argsz < DMA_UNMAP.size or flags & ~int(DmaUnmapFlags.ALL):
            raise ProtocolError(errno.EINVAL, f"DMA_UNMAP argsz {argsz} flags {flags:#x}")
        if flags & DmaUnmapFlags.ALL:
            if address or size:
                raise ProtocolError(errno.EINVAL, "DMA_UNMAP ALL with an address or size")
            self.function.dma.clear()
        else:
            self.function.dma.remove(address, size)
        return Reply(msg.payload[:DMA_UNMAP.size])

    def get_info(self, msg: Message) -> Reply:
        self._no_fds(msg)
        argsz, *_ = self._fixed(msg, DEVICE_INFO, "DEVICE_GET_INFO")
        if argsz < DEVICE_INFO.size:
            raise ProtocolError(errno.EINVAL, f"DEVICE_GET_INFO argsz {argsz}")
        return Reply(DEVICE_INFO.pack(DEVICE_INFO.size, DeviceFlags.RESET | DeviceFlags.PCI, NUM_REGIONS, NUM_IRQS))

    def get_region_info(self, msg: Message) -> Reply:
        self._no_fds(msg)
        argsz, _flags, index, _cap, _size, _off = self._fixed(msg, REGION_INFO, "DEVICE_GET_REGION_INFO")
        if argsz < REGION_INFO.size or index >= NUM_REGIONS:
            raise ProtocolError(errno.EINVAL, f"region index {index} argsz {argsz}")
        size = self.function.region_size(index)
        flags = RegionFlags.READ | RegionFlags.WRITE if size else 0
        caps, fds = b"", ()
        bar = self.function.bars.get(index)
        if bar is not None and bar.shared:
            flags |= RegionFlags.MMAP
            caps = SparseMmapCap.build(dict(header=dict(id=RegionCap.SPARSE_MMAP, version=1, next=0),
                                            areas=[dict(offset=o, size=s) for o, s in bar.mmap_areas]))
        full = REGION_INFO.size + len(caps)
        cap_offset = 0
        if caps and argsz >= full:
            flags |= RegionFlags.CAPS
            cap_offset = REGION_INFO.size
            fds = (self.function.shared[index].fd,)
        else:
            caps = b""
        return Reply(REGION_INFO.pack(full, flags, index, cap_offset, size, 0) + caps, fds)

    def get_irq_info(self, msg: Message) -> Reply:
        self._no_fds(msg)
        argsz, _flags, index, _count = self._fixed(msg, IRQ_INFO, "DEVICE_GET_IRQ_INFO")
        if argsz < IRQ_INFO.size or index >= NUM_IRQS:
            raise ProtocolError(errno.EINVAL, f"IRQ index {index} argsz {argsz}")
        flags = IrqInfoFlags.EVENTFD | (IrqInfoFlags.MASKABLE if index == IrqIndex.INTX else 0)
        return Reply(IRQ_INFO.pack(IRQ_INFO.size, flags, index, self.function.irq.counts[IrqIndex(index)]))

    def set_irqs(self, msg: Message) -> Reply:
        fds, msg.fds = msg.fds, []
        try:
            argsz, flags, index, start, count = self._fixed(msg, IRQ_SET, "DEVICE_SET_IRQS")
            if argsz < IRQ_SET.size:
                raise ProtocolError(errno.EINVAL, f"SET_IRQS argsz {argsz}")
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            raise
        self.function.irq.set_irqs(flags, index, start, count, fds, msg.payload[IRQ_SET.size:])  # IrqSetError
        return Reply()

    def _access(self, msg: Message) -> tuple[int, int, int]:
        offset, region, count = self._fixed(msg, REGION_ACCESS)
        if count > MAX_DATA_XFER_SIZE:
            raise ProtocolError(errno.E2BIG, f"{count} bytes exceed max_data_xfer_size")
        return offset, region, count

    def region_read(self, msg: Message) -> Reply:
        self._no_fds(msg)
        offset, region, count = self._access(msg)
        try:
            data = self.function.region_read(region, offset, count)
        except RegionAccessError as e:
            raise ProtocolError(errno.EINVAL, str(e)) from None
        return Reply(msg.payload[:REGION_ACCESS.size] + data)

    def region_write(self, msg: Message) -> Reply:
        self._no_fds(msg)
        offset, region, count = self._access(msg)
        if len(msg.payload) != REGION_ACCESS.size + count:
            raise ProtocolError(errno.EINVAL, f"REGION_WRITE of {count} bytes carries {len(msg.payload) - REGION_ACCESS.size}")
        try:
            self.function.region_write(region, offset, msg.payload[REGION_ACCESS.size:])
        except RegionAccessError as e:
            raise ProtocolError(errno.EINVAL, str(e)) from None
        return Reply(msg.payload[:REGION_ACCESS.size])

    def region_write_multi(self, msg: Message) -> Reply:
        self._no_fds(msg)
        if len(msg.payload) < WRITE_MULTI_COUNT.size:
            raise ProtocolError(errno.EINVAL, "REGION_WRITE_MULTI without a count")
        (wr_cnt,) = WRITE_MULTI_COUNT.unpack_from(msg.payload)
        entries = msg.payload[WRITE_MULTI_COUNT.size:]
        if wr_cnt > WRITE_MULTI_MAX or len(entries) != WRITE_MULTI_ENTRY.size * wr_cnt:
            raise ProtocolError(errno.EINVAL, f"REGION_WRITE_MULTI of {wr_cnt} writes in {len(msg.payload)} bytes")
        writes = []
        for i, (offset, region, count, data) in enumerate(WRITE_MULTI_ENTRY.iter_unpack(entries)):
            if not 0 < count <= len(data):
                raise ProtocolError(errno.EINVAL, f"write {i} of REGION_WRITE_MULTI has {count} bytes")
            writes.append((region, offset, data[:count]))
        for i, (region, offset, data) in enumerate(writes):
            try:
                self.function.region_write(region, offset, data)
            except RegionAccessError as e:
                raise ProtocolError(errno.EINVAL, f"write {i} of REGION_WRITE_MULTI: {e}") from None
        return Reply()

    def device_reset(self, msg: Message) -> Reply:
        self._no_fds(msg)
        self.function.reset()
        self.log.info("DEVICE_RESET")
        return Reply()


#: accept() errors that say "not now" (out of descriptors, buffers, memory)
ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_MIN_S = 0.01
ACCEPT_BACKOFF_MAX_S = 1.0


class ServerError(Exception):
    """A reason `vfnic serve` cannot start, said in one line."""


def close_unix_listener(listener: socket.socket | None, path: str) -> None:
    """Close a `listen_unix` socket and remove its file (gone already: fine)."""
    if listener is None:
        return
    listener.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def listen_unix(path: str, backlog: int) -> socket.socket:
    """A listening AF_UNIX socket at `path`, mode 0600 (its owner's alone).
    A stale socket file left by a process that died is replaced; one that
    another process serves is not. Raises ServerError with the reason."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ServerError(f"socket directory {directory} does not exist")
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # a stale socket left by a process that died
        except OSError as e:
            raise ServerError(f"{path} exists and is not a socket we can replace: {e}") from None
        else:
            raise ServerError(f"{path} is already being served by another process")
        finally:
            probe.close()
    # Bind under a temporary name and rename once listening, so that a
    # client (QEMU) that sees the socket file can always connect.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}.tmp"
    try:
        listener.bind(staging)
        os.chmod(staging, 0o600)
        listener.listen(backlog)
        os.rename(staging, path)
    except OSError as e:
        listener.close()
        if os.path.exists(staging):
            os.unlink(staging)
        raise ServerError(f"cannot create socket {path}: {e.strerror}") from None
    return listener


class Server:
    """Serves one PCI function on one AF_UNIX socket, one client at a time."""

    def __init__(self, path: str, function: PciFunction, write_multiple: bool = True, name: str = "",
                 vcpus: ClientVcpus | None = None):
        self.path, self.function, self.write_multiple = path, function, write_multiple
        #: the clients' vCPU threads' scheduling (`--vcpu-sched`), shared by a process's servers; or None
        self.vcpus = vcpus
        self.log = logging.getLogger(f"vfnic.server.{name or os.path.basename(path)}")
        self.state = RunState.CLOSED
        self.clients = 0
        self.accept_failures = 0
        self.refused = RateLimitedLog(self.log, "refused messages")
        self.connection: Connection | None = None
        self._listener: socket.socket | None = None
        self._conn_sock: socket.socket | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()

    def bind(self) -> None:
        self._listener = listen_unix(self.path, backlog=1)
        self.state = RunState.LISTENING

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        backoff = 0.0
        while not self._stopping.is_set():
            readable, _, _ = select.select([self._listener, self._wake_r], [], [])
            if self._wake_r in readable or self._stopping.is_set():
                break
            try:
                sock, _ = self._listener.accept()
            except OSError as e:
                if e.errno not in ACCEPT_RESOURCE_ERRNOS:
                    self.log.warning("accept failed: %s", e)
                    continue
                # Out of file descriptors (or memory): the pending client stays
                # queued and the listener stays readable, so retrying at once
                # would spin. Wait, longer each time, and try again.
                backoff = min(ACCEPT_BACKOFF_MAX_S, backoff * 2 or ACCEPT_BACKOFF_MIN_S)
                self.accept_failures += 1
                if self.accept_failures == 1 or backoff == ACCEPT_BACKOFF_MAX_S:
                    self.log.warning("accept failed: %s; retrying in %.2f s", e, backoff)
                select.select([self._wake_r], [], [], backoff)
                continue
            backoff = 0.0
            self.clients += 1
            self._conn_sock = sock
            self.state = RunState.NEGOTIATING
            log = self.log.getChild(f"client{self.clients}")
            pid = peer_pid(sock)
            log.info("client connected (pid %s)", pid or "unknown")
            if self.vcpus is not None:
                self.vcpus.attach(pid)
            self.connection = Connection(sock, self.function, log, self.write_multiple, self.refused)
            try:
                self.connection.serve()
            except Disconnected as e:
                log.info("%s", e)
            except FramingError as e:
                log.warning("closing the connection: %s", e)
            except OSError as e:
                log.info("connection ended: %s", e)
            finally:
                sock.close()
                self.connection.release()
                self._conn_sock = None
                if self.vcpus is not None:
                    self.vcpus.detach(pid)
                self.function.disconnect()
                log.info("client gone: released its DMA maps and eventfds")
                if not self._stopping.is_set():
                    self.state = RunState.LISTENING
        self.state = RunState.CLOSED

    @property
    def run_state(self) -> RunState:
        """Where the server is: LISTENING, CLOSED, or its client's state
        (NEGOTIATING until VERSION, then RUNNING)."""
        connection = self.connection
        if self.state is RunState.NEGOTIATING and connection is not None:
            return connection.state
        return self.state

    def stop(self) -> None:
        """Stop serving: wake the loop, close the sockets, remove the socket file."""
        self._stopping.set()
        os.write(self._wake_w, b"x")
        if self._conn_sock is not None:
            try:
                self._conn_sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """After serve_forever returned: release the listener and remove the socket file."""
        self.refused.flush()
        close_unix_listener(self._listener, self.path)
        self._listener = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
