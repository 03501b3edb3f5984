"""The runner keeps interactive requests ahead of long jobs (issue 14): a cost-1 job submitted while a
long job runs is run at the long job's next ``check_cancelled()``, not after it; with the lane off
(``interactive_cost=0``) the same job waits for the end. Order of completion, no timing thresholds."""

from __future__ import annotations

import threading

import pytest

from deconvlab.api.runner import Cancelled, Runner, check_cancelled


def _long(log: list, started: threading.Event, go: threading.Event, steps: int = 4):
    def work():
        for i in range(steps):
            log.append(f"long {i}")
            if i == 0:
                started.set()
                assert go.wait(10)
            check_cancelled()  # the yield point an occlusion batch ends with
        log.append("long done")
        return "long"
    return work


def _order(interactive_cost: int) -> tuple[list, Runner]:
    r = Runner(interactive_cost=interactive_cost)
    log: list[str] = []
    started, go = threading.Event(), threading.Event()
    long_f = r.submit(_long(log, started, go), cost=500)
    assert started.wait(10)
    quick = [r.submit(lambda i=i: log.append(f"click {i}") or i) for i in range(3)]
    go.set()
    assert long_f.result(10) == "long" and [f.result(10) for f in quick] == [0, 1, 2]
    r.shutdown()
    return log, r


def test_clicks_run_inside_a_long_job_in_order_and_once():
    log, r = _order(1)
    assert log == ["long 0", "click 0", "click 1", "click 2", "long 1", "long 2", "long 3", "long done"]
    assert (r.pending, r.pending_passes, r.done) == (0, 0, 4)


def test_without_the_lane_clicks_wait_for_the_long_job():
    log, r = _order(0)
    assert log[-3:] == ["click 0", "click 1", "click 2"] and log.index("long done") == 4
    assert (r.pending, r.pending_passes) == (0, 0)


def test_a_cancelled_long_job_keeps_its_own_event_after_a_click_ran_inside_it():
    r = Runner()
    cancel, ran = threading.Event(), []

    def work():
        r.submit(lambda: ran.append("click"))  # waits in the lane; runs at the next yield point
        check_cancelled()
        cancel.set()
        check_cancelled()  # the click's own (None) event must not have replaced the long job's

    f = r.submit(work, cost=100, cancel=cancel)
    with pytest.raises(Cancelled):
        f.result(10)
    r.shutdown()
    assert ran == ["click"] and r.cancelled == 1 and (r.pending, r.pending_passes) == (0, 0)
