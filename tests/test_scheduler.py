"""The scheduler's own logic, with a fake executor in place of Spark (no servers)."""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
from hyperopt import base, hp, rand
from hyperopt.early_stop import no_progress_loss

from connect_trials import job
from connect_trials.errors import ClusterUnavailableError
from connect_trials.job import OutcomeKind
from connect_trials.reconnect import Recovered
from connect_trials.scheduler import SearchLimits, TrialScheduler
from connect_trials.tracking import FminTracker
from tests.conftest import captured_log


class FakeTrials(base.Trials):
    def __init__(self) -> None:
        super().__init__()
        self._fmin_cancelled = False
        self._fmin_cancelled_reason = None


class GatedExecutor:
    """Each trial blocks until the test opens its gate; submissions are announced."""

    runs_in_caller = False

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
            return job.TrialOutcome(request.tid, OutcomeKind.CANCELLED, error_type="cancelled")
        return job.TrialOutcome(
            request.tid, OutcomeKind.RETURNED, value=float(request.tid), started_at=0.0, finished_at=0.0
        )

    def release(self, tid: int) -> None:
        self.gates.setdefault(tid, threading.Event()).set()

    def cancel_all(self) -> None:
        self.cancelled.set()
        for gate in list(self.gates.values()):
            gate.set()


class NullProgress:
    def trial_finished(self, best_loss: float, running: int, failed: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def make_scheduler(executor, max_evals=4, parallelism=2, trials=None, timeout=None, recovery=None, **limits):
    trials = trials if trials is not None else FakeTrials()
    if timeout is not None:
        limits.setdefault("deadline", time.monotonic() + timeout)
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
        recovery=recovery,
    )


def run_in_thread(scheduler):
    errors: list[BaseException] = []

    def run():
        try:
            scheduler.run()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    loop = threading.Thread(target=run, daemon=True)
    loop.start()
    return loop, errors


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


class ReturningExecutor:
    """Returns each trial's value at once (or raises the given error for every trial)."""

    runs_in_caller = False

    def __init__(self, outcome_kind=OutcomeKind.RETURNED, error_text=None):
        self.kind = outcome_kind
        self.error_text = error_text
        self.submitted: list[int] = []
        self.cancelled = threading.Event()

    def run_trial(self, request):
        self.submitted.append(request.tid)
        return job.TrialOutcome(
            request.tid, self.kind, value=0.5, error_type="<class 'ValueError'>", error_text=self.error_text
        )

    def cancel_all(self):
        self.cancelled.set()


class RecordingTracker(FminTracker):
    """Records the trials it saw finish; ``on_trial_started`` may block, sleep or raise."""

    def __init__(self, on_trial_started=None):
        self.on_trial_started = on_trial_started or (lambda tid: None)
        self.finished: list[int] = []

    def trial_started(self, trial, argument):
        self.on_trial_started(trial["tid"])
        return {}

    def trial_finished(self, trial, best_loss):
        self.finished.append(trial["tid"])


