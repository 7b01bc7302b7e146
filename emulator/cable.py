"""The remote cable's transport: one TCP connection per cable between two
`vfnic serve` processes (`--cable-listen HOST:PORT`, `--cable-connect
HOST:PORT`). What travels on it, and what it means, is the cable end's
business (devmodel/fabric/remote_cable.py, devmodel/wire/cable.py); this
module only moves bytes and keeps a connection there.

    CableListener   binds HOST:PORT at once (an error is the caller's, at
                    start-up), accepts on a thread; the end refuses a second
                    connection while one is open
    CableConnector  connects on a thread, and again after every break:
                    backoff FIRST_BACKOFF_S doubling to MAX_BACKOFF_S, back
                    to the first once a connection has lasted MAX_BACKOFF_S
    TcpStream       one connection: a reader thread hands what it reads to
                    the end (`stream_data`); a writer thread sends what the
                    end queued (`send` never blocks) and asks the end for a
                    heartbeat when it has sent nothing for HEARTBEAT_S

A stream is broken -- the end hears `stream_closed` and the link goes down
-- when the peer closes it, a read or write fails, nothing at all has
arrived for IDLE_TIMEOUT_S (a cable whose network went away: no FIN ever
comes; TCP_USER_TIMEOUT bounds unacknowledged writes the same way), or the
peer leaves more than MAX_QUEUED_BYTES unread. Times are real (the
transport is no device model); `Timing` shortens them for tests.

The stream is not authenticated: anyone who reaches the port can be the far
end. Bind to a trusted network (docs/fabric.md).
"""
from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from dataclasses import dataclass

from common.ratelog import limited
from devmodel.fabric.remote_cable import CableRole, RemoteLinkEnd

log = logging.getLogger("vfnic.cable")

HEARTBEAT_S = 1.0
IDLE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
#: bytes queued for a peer that does not read before the stream counts as broken
MAX_QUEUED_BYTES = 16 << 20
RECV_BYTES = 256 << 10
#: how long a closing stream may take to send what was queued
FLUSH_S = 2.0


@dataclass(frozen=True)
class Timing:
    heartbeat_s: float = HEARTBEAT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    first_backoff_s: float = FIRST_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S


