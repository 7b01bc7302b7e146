"""Waiting for a condition, with a deadline and a useful error.

Every wait in vfnic's host tooling goes through `wait_until`: a guest booting
under TCG, a server creating its socket, QEMU exiting after power-off. A bare
`time.sleep(n)` either wastes time or fails at random on a loaded machine; a
polled condition with a deadline does neither, and its error says what was
awaited and, through `explain`, what was seen instead.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The awaited condition did not hold before the deadline."""


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock, passed down through nested waits so a
    caller's budget is shared rather than each step getting a fresh one."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> "Deadline":
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at


def as_deadline(deadline: "Deadline | float") -> Deadline:
    """Accept either a `Deadline` or a number of seconds from now."""
    return deadline if isinstance(deadline, Deadline) else Deadline.after(deadline)


def wait_until(
    condition: Callable[[], T],
    deadline: "Deadline | float",
    what: str,
    interval: float = 0.02,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll `condition` until it returns a truthy value and return that value.

    `condition` may raise to abort the wait early (e.g. "the process died"),
    which is how callers turn a hopeless wait into an immediate, specific
    error. The interval grows to 0.25 s so long waits stay cheap.
    """
    deadline = as_deadline(deadline)
    while True:
        value = condition()
        if value:
            return value
        if deadline.expired():
            detail = f": {explain()}" if explain else ""
            raise DeadlineExceeded(f"timed out waiting for {what}{detail}")
        time.sleep(min(interval, deadline.remaining()))
        interval = min(interval * 1.5, 0.25)
