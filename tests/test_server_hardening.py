"""The host side under pressure: the socket's permissions, running out of file
descriptors, a device model that raises on the transport's thread, and a
client whose refused messages would flood the log."""
from __future__ import annotations

import errno
import gc
import logging
import os
import stat
import time

import pytest

from common.ratelog import BURST
from devmodel.testdev import SCRATCH, TESTDEV_ID
from emulator.protocol import Command
from testkit.client import VfioUserError

BAR0 = 0


def wait_until(condition, deadline_s: float = 5.0, what: str = "") -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.005)


def test_the_socket_file_is_its_owners_alone(testdev):
    mode = os.stat(testdev.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


class ExhaustedListener:
    """The server's listener while the process is out of file descriptors:
    readable (a client is queued) but accept() fails with EMFILE."""

    def __init__(self, real):
        self.real, self.failing, self.attempts = real, True, []

    def fileno(self):
        return self.real.fileno()

    def accept(self):
        if self.failing:
            self.attempts.append(time.monotonic())
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()

    def close(self):
        self.real.close()


def test_running_out_of_descriptors_backs_off_instead_of_spinning_and_recovers(serve, caplog):
    served = serve("testdev")
    listener = ExhaustedListener(served.server._listener)
    with caplog.at_level(logging.WARNING, logger="vfnic.server"):
        served.server._listener = listener
        client = served.client(connect=False)  # queued in the backlog: the listener turns readable
        wait_until(lambda: len(listener.attempts) >= 5, what="five accept attempts")
    gaps = [b - a for a, b in zip(listener.attempts, listener.attempts[1:])]
    # 10, 20, 40, 80 ms: a loop that retried at once would make thousands of attempts
    assert sum(gaps[:4]) >= 0.14, f"accept retried after {gaps} s"
    assert "accept failed: [Errno 24] Too many open files; retrying" in caplog.text
    listener.failing = False
    client.connect()  # the queued client is served once descriptors are back
    assert client.read64(BAR0, 0) == TESTDEV_ID
    client.close()


def test_a_model_that_raises_on_the_transport_thread_is_contained(testdev, caplog, monkeypatch):
    client = testdev.client()
    model = testdev.model

    def broken(bar, offset, size, *value):
        raise RuntimeError("a bug in the model")
    with caplog.at_level(logging.ERROR, logger="vfnic.pci"):
        monkeypatch.setattr(model, "bar_read", broken)
        monkeypatch.setattr(model, "bar_write", broken)
        assert client.read64(BAR0, SCRATCH) == (1 << 64) - 1, "a failed function reads as all ones"
        client.write64(BAR0, SCRATCH, 0x1234)
    assert testdev.function.model_errors == 2
    assert "device model testdev raised during the read of BAR0" in caplog.text
    assert "RuntimeError: a bug in the model" in caplog.text
    monkeypatch.undo()
    assert client.read64(BAR0, 0) == TESTDEV_ID, "the server keeps serving"
    client.close()


def test_an_hfi1_error_on_the_transport_thread_freezes_the_chip_and_serving_goes_on(serve, caplog):
    from devmodel.hfi1 import chip_registers as cr
    served = serve("hfi1")
    client = served.client()
    device = served.model

    def broken(offset, size, value):
        raise RuntimeError("a bug in a PIO write")
    with caplog.at_level(logging.ERROR):
        device.windows = tuple(w.__class__(w.name, w.start, w.end, w.read, broken) if w.name == "PIO send buffers"
                               else w for w in device.windows)
        client.write64(BAR0, 0x2000000, 0)  # a PIO store, handled on the server's thread
    assert "internal error in block" in caplog.text and "a bug in a PIO write" in caplog.text
    assert client.read64(BAR0, cr.CCE_STATUS) & 0xF == 0xF, "SPC frozen: the driver's freeze recovery starts"
    assert client.read64(BAR0, cr.CCE_REVISION) == device.config.revision
    client.close()


def test_refused_messages_log_their_first_lines_then_a_summary_and_are_all_counted(testdev, caplog):
    client = testdev.client()
    with caplog.at_level(logging.WARNING, logger="vfnic.server"):
        for _ in range(BURST + 990):
            with pytest.raises(VfioUserError):
                client.request(Command.DEVICE_FEATURE)
        testdev.server.refused.flush()  # at close; the interval has not passed
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused[:BURST] == ["DEVICE_FEATURE refused: device features are not supported (ENOTTY)"] * BURST
    assert refused[BURST:] == ["... and 990 more refused messages in 0 s (1000 in all), the latest: "
                               "DEVICE_FEATURE refused: device features are not supported (ENOTTY)"]
    assert testdev.server.connection.counts["errors"] == 1000
    assert testdev.server.refused.count == 1000, "the server's count across its clients (stats: refused_messages)"
    client.close()


def test_a_guest_touching_many_undeclared_offsets_logs_a_few_and_counts_each(testdev, caplog):
    client = testdev.client()
    with caplog.at_level(logging.WARNING, logger="vfnic"):
        for i in range(100):
            client.write64(BAR0, 0x800 + 8 * i, i)
        client.read64(BAR0, 0)  # the posted writes are done
    lines = [r.getMessage() for r in caplog.records if "undeclared offset" in r.getMessage()]
    assert len(lines) == BURST and lines[0].startswith("testdev: write of undeclared offset 0x800")
    assert testdev.model.stats()["undeclared_csr_accesses"] == 100


def test_a_client_gone_gives_back_its_inbox_at_once_not_when_the_collector_runs(testdev):
    """Guest after guest on one server (guest-tests/test_soak.py): each
    connection's inbox (MAX_MESSAGE_SIZE bytes) is released when its client
    goes, though the connection's handler table is a reference cycle."""
    gc.disable()  # it must not take the collector
    try:
        for _ in range(3):
            client = testdev.client()
            assert client.read64(BAR0, 0) == TESTDEV_ID
            connection = testdev.server.connection
            assert len(connection._inbox) > 0
            client.close()
            wait_until(lambda c=connection: testdev.server.connection is not c or len(c._inbox) == 0,
                       what="the connection to end")
            wait_until(lambda c=connection: len(c._inbox) == 0, what="the inbox given back")
    finally:
        gc.enable()
