"""Fuzz: random and mutated messages to a live server, testdev and hfi1. It
must answer every message that asks for an answer, within a deadline, and
still serve a well-formed client at the end.

VFNIC_FUZZ_MESSAGES sets the count per device (default 50 000: 10^5 in all)."""
from __future__ import annotations

import os

import pytest

from devmodel.hfi1 import chip_registers as cr
from devmodel.testdev import TESTDEV_ID
from testkit.fuzzing import fuzz_messages

MESSAGES = int(os.environ.get("VFNIC_FUZZ_MESSAGES", "50000"))


@pytest.mark.parametrize("device", ["testdev", "hfi1"])
def test_random_and_mutated_messages_neither_crash_nor_hang_the_server(serve, device):
    served = serve(device)
    outcome = fuzz_messages(served, MESSAGES)
    client = outcome.pop("client")
    # the server survived: a well-formed client sees the device, the counters add up
    assert served.thread.is_alive()
    if device == "testdev":
        assert client.read64(0, 0) == TESTDEV_ID
    else:
        assert client.read64(0, cr.CCE_REVISION) == served.model.config.revision
    assert served.server.connection.counts["messages"] > 0
    assert outcome["replies"] > MESSAGES // 2 and outcome["reconnects"] > 0
    print(f"fuzz {device}: {outcome}")
    client.close()
