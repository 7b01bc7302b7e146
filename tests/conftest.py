"""Fixtures that run a vfio-user server in-process and connect the project's client."""
from __future__ import annotations

import os
import threading

import pytest

from devmodel import registry
from emulator.client import Client, GuestMemory
from emulator.pci.function import PciFunction
from emulator.server import Server


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


@pytest.fixture
def serve(tmp_path):
    served: list[ServedDevice] = []

    def start(device: str = "testdev") -> ServedDevice:
        s = ServedDevice(os.path.join(tmp_path, f"{device}-{len(served)}.sock"), device)
        served.append(s)
        return s

    yield start
    for s in served:
        s.stop()


@pytest.fixture
def testdev(serve) -> ServedDevice:
    return serve("testdev")


@pytest.fixture
def client(testdev):
    c = testdev.client()
    yield c
    c.close()


@pytest.fixture
def guest_ram():
    mem = GuestMemory(2 << 20)
    yield mem
    mem.close()