def test_ctrl_c_while_a_trial_waits_for_its_child_run_cancels_that_trial_and_ends_its_run(ctrl_c):
    import _thread

    executor = GatedExecutor()
    tracking_waits, tracking_may_go = threading.Event(), threading.Event()

    def slow_tracking_for_the_second_trial(tid):
        if tid == 1:  # MLflow is slow to create trial 1's run: its thread waits, the loop does not
            tracking_waits.set()
            assert tracking_may_go.wait(30)

    tracker = RecordingTracker(slow_tracking_for_the_second_trial)
    trials, scheduler = make_scheduler(executor, max_evals=4, parallelism=2)
    scheduler.tracker = tracker
    cancel_all = executor.cancel_all
    executor.cancel_all = lambda: (cancel_all(), tracking_may_go.set())

    def ctrl_c_once_trial_1_waits():
        assert tracking_waits.wait(30) and executor.submitted[0].wait(30)
        _thread.interrupt_main()

    threading.Thread(target=ctrl_c_once_trial_1_waits, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        scheduler.run()
    states = {t["tid"]: t["state"] for t in trials._dynamic_trials}
    assert states == {0: base.JOB_STATE_CANCEL, 1: base.JOB_STATE_CANCEL}
    assert sorted(tracker.finished) == [0, 1]  # trial 1's child run is ended too
    assert 1 not in executor.submit_times  # its job was never launched
    assert trials._fmin_cancelled_reason == "fmin run cancelled by user"


class InterruptedInCallerExecutor(ReturningExecutor):
    """Debug mode, where the objective runs in fmin's thread: the user presses Ctrl-C (the
    IDE's stop button) during the second trial."""

    runs_in_caller = True

    def run_trial(self, request):
        if request.tid == 1:
            self.submitted.append(request.tid)
            raise KeyboardInterrupt
        return super().run_trial(request)


def test_ctrl_c_in_a_debug_mode_trial_stops_the_search_and_cancels_that_trial():
    executor = InterruptedInCallerExecutor()
    tracker = RecordingTracker()
    trials, scheduler = make_scheduler(executor, max_evals=5, parallelism=1)
    scheduler.tracker = tracker
    with pytest.raises(KeyboardInterrupt):
        scheduler.run()
    assert executor.submitted == [0, 1]  # no trial after the Ctrl-C
    assert [t["state"] for t in trials._dynamic_trials] == [base.JOB_STATE_DONE, base.JOB_STATE_CANCEL]
    assert tracker.finished == [0, 1]
    assert trials._fmin_cancelled_reason == "fmin run cancelled by user"


def test_max_evals_after_a_timed_out_fmin_counts_as_hyperopts_len_does():
    executor = GatedExecutor()
    executor.release(0)
    trials, scheduler = make_scheduler(executor, max_evals=10, parallelism=3, timeout=0.5)
    scheduler.run()
    assert trials.count_by_state_unsynced(base.JOB_STATE_CANCEL) >= 2
    before = len(trials._dynamic_trials)
    for tid in range(100):
        executor.release(tid)
    executor.cancelled.clear()
    trials._fmin_cancelled = False  # as ConnectTrials.fmin does for a new fmin
    _, again = make_scheduler(executor, max_evals=len(trials) + 3, parallelism=3, trials=trials)
    again.run()
    assert len(trials._dynamic_trials) - before == 3


class RelayingExecutor(GatedExecutor):
    """Each trial's objective logged to MLflow on its worker; the job answers after a cancel."""

    def run_trial(self, request):
        outcome = super().run_trial(request)
        return dataclasses.replace(outcome, relayed=f"logged by {request.tid}".encode())


class RelayRecordingTracker(RecordingTracker):
    def __init__(self):
        super().__init__()
        self.relayed: dict[int, bytes] = {}

    def objective_logged(self, trial, relayed):
        assert trial["tid"] not in self.finished  # relayed before the trial's end is written
        self.relayed[trial["tid"]] = relayed


def test_what_a_cancelled_trials_objective_logged_is_still_relayed_into_its_run():
    executor = RelayingExecutor()
    tracker = RelayRecordingTracker()
    trials, scheduler = make_scheduler(executor, max_evals=2, parallelism=2, timeout=0.3)
    scheduler.tracker = tracker
    scheduler.run()  # the timeout cancels both; their jobs answer after it, with what they logged
    assert [t["state"] for t in trials._dynamic_trials] == [base.JOB_STATE_CANCEL] * 2
    assert tracker.relayed == {0: b"logged by 0", 1: b"logged by 1"}
    assert sorted(tracker.finished) == [0, 1]


def test_every_trial_ends_once_through_the_same_way_out_whatever_ended_it():
    trials = FakeTrials()
    # Points 0 and 1 pickle, point 2 cannot (a lock): it fails before its job.
    domain = base.Domain(lambda x: x, hp.choice("x", [0.0, 1.0, threading.Lock()]))
    executor = GatedExecutor()
    saves: list[int] = []
    tracker = RecordingTracker()
    scheduler = TrialScheduler(
        trials=trials, domain=domain, algo=rand.suggest, rstate=np.random.default_rng(0), executor=executor,
        parallelism=2, limits=SearchLimits(max_evals=12, deadline=time.monotonic() + 1.0, max_queue_len=2),
        tracker=tracker, progress=NullProgress(), after_trial=lambda trial: saves.append(trial["tid"]),
    )  # fmt: skip
    executor.release(0)
    scheduler.run()
    ended = [t["tid"] for t in trials._dynamic_trials]
    assert sorted(tracker.finished) == sorted(ended)  # each told to the tracker once
    assert len(saves) == len(ended)  # and saved once
    assert {t["state"] for t in trials._dynamic_trials} <= {
        base.JOB_STATE_DONE, base.JOB_STATE_ERROR, base.JOB_STATE_CANCEL,
    }  # fmt: skip


def test_timeout_bounds_the_search_when_every_point_fails_before_launch():
    unpicklable = threading.Lock()
    trials = FakeTrials()
    domain = base.Domain(lambda x: 0.0, hp.choice("x", [unpicklable]))
    executor = ReturningExecutor()
    scheduler = TrialScheduler(
        trials=trials,
        domain=domain,
        algo=rand.suggest,
        rstate=np.random.default_rng(0),
        executor=executor,
        parallelism=2,
        limits=SearchLimits(max_evals=sys.maxsize, deadline=time.monotonic() + 1.0),
        tracker=FminTracker(),
        progress=NullProgress(),
    )
    done = threading.Event()
    loop = threading.Thread(target=lambda: (scheduler.run(), done.set()), daemon=True)
    started = time.monotonic()
    loop.start()
    assert done.wait(1.0 + 5), "the search spun on past its timeout"
    assert time.monotonic() - started < 1.0 + 5
    assert trials._fmin_cancelled_reason == "fmin run timeout"
    assert executor.submitted == []
    assert trials.count_by_state_unsynced(base.JOB_STATE_ERROR) >= 1


def test_a_deadline_that_passed_before_the_loop_submits_no_trial():
    executor = ReturningExecutor()
    trials, scheduler = make_scheduler(executor, max_evals=4, timeout=5.0, deadline=time.monotonic())
    scheduler.run()
    assert executor.submitted == []
    assert trials._fmin_cancelled_reason == "fmin run timeout"


def test_a_trial_whose_tracking_outlasts_the_deadline_is_not_submitted():
    executor = ReturningExecutor()
    deadline = time.monotonic() + 0.3
    # The tracker is slow (its server lags) for the first trial: by the time it returns,
    # the fmin's time is up.
    tracker = RecordingTracker(lambda tid: time.sleep(max(deadline - time.monotonic(), 0) + 0.05))
    trials, scheduler = make_scheduler(executor, max_evals=4, timeout=0.3, deadline=deadline)
    scheduler.tracker = tracker
    scheduler.run()
    assert executor.submitted == []
    # The slow tracking held up only its trial's thread: both slots started a trial.
    assert [t["state"] for t in trials._dynamic_trials] == [base.JOB_STATE_CANCEL] * 2
    assert sorted(tracker.finished) == [0, 1]


class SkewedClockExecutor(GatedExecutor):
    """A gated executor whose machine's clock is an hour off: its timestamps mean nothing here."""

    def __init__(self, skew_s: float) -> None:
        super().__init__()
        self.skew_s = skew_s

    def run_trial(self, request):
        gate = self.gates.setdefault(request.tid, threading.Event())
        self.submitted[request.tid].set()
        gate.wait()
        now = time.time() + self.skew_s
        return job.TrialOutcome(
            request.tid, OutcomeKind.RETURNED, value=float(request.tid), started_at=now, finished_at=now
        )


def test_a_result_that_arrives_after_the_cancellation_is_dropped_whatever_the_executors_clock():
    executor = SkewedClockExecutor(skew_s=-3600.0)  # its finished_at looks long before the cancel
    trials, scheduler = make_scheduler(executor, max_evals=1, parallelism=1, timeout=0.2)
    scheduler.run()  # the timeout's cancel_all opens the gate: the job returns only afterwards
    assert trials._dynamic_trials[0]["state"] == base.JOB_STATE_CANCEL


def test_a_result_that_arrived_before_the_cancellation_is_kept_whatever_the_executors_clock():
    executor = SkewedClockExecutor(skew_s=+3600.0)  # its finished_at looks long after the cancel
    executor.release(0)
    deadline = time.monotonic() + 0.3

    def slow_tracking(tid):
        if tid == 1:  # trial 0 returns meanwhile; the deadline passes before the loop looks
            time.sleep(max(deadline - time.monotonic(), 0) + 0.05)

    trials, scheduler = make_scheduler(executor, max_evals=2, parallelism=2, timeout=0.3, deadline=deadline)
    scheduler.tracker = RecordingTracker(slow_tracking)
    scheduler.run()
    states = {t["tid"]: t["state"] for t in trials._dynamic_trials}
    assert states == {0: base.JOB_STATE_DONE, 1: base.JOB_STATE_CANCEL}


def test_a_server_declared_gone_fails_the_search_keeps_finished_trials_and_cancels_running_ones():
    executor = GatedExecutor()
    executor.release(0)
    trials, scheduler = make_scheduler(executor, max_evals=3, parallelism=2)
    finished_zero = threading.Event()
    scheduler.tracker = RecordingTracker()
    original = scheduler.tracker.trial_finished

    def trial_finished(trial, best_loss):
        original(trial, best_loss)
        if trial["tid"] == 0:
            finished_zero.set()

    scheduler.tracker.trial_finished = trial_finished
    loop, errors = run_in_thread(scheduler)
    assert finished_zero.wait(5) and executor.submitted[2].wait(5)
    scheduler.server_gone("the server refused connections for 20 s")
    loop.join(10)
    assert not loop.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClusterUnavailableError)
    assert "refused connections" in str(errors[0])
    states = {t["tid"]: t["state"] for t in trials._dynamic_trials}
    assert states[0] == base.JOB_STATE_DONE
    assert states[1] == states[2] == base.JOB_STATE_CANCEL