def parse_address(text: str, listening: bool = False) -> tuple[str, int]:
    """"HOST:PORT" or "[V6]:PORT" -> (host, port); ValueError saying what is
    wrong. Port 0 (any free port) only for listening."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: the port {port!r} is not a number") from None
    if not (0 if listening else 1) <= number <= 65535:
        raise ValueError(f"{text!r}: port {number} is outside {0 if listening else 1}..65535")
    return host, number


def format_address(address: tuple) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpStream:
    """One connected socket carrying one cable (see the module docstring)."""

    def __init__(self, sock: socket.socket, peer: str, end: RemoteLinkEnd, timing: Timing, on_closed=None):
        self.sock = sock
        self.end = end
        self.timing = timing
        self.peer = peer
        self._on_closed = on_closed
        self._cond = threading.Condition()
        self._queue: list[bytes] = []
        self._queued = 0
        self._closing = False
        self._flush = False
        self._unread = 0  # set once the peer left more than MAX_QUEUED_BYTES unread
        self._accepted = False
        self.reason: str | None = None
        self.closed = threading.Event()
        self._threads_left = 0
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timing.idle_timeout_s * 1000))

    def start(self) -> "TcpStream":
        """Offer the stream to the end; a refused one is closed once the refusal is sent."""
        self._accepted = self.end.stream_opened(self)
        threads = [threading.Thread(target=self._write, name="cable-writer", daemon=True)]
        if self._accepted:
            threads.append(threading.Thread(target=self._read, name="cable-reader", daemon=True))
        self._threads_left = len(threads)
        for thread in threads:
            thread.start()
        if not self._accepted:
            self.close("refused: the cable end is already connected")
        return self

    # -- Stream (what the end calls) ----------------------------------------------------------
    def send(self, data: bytes) -> None:
        with self._cond:
            if self._closing or self._unread:
                return
            self._queue.append(data)
            self._queued += len(data)
            if self._queued > MAX_QUEUED_BYTES:
                self._unread = self._queued
            self._cond.notify()
        if self._unread:
            # The caller holds the end's lock, so the stream cannot close
            # here: cutting the socket makes the writer fail and close it.
            self._shutdown(socket.SHUT_RDWR)

    def close(self, reason: str) -> None:
        """End the stream after sending what is queued (at most FLUSH_S)."""
        self._close(reason, flush=True)

    # -- the threads ------------------------------------------------------------------------------
    def _close(self, reason: str, flush: bool) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing, self._flush, self.reason = True, flush, reason
            self._cond.notify_all()
        self._shutdown(socket.SHUT_RD)  # the reader stops at once
        if self._accepted:
            self.end.stream_closed(self, reason)
        if self._on_closed is not None:
            self._on_closed(self)

    def _read(self) -> None:
        self.sock.settimeout(self.timing.idle_timeout_s)
        try:
            while True:
                try:
                    data = self.sock.recv(RECV_BYTES)
                except TimeoutError:
                    self._close(f"nothing heard from {self.peer} for {self.timing.idle_timeout_s:g} s", flush=False)
                    return
                except OSError as e:
                    self._close(self._why(f"receiving from {self.peer} failed: {e}"), flush=False)
                    return
                if not data:
                    self._close(self._why(f"{self.peer} closed the stream"), flush=False)
                    return
                self.end.stream_data(self, data)
        finally:
            self._thread_done()

    def _write(self) -> None:
        last_sent = time.monotonic()
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        wait = last_sent + self.timing.heartbeat_s - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    if self._closing and not (self._flush and self._queue):
                        return
                    chunks, self._queue, self._queued = self._queue, [], 0
                    closing = self._closing
                if not chunks:
                    self.end.stream_idle(self)  # queues a heartbeat
                    last_sent = time.monotonic()
                    continue
                if closing:
                    self.sock.settimeout(FLUSH_S)
                try:
                    self.sock.sendall(b"".join(chunks))
                except OSError as e:
                    self._close(self._why(f"sending to {self.peer} failed: {e}"), flush=False)
                    return
                last_sent = time.monotonic()
        finally:
            self._shutdown(socket.SHUT_RDWR)
            self._thread_done()

    def _why(self, seen: str) -> str:
        """What broke the stream: `seen`, unless `send` cut it (the peer left too much unread)."""
        return f"{self.peer} left more than {self._unread} bytes unread" if self._unread else seen

    def _shutdown(self, how: int) -> None:
        try:
            self.sock.shutdown(how)
        except OSError:
            pass  # not connected any more

    def _thread_done(self) -> None:
        with self._cond:
            self._threads_left -= 1
            last = self._threads_left == 0
        if last:
            self.sock.close()
            self.closed.set()


class CableListener:
    """Waits for the far side's connection on `address` (bound at once)."""

    def __init__(self, address: tuple[str, int], end: RemoteLinkEnd, timing: Timing = Timing()):
        self.end = end
        self.timing = timing
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.create_server(address, family=family, backlog=4)
        self.address = format_address(self._sock.getsockname())
        self.accepted = 0
        self._streams: set[TcpStream] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="cable-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        backoff = 0.0
        while True:
            readable, _, _ = select.select([self._sock, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            try:
                conn, peer = self._sock.accept()
            except OSError as e:  # out of descriptors: wait rather than spin
                backoff = min(1.0, backoff * 2 or 0.01)
                limited(self, log, "failed accepts").warning("cable %s: accept failed: %s", self.address, e)
                select.select([self._wake_r], [], [], backoff)
                continue
            backoff = 0.0
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                self.accepted += 1
                stream = TcpStream(conn, format_address(peer), self.end, self.timing, on_closed=self._forget)
                self._streams.add(stream)
            stream.start()

    def _forget(self, stream: TcpStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    @property
    def streams(self) -> list[TcpStream]:
        """The connections open now (the cable's, and any being refused)."""
        with self._lock:
            return list(self._streams)

    def status(self) -> dict:
        return {"role": CableRole.LISTEN.value, "address": self.address, "accepted": self.accepted}

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            streams = list(self._streams)
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        for stream in streams:
            stream.close("this vfnic serve is stopping")
        for stream in streams:
            stream.closed.wait(FLUSH_S + 1)


class CableConnector:
    """Connects to the far side at `address`, and again after every break."""

    def __init__(self, address: tuple[str, int], end: RemoteLinkEnd, timing: Timing = Timing()):
        self.end = end
        self.timing = timing
        self.host, self.port = address
        self.address = format_address(address)
        self.attempts = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._stream: TcpStream | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cable-connector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = self.timing.first_backoff_s
        while not self._stop.is_set():
            self.attempts += 1
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timing.connect_timeout_s)
            except OSError as e:
                self.last_error = str(e)
                limited(self, log, "failed connections").warning(
                    "cable: cannot connect to %s: %s; trying again in %.1f s", self.address, e, backoff)
            else:
                sock.settimeout(None)
                stream = TcpStream(sock, self.address, self.end, self.timing)
                with self._lock:
                    if self._stop.is_set():
                        sock.close()
                        return
                    self._stream = stream
                started = time.monotonic()
                stream.start()
                while not stream.closed.wait(0.5) and not self._stop.is_set():
                    pass
                self.last_error = stream.reason
                if time.monotonic() - started >= self.timing.max_backoff_s:
                    backoff = self.timing.first_backoff_s  # it worked for a while: try again at once
            if self._stop.wait(backoff):
                return
            backoff = min(self.timing.max_backoff_s, backoff * 2)

    @property
    def stream(self) -> TcpStream | None:
        """The latest connection (open or not)."""
        with self._lock:
            return self._stream

    def status(self) -> dict:
        return {"role": CableRole.CONNECT.value, "address": self.address, "attempts": self.attempts,
                "last_error": self.last_error}

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close("this vfnic serve is stopping")
            stream.closed.wait(FLUSH_S + 1)
        self._thread.join(timeout=self.timing.connect_timeout_s + 1)


def open_tcp(role: CableRole, address: tuple[str, int], end: RemoteLinkEnd,
             timing: Timing = Timing()) -> CableListener | CableConnector:
    """The remote cable's StreamOpener (devmodel/fabric/remote_cable.py):
    listen at `address` (OSError now if it cannot be bound) or connect to it."""
    if role is CableRole.LISTEN:
        return CableListener(address, end, timing)
    return CableConnector(address, end, timing)
