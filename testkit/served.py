"""A vfio-user server for one device model on a thread of this process, and
the project's client to it (tests, and benchmarks/soak)."""
from __future__ import annotations

import threading

from devmodel import registry
from emulator.pci.function import PciFunction
from emulator.server import Server
from testkit.client import Client


class ServedDevice:
    """A server for one device model, running on a thread of this process."""

    def __init__(self, path: str, device: str):
        self.path = path
        self.function = PciFunction(registry.create(device))
        self.server = Server(path, self.function)
        self.server.bind()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def model(self):
        return self.function.model

    def client(self, connect: bool = True, timeout: float = 5.0) -> Client:
        client = Client(self.path, timeout).open()
        if connect:
            client.connect()
        return client

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "server thread did not stop"
        self.server.close()
        self.function.close()