def test_the_failure_line_keeps_the_exceptions_message():
    text = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: x is out of range\n'
    executor = ReturningExecutor(OutcomeKind.RAISED, error_text=text)
    _, scheduler = make_scheduler(executor, max_evals=1, parallelism=1)
    with captured_log() as out:
        scheduler.run()
    assert "trial task 0 failed, exception is ValueError: x is out of range." in out.getvalue()


def test_loss_threshold_suggests_no_more_and_lets_the_trials_in_flight_finish_done():
    executor = GatedExecutor()  # trial tid returns the loss float(tid)
    trials, scheduler = make_scheduler(executor, max_evals=10, parallelism=2, loss_threshold=0.5)
    zero_ended = threading.Event()
    scheduler.tracker = RecordingTracker()
    scheduler.tracker.trial_finished = lambda trial, best_loss: trial["tid"] == 0 and zero_ended.set()
    loop, errors = run_in_thread(scheduler)
    assert executor.submitted[0].wait(5) and executor.submitted[1].wait(5)
    executor.release(0)  # loss 0.0 < 0.5 while trial 1 runs
    assert zero_ended.wait(5)
    with captured_log() as out:
        executor.release(1)
        loop.join(5)
    assert not loop.is_alive() and not errors
    assert not executor.submitted[2].is_set()  # nothing suggested after the threshold
    assert not executor.cancelled.is_set()
    assert [t["state"] for t in trials._dynamic_trials] == [base.JOB_STATE_DONE] * 2
    assert trials._fmin_cancelled_reason is None and not trials._fmin_cancelled
    assert "cancelled" not in out.getvalue()


