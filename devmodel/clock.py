"""Where device models get the time from.

Silicon does things after a while: a link trains in 100 ms, an SDMA engine
halts in microseconds, a receive interrupt waits out its coalescing timer.
Models never read the system clock themselves; they schedule work on their
worker (`devmodel/worker.py`), whose clock is one of these:

    MonotonicClock   the host's monotonic clock: `vfnic serve`, guest tests
    ManualClock      a clock that moves only when a test moves it, so
                     scenarios with several devices run the same way every time

Both give seconds as a float.
"""
from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    """Real time (`time.monotonic`)."""

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """Time that stands still until `advance` (or a scheduler) moves it."""

    def __init__(self, start: float = 0.0):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds
            return self._now

    def advance_to(self, when: float) -> None:
        with self._lock:
            if when > self._now:
                self._now = when
