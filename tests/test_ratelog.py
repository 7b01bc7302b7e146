"""common/ratelog.py: a kind of line a client or a guest repeats without end
writes its first lines, then one summary per interval, with exact counts."""
from __future__ import annotations

import gc
import logging

import pytest

from common.ratelog import RateLimitedLog, counts, flush, limited


class ManualClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.WARNING, logger="test.ratelog")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "test.ratelog"]


def make(clock, burst=10, interval=60.0):
    return RateLimitedLog(logging.getLogger("test.ratelog"), "refused messages", burst, interval, clock)


def test_n_plus_k_events_write_n_lines_then_one_summary_per_interval_with_exact_counts(lines):
    clock = ManualClock()
    refused = make(clock)
    for i in range(10 + 12345):
        refused.warning("message %d refused", i)
    assert lines() == [f"message {i} refused" for i in range(10)], "held back until the interval has passed"
    clock.now += 60.0
    refused.warning("message %d refused", 12355)
    assert lines()[10:] == ["... and 12346 more refused messages in 60 s (12356 in all), the latest: message 12355 refused"]
    for i in range(5):
        clock.now += 1.0
        refused.warning("message %d refused", 12356 + i)
    assert len(lines()) == 11, "one summary per interval"
    clock.now += 60.0
    refused.warning("message %d refused", 12361)
    assert lines()[11] == "... and 6 more refused messages in 65 s (12362 in all), the latest: message 12361 refused"
    assert refused.count == 12362 and refused.held == 0


def test_flush_writes_what_is_held_back_and_nothing_when_nothing_is(lines):
    refused = make(ManualClock(), burst=2)
    refused.flush()
    for i in range(5):
        refused.error("bad %d", i)
    refused.flush()
    refused.flush()
    assert lines() == ["bad 0", "bad 1", "... and 3 more refused messages in 0 s (5 in all), the latest: bad 4"]


def test_the_lines_keep_their_level_and_name_the_caller(caplog):
    caplog.set_level(logging.WARNING, logger="test.ratelog")
    refused = make(ManualClock())
    refused.error("bad")
    refused.warning("odd")
    here = "test_the_lines_keep_their_level_and_name_the_caller"
    assert [(r.levelno, r.funcName) for r in caplog.records] == [(logging.ERROR, here), (logging.WARNING, here)]


def test_limited_is_one_log_per_owner_and_kind_and_goes_with_its_owner():
    class Owner:
        pass

    log = logging.getLogger("test.ratelog")
    a, b = Owner(), Owner()
    assert limited(a, log, "x") is limited(a, log, "x")
    assert limited(a, log, "x") is not limited(a, log, "y")
    assert limited(a, log, "x") is not limited(b, log, "x"), "a new device starts with a fresh burst"
    limited(a, log, "x").warning("one")
    assert limited(a, log, "x").count == 1
    del a
    gc.collect()
    assert limited(Owner(), log, "x").count == 0


def test_counts_add_up_each_kind_over_the_owners_logged_or_held_back():
    class Owner:
        pass

    log = logging.getLogger("test.ratelog")
    chip, block, stranger = Owner(), Owner(), Owner()
    for _ in range(25):  # beyond the burst: most are held back, all are counted
        limited(block, log, "undeclared offsets").warning("write of undeclared offset")
    limited(chip, log, "undeclared offsets").warning("once more")
    limited(chip, log, "accesses outside BAR0").warning("BAR2")
    limited(stranger, log, "accesses outside BAR0").warning("not ours")
    assert counts(chip, block) == {"accesses outside BAR0": 1, "undeclared offsets": 26}
    assert counts() == {}


def test_flush_of_owners_writes_every_held_back_summary_of_theirs_only(lines):
    class Owner:
        pass

    log = logging.getLogger("test.ratelog")
    chip, block, stranger = Owner(), Owner(), Owner()
    for n in range(12):
        limited(block, log, "undeclared offsets").warning("write %d of an undeclared offset", n)
        limited(stranger, log, "undeclared offsets").warning("not ours %d", n)
    limited(chip, log, "accesses outside BAR0").warning("BAR2")  # within its burst: nothing held
    before = len(lines())
    flush(chip, block)
    assert lines()[before:] == ["... and 2 more undeclared offsets in 0 s (12 in all), "
                                "the latest: write 11 of an undeclared offset"]
    flush(chip, block)
    assert len(lines()) == before + 1, "a flushed summary is written once"