def test_early_stop_fn_sees_the_finished_successes_in_finishing_order_with_the_searchs_counts():
    seen: list[tuple[list[int], int, int, Any]] = []

    def stop_rule(view, *args):
        # hyperopt's own no_progress_loss reads the last trial's loss: a running trial's in the
        # trials object itself (a KeyError under SparkTrials).
        no_progress_loss(iteration_stop_count=5)(view)
        running = view.count_by_state_unsynced(base.JOB_STATE_RUNNING)
        seen.append(([t["tid"] for t in view.trials], view.count_successful_trials(), running,
                     view.fmin_cancelled_reason))  # fmt: skip
        return len(seen) >= 2, []

    from connect_trials import ConnectTrials

    executor = GatedExecutor()
    search = ConnectTrials(debug=True, mlflow_tracking=False)  # its count_*, fmin_cancelled_reason
    trials, scheduler = make_scheduler(executor, max_evals=10, parallelism=3, early_stop_fn=stop_rule,
                                       trials=search)  # fmt: skip
    loop, errors = run_in_thread(scheduler)
    assert all(executor.submitted[tid].wait(5) for tid in range(3))
    executor.release(2)
    assert executor.submitted[3].wait(5), errors
    executor.release(0)
    loop.join(5)
    assert not loop.is_alive() and not errors
    assert seen == [([2], 1, 2, None), ([2, 0], 2, 2, None)]
    assert trials._fmin_cancelled_reason == "early stopping condition"


