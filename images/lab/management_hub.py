"""A management Ethernet for more than two guests: a hub on the host.

    hub = ManagementHub(directory, count=4).start()
    guests = [Guest(..., management=port) for port in hub.ports]   # 10.77.0.1 .. 10.77.0.4
    ...
    hub.close()

Each guest's management NIC is a QEMU `-netdev dgram` on a unix datagram
socket of its own (as `ManagementPort.pair` does for two guests) whose remote
end is the hub's socket; a thread relays every frame it receives to every
other member, as an Ethernet hub repeats frames out of every port but the one
they came in on. No root, no bridge, no tap, no multicast route: only unix
sockets in `directory`. Traffic is small (the RDMA tools' out-of-band
exchanges), so one Python thread is plenty.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
from pathlib import Path

from images.lab.vm import ManagementPort

log = logging.getLogger("vfnic.lab.hub")
MAX_FRAME = 65536


class ManagementHub:
    def __init__(self, directory: Path, count: int, subnet: str = "10.77.0"):
        if not 1 <= count <= 250:
            raise ValueError("a management hub has 1..250 members")
        directory = Path(directory)
        self.path = directory / "mgmt-hub.net"
        self.ports = [ManagementPort(directory / f"mgmt-{i}.net", self.path, f"52:54:00:76:66:{i + 1:02x}",
                                     f"{subnet}.{i + 1}/24") for i in range(count)]
        self.members = [str(port.local) for port in self.ports]
        self.frames = 0
        self.undelivered = 0
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> "ManagementHub":
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.path.unlink(missing_ok=True)
        self._socket.bind(str(self.path))
        self._thread = threading.Thread(target=self._relay, name="management-hub", daemon=True)
        self._thread.start()
        return self

    def _relay(self) -> None:
        sock = self._socket
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.25)
            if not ready:
                continue
            try:
                frame, sender = sock.recvfrom(MAX_FRAME)
            except OSError:
                continue
            self.frames += 1
            for member in self.members:
                if member == sender:
                    continue
                try:
                    sock.sendto(frame, socket.MSG_DONTWAIT, member)
                except OSError:  # not started, gone, or not reading: a hub does not wait
                    self.undelivered += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "ManagementHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m images.lab.management_hub DIR COUNT`: run a hub for COUNT
    guests in DIR until interrupted; prints each guest's NIC arguments."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m images.lab.management_hub", description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("count", type=int)
    args = parser.parse_args(argv)
    with ManagementHub(args.directory, args.count) as hub:
        for i, port in enumerate(hub.ports):
            print(f"guest {i} ({port.address}): {' '.join(port.qemu_args())}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
