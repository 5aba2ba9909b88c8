"""Every MLflow run the tracker creates ends, whatever happens to fmin or to the server.

These drive :class:`MlflowTracker` directly, the way the engine calls it, against the real
``mlflow server`` of the session (no Spark needed), and read back what it left there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import mlflow
import pytest
from hyperopt import base, hp, tpe
from mlflow.entities import ViewType

from connect_trials.tracking import FminSettings, mlflow_tracker, run_ledger
from connect_trials.tracking.mlflow_tracker import MlflowTracker
from connect_trials.tracking.parent_run import ParentRun
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


def writes_done(tracker: MlflowTracker) -> None:
    """Wait until every write queued so far has run (the thread runs calls in order)."""
    tracker.writes.thread.submit(lambda: None).result(timeout=30)


def parent_landed(tracker: MlflowTracker) -> None:
    """Wait until the parent run's creation, which fmin_started gave up on, has landed."""
    creator = tracker._parent_creation.thread
    assert creator is not None
    creator.join(30)
    assert not creator.is_alive()


def every_run_ever(server: Tracking) -> list[Any]:
    """The experiment's runs, deleted ones included: what a user finds in the UI's trash."""
    return server.client.search_runs([server.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def by_id(server: Tracking) -> dict[str, Any]:
    return {run.info.run_id: run for run in every_run(server)}


# -- the hooks, as the engine calls them -------------------------------------------------------------
def test_each_trial_gets_one_child_run_of_its_own_named_and_tagged_from_its_start_and_nothing_else(
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
    writes_done(tracker)
    assert len(every_run_ever(tracking_server)) == 1  # the parent: no run is made ahead of a trial

    trials = [trial_doc(0, 0.5), trial_doc(1, 0.25)]
    environs = [tracker.trial_started(t, {"x": t["misc"]["vals"]["x"][0]}) for t in trials]
    assert [set(e) for e in environs] == [{"MLFLOW_RUN_ID"}] * 2  # no secret travels per trial
    running = tracking_server.client.get_run(environs[1]["MLFLOW_RUN_ID"])
    assert running.info.run_name == "trial-1" and running.data.tags["trial_tid"] == "1"  # while it runs

    tracker.trial_finished(finish(trials[0], 0.25, attempt=1), 0.25)
    tracker.trial_finished(finish(trials[1], 0.0625), 0.0625)
    tracker.fmin_finished(TrialCounts(trials), None)

    runs = {run.info.run_id: run for run in every_run_ever(tracking_server)}
    assert len(runs) == 3 and all(r.info.lifecycle_stage == "active" for r in runs.values())
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
    # Once, at INFO: where tracking writes and how to turn it off.
    said = log.getvalue()
    assert said.count("MLflow tracking:") == 1
    assert tracking_server.uri in said and parent.info.run_id in said
    assert "mlflow_tracking=False" in said and "spark.databricks.mlflow.trackHyperopt.enabled" in said
    assert "s3cret" not in said


def test_a_trial_ended_again_by_fmins_end_logs_its_loss_and_artifacts_once(
    tracking_server: Tracking,  # noqa: F811
) -> None:
    tracker = MlflowTracker()
    tracker.fmin_started(fmin_settings(parallelism=2))
    trial = trial_doc(0)
    run_id = tracker.trial_started(trial, {"x": 0.5})["MLFLOW_RUN_ID"]
    trial["misc"]["output"] = "printed once\n"
    tracker.trial_finished(finish(trial, 0.25), 0.25)
    tracker.trial_finished(trial, 0.25)  # a second report of the same end
    tracker.fmin_finished(TrialCounts([trial]), None)  # and fmin's end, with the write maybe queued

    assert len(tracking_server.client.get_metric_history(run_id, "loss")) == 1
    assert [a.path for a in tracking_server.client.list_artifacts(run_id)] == ["output.txt"]
    assert tracking_server.client.get_run(run_id).info.status == "FINISHED"


def test_a_trial_ended_before_its_thread_started_it_gets_one_child_run_not_two(
    tracking_server: Tracking,  # noqa: F811
) -> None:
    tracker = MlflowTracker()
    tracker.fmin_started(fmin_settings(parallelism=2))
    trial = trial_doc(0)
    trial["state"] = base.JOB_STATE_CANCEL  # the fmin settled it while its thread was on its way
    tracker.trial_finished(trial, math.inf)
    assert tracker.trial_started(trial, {"x": 0.5}) == {}  # the thread gets there late: no run
    tracker.fmin_finished(TrialCounts([trial]), None)
    children = [r for r in every_run_ever(tracking_server) if "mlflow.parentRunId" in r.data.tags]
    assert [(r.info.run_name, r.info.status, r.data.tags["trial_status"]) for r in children] == [
        ("trial-0", "KILLED", "cancelled")
    ]


def test_a_slow_child_run_creation_holds_up_only_its_trial_and_is_ended_with_it_when_it_lands(
    tracking_server: Tracking,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run_ledger, "CALL_TIMEOUT_S", 0.2)
    entered, gate = threading.Event(), threading.Event()
    create_child = ParentRun.create_child

    def slow_for_trial_0(self: ParentRun, tid: int, tags: dict[str, str]) -> str:
        if tid == 0:
            entered.set()
            assert gate.wait(60)
        return create_child(self, tid, tags)

    monkeypatch.setattr(ParentRun, "create_child", slow_for_trial_0)
    tracker = MlflowTracker()
    with captured_log(level=logging.WARNING) as log:
        tracker.fmin_started(fmin_settings(parallelism=2))
        trials = [trial_doc(0), trial_doc(1)]
        assert tracker.trial_started(trials[0], {"x": 0.5}) == {}  # runs without a run id for now
        assert entered.is_set()
        tracker.trial_finished(finish(trials[0], 0.25), 0.25)  # and ends before its run lands
        gate.set()
        assert tracker.child_runs is not None
        tracker.child_runs.creation.submit(lambda: None).result(timeout=30)  # trial 0's run landed
        assert set(tracker.trial_started(trials[1], {"x": 0.5})) == {"MLFLOW_RUN_ID"}  # tracking is on
        tracker.trial_finished(finish(trials[1], 0.5), 0.25)
        tracker.fmin_finished(TrialCounts(trials), None)

    assert "tracking is off" not in log.getvalue()
    children = [r for r in every_run_ever(tracking_server) if "mlflow.parentRunId" in r.data.tags]
    assert sorted((r.info.run_name, r.info.status, r.data.metrics["loss"]) for r in children) == [
        ("trial-0", "FINISHED", 0.25),
        ("trial-1", "FINISHED", 0.5),
    ]


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
    parent_landed(tracker)
    assert tracker.writes.thread.thread is None
    runs = every_run_ever(tracking_server)  # ended, never deleted: it is this fmin's parent
    assert len(runs) == 1 and (runs[0].info.status, runs[0].info.lifecycle_stage) == ("KILLED", "active")


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
    parent_landed(tracker)
    runs = every_run_ever(tracking_server)
    assert len(runs) == 1 and (runs[0].info.status, runs[0].info.lifecycle_stage) == ("KILLED", "active")


def test_a_resumed_parent_that_fmin_stopped_waiting_for_is_ended_and_never_deleted(
    tracking_server: Tracking,  # noqa: F811
    gated_parent: tuple[threading.Event, threading.Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, gate = gated_parent
    monkeypatch.setattr(mlflow_tracker, "CALL_TIMEOUT_S", 0.2)
    earlier = tracking_server.client.create_run(tracking_server.experiment_id, run_name="fmin-earlier")
    tracking_server.client.set_terminated(earlier.info.run_id, "FINISHED")
    settings = dataclasses.replace(fmin_settings(), resume_run_id=earlier.info.run_id)
    tracker = MlflowTracker()
    tracker.fmin_started(settings)  # gives up on the parent after 0.2 s
    tracker.fmin_finished(TrialCounts([]), None)
    gate.set()
    parent_landed(tracker)
    [run] = every_run_ever(tracking_server)
    # Never deleted, and back to the status the earlier search had left it in.
    assert run.info.run_id == earlier.info.run_id
    assert (run.info.lifecycle_stage, run.info.status) == ("active", "FINISHED")


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
    proxy.cut()
    with captured_log(level=logging.WARNING) as log:
        tracker.trial_finished(finish(trials[0], 0.25), 0.25)
        tracker.fmin_finished(TrialCounts(trials), None)

    warnings = [line for line in log.getvalue().splitlines() if "stay RUNNING" in line]
    assert len(warnings) == 1
    still_running = {r.info.run_id for r in every_run(tracking_server) if r.info.status == "RUNNING"}
    assert set(run_ids) <= still_running
    assert {run_id for run_id in still_running if run_id in warnings[0]} == still_running
