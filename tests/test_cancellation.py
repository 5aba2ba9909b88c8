"""Timeout, loss_threshold, early_stop_fn and Ctrl-C: cancel through tags, keep finished trials."""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time

import numpy as np
import pytest
from hyperopt import STATUS_OK, anneal, fmin, hp, rand

from connect_trials import ConnectTrials
from connect_trials.tracking import FminTracker
from tests.conftest import captured_log


def wait_for_exit(pid: int, seconds: float) -> bool:
    """True once process ``pid`` has exited (an event: its pidfd turns readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], seconds)
        return bool(readable)
    finally:
        os.close(fd)


def test_timeout_cancels_the_running_trial_and_leaves_no_job_behind(spark, tmp_path):
    pid_file = tmp_path / "pid"

    def objective(x: float) -> float:
        import os
        import time

        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
        raise Exception("Task should have been cancelled")

    # Long enough for the trial to start on a loaded 2-core machine: the timeout counts the
    # fmin's setup (tracking, the objective's upload) too.
    trials = ConnectTrials(parallelism=4, timeout=6, spark_session=spark)
    started = time.monotonic()
    with captured_log() as out:
        fmin(
            objective,
            hp.uniform("x", -2, 0),
            anneal.suggest,
            1,
            trials=trials,
            show_progressbar=False,
            return_argmin=False,
            rstate=np.random.default_rng(4),
        )
    elapsed = time.monotonic() - started
    log = out.getvalue()
    assert trials._fmin_cancelled
    assert trials.fmin_cancelled_reason == "fmin run timeout"
    assert trials.count_cancelled_trials() == 1
    assert "fmin cancelled because of fmin run timeout" in log
    assert "Cancelling all running jobs" in log
    assert "trial task 0 cancelled" in log
    assert "trial 0 task thread catches an exception" in log
    assert elapsed < 6 + 10, f"fmin took {elapsed:.1f} s to return after a 6 s timeout"
    # The objective's Python worker is killed by the interruption: nothing runs on.
    assert wait_for_exit(int(pid_file.read_text()), 30), "the cancelled objective is still running"


def test_timeout_keeps_finished_trials_and_cancels_the_rest(spark):
    def objective(x: float) -> float:
        import time

        if x < 0:
            time.sleep(60)
        else:
            time.sleep(0.2)
        return x

    trials = ConnectTrials(parallelism=2, timeout=4, spark_session=spark)
    fmin(
        objective,
        hp.uniform("x", -0.25, 5),
        anneal.suggest,
        40,
        trials=trials,
        show_progressbar=False,
        rstate=np.random.default_rng(4),
    )
    assert trials.fmin_cancelled_reason == "fmin run timeout"
    assert trials.count_successful_trials() >= 1
    assert trials.count_cancelled_trials() >= 1
    assert all(t["result"]["status"] == STATUS_OK for t in trials.trials)
    assert trials.count_total_trials() < 40


def test_fmin_timeout_argument_cancels_like_the_constructor_one(spark):
    def objective(x: float) -> float:
        import time

        time.sleep(0.5)
        return x

    trials = ConnectTrials(parallelism=1, spark_session=spark)
    with captured_log() as out:
        fmin(
            objective,
            hp.uniform("x", -1, 1),
            anneal.suggest,
            50,
            # Generous: slots of jobs cancelled by the previous test free up only once Spark
            # has killed their Python workers, a few seconds later.
            timeout=8,
            trials=trials,
            show_progressbar=False,
            return_argmin=False,
            rstate=np.random.default_rng(99),
        )
    assert trials.fmin_cancelled_reason == "fmin run timeout"
    assert trials.count_successful_trials() > 0
    assert trials.count_cancelled_trials() > 0
    assert "fmin is cancelled, so new trials will not be launched" in out.getvalue()
    assert "trial 0 task thread exits normally" in out.getvalue()


def test_early_stop_fn_stops_the_search_and_says_why(spark):
    def early_stop_fn(trials, *args):
        ok = sum(1 for t in trials if t["result"]["status"] == STATUS_OK)
        return ok >= 3, []

    trials = ConnectTrials(parallelism=2, spark_session=spark)
    with captured_log() as out:
        fmin(
            lambda x: {"loss": x, "status": STATUS_OK, "other_info": "hello"},
            hp.uniform("x", -1, 1),
            rand.suggest,
            10,
            trials=trials,
            early_stop_fn=early_stop_fn,
            show_progressbar=False,
        )
    log = out.getvalue()
    assert 3 <= trials.count_successful_trials() < 10
    assert "fmin thread exits normally" in log
    assert "fmin cancelled because of early stopping condition" in log
    assert trials.fmin_cancelled_reason == "early stopping condition"


def test_early_stop_fn_receives_its_own_arguments_back(spark):
    calls: list[int] = []

    def early_stop_fn(trials, count=0):
        calls.append(count)
        return count + 1 >= 4, [count + 1]

    trials = ConnectTrials(parallelism=1, spark_session=spark)
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 10, trials=trials, early_stop_fn=early_stop_fn)
    assert calls == [0, 1, 2, 3]
    assert trials.count_successful_trials() == 4


@pytest.mark.parametrize("where", ["constructor", "fmin"])
def test_loss_threshold_stops_once_a_loss_is_below_it(spark, where):
    def objective(x: float) -> float:
        return x

    kwargs = {"loss_threshold": 0.5}
    trials = ConnectTrials(parallelism=1, spark_session=spark, **(kwargs if where == "constructor" else {}))
    fmin(
        objective,
        hp.uniform("x", 0, 1),
        rand.suggest,
        200,
        trials=trials,
        show_progressbar=False,
        rstate=np.random.default_rng(5),
        **(kwargs if where == "fmin" else {}),
    )
    losses = [t["result"]["loss"] for t in trials.trials]
    assert losses[-1] < 0.5
    assert all(loss >= 0.5 for loss in losses[:-1])
    assert len(losses) < 200
    assert trials.fmin_cancelled_reason is None  # FMinIter's rule: it stops, nothing is cancelled
    assert trials.count_cancelled_trials() == 0


def test_ctrl_c_cancels_running_trials_and_reraises(spark, ctrl_c):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def objective(x: float) -> float:
        import socket
        import time

        socket.create_connection(("127.0.0.1", port)).close()  # "I am running"
        time.sleep(60)
        return x

    def interrupt_when_both_run() -> None:
        for _ in range(2):
            listener.accept()[0].close()
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C

    trials = ConnectTrials(parallelism=2, spark_session=spark)
    threading.Thread(target=interrupt_when_both_run, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 4, trials=trials, show_progressbar=False)
    listener.close()
    assert time.monotonic() - t0 < 30
    assert trials.fmin_cancelled_reason == "fmin run cancelled by user"
    assert trials.count_cancelled_trials() == 2
    assert trials.count_successful_trials() == 0


def test_session_stays_usable_after_a_cancelled_fmin(spark):
    trials = ConnectTrials(parallelism=1, timeout=5, spark_session=spark)

    def slow(x: float) -> float:
        import time

        time.sleep(30)
        return x

    fmin(slow, hp.uniform("x", 0, 1), rand.suggest, 2, trials=trials, return_argmin=False)
    assert trials.count_cancelled_trials() == 1
    trials = ConnectTrials(parallelism=2, spark_session=spark)
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 4, trials=trials)
    assert trials.count_successful_trials() == 4


def test_hyperopts_no_progress_loss_works_with_trials_in_flight(spark):
    from hyperopt.early_stop import no_progress_loss

    trials = ConnectTrials(parallelism=2, spark_session=spark)
    fmin(
        lambda x: x,
        hp.uniform("x", 0, 1),
        rand.suggest,
        200,
        trials=trials,
        early_stop_fn=no_progress_loss(5),
        show_progressbar=False,
        rstate=np.random.default_rng(11),
    )
    assert trials.fmin_cancelled_reason == "early stopping condition"
    assert 6 <= trials.count_successful_trials() < 200


def test_an_early_stop_fn_that_raises_fails_fmin_and_cancels_running_trials(spark, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)  # the seed makes a slow trial run alongside the first fast one
    port = listener.getsockname()[1]

    def objective(x: float) -> float:
        import socket
        import time

        if x >= 0.5:  # the slow half: running when early_stop_fn raises
            socket.create_connection(("127.0.0.1", port)).close()
            time.sleep(60)
        return x

    def broken_early_stop(trials, *args):
        listener.accept()[0].close()  # a slow trial is running
        raise ZeroDivisionError("bug in early_stop_fn")

    trials = ConnectTrials(parallelism=2, spark_session=spark)
    t0 = time.monotonic()
    with pytest.raises(ZeroDivisionError):
        fmin(
            objective,
            hp.choice("x", [0.0, 0.9]),
            rand.suggest,
            20,
            trials=trials,
            early_stop_fn=broken_early_stop,
            show_progressbar=False,
            rstate=np.random.default_rng(2),
        )
    listener.close()
    assert time.monotonic() - t0 < 30
    assert trials.count_cancelled_trials() >= 1
    assert trials.count_successful_trials() >= 1


class HeldSockets:
    """Accepts the objectives' connections; each stays open while its Python worker lives."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.first = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)
            self.first.set()

    def all_closed_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        for conn in list(self.accepted):
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                if conn.recv(1) != b"":
                    return False
            except TimeoutError:
                return False
        return True