def test_early_stop_fn_gets_back_what_it_returned():
    args_seen: list[tuple[Any, ...]] = []

    def stop_rule(view, *args):
        args_seen.append(args)
        return len(args_seen) == 3, [len(args_seen), "more"]

    executor = ReturningExecutor()
    _, scheduler = make_scheduler(executor, max_evals=10, parallelism=1, early_stop_fn=stop_rule)
    scheduler.run()
    assert args_seen == [(), (1, "more"), (2, "more")]


def test_seeded_new_trials_run_first_and_count_as_hyperopts_len_counts_them():
    from hyperopt.fmin import generate_trials_to_calculate

    for refresh, total in ((False, 7), (True, 5)):  # hyperopt 0.3.0's SparkTrials: 7 and 5
        trials = FakeTrials()
        trials.insert_trial_docs(generate_trials_to_calculate([{"x": 0.25}, {"x": 0.75}])._dynamic_trials)
        if refresh:
            trials.refresh()
        executor = ReturningExecutor()
        _, scheduler = make_scheduler(executor, max_evals=5, parallelism=1, trials=trials)
        scheduler.run()
        assert executor.submitted[:2] == [0, 1]
        assert [t["state"] for t in trials._dynamic_trials] == [base.JOB_STATE_DONE] * total


class FakeRecovery:
    """A session that survived each outage (a laptop's lid, a network blip)."""

    generation = 0
    address = ("localhost", 1)
    last_failure = None

    def recover(self, timeout):
        return Recovered(renewed=False)


class LosingExecutor(ReturningExecutor):
    """Each trial's first ``losses`` jobs are lost with the session; then they return."""

    def __init__(self, losses):
        super().__init__()
        self.losses = losses

    def run_trial(self, request):
        if self.submitted.count(request.tid) < self.losses:
            self.submitted.append(request.tid)
            return job.TrialOutcome(request.tid, OutcomeKind.UNAVAILABLE, error_type="<class 'X'>",
                                    error_text="INVALID_HANDLE.OPERATION_ABANDONED")  # fmt: skip
        return super().run_trial(request)


def test_jobs_lost_with_a_surviving_session_run_again_until_max_jobs_lost_then_say_so():
    from connect_trials.trial_loop import MAX_JOBS_LOST

    executor = LosingExecutor(losses=MAX_JOBS_LOST - 1)
    trials, scheduler = make_scheduler(executor, max_evals=1, parallelism=1, recovery=FakeRecovery())
    scheduler.run()
    assert executor.submitted == [0] * MAX_JOBS_LOST
    assert trials._dynamic_trials[0]["state"] == base.JOB_STATE_DONE

    executor = LosingExecutor(losses=MAX_JOBS_LOST)
    trials, scheduler = make_scheduler(executor, max_evals=1, parallelism=1, recovery=FakeRecovery())
    scheduler.run()
    assert executor.submitted == [0] * MAX_JOBS_LOST  # not run once more
    trial = trials._dynamic_trials[0]
    assert trial["state"] == base.JOB_STATE_ERROR
    text = trial["misc"]["error"][1]
    assert f"lost {MAX_JOBS_LOST} times" in text and "did not fail" in text
    assert "Python worker" not in text


class QueueWatch(queue.Queue):
    """The loop's queue of outcomes; its first read waits until ``first_read_after`` has
    been put in (so that the loop reads what was queued before it, in order)."""

    def __init__(self, first_read_after: int):
        super().__init__()
        self.queued = threading.Event()
        self.first_read_after = first_read_after

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        if isinstance(item, job.TrialOutcome) and item.tid == self.first_read_after:
            self.queued.set()

    def get(self, block=True, timeout=None):
        assert self.queued.wait(10)
        return super().get(block, timeout)


