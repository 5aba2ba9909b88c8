"""The scheduler's own logic, with a fake executor in place of Spark (no servers)."""

from __future__ import annotations

import threading
import time

import numpy as np
from hyperopt import base, hp, rand

from connect_trials import job
from connect_trials.scheduler import SearchLimits, TrialScheduler
from connect_trials.tracking import FminTracker


class FakeTrials(base.Trials):
    def __init__(self) -> None:
        super().__init__()
        self._fmin_cancelled = False
        self._fmin_cancelled_reason = None


class GatedExecutor:
    """Each trial blocks until the test opens its gate; submissions are announced."""

    def __init__(self) -> None:
        self.gates: dict[int, threading.Event] = {}
        self.submitted: dict[int, threading.Event] = {i: threading.Event() for i in range(100)}
        self.submit_times: dict[int, float] = {}
        self.cancelled = threading.Event()

    def run_trial(self, request: job.TrialRequest) -> job.TrialOutcome:
        gate = self.gates.setdefault(request.tid, threading.Event())
        self.submit_times[request.tid] = time.monotonic()
        self.submitted[request.tid].set()
        gate.wait()
        if self.cancelled.is_set():
            return job.TrialOutcome(request.tid, job.CANCELLED, error_type="cancelled")
        return job.TrialOutcome(
            request.tid, job.RETURNED, value=float(request.tid), started_at=0.0, finished_at=0.0
        )

    def release(self, tid: int) -> None:
        self.gates.setdefault(tid, threading.Event()).set()

    def cancel_all(self) -> None:
        self.cancelled.set()
        for gate in list(self.gates.values()):
            gate.set()


class NullProgress:
    postfix = ""

    def update(self, n: int) -> None:
        pass


def make_scheduler(executor, max_evals=4, parallelism=2, trials=None, **limits):
    trials = trials if trials is not None else FakeTrials()
    domain = base.Domain(lambda x: x, hp.uniform("x", 0, 1))
    return trials, TrialScheduler(
        trials=trials,
        domain=domain,
        algo=rand.suggest,
        rstate=np.random.default_rng(0),
        executor=executor,
        parallelism=parallelism,
        limits=SearchLimits(max_evals=max_evals, **limits),
        tracker=FminTracker(),
        progress=NullProgress(),
    )


def test_a_finished_trial_frees_its_slot_at_once_not_after_a_poll():
    executor = GatedExecutor()
    trials, scheduler = make_scheduler(executor, max_evals=3, parallelism=2)
    loop = threading.Thread(target=scheduler.run, daemon=True)
    loop.start()
    assert executor.submitted[0].wait(5) and executor.submitted[1].wait(5)
    assert not executor.submitted[2].is_set()  # both slots are taken
    released_at = time.monotonic()
    executor.release(0)
    # Upstream would look again only after its 1-second sleep; here the completion wakes the loop.
    assert executor.submitted[2].wait(0.5)
    assert executor.submit_times[2] - released_at < 0.5
    executor.release(1)
    executor.release(2)
    loop.join(5)
    assert not loop.is_alive()
    assert trials.count_by_state_unsynced(base.JOB_STATE_DONE) == 3


def test_never_more_than_parallelism_trials_in_flight():
    executor = GatedExecutor()
    trials, scheduler = make_scheduler(executor, max_evals=5, parallelism=2)
    loop = threading.Thread(target=scheduler.run, daemon=True)
    loop.start()
    for tid in range(5):
        assert executor.submitted[tid].wait(5)
        assert trials.count_by_state_unsynced(base.JOB_STATE_RUNNING) <= 2
        executor.release(tid)
    loop.join(5)
    assert trials.count_by_state_unsynced(base.JOB_STATE_DONE) == 5


def test_timeout_marks_running_and_queued_trials_cancelled_and_keeps_finished_ones():
    executor = GatedExecutor()
    trials, scheduler = make_scheduler(executor, max_evals=10, parallelism=2, timeout=0.5, max_queue_len=3)
    executor.release(0)
    scheduler.run()
    assert trials._fmin_cancelled_reason == "fmin run timeout"
    assert executor.cancelled.is_set()
    states = [t["state"] for t in trials._dynamic_trials]
    assert states.count(base.JOB_STATE_DONE) == 1
    assert states.count(base.JOB_STATE_CANCEL) == len(states) - 1 >= 2
    assert base.JOB_STATE_RUNNING not in states and base.JOB_STATE_NEW not in states


def test_max_evals_counts_the_trials_already_present():
    executor = GatedExecutor()
    for tid in range(6):
        executor.release(tid)
    trials, scheduler = make_scheduler(executor, max_evals=2)
    scheduler.run()
    _, again = make_scheduler(executor, max_evals=5, trials=trials)
    again.run()
    assert len(trials.trials) == 5
