"""Fixtures that run a vfio-user server in-process and connect the project's client."""
from __future__ import annotations

import os

import pytest

from testkit.client import GuestMemory
from testkit.served import ServedDevice


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