def test_a_timed_out_fmin_leaves_no_job_of_its_tag_running_on_the_server(spark):
    held = HeldSockets()
    port = held.port

    def objective(x: float) -> float:
        import socket
        import time

        connection = socket.create_connection(("127.0.0.1", port))  # open while this worker lives
        time.sleep(120)
        connection.close()
        return x

    trials = ConnectTrials(parallelism=2, timeout=6, spark_session=spark)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 6, trials=trials, return_argmin=False)
    assert trials.fmin_cancelled_reason == "fmin run timeout"
    assert held.first.is_set() and trials.count_successful_trials() == 0
    # The server killed the Python worker of every job it ran for this fmin: each socket closed.
    assert held.all_closed_within(30), "a job of the timed-out fmin still runs on the server"
    held.listener.close()


def test_a_new_fmin_on_cancelled_trials_runs_its_trials(spark):
    trials = ConnectTrials(parallelism=1, spark_session=spark)
    fmin(
        lambda x: x,
        hp.uniform("x", 0, 1),
        rand.suggest,
        5,
        trials=trials,
        early_stop_fn=lambda t, *a: (True, []),
    )
    assert trials.fmin_cancelled_reason == "early stopping condition"
    assert len(trials.trials) == 1
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 3, trials=trials, show_progressbar=False)
    assert trials.count_successful_trials() == 3
    assert trials.fmin_cancelled_reason is None


