from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hfi1_fakes import make_device
from hfi1_guest import GuestDriver


@pytest.fixture
def device_and_host():
    device, host = make_device()
    yield device, host
    device.close()


@pytest.fixture
def device(device_and_host):
    return device_and_host[0]


@pytest.fixture
def host(device_and_host):
    return device_and_host[1]


@pytest.fixture
def driver(device, host) -> GuestDriver:
    return GuestDriver(device, host)
