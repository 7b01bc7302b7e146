"""Where device models' background work runs: a ManualScheduler that tests
drive, and the thread that `vfnic serve` runs for all its devices."""
from __future__ import annotations

import threading

import pytest

from devmodel.worker import ManualScheduler, ThreadScheduler, Worker


def test_manual_jobs_run_in_deadline_order_then_submission_order_across_devices():
    scheduler = ManualScheduler()
    a, b = scheduler.worker("a"), scheduler.worker("b")
    ran = []
    b.after(0.002, lambda: ran.append("b late"))
    a.submit(lambda: ran.append("a first"))
    b.submit(lambda: ran.append("b second"))
    a.after(0.001, lambda: ran.append("a soon"))
    assert scheduler.run() == 2 and ran == ["a first", "b second"], "only what is due now"
    scheduler.advance(0.0015)
    assert ran[-1] == "a soon" and len(ran) == 3
    scheduler.run_until_idle()
    assert ran[-1] == "b late"


def test_manual_time_moves_to_each_job_as_it_runs():
    scheduler = ManualScheduler()
    worker = scheduler.worker("dev")
    seen = []
    worker.after(0.5, lambda: seen.append(scheduler.clock.now()))
    scheduler.advance(1.0)
    assert seen == [0.5] and scheduler.clock.now() == 1.0


def test_a_job_may_schedule_more_work_which_runs_in_the_same_pass():
    scheduler = ManualScheduler()
    worker = scheduler.worker("dev")
    ran = []
    worker.submit(lambda: (ran.append(1), worker.submit(lambda: ran.append(2))))
    scheduler.run()
    assert ran == [1, 2]


def test_cancel_all_drops_only_the_devices_own_jobs():
    scheduler = ManualScheduler()
    a, b = scheduler.worker("a"), scheduler.worker("b")
    ran = []
    a.submit(lambda: ran.append("a"))
    b.submit(lambda: ran.append("b"))
    a.cancel_all()
    scheduler.run()
    assert ran == ["b"]


def test_a_failing_job_is_logged_and_the_rest_still_run(caplog):
    scheduler = ManualScheduler()
    worker = scheduler.worker("dev")
    ran = []
    worker.submit(lambda: 1 / 0)
    worker.submit(lambda: ran.append("after"))
    scheduler.run()
    assert ran == ["after"] and "ZeroDivisionError" in caplog.text


def test_a_runaway_device_is_stopped_with_an_error_not_a_hang():
    scheduler = ManualScheduler(max_jobs=100)
    worker = scheduler.worker("dev")

    def again():
        worker.submit(again)
    worker.submit(again)
    with pytest.raises(RuntimeError, match="runaway"):
        scheduler.run()


def test_one_thread_runs_every_device_of_a_thread_scheduler_and_stops_with_the_last():
    scheduler = ThreadScheduler("test")
    a, b = scheduler.worker("a"), scheduler.worker("b")
    threads = set()
    done = threading.Event()
    a.submit(lambda: threads.add(threading.current_thread().name))
    b.after(0.01, lambda: (threads.add(threading.current_thread().name), done.set()))
    assert done.wait(5) and threads == {"test-worker"}
    assert b.settle(0.1, 1.0)
    a.stop()
    assert scheduler._thread.is_alive(), "b still uses it"
    b.stop()
    scheduler._thread.join(5)
    assert not scheduler._thread.is_alive()


def test_a_job_submitted_while_the_engine_sleeps_toward_a_later_deadline_runs_at_once():
    """The engine thread waits for a job due in 30 s; a job due now wakes it
    (a push notifies whenever a thread waits on the queue)."""
    worker = Worker("sleeper")
    try:
        worker.after(30, lambda: None)
        assert worker.settle(within=0.0, timeout=1.0)  # the engine thread now sleeps toward 30 s
        ran = threading.Event()
        worker.submit(ran.set)
        assert ran.wait(5), "the engine thread slept through a job due now"
    finally:
        worker.stop()


def test_settle_waits_for_due_work_and_reports_work_that_is_not_due():
    worker = Worker("alone")
    try:
        flag = threading.Event()
        worker.after(0.02, flag.set)
        assert worker.settle(within=0.5, timeout=2.0) and flag.is_set()
        worker.after(30, lambda: None)
        assert worker.settle(within=0.0, timeout=0.1), "a job due in 30 s is not due within 0"
        hold = threading.Event()
        worker.submit(lambda: hold.wait(2))
        assert not worker.settle(within=0.0, timeout=0.05), "a job still running"
        hold.set()
        assert worker.settle(within=0.0, timeout=2.0)
    finally:
        worker.stop()


def test_a_stopped_worker_takes_no_more_jobs():
    worker = Worker("alone")
    worker.stop()
    job = worker.submit(lambda: pytest.fail("ran after stop"))
    assert job.cancelled