class SlowTracker(FminTracker):
    """A tracker whose server takes longer to open the parent run than fmin's timeout."""

    def __init__(self, seconds: float = 0.0, interrupt: bool = False) -> None:
        self.seconds = seconds
        self.interrupt = interrupt
        self.finished = threading.Event()

    def fmin_started(self, settings) -> None:
        if self.interrupt:
            raise KeyboardInterrupt
        time.sleep(self.seconds)

    def trial_started(self, trial, argument):
        return {}

    def trial_finished(self, trial, best_loss) -> None:
        pass

    def fmin_finished(self, trials, error) -> None:
        self.finished.set()


def test_timeout_counts_from_the_fmin_call_tracking_setup_included(spark, monkeypatch):
    tracker = SlowTracker(seconds=2.0)
    monkeypatch.setattr("connect_trials.fmin_run.create_tracker", lambda spark, enabled: tracker)
    trials = ConnectTrials(parallelism=1, timeout=1.5, spark_session=spark)
    started = time.monotonic()
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 5, trials=trials, return_argmin=False)
    assert time.monotonic() - started < 1.5 + 10
    assert trials.fmin_cancelled_reason == "fmin run timeout"
    assert trials.count_total_trials() == 0  # its time was up before any trial could start
    assert tracker.finished.is_set()


def test_a_ctrl_c_while_the_tracking_starts_still_closes_the_tracking(spark, monkeypatch):
    tracker = SlowTracker(interrupt=True)
    monkeypatch.setattr("connect_trials.fmin_run.create_tracker", lambda spark, enabled: tracker)
    trials = ConnectTrials(parallelism=1, spark_session=spark)
    with pytest.raises(KeyboardInterrupt):
        fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 5, trials=trials)
    assert tracker.finished.is_set()


def test_max_evals_after_a_timed_out_fmin_counts_only_hyperopts_valid_trials(spark):
    def holds_its_slot(x: float) -> float:
        import time

        time.sleep(60)
        return x

    trials = ConnectTrials(parallelism=2, timeout=6, spark_session=spark, mlflow_tracking=False)
    fmin(holds_its_slot, hp.uniform("x", 0, 1), rand.suggest, 10, trials=trials, show_progressbar=False,
         return_argmin=False)  # fmt: skip
    cancelled = trials.count_cancelled_trials()
    # hyperopt's len: NEW, RUNNING and DONE trials; cancelled ones do not count.
    assert cancelled >= 1 and len(trials) == len(trials.trials) == trials.count_successful_trials()

    trials.timeout = None
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, len(trials) + 3, trials=trials,
         show_progressbar=False)  # fmt: skip
    assert trials.count_successful_trials() == 3  # three more, whatever ended the last fmin
    assert trials.count_cancelled_trials() == cancelled
    assert len(trials) == 3
