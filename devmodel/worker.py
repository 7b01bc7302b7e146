"""A device model's own thread for work that silicon does in the background
(DMA engines, link training, timers), so the transport's message handler only
does the register access itself.

    worker = Worker("testdev")
    worker.submit(fn)             # run soon, in order
    job = worker.after(0.01, fn)  # run once the delay has passed ...
    job.cancel()                  # ... unless cancelled first
    worker.settle(1.0)            # wait until every job due within 1 s has run
    worker.stop()

Jobs run one at a time; an exception in a job is logged, never kills the thread.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable


class Job:
    """A scheduled piece of work; `cancel()` keeps it from running."""

    __slots__ = ("deadline", "fn", "cancelled")

    def __init__(self, deadline: float, fn: Callable[[], None]):
        self.deadline, self.fn, self.cancelled = deadline, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Worker:
    def __init__(self, name: str):
        self.log = logging.getLogger(f"vfnic.{name}.worker")
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._idle = True
        self._thread = threading.Thread(target=self._run, name=f"{name}-worker", daemon=True)
        self._thread.start()

    def after(self, delay: float, fn: Callable[[], None]) -> Job:
        job = Job(time.monotonic() + delay, fn)
        with self._cond:
            if self._stopped:
                job.cancel()
                return job
            heapq.heappush(self._queue, (job.deadline, next(self._seq), job))
            self._cond.notify_all()
        return job

    def submit(self, fn: Callable[[], None]) -> Job:
        return self.after(0.0, fn)

    def cancel_all(self) -> None:
        """Drop every job not yet started (device reset)."""
        with self._cond:
            for _, _, job in self._queue:
                job.cancel()
            self._queue.clear()
            self._cond.notify_all()

    def settle(self, within: float = 0.0, timeout: float = 5.0) -> bool:
        """Wait until no job is running and none due within `within` seconds
        from now is left; False if that is not so `max(within, timeout)` seconds
        from now. For tests, tools and orderly shutdown."""
        start = time.monotonic()
        horizon, deadline = start + within, start + max(within, timeout)
        with self._cond:
            while not self._idle or any(not job.cancelled and job.deadline <= horizon for _, _, job in self._queue):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self.cancel_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._queue or self._queue[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._queue else self._queue[0][0] - time.monotonic())
                if self._stopped:
                    return
                _, _, job = heapq.heappop(self._queue)
                if job.cancelled:
                    continue
                self._idle = False
            try:
                job.fn()
            except Exception:
                self.log.exception("background job failed")
            finally:
                with self._cond:
                    self._idle = True
                    self._cond.notify_all()
