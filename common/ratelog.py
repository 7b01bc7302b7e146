"""A log for lines a client or a guest can repeat without end.

A hostile vfio-user client can send a million bad messages, a guest can write
random values all over BAR0: one WARNING line each floods the log. A
`RateLimitedLog` writes the first `burst` lines of one kind as they come, then
holds the rest back and writes at most one summary line per `interval`
seconds, when the next one arrives (or on `flush()`):

    refused = RateLimitedLog(log, "refused messages")
    refused.warning("%s refused: %s", name, why)

    WARNING ... DMA_MAP refused: ...                      (the first 10)
    WARNING ... and 12345 more refused messages in 60 s (12355 in all), the latest: DMA_MAP refused: ...

`count` is every event seen, logged or not; the caller's own stats keep
what it counts per event (offsets, messages).

`limited(owner, log, kind)` is the one an object makes on first use, so a
call site turns into a rate-limited one without a constructor change, and
`counts(*owners)` is what a device's `stats()` reports of them, and
`flush(*owners)` writes what they hold back when the device closes:

    limited(self, self.log, "accesses outside BAR0").warning("BAR%d access ...", bar)
    counts(self, *self.blocks)   # {"accesses outside BAR0": 3, ...}
    flush(self, *self.blocks)    # at close: "... and 12 more accesses outside BAR0 ..."
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

#: lines of one kind written as they come, before the summaries
BURST = 10
#: seconds between two summary lines of one kind
INTERVAL_S = 60.0


class RateLimitedLog:
    """The first `burst` events of one kind, then one summary per `interval` seconds."""

    def __init__(self, log: logging.Logger, kind: str, burst: int = BURST, interval: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.log, self.kind, self.burst, self.interval, self.clock = log, kind, burst, interval, clock
        self.count = 0  # events seen
        self.held = 0  # events since the last line written
        self._since = clock()  # when the last line was written (or the log was made)
        self._latest: tuple[int, str, tuple] | None = None
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: object) -> None:
        self._event(logging.WARNING, msg, args)

    def error(self, msg: str, *args: object, exc_info: bool = False) -> None:
        """`exc_info`: with the traceback (only ever on one of the first lines)."""
        self._event(logging.ERROR, msg, args, exc_info)

    def _event(self, level: int, msg: str, args: tuple, exc_info: bool = False) -> None:
        with self._lock:
            self.count += 1
            if self.count <= self.burst:
                self._since = self.clock()
                self.log.log(level, msg, *args, exc_info=exc_info, stacklevel=3)
                return
            self.held += 1
            self._latest = (level, msg, args)
            if self.clock() - self._since >= self.interval:
                self._summary()

    def flush(self) -> None:
        """Write the summary of what is held back now (at close), if anything is."""
        with self._lock:
            if self.held:
                self._summary()

    def _summary(self) -> None:
        level, msg, args = self._latest
        now = self.clock()
        self.log.log(level, "... and %d more %s in %.0f s (%d in all), the latest: " + msg,
                     self.held, self.kind, now - self._since, self.count, *args, stacklevel=4)
        self.held, self._since = 0, now


_limiters: dict[int, dict[str, RateLimitedLog]] = {}  # by id(owner): an owner's equality is its own business
_limiters_lock = threading.RLock()  # an owner collected while the lock is held forgets its limiters in this thread


def _forget(key: int) -> None:
    with _limiters_lock:
        _limiters.pop(key, None)


def limited(owner: object, log: logging.Logger, kind: str) -> RateLimitedLog:
    """`owner`'s rate-limited log for lines of `kind`, made on first use and
    forgotten with the owner."""
    with _limiters_lock:
        kinds = _limiters.get(id(owner))
        if kinds is None:
            kinds = _limiters[id(owner)] = {}
            weakref.finalize(owner, _forget, id(owner))
        if kind not in kinds:
            kinds[kind] = RateLimitedLog(log, kind)
        return kinds[kind]


def counts(*owners: object) -> dict[str, int]:
    """Events seen per kind by the limiters `limited` made for `owners`,
    logged or held back alike (kinds of several owners add up)."""
    totals: dict[str, int] = {}
    with _limiters_lock:
        for owner in owners:
            for kind, limiter in _limiters.get(id(owner), {}).items():
                totals[kind] = totals.get(kind, 0) + limiter.count
    return dict(sorted(totals.items()))


def flush(*owners: object) -> None:
    """Write the summaries the limiters `limited` made for `owners` hold back
    (a device's close: what it saw last is not lost with it)."""
    with _limiters_lock:
        limiters = [limiter for owner in owners for limiter in _limiters.get(id(owner), {}).values()]
    for limiter in limiters:
        limiter.flush()
