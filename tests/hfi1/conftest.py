from __future__ import annotations

import pytest

from testkit.hfi1.chip import make_device
from testkit.hfi1.guest import GuestDriver


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
