"""Every MLflow run the tracker creates ends, whatever happens to fmin or to the server.

These drive :class:`MlflowTracker` directly, the way the engine calls it, against the real
``mlflow server`` of the session (no Spark needed), and read back what it left there.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import mlflow
import pytest
from hyperopt import base, hp, tpe

from connect_trials.tracking import FminSettings, mlflow_tracker
from connect_trials.tracking.call_thread import CallThread
from connect_trials.tracking.child_run_pool import ChildRunPool
from connect_trials.tracking.mlflow_tracker import MlflowTracker
from tests.conftest import captured_log
from tests.test_tracking import Tracking, every_run, tracking_server  # noqa: F401 - the fixture

SPACE = {"x": hp.uniform("x", 0, 1)}


def fmin_settings(parallelism: int = 2) -> FminSettings:
    return FminSettings(
        fmin_id=uuid.uuid4().hex,
        max_evals=4,
        parallelism=parallelism,
        user_specified_parallelism=parallelism,
        timeout=None,
        algo=tpe.suggest,
        max_queue_len=1,
        space=SPACE,
        objective_name="train_model",
    )


def trial_doc(tid: int, x: float = 0.5) -> dict[str, Any]:
    return {"tid": tid, "state": base.JOB_STATE_RUNNING, "misc": {"vals": {"x": [x]}}, "result": {}}


def finish(trial: dict[str, Any], loss: float, attempt: int | None = None) -> dict[str, Any]:
    trial["state"] = base.JOB_STATE_DONE
    trial["result"] = {"loss": loss, "status": base.STATUS_OK}
    if attempt is not None:
        trial["misc"]["connect_trials"] = {"started_at": 0.0, "finished_at": 1.0, "attempt": attempt}
    return trial


class TrialCounts:
    """What fmin_finished reads from the trials object."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def count_successful_trials(self) -> int:
        return sum(d["state"] == base.JOB_STATE_DONE for d in self.docs)

    def count_failed_trials(self) -> int:
        return sum(d["state"] == base.JOB_STATE_ERROR for d in self.docs)

    def count_cancelled_trials(self) -> int:
        return sum(d["state"] in (base.JOB_STATE_CANCEL, base.JOB_STATE_RUNNING) for d in self.docs)

    def count_total_trials(self) -> int:
        return len(self.docs)


def creations_done(tracker: MlflowTracker) -> None:
    """Wait until every run creation queued so far has landed (the thread runs calls in order)."""
    tracker.run_creation.submit(lambda: None).result(timeout=30)


def by_id(server: Tracking) -> dict[str, Any]:
    return {run.info.run_id: run for run in every_run(server)}