def test_a_result_received_before_the_server_is_declared_gone_is_kept():
    executor = GatedExecutor()
    executor.release(1)
    trials, scheduler = make_scheduler(executor, max_evals=2, parallelism=2)
    scheduler.loop._completions = QueueWatch(first_read_after=1)
    assert scheduler._pending == []
    scheduler.server_gone("the server refused connections for 120 s")  # first in the queue
    loop, errors = run_in_thread(scheduler)  # reads the news with trial 1's result behind it
    loop.join(10)
    assert not loop.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClusterUnavailableError)
    states = {t["tid"]: t["state"] for t in trials._dynamic_trials}
    assert states == {0: base.JOB_STATE_CANCEL, 1: base.JOB_STATE_DONE}


def test_loss_threshold_counts_a_failed_status_that_carries_a_loss_as_hyperopt_does():
    from hyperopt import STATUS_FAIL, Trials, fmin
    from hyperopt.exceptions import AllTrialsFailed

    failed_with_a_loss = {"status": STATUS_FAIL, "loss": -10.0}
    reference = Trials()
    with pytest.raises(AllTrialsFailed):  # after it stopped: no trial succeeded
        fmin(lambda x: failed_with_a_loss, hp.uniform("x", 0, 1), rand.suggest, max_evals=5, trials=reference,
             loss_threshold=0.0, rstate=np.random.default_rng(0), show_progressbar=False)  # fmt: skip

    class FailingWithALoss(ReturningExecutor):
        def run_trial(self, request):
            self.submitted.append(request.tid)
            return job.TrialOutcome(request.tid, OutcomeKind.RETURNED, value=failed_with_a_loss)

    trials, scheduler = make_scheduler(FailingWithALoss(), max_evals=5, parallelism=1, loss_threshold=0.0)
    scheduler.run()
    assert len(trials._dynamic_trials) == len(reference._dynamic_trials) == 1


def test_every_trial_still_ends_when_the_settling_is_interrupted_and_the_first_error_is_raised():
    class FailingTracker(RecordingTracker):
        def trial_finished(self, trial, best_loss):
            super().trial_finished(trial, best_loss)
            if len(self.finished) == 1:
                raise RuntimeError("the user's progress callback raised")

    executor = GatedExecutor()  # its jobs answer (cancelled) only once the search cancels them
    trials, scheduler = make_scheduler(executor, max_evals=3, parallelism=3, timeout=0.3)
    scheduler.tracker = tracker = FailingTracker()
    with pytest.raises(RuntimeError, match="progress callback"):
        scheduler.run()
    assert sorted(tracker.finished) == [0, 1, 2]
    assert [t["state"] for t in trials._dynamic_trials] == [base.JOB_STATE_CANCEL] * 3


def test_early_stop_fn_may_return_none_for_its_args_as_hyperopt_allows():
    from hyperopt import Trials, fmin

    reference = Trials()
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, max_evals=5, trials=reference,
         early_stop_fn=lambda trials, *args: (True, None), show_progressbar=False)  # fmt: skip
    trials, scheduler = make_scheduler(ReturningExecutor(), max_evals=5, parallelism=1,
                                       early_stop_fn=lambda trials, *args: (True, None))  # fmt: skip
    scheduler.run()
    assert len(trials._dynamic_trials) == len(reference._dynamic_trials) == 1
    assert trials._fmin_cancelled_reason == "early stopping condition"


def test_a_search_resumed_below_its_loss_threshold_runs_one_batch_as_hyperopt_does():
    from hyperopt import Trials, fmin

    def search(trials, max_evals, **kwargs):
        fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, max_evals=max_evals, trials=trials,
             rstate=np.random.default_rng(0), show_progressbar=False, **kwargs)  # fmt: skip

    reference = Trials()
    search(reference, 3)
    search(reference, 10, loss_threshold=2.0)  # every loss is below it already
    trials, first = make_scheduler(ReturningExecutor(), max_evals=3, parallelism=4)
    first.run()
    _, again = make_scheduler(ReturningExecutor(), max_evals=10, parallelism=4, trials=trials,
                              loss_threshold=2.0)  # fmt: skip
    again.run()
    assert len(trials._dynamic_trials) == len(reference._dynamic_trials) == 4
