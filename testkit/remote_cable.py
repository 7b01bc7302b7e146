"""Remote cables without sockets: a `ManualNetwork` joins the ends of
remote cables (devmodel/fabric/remote_cable.py) in one process with
streams whose bytes arrive as jobs on a ManualScheduler, so a scenario over
a remote cable -- two HFIs training through it, a break and a reconnect --
runs the same way every time. The TCP transport has tests of its own
(tests/test_remote_cable.py).

    network = ManualNetwork(scheduler)
    a = cable_remote(port_a, CableRole.LISTEN, ("net", 1), network.opener, scheduler.timer("a"))
    b = cable_remote(port_b, CableRole.CONNECT, ("net", 1), network.opener, scheduler.timer("b"))
    scheduler.run()            # the hellos cross
    network.cut("the cable was unplugged")   # both ends hear the stream break
    network.reconnect()        # every connecting end connects again
"""
from __future__ import annotations

from devmodel.fabric.remote_cable import CableRole, RemoteLinkEnd


class QueuedStream:
    """One side of an in-process stream: what it sends reaches the other
    side as a scheduler job; closing it closes both."""

    def __init__(self, network: "ManualNetwork", end: RemoteLinkEnd, peer: str):
        self.network = network
        self.end = end
        self.peer = peer
        self.other: QueuedStream | None = None
        self.open = True
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        if not self.open:
            return
        self.sent.append(data)
        other = self.other
        self.network.worker.submit(lambda: other.end.stream_data(other, data) if other.open else None)

    def close(self, reason: str) -> None:
        for side in (self, self.other):
            if side.open:
                side.open = False
                self.network.worker.submit(lambda s=side: s.end.stream_closed(s, reason))


class _Service:
    def __init__(self, role: CableRole, address: tuple):
        self.role, self.address = role, address
        self.closed = False

    def status(self) -> dict:
        return {"role": self.role.value, "address": f"{self.address[0]}:{self.address[1]}"}

    def close(self) -> None:
        self.closed = True


class ManualNetwork:
    def __init__(self, scheduler):
        self.worker = scheduler.timer("network")
        self.listening: dict[tuple, RemoteLinkEnd] = {}
        self.connecting: list[tuple[tuple, RemoteLinkEnd]] = []
        self.streams: list[QueuedStream] = []

    def opener(self, role: CableRole, address: tuple, end: RemoteLinkEnd) -> _Service:
        """The StreamOpener: a listening end waits at `address`, a connecting
        end connects to it at once (if one listens there)."""
        if role is CableRole.LISTEN:
            self.listening[address] = end
        else:
            self.connecting.append((address, end))
            self.connect(address, end)
        return _Service(role, address)

    def connect(self, address: tuple, end: RemoteLinkEnd) -> QueuedStream | None:
        """Open a stream from `end` to whoever listens at `address`; both
        ends are offered it (either may refuse it)."""
        listener = self.listening.get(address)
        if listener is None:
            return None
        near = QueuedStream(self, end, f"{address[0]}:{address[1]}")
        far = QueuedStream(self, listener, f"{address[0]}:client{len(self.streams)}")
        near.other, far.other = far, near
        self.streams.append(near)
        for stream in (far, near):
            if not stream.end.stream_opened(stream):
                self.worker.submit(lambda s=stream: s.close("refused"))
        return near

    def cut(self, reason: str = "the network went away") -> None:
        for stream in self.streams:
            if stream.open:
                stream.close(reason)

    def reconnect(self) -> None:
        for address, end in self.connecting:
            self.connect(address, end)