# -- the hooks, as the engine calls them -------------------------------------------------------------
def test_a_trial_takes_a_child_run_created_ahead_and_gets_only_its_id(
    tracking_server: Tracking,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
    tracker = MlflowTracker()
    with captured_log(level=logging.INFO) as log:
        tracker.fmin_started(fmin_settings(parallelism=2))
    environ = tracker.worker_environ()
    assert environ["MLFLOW_TRACKING_URI"] == tracking_server.uri
    assert environ["MLFLOW_EXPERIMENT_ID"] == tracking_server.experiment_id
    assert environ["MLFLOW_TRACKING_TOKEN"] == "s3cret"
    creations_done(tracker)
    ready = {r.info.run_id for r in every_run(tracking_server) if r.info.run_name == "trial-pending"}
    assert len(ready) == 2  # the first wave: one per slot

    trials = [trial_doc(0, 0.5), trial_doc(1, 0.25)]
    started = time.perf_counter()
    environs = [tracker.trial_started(t, {"x": t["misc"]["vals"]["x"][0]}) for t in trials]
    took = time.perf_counter() - started
    assert [set(e) for e in environs] == [{"MLFLOW_RUN_ID"}] * 2  # no secret travels per trial
    assert {e["MLFLOW_RUN_ID"] for e in environs} == ready  # taken, not created on the way
    assert took < 1.0, took
    creations_done(tracker)  # the pool refilled: these runs end unused

    tracker.trial_finished(finish(trials[0], 0.25, attempt=1), 0.25)
    tracker.trial_finished(finish(trials[1], 0.0625), 0.0625)
    tracker.fmin_finished(TrialCounts(trials), None)

    runs = by_id(tracking_server)
    parent = next(r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags)
    assert (parent.info.run_name, parent.info.status) == ("fmin-train_model", "FINISHED")
    assert parent.data.params["algo"] == "hyperopt.tpe"
    first, second = (runs[e["MLFLOW_RUN_ID"]] for e in environs)
    assert (first.info.run_name, first.info.status, first.data.tags["attempts"]) == (
        "trial-0",
        "FINISHED",
        "2",
    )
    assert "attempts" not in second.data.tags
    assert first.data.params == {"x": "0.5"} and first.data.metrics["loss"] == 0.25
    unused = [
        r
        for r in runs.values()
        if r.info.run_id not in {parent.info.run_id, first.info.run_id, second.info.run_id}
    ]
    assert unused and all((r.info.status, r.info.lifecycle_stage) == ("KILLED", "deleted") for r in unused)
    assert len(tracking_server.runs()) == 3  # deleted runs are not shown as trials
    # Once, at INFO: where tracking writes and how to turn it off.
    said = log.getvalue()
    assert said.count("MLflow tracking:") == 1
    assert tracking_server.uri in said and parent.info.run_id in said
    assert "mlflow_tracking=False" in said and "spark.databricks.mlflow.trackHyperopt.enabled" in said
    assert "s3cret" not in said


def test_children_of_trials_still_running_when_fmin_is_interrupted_end_killed(
    tracking_server: Tracking,  # noqa: F811
) -> None:
    tracker = MlflowTracker()
    tracker.fmin_started(fmin_settings(parallelism=2))
    trials = [trial_doc(0), trial_doc(1)]
    run_ids = [tracker.trial_started(t, {"x": 0.5})["MLFLOW_RUN_ID"] for t in trials]
    tracker.trial_finished(finish(trials[1], 0.25), 0.25)
    tracker.fmin_finished(TrialCounts(trials), KeyboardInterrupt())

    runs = by_id(tracking_server)
    assert (runs[run_ids[0]].info.status, runs[run_ids[0]].data.tags["trial_status"]) == (
        "KILLED",
        "cancelled",
    )
    assert runs[run_ids[1]].info.status == "FINISHED"
    assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []
    parent = next(r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "KILLED"


# -- interruptions and timeouts ----------------------------------------------------------------------
@pytest.fixture
def gated_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold the parent run's creation until the test opens the gate: (entered, gate)."""
    entered, gate = threading.Event(), threading.Event()
    open_parent = mlflow_tracker.open_parent

    def gated(*args: Any) -> Any:
        entered.set()
        assert gate.wait(60)
        return open_parent(*args)

    monkeypatch.setattr(mlflow_tracker, "open_parent", gated)
    try:
        yield entered, gate
    finally:
        gate.set()


def test_ctrl_c_during_fmin_started_leaves_no_thread_and_no_open_run(
    tracking_server: Tracking,  # noqa: F811
    gated_parent: tuple[threading.Event, threading.Event],
    monkeypatch: pytest.MonkeyPatch,
    ctrl_c: None,
) -> None:
    entered, gate = gated_parent
    tracker = MlflowTracker()

    def ctrl_c_once_the_parent_is_being_created() -> None:
        assert entered.wait(60)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    threading.Thread(target=ctrl_c_once_the_parent_is_being_created, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        tracker.fmin_started(fmin_settings())
    tracker.fmin_finished(TrialCounts([]), KeyboardInterrupt())  # what the caller's finally does

    gate.set()  # the parent's create_run lands after fmin gave up on it
    creator = tracker.run_creation.thread
    assert creator is not None
    creator.join(30)
    assert not creator.is_alive()
    assert tracker.writes.thread is None
    runs = every_run(tracking_server)
    assert len(runs) == 1 and (runs[0].info.status, runs[0].info.lifecycle_stage) == ("KILLED", "deleted")


def test_a_parent_run_created_after_fmin_stopped_waiting_is_ended_when_it_lands(
    tracking_server: Tracking,  # noqa: F811
    gated_parent: tuple[threading.Event, threading.Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, gate = gated_parent
    monkeypatch.setattr(mlflow_tracker, "CALL_TIMEOUT_S", 0.2)
    tracker = MlflowTracker()
    with captured_log() as log:
        tracker.fmin_started(fmin_settings())
        assert tracker.trial_started(trial_doc(0), {"x": 0.5}) == {}
        tracker.fmin_finished(TrialCounts([]), None)
    assert "MLflow did not answer within 0.2 s" in log.getvalue()

    gate.set()
    creator = tracker.run_creation.thread
    assert creator is not None
    creator.join(30)
    runs = every_run(tracking_server)
    assert len(runs) == 1 and (runs[0].info.status, runs[0].info.lifecycle_stage) == ("KILLED", "deleted")


def test_a_child_run_that_lands_after_the_pool_closed_is_discarded() -> None:
    gate, landed = threading.Event(), threading.Event()
    discarded: list[str] = []
    thread = CallThread("test-pool")

    def slow_create() -> str:
        assert gate.wait(60)
        return "late-run"

    def discard(run_id: str) -> None:
        discarded.append(run_id)
        landed.set()

    pool = ChildRunPool(thread, slow_create, discard, lambda exc: None, ahead=1)
    assert pool.take(timeout=0.05) is None  # nothing ready in time: the trial goes untracked
    assert pool.close() == []
    gate.set()
    assert landed.wait(30)
    assert discarded == ["late-run"]
    thread.close()


def test_a_failed_creation_stops_the_pool_and_is_reported_once() -> None:
    failures: list[BaseException] = []
    thread = CallThread("test-pool")

    def create() -> str:
        raise ConnectionError("gone")

    pool = ChildRunPool(thread, create, lambda run_id: None, failures.append, ahead=2)
    pool.fill(3)
    assert pool.take(timeout=30) is None
    thread.close()
    assert thread.thread is not None
    thread.thread.join(30)
    assert [str(f) for f in failures] == ["gone"]


# -- a tracking server that goes away mid-fmin -------------------------------------------------------
class CuttableProxy:
    """A TCP proxy to the MLflow server that the test can cut: the server, as the client sees
    it, goes away at a moment the test chooses."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        for sock in [self.listener, *self.sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass


def test_a_tracking_server_gone_at_the_end_gets_one_warning_listing_the_runs_left_open(
    tracking_server: Tracking,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import urllib.parse

    server = urllib.parse.urlparse(tracking_server.uri)
    proxy = CuttableProxy((server.hostname or "127.0.0.1", server.port or 80))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, not after minutes
    mlflow.set_tracking_uri(f"http://127.0.0.1:{proxy.port}")
    tracker = MlflowTracker()
    tracker.fmin_started(fmin_settings(parallelism=2))
    trials = [trial_doc(0), trial_doc(1)]
    run_ids = [tracker.trial_started(t, {"x": 0.5})["MLFLOW_RUN_ID"] for t in trials]
    creations_done(tracker)
    proxy.cut()
    with captured_log(level=logging.WARNING) as log:
        tracker.trial_finished(finish(trials[0], 0.25), 0.25)
        tracker.fmin_finished(TrialCounts(trials), None)

    warnings = [line for line in log.getvalue().splitlines() if "stay RUNNING" in line]
    assert len(warnings) == 1
    still_running = {r.info.run_id for r in every_run(tracking_server) if r.info.status == "RUNNING"}
    assert set(run_ids) <= still_running
    assert {run_id for run_id in still_running if run_id in warnings[0]} == still_running


# -- a trial's name: at its end when it is short, while it runs when it is not ----------------------
def test_a_short_trial_is_named_and_tagged_with_its_outcome_in_one_request_fewer(
    tracking_server: Tracking,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connect_trials.tracking.mlflow_runs import MlflowRuns

    named_early: list[str] = []
    start_trial = MlflowRuns.start_trial
    monkeypatch.setattr(
        MlflowRuns,
        "start_trial",
        lambda self, run_id, *a: (named_early.append(run_id), start_trial(self, run_id, *a)),
    )
    tracker = MlflowTracker()
    tracker.name_running_trial_after_s = 3600.0  # every trial here is short
    tracker.fmin_started(fmin_settings(parallelism=1))
    trial = trial_doc(0)
    run_id = tracker.trial_started(trial, {"x": 0.5})["MLFLOW_RUN_ID"]
    tracker.trial_finished(finish(trial, 0.25), 0.25)
    tracker.fmin_finished(TrialCounts([trial]), None)
    assert named_early == []
    run = by_id(tracking_server)[run_id]
    assert (run.info.run_name, run.info.status, run.data.tags["trial_tid"]) == ("trial-0", "FINISHED", "0")
    naming = tracker._naming._thread  # closed with fmin: its pending call is dropped
    assert naming is not None
    naming.join(30)
    assert not naming.is_alive()


def test_a_trial_that_runs_on_shows_its_name_and_tid_while_it_runs(
    tracking_server: Tracking,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connect_trials.tracking.mlflow_runs import MlflowRuns

    named = threading.Event()
    start_trial = MlflowRuns.start_trial

    def start_and_say(self: MlflowRuns, *args: Any) -> None:
        start_trial(self, *args)
        named.set()

    monkeypatch.setattr(MlflowRuns, "start_trial", start_and_say)
    tracker = MlflowTracker()
    tracker.name_running_trial_after_s = 0.0  # every trial here has run long enough
    tracker.fmin_started(fmin_settings(parallelism=1))
    trial = trial_doc(0)
    run_id = tracker.trial_started(trial, {"x": 0.5})["MLFLOW_RUN_ID"]
    assert named.wait(30)
    running = by_id(tracking_server)[run_id]
    assert (running.info.run_name, running.info.status, running.data.tags["trial_tid"]) == (
        "trial-0",
        "RUNNING",
        "0",
    )
    tracker.trial_finished(finish(trial, 0.25), 0.25)
    tracker.fmin_finished(TrialCounts([trial]), None)
    assert by_id(tracking_server)[run_id].info.status == "FINISHED"


def test_timers_call_in_due_order_and_drop_what_is_still_waiting_when_closed() -> None:
    from connect_trials.tracking.call_thread import Timers

    timers = Timers("test-timers")
    calls: list[str] = []
    both = threading.Event()
    timers.call_later(3600.0, calls.append, "never")
    timers.call_later(0.05, lambda: (calls.append("second"), both.set()))
    timers.call_later(0.0, calls.append, "first")
    assert both.wait(30)
    timers.close()
    timers._thread.join(30)  # type: ignore[union-attr]
    assert not timers._thread.is_alive()  # type: ignore[union-attr]
    assert calls == ["first", "second"]
    timers.call_later(0.0, calls.append, "after close")  # dropped
    assert calls == ["first", "second"]


def test_resume_keeps_an_untagged_run_its_objective_logged_to_and_deletes_one_nobody_took(
    tracking_server: Tracking,  # noqa: F811
) -> None:
    """A client that died less than a second into a trial left its run named trial-pending,
    without a tid tag: what the objective logged there is kept (KILLED), not deleted."""
    from connect_trials.resume import end_orphaned_runs
    from connect_trials.tracking.parent_run import PENDING_RUN_NAME

    client = mlflow.MlflowClient(tracking_server.uri)
    logged = client.create_run(tracking_server.experiment_id, run_name=PENDING_RUN_NAME).info.run_id
    client.log_metric(logged, "epoch_loss", 0.5, step=0)
    untouched = client.create_run(tracking_server.experiment_id, run_name=PENDING_RUN_NAME).info.run_id
    end_orphaned_runs([client.get_run(logged), client.get_run(untouched)], tracking_server.uri)
    kept, dropped = client.get_run(logged), client.get_run(untouched)
    assert (kept.info.status, kept.info.lifecycle_stage, kept.data.tags["trial_status"]) == (
        "KILLED",
        "active",
        "cancelled",
    )
    assert (dropped.info.status, dropped.info.lifecycle_stage) == ("KILLED", "deleted")
