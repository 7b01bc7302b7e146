"""Where device models' background work runs: what silicon does on its own
(DMA engines, packet delivery, link training, timers), so that the
transport's message handler only does the register access itself.

    worker = scheduler.worker("hfi1_0")   # one device's handle
    worker.submit(fn)             # run soon, in order
    job = worker.after(0.01, fn)  # run once the delay has passed ...
    job.cancel()                  # ... unless cancelled first
    worker.settle(1.0)            # wait until every job due within 1 s has run
    worker.stop()

A scheduler keeps one queue of jobs, in deadline order (ties in submission
order), for every device that shares it; devices get a handle each. Two kinds:

    ThreadScheduler   a thread of its own on the host's monotonic clock: what
                      `vfnic serve` runs, one for all the devices of a
                      process, so a packet from one HFI to its peer is an
                      event in the same queue, not a hand-off between threads
                      (which costs a scheduler time slice when guests keep
                      every core busy)
    ManualScheduler   no thread: jobs run on the caller's thread when it calls
                      `run()` or `advance()`, on a ManualClock, so multi-device
                      scenarios are the same on every run

`Worker(name)` is a ThreadScheduler with a single handle, for a device that
stands alone. Jobs run one at a time. An exception in a job is logged and the
scheduler goes on; device models catch their own exceptions first and turn
them into the chip's error state (see `Hfi1Device.hardware_event`), so this is
a last resort.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from common.threads import name_native_thread
from devmodel.clock import Clock, ManualClock, MonotonicClock


class Job:
    """A scheduled piece of work; `cancel()` keeps it from running."""

    __slots__ = ("deadline", "fn", "cancelled", "owner")

    def __init__(self, deadline: float, fn: Callable[[], None], owner: object = None):
        self.deadline, self.fn, self.cancelled, self.owner = deadline, fn, False, owner

    def cancel(self) -> None:
        self.cancelled = True


class _Scheduler:
    """The queue both kinds share."""

    def __init__(self, clock: Clock, name: str):
        self.clock = clock
        self.name = name
        self.log = logging.getLogger(f"vfnic.scheduler.{name}")
        self._cond = threading.Condition(threading.RLock())
        self._queue: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._running: Job | None = None
        #: threads inside `_cond.wait` (the engine thread, settle() callers),
        #: counted under the lock: a push or a finished job notifies only
        #: when someone waits (most pushes come from the engine thread itself)
        self._waiters = 0
        self.jobs_run = 0
        #: seconds jobs started after their deadline, summed (a submitted job's
        #: wait for the engine thread to wake and reach it)
        self.late_s = 0.0

    def worker(self, name: str) -> "ScheduledWorker":
        handle = ScheduledWorker(self, name)
        self._attach(handle)
        return handle

    def timer(self, name: str) -> "ScheduledWorker":
        """A handle for something that lives only as long as the devices do
        (a link's delayed deliveries): it does not keep the scheduler's
        thread alive, and its jobs are dropped once that thread stops."""
        return ScheduledWorker(self, name)

    def _attach(self, handle: "ScheduledWorker") -> None:
        pass

    def _release(self, handle: "ScheduledWorker") -> None:
        pass

    def _push(self, job: Job) -> None:
        with self._cond:
            self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        """Queue `job` (called with the lock held)."""
        heapq.heappush(self._queue, (job.deadline, next(self._seq), job))
        if self._waiters:
            self._cond.notify_all()  # the engine thread, whatever settle() waiters also wait

    def _wait(self, timeout: float | None = None) -> None:
        """`_cond.wait`, counted in `_waiters` (called with the lock held)."""
        self._waiters += 1
        try:
            self._cond.wait(timeout)
        finally:
            self._waiters -= 1

    def _cancel_owner(self, owner: object) -> None:
        with self._cond:
            for _, _, job in self._queue:
                if job.owner is owner:
                    job.cancel()
            self._cond.notify_all()

    def _busy(self, owner: object, horizon: float) -> bool:
        """`owner` has a job running, or one due by `horizon` (under the lock)."""
        if self._running is not None and self._running.owner is owner:
            return True
        return any(job.owner is owner and not job.cancelled and job.deadline <= horizon for _, _, job in self._queue)

    def pending(self, owner: object = None) -> int:
        with self._cond:
            return sum(1 for _, _, job in self._queue if not job.cancelled and (owner is None or job.owner is owner))

    def _execute(self, job: Job) -> None:
        try:
            job.fn()
        except Exception:
            self.log.exception("job of %s failed", getattr(job.owner, "name", "?"))


class ThreadScheduler(_Scheduler):
    """Runs jobs on its own thread as they fall due (real time)."""

    def __init__(self, name: str = "engines"):
        super().__init__(MonotonicClock(), name)
        self._stopped = False
        self._handles: set[int] = set()
        self._thread = threading.Thread(target=self._run, name=f"{name}-worker", daemon=True)
        self._thread.start()

    def _push(self, job: Job) -> None:
        with self._cond:
            if self._stopped:
                job.cancel()
                return
            self._enqueue(job)

    def _attach(self, handle: "ScheduledWorker") -> None:
        with self._cond:
            self._handles.add(id(handle))

    def _release(self, handle: "ScheduledWorker") -> None:
        """The thread ends with the last device that uses it."""
        with self._cond:
            self._handles.discard(id(handle))
            last = not self._handles
        if last:
            self.stop()

    def settle(self, owner: object, within: float, timeout: float) -> bool:
        start = time.monotonic()
        horizon, deadline = start + within, start + max(within, timeout)
        with self._cond:
            while self._busy(owner, horizon):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wait(min(remaining, 0.05))
            return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            for _, _, job in self._queue:
                job.cancel()
            self._queue.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        name_native_thread(self.name)
        cond, queue = self._cond, self._queue
        done = None
        while True:
            with cond:  # one acquisition both ends the last job and takes the next
                if done is not None:
                    self._running = None
                    self.jobs_run += 1
                    if self._waiters:
                        cond.notify_all()  # settle() waiters
                while True:
                    if self._stopped:
                        return
                    if queue:
                        deadline, _, job = queue[0]
                        if job.cancelled:
                            heapq.heappop(queue)
                            continue
                        wait = deadline - time.monotonic()
                        if wait <= 0:
                            heapq.heappop(queue)
                            self.late_s -= wait
                            break
                        self._wait(wait)
                    else:
                        self._wait()
                self._running = job
            self._execute(job)
            done = job


class ManualScheduler(_Scheduler):
    """Deterministic time for tests: every device that shares this scheduler
    gets a `worker(name)`, and nothing runs until the test says so.

        scheduler = ManualScheduler()
        a = Hfi1Device(config_a, worker=scheduler.worker("a"))
        ...
        scheduler.run()            # everything due now, including what it schedules
        scheduler.advance(0.1)     # move the clock, running jobs as they fall due
        scheduler.run_until_idle() # jump from deadline to deadline until nothing is left

    Jobs run on the calling thread. A job that itself calls `run()` (through a
    worker's `settle`) does not recurse: the outer call carries on.
    """

    def __init__(self, clock: ManualClock | None = None, max_jobs: int = 1_000_000):
        super().__init__(clock or ManualClock(), "manual")
        self.max_jobs = max_jobs

    def run(self, until: float | None = None) -> int:
        """Run every job due by `until` (default: now), in order, including
        jobs those jobs schedule; the clock moves to each job's deadline.
        Returns the number of jobs run."""
        with self._cond:
            if self._running is not None:
                return 0
        limit = self.clock.now() if until is None else until
        ran = 0
        while True:
            with self._cond:
                while self._queue and self._queue[0][2].cancelled:
                    heapq.heappop(self._queue)
                if not self._queue or self._queue[0][0] > limit:
                    break
                deadline, _, job = heapq.heappop(self._queue)
                self._running = job
            self.clock.advance_to(deadline)
            ran += 1
            try:
                if ran > self.max_jobs:
                    raise RuntimeError(f"more than {self.max_jobs} jobs without going idle: a runaway device?")
                self._execute(job)
            finally:
                with self._cond:
                    self._running = None
        self.clock.advance_to(limit)
        self.jobs_run += ran
        return ran

    def advance(self, seconds: float) -> int:
        """Move the clock `seconds` forward, running jobs as they fall due."""
        return self.run(self.clock.now() + seconds)

    def run_until_idle(self, horizon: float = 60.0) -> int:
        """Run jobs, jumping the clock from deadline to deadline, until none
        is left within `horizon` seconds from now."""
        return self.run(self.clock.now() + horizon)

    def settle(self, owner: object, within: float, timeout: float) -> bool:
        self.run(self.clock.now() + within)
        with self._cond:
            return not self._busy(owner, self.clock.now())


class ScheduledWorker:
    """One device's handle on a scheduler (the Worker interface)."""

    def __init__(self, scheduler: ThreadScheduler | ManualScheduler, name: str):
        self.scheduler = scheduler
        self.name = name
        self.clock = scheduler.clock
        self._stopped = False

    def after(self, delay: float, fn: Callable[[], None]) -> Job:
        job = Job(self.clock.now() + delay, fn, owner=self)
        if self._stopped:
            job.cancel()
        else:
            self.scheduler._push(job)
        return job

    def submit(self, fn: Callable[[], None]) -> Job:
        return self.after(0.0, fn)

    def cancel_all(self) -> None:
        """Drop every job of this device not yet started (device reset)."""
        self.scheduler._cancel_owner(self)

    def settle(self, within: float = 0.0, timeout: float = 5.0) -> bool:
        """Wait until this device has no job running and none due within
        `within` seconds; False if that is not so by `max(within, timeout)`.
        For tests, tools and orderly shutdown. (On a ManualScheduler: run the
        shared queue that far; other devices' jobs run too, in order.)"""
        return self.scheduler.settle(self, within, timeout)

    def stop(self) -> None:
        """This device is done: its jobs are dropped (and a ThreadScheduler
        stops with the last device that uses it)."""
        if self._stopped:
            return
        self._stopped = True
        self.cancel_all()
        self.scheduler._release(self)


class Worker(ScheduledWorker):
    """A device that stands alone: a ThreadScheduler of its own."""

    def __init__(self, name: str):
        scheduler = ThreadScheduler(name)
        super().__init__(scheduler, name)
        scheduler._attach(self)
