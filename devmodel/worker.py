"""A device model's own thread for work that silicon does in the background
(DMA engines, link training, timers), so the transport's message handler only
does the register access itself.

    worker = Worker("testdev")
    worker.submit(fn)          # run soon, in order
    worker.after(0.01, fn)     # run once the delay has passed
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


class Worker:
    def __init__(self, name: str):
        self.log = logging.getLogger(f"vfnic.{name}.worker")
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._idle = True
        self._thread = threading.Thread(target=self._run, name=f"{name}-worker", daemon=True)
        self._thread.start()

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._queue, (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def submit(self, fn: Callable[[], None]) -> None:
        self.after(0.0, fn)

    def cancel_all(self) -> None:
        """Drop every job not yet started (device reset)."""
        with self._cond:
            self._queue.clear()

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until no job is due now or running. For tests and orderly shutdown."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._idle or (self._queue and self._queue[0][0] <= time.monotonic()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.01))
            return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._queue or self._queue[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._queue else self._queue[0][0] - time.monotonic())
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._queue)
                self._idle = False
            try:
                fn()
            except Exception:
                self.log.exception("background job failed")
            finally:
                with self._cond:
                    self._idle = True
                    self._cond.notify_all()
