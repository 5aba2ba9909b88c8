"""Automated MLflow tracking, checked against a real ``mlflow server`` and Spark Connect server.

Each test gets a fresh experiment on the session's MLflow server (``tracking`` fixture) and
reads back what fmin recorded there with ``MlflowClient``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pytest
from hyperopt import STATUS_OK, fmin, hp, rand, tpe
from hyperopt.pyll import scope
from mlflow import MlflowClient
from pyspark import cloudpickle

from connect_trials import ConnectTrials, tracking
from connect_trials.tracking import mlflow_tracker
from connect_trials.tracking.hyperparameters import SearchSpace, algo_name, param_key
from connect_trials.tracking.parent_run import ParentRun
from connect_trials.tracking.uris import absolute_tracking_uri
from tests.conftest import captured_log

# The objectives below run on Spark workers, where this module cannot be imported.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SECRET = "s3cret-token-never-logged"


@dataclass
class Tracking:
    client: MlflowClient
    uri: str
    experiment_id: str

    def runs(self, experiment_id: str | None = None) -> list[Any]:
        return self.client.search_runs([experiment_id or self.experiment_id], max_results=1000)

    def parent_and_children(self, experiment_id: str | None = None) -> tuple[Any, list[Any]]:
        """The one parent run and its children (named ``trial-<tid>``)."""
        runs = self.runs(experiment_id)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1, [r.info.run_name for r in runs]
        return parents[0], [r for r in runs if "mlflow.parentRunId" in r.data.tags]

    def new_experiment(self, monkeypatch: pytest.MonkeyPatch) -> str:
        experiment_id = self.client.create_experiment(f"connect-trials-{uuid.uuid4().hex}")
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
        return experiment_id


@pytest.fixture
def tracking_server(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tracking]:
    """The session's MLflow server as tracking URI, and a fresh experiment, for one test."""
    saved_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    server = Tracking(client, mlflow_server, "")
    server.experiment_id = server.new_experiment(monkeypatch)
    try:
        yield server
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(saved_uri)


def run_fmin(spark: Any, fn: Any, space: Any, max_evals: int, seed: int = 0, algo: Any = rand.suggest,
             **trials_kwargs: Any) -> tuple[ConnectTrials, Any]:  # fmt: skip
    trials = ConnectTrials(spark_session=spark, **{"parallelism": 2, **trials_kwargs})
    best = fmin(
        fn,
        space,
        algo=algo,
        max_evals=max_evals,
        trials=trials,
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
    )
    return trials, best


def trial_of(trials: ConnectTrials, run: Any) -> dict[str, Any]:
    """The trial document of a child run (``trials.trials`` leaves out ERROR and CANCEL)."""
    tid = int(run.info.run_name.removeprefix("trial-"))
    return next(t for t in trials._dynamic_trials if t["tid"] == tid)


# -- objectives (they run on the Spark workers) ---------------------------------------------------
def quadratic(point: dict[str, Any]) -> dict[str, Any]:
    x = point["x"]
    penalty = 0.0 if point["act"] == "relu" else 1.0
    return {"loss": (x - 0.5) ** 2 + penalty, "status": STATUS_OK, "model": point["model"]}


def logs_through_the_fluent_api(point: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    import mlflow

    mlflow.log_param("inner_param", point["x"])
    mlflow.log_metric("inner_metric", 2 * point["x"])
    mlflow.set_tag("inner_tag", "from the objective")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "note.txt")
        with open(path, "w") as note:
            note.write(f"x={point['x']!r}")
        mlflow.log_artifact(path)
    run = mlflow.active_run()
    return {"loss": point["x"] ** 2, "status": STATUS_OK, "run_id": run.info.run_id, "pid": os.getpid()}


def logs_inside_start_run(point: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_metric("inside_start_run", point["x"])
        run_id = run.info.run_id
    return {"loss": point["x"] ** 2, "status": STATUS_OK, "run_id": run_id, "pid": os.getpid()}


def sets_uri_and_experiment_then_logs(point: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    # What a careful objective does; it must not leak into the next task on this worker.
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment(experiment_id=os.environ["MLFLOW_EXPERIMENT_ID"])
    mlflow.log_param("inner_param", point["x"])
    token_seen = os.environ.get("MLFLOW_TRACKING_TOKEN") == SECRET
    return {"loss": point["x"] ** 2, "status": STATUS_OK, "token_seen": token_seen, "pid": os.getpid()}


def logs_a_param(point: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    mlflow.log_param("inner_param", point["x"])
    return {"loss": point["x"] ** 2, "status": STATUS_OK, "pid": os.getpid()}


def reports_mlflow_state(point: dict[str, Any]) -> dict[str, Any]:
    mlflow = sys.modules.get("mlflow")
    return {
        "loss": point["x"] ** 2,
        "status": STATUS_OK,
        "pid": os.getpid(),
        "mlflow_env": {
            k: v for k, v in os.environ.items() if k.startswith("MLFLOW_") and k != "MLFLOW_TRACKING_TOKEN"
        },
        "token_present": "MLFLOW_TRACKING_TOKEN" in os.environ,
        "tracking_uri": None if mlflow is None else mlflow.get_tracking_uri(),
        "active_run": mlflow is not None and mlflow.active_run() is not None,
    }


def raises_fails_or_succeeds(point: dict[str, Any]) -> Any:
    if point["mode"] == "raise":
        raise ValueError(f"bad x {point['x']:.3f}")
    if point["mode"] == "fail":
        return {"status": "fail"}
    return point["x"]


def sleeps(point: dict[str, Any]) -> float:
    time.sleep(point["sleep"])
    return float(point["sleep"])


SPACE = {
    "x": hp.uniform("x", -2, 2),
    "act": hp.choice("act", ["relu", "tanh"]),
    "model": hp.choice("model", [{"type": "svm", "C": hp.uniform("C", 0, 1)}, {"type": "forest"}]),
    "lr": hp.loguniform("lr (log)", -3, 0),
}
X_SPACE = {"x": hp.uniform("x", -1, 1)}


# -- names and values (no servers) ---------------------------------------------------------------
def test_child_params_are_the_values_the_objective_received_with_the_index_of_each_choice() -> None:
    space = {**SPACE, "units": hp.pchoice("units", [(0.2, 16), (0.8, 64)])}
    argument = {"x": 0.25, "act": "tanh", "model": {"C": 0.5, "type": "svm"}, "lr": 0.125, "units": 64}
    vals = {"x": [0.25], "act": [1], "model": [0], "C": [0.5], "lr (log)": [0.125], "units": [1]}
    assert SearchSpace.of(space).params(argument, vals) == {
        "x": "0.25",
        "act": "tanh",
        "act_index": "1",
        "model": "{'C': 0.5, 'type': 'svm'}",  # as mlflow.log_params(argument) writes it
        "model_index": "0",
        "lr": "0.125",
        "units": "64",
        "units_index": "1",
    }


def test_params_of_a_scalar_or_list_argument_are_named_after_the_nearest_label() -> None:
    n = scope.int(hp.quniform("n", 10, 100, 1))
    assert SearchSpace.of(n).params(51, {"n": [51.0]}) == {"n": "51"}
    space = [n, hp.loguniform("lr", -3, 0), 7]
    assert SearchSpace.of(space).params([51, 0.1, 7], {"n": [51.0], "lr": [0.1]}) == {
        "n": "51",
        "lr": "0.1",
        "2": "7",
    }
    choice = hp.choice("model", [{"depth": scope.int(hp.quniform("depth", 1, 5, 1))}, {"kind": "linear"}])
    assert SearchSpace.of(choice).params({"depth": 3}, {"model": [0], "depth": [3.0]}) == {
        "depth": "3",
        "model_index": "0",
    }


@pytest.mark.parametrize("label", ["lr (log)", "../x", ".", "..", "a/b", "x:y", "ü", "", "a=b&c"])
def test_any_hyperopt_label_becomes_a_valid_mlflow_param_name(label: str) -> None:
    from mlflow.utils.validation import _validate_param_name

    _validate_param_name(param_key(label))


def test_algo_is_the_algorithms_module_as_databricks_logs_it() -> None:
    import functools

    from hyperopt import anneal

    assert algo_name(tpe.suggest) == "hyperopt.tpe"
    assert algo_name(functools.partial(tpe.suggest, n_startup_jobs=2)) == "hyperopt.tpe"
    assert algo_name(rand.suggest) == "hyperopt.rand"
    assert algo_name(anneal.suggest) == "hyperopt.anneal"
    assert algo_name(run_fmin) == "tests.test_tracking"


def test_local_tracking_uris_are_made_absolute_because_workers_run_in_another_folder(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_tracking_uri("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"
    assert absolute_tracking_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert absolute_tracking_uri("databricks") == "databricks"


# -- parent and child runs -------------------------------------------------------------------------
def test_fmin_without_an_active_run_records_a_parent_and_one_child_per_trial_and_ends_the_parent(
    spark: Any, tracking_server: Tracking
) -> None:
    trials, _ = run_fmin(spark, quadratic, SPACE, max_evals=6, parallelism=None, algo=tpe.suggest)

    assert mlflow.active_run() is None
    parent, children = tracking_server.parent_and_children()
    assert parent.info.status == "FINISHED"
    assert parent.data.params == {
        "max_evals": "6",
        "actual_parallelism": "2",
        "parallelism": "None",
        "timeout": "None",
        "algo": "hyperopt.tpe",
        "max_queue_len": "1",
    }
    tags = parent.data.tags
    assert tags["runSource"] == "hyperoptAutoTracking"
    fmin_uuid = tags["fmin_uuid"]
    assert len(fmin_uuid) == 6 and int(fmin_uuid, 16) >= 0
    assert "hyperopt_param" in tags["space"] and "Literal{act}" in tags["space"]
    losses = [t["result"]["loss"] for t in trials.trials]
    metrics = parent.data.metrics
    assert metrics["successful_trials_count"] == 6
    assert metrics["failed_trials_count"] == 0
    assert metrics["cancelled_trials_count"] == 0
    assert metrics["total_trials_count"] == 6
    assert metrics["best_trial_loss"] == pytest.approx(min(losses))

    assert sorted(r.info.run_name for r in children) == sorted(f"trial-{t['tid']}" for t in trials.trials)
    for run in children:
        trial = trial_of(trials, run)
        vals = trial["misc"]["vals"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["fmin_uuid"] == fmin_uuid
        assert run.data.tags["runSource"] == "hyperoptAutoTracking"
        assert run.data.tags["trial_status"] == "success"
        assert run.data.metrics["loss"] == pytest.approx(trial["result"]["loss"])
        params = run.data.params
        assert float(params["x"]) == pytest.approx(vals["x"][0])
        assert float(params["lr"]) == pytest.approx(vals["lr (log)"][0])
        # hp.choice: the value the objective received, and the index hyperopt stores.
        assert params["act"] == ["relu", "tanh"][vals["act"][0]]
        assert params["act_index"] == str(vals["act"][0])
        assert params["model"] == str(trial["result"]["model"])
        assert params["model_index"] == str(vals["model"][0])
        assert set(params) == {"x", "lr", "act", "act_index", "model", "model_index"}


def test_best_trial_loss_is_logged_at_each_improvement_with_the_finished_trial_count_as_step(
    spark: Any, tracking_server: Tracking
) -> None:
    # parallelism 1: trials finish in tid order, so the improvements are known exactly.
    trials, _ = run_fmin(spark, lambda p: p["x"] ** 2, X_SPACE, max_evals=8, parallelism=1, seed=3)

    parent, _ = tracking_server.parent_and_children()
    history = tracking_server.client.get_metric_history(parent.info.run_id, "best_trial_loss")
    expected, best = [], math.inf
    for step, trial in enumerate(sorted(trials.trials, key=lambda t: t["tid"]), start=1):
        if trial["result"]["loss"] < best:
            best = trial["result"]["loss"]
            expected.append((step, best))
    assert len(expected) >= 2  # the seed gives a history, not a single point
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (step, pytest.approx(value)) for step, value in expected
    ]


def test_two_fmins_in_one_active_run_leave_it_open_and_suffix_the_second_fmins_names(
    spark: Any, tracking_server: Tracking
) -> None:
    with mlflow.start_run() as run:
        first, _ = run_fmin(spark, logs_through_the_fluent_api, X_SPACE, max_evals=3, seed=1)
        second, _ = run_fmin(spark, logs_inside_start_run, X_SPACE, max_evals=4, seed=2)
        assert mlflow.active_run() is not None
        assert mlflow.active_run().info.run_id == run.info.run_id
    parent, children = tracking_server.parent_and_children()
    assert parent.info.run_id == run.info.run_id

    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    first_uuid = tags["fmin_uuid"]
    suffixed = [k for k in tags if k.startswith("fmin_uuid_")]
    assert len(suffixed) == 1
    second_uuid = tags[suffixed[0]]
    assert suffixed[0] == f"fmin_uuid_{second_uuid}" and second_uuid != first_uuid
    assert params["max_evals"] == "3" and params[f"max_evals_{second_uuid}"] == "4"
    assert params["algo"] == params[f"algo_{second_uuid}"] == "hyperopt.rand"
    assert metrics["total_trials_count"] == 3
    assert metrics[f"total_trials_count_{second_uuid}"] == 4
    assert metrics[f"best_trial_loss_{second_uuid}"] == pytest.approx(min(second.losses()))
    assert f"space_{second_uuid}" in tags and tags["runSource"] == "hyperoptAutoTracking"

    by_fmin: dict[str, list[Any]] = {}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == run.info.run_id
        by_fmin.setdefault(child.data.tags["fmin_uuid"], []).append(child)
    assert {k: len(v) for k, v in by_fmin.items()} == {first_uuid: 3, second_uuid: 4}

    # The objective's own MLflow calls landed on its trial's child run, and nowhere else.
    for child in by_fmin[first_uuid]:
        result = trial_of(first, child)["result"]
        x = trial_of(first, child)["misc"]["vals"]["x"][0]
        assert result["run_id"] == child.info.run_id
        assert float(child.data.params["inner_param"]) == pytest.approx(x)
        assert child.data.metrics["inner_metric"] == pytest.approx(2 * x)
        assert child.data.tags["inner_tag"] == "from the objective"
        note = tracking_server.client.download_artifacts(child.info.run_id, "note.txt")
        assert float(open(note).read().removeprefix("x=")) == pytest.approx(x)
        assert child.info.status == "FINISHED"
    for child in by_fmin[second_uuid]:
        trial = trial_of(second, child)
        assert trial["result"]["run_id"] == child.info.run_id
        assert child.data.metrics["inside_start_run"] == pytest.approx(trial["misc"]["vals"]["x"][0])
        assert child.info.status == "FINISHED"
    assert len(tracking_server.runs()) == 1 + 3 + 4


# -- failures and cancellations --------------------------------------------------------------------
def test_failed_trials_are_failed_child_runs_with_the_remote_traceback(
    spark: Any, tracking_server: Tracking
) -> None:
    space = {"mode": hp.choice("mode", ["ok", "raise", "fail"]), "x": hp.uniform("x", 0, 1)}
    trials, _ = run_fmin(spark, raises_fails_or_succeeds, space, max_evals=6, seed=1)

    parent, children = tracking_server.parent_and_children()
    modes = {}
    for run in children:
        trial = trial_of(trials, run)
        mode = ["ok", "raise", "fail"][trial["misc"]["vals"]["mode"][0]]
        modes[run.info.run_id] = mode
        assert run.data.params["mode"] == mode
        if mode == "ok":
            assert (run.info.status, run.data.tags["trial_status"]) == ("FINISHED", "success")
            assert run.data.metrics["loss"] == pytest.approx(trial["result"]["loss"])
        elif mode == "fail":  # hyperopt keeps it DONE; its child run says what happened
            assert (run.info.status, run.data.tags["trial_status"]) == ("FAILED", "failure")
            assert "loss" not in run.data.metrics
        else:
            assert (run.info.status, run.data.tags["trial_status"]) == ("FAILED", "failure")
            assert run.data.tags["error_type"] == "<class 'ValueError'>"
            assert run.data.tags["error_message"].startswith("ValueError: bad x")
            assert "loss" not in run.data.metrics
            path = tracking_server.client.download_artifacts(run.info.run_id, "error_traceback.txt")
            text = open(path).read()
            assert text == trial["misc"]["error"][1]
            assert "Traceback (most recent call last)" in text and "in raises_fails_or_succeeds" in text
    assert set(modes.values()) == {"ok", "raise", "fail"}  # the seed covers every case
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["failed_trials_count"] == list(modes.values()).count("raise")
    assert parent.data.metrics["successful_trials_count"] == 6 - list(modes.values()).count("raise")


def test_trials_cancelled_by_the_timeout_are_killed_child_runs(spark: Any, tracking_server: Tracking) -> None:
    space = {"sleep": hp.choice("sleep", [0, 60])}
    started = time.monotonic()
    trials, _ = run_fmin(spark, sleeps, space, max_evals=2, seed=7, timeout=8)
    assert time.monotonic() - started < 30

    assert trials.fmin_cancelled_reason == "fmin run timeout"
    parent, children = tracking_server.parent_and_children()
    slept = {r.info.run_id: [0, 60][trial_of(trials, r)["misc"]["vals"]["sleep"][0]] for r in children}
    assert sorted(slept.values()) == [0, 60]  # the seed's two points
    for run in children:
        if slept[run.info.run_id] == 60:
            assert (run.info.status, run.data.tags["trial_status"]) == ("KILLED", "cancelled")
        else:
            assert (run.info.status, run.data.tags["trial_status"]) == ("FINISHED", "success")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["cancelled_trials_count"] == 1
    assert parent.data.metrics["successful_trials_count"] == 1
    assert parent.data.params["timeout"] == "8"


# -- switches ----------------------------------------------------------------------------------------
def test_mlflow_tracking_false_records_nothing_and_hands_workers_no_run(
    spark: Any, tracking_server: Tracking
) -> None:
    trials, _ = run_fmin(spark, reports_mlflow_state, X_SPACE, max_evals=2, mlflow_tracking=False)
    assert tracking_server.runs() == []
    assert all("MLFLOW_RUN_ID" not in t["result"]["mlflow_env"] for t in trials.trials)


def test_the_spark_conf_turns_tracking_off_unless_mlflow_tracking_is_true(
    spark: Any, tracking_server: Tracking
) -> None:
    spark.conf.set(tracking.TRACKING_CONF, "false")
    try:
        run_fmin(spark, lambda p: p["x"], X_SPACE, max_evals=2)
        assert tracking_server.runs() == []
        run_fmin(spark, lambda p: p["x"], X_SPACE, max_evals=2, mlflow_tracking=True)
        parent, children = tracking_server.parent_and_children()
        assert len(children) == 2
    finally:
        spark.conf.unset(tracking.TRACKING_CONF)
    run_fmin(spark, lambda p: p["x"], X_SPACE, max_evals=2)
    assert len(tracking_server.runs()) == 2 * (1 + 2)


# -- the worker shim ---------------------------------------------------------------------------------
def test_reused_python_workers_carry_no_mlflow_state_from_one_fmin_into_the_next(
    spark: Any, tracking_server: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    with captured_log() as log:
        first, _ = run_fmin(spark, sets_uri_and_experiment_then_logs, X_SPACE, max_evals=4, seed=1)
        # Into another experiment: a set_experiment left over from the first fmin would make
        # MLflow refuse to resume the child run.
        second_experiment = tracking_server.new_experiment(monkeypatch)
        second, _ = run_fmin(spark, logs_a_param, X_SPACE, max_evals=4, seed=2)
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
        third, _ = run_fmin(spark, reports_mlflow_state, X_SPACE, max_evals=4, seed=3, mlflow_tracking=False)

    assert all(t["result"]["token_seen"] for t in first.trials)  # credentials reach the worker
    for trials, experiment_id in ((first, tracking_server.experiment_id), (second, second_experiment)):
        assert trials.count_successful_trials() == 4
        _, children = tracking_server.parent_and_children(experiment_id)
        for child in children:
            x = trial_of(trials, child)["misc"]["vals"]["x"][0]
            assert float(child.data.params["inner_param"]) == pytest.approx(x)
    for trial in third.trials:
        state = trial["result"]
        # The worker's own environment may name a default store; not the tracked fmins' one.
        assert "MLFLOW_RUN_ID" not in state["mlflow_env"]
        assert state["mlflow_env"].get("MLFLOW_EXPERIMENT_ID") not in (
            tracking_server.experiment_id,
            second_experiment,
        )
        assert state["mlflow_env"].get("MLFLOW_TRACKING_URI") != tracking_server.uri
        assert not state["token_present"]
        assert state["tracking_uri"] != tracking_server.uri
        assert not state["active_run"]
    tracked_pids = {t["result"]["pid"] for t in first.trials + second.trials}
    assert tracked_pids & {t["result"]["pid"] for t in third.trials}, "no worker was reused: vacuous"
    # The credentials went to the workers, not into any log or run.
    assert SECRET not in log.getvalue()
    for run in tracking_server.runs() + tracking_server.runs(second_experiment):
        assert SECRET not in str(run.data.params) + str(run.data.tags)


# -- resilience ---------------------------------------------------------------------------------------
def test_an_unreachable_tracking_server_only_warns_and_fmin_finds_the_same_best(
    spark: Any, tracking_server: Tracking
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    with captured_log() as log:
        started = time.monotonic()
        trials, best = run_fmin(spark, reports_mlflow_state, X_SPACE, max_evals=4, seed=5)
        elapsed = time.monotonic() - started
    _, untracked_best = run_fmin(
        spark, reports_mlflow_state, X_SPACE, max_evals=4, seed=5, mlflow_tracking=False
    )

    assert best == untracked_best
    assert trials.count_successful_trials() == 4
    assert all("MLFLOW_RUN_ID" not in t["result"]["mlflow_env"] for t in trials.trials)
    assert "MLflow tracking is off for the rest of this fmin" in log.getvalue()
    assert log.getvalue().count("MLflow tracking is off") == 1
    assert elapsed < 30  # MLflow alone would retry the closed port for minutes


def test_a_tracking_server_that_never_answers_cannot_stall_fmin(
    spark: Any, tracking_server: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mlflow_tracker, "CALL_TIMEOUT_S", 1.0)
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        mlflow.set_tracking_uri(f"http://127.0.0.1:{silent.getsockname()[1]}")
        with captured_log() as log:
            started = time.monotonic()
            trials, _ = run_fmin(spark, lambda p: p["x"], X_SPACE, max_evals=2)
            elapsed = time.monotonic() - started
    assert trials.count_successful_trials() == 2
    assert "MLflow did not answer within 1 s" in log.getvalue()
    assert elapsed < 15


def break_tracking_after(n_runs: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tracking server goes away after ``n_runs`` child runs: the ids of those it created."""
    create_child = ParentRun.create_child
    created: list[str] = []

    def fails_after_n(self: ParentRun, *args: Any) -> str:
        if len(created) == n_runs:
            raise ConnectionError("tracking server went away")
        created.append(create_child(self, *args))
        return created[-1]

    monkeypatch.setattr(ParentRun, "create_child", fails_after_n)
    return created


def test_tracking_that_breaks_during_fmin_stops_and_still_ends_every_run_it_created(
    spark: Any, tracking_server: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = break_tracking_after(3, monkeypatch)
    with captured_log() as log:
        trials, _ = run_fmin(spark, reports_mlflow_state, X_SPACE, max_evals=5, parallelism=1)

    assert trials.count_successful_trials() == 5
    environs = [t["result"]["mlflow_env"] for t in trials.trials]
    tracked = [e["MLFLOW_RUN_ID"] for e in environs if e.get("MLFLOW_TRACKING_URI") == tracking_server.uri]
    assert 1 <= len(tracked) < 5 and set(tracked) <= set(created)
    # The trials after the break log to a store of their own task, never to the server.
    assert all(e["MLFLOW_RUN_ID"] in created or e["MLFLOW_TRACKING_URI"].startswith("file://")
               for e in environs)  # fmt: skip
    assert log.getvalue().count("MLflow tracking is off for the rest of this fmin") == 1
    assert "ConnectionError: tracking server went away" in log.getvalue()
    assert "stay RUNNING" not in log.getvalue()
    parent, children = tracking_server.parent_and_children()
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_id for r in children) == sorted(tracked)
    assert all(r.info.status == "FINISHED" and r.data.tags["trial_status"] == "success" for r in children)
    assert [r.info.run_name for r in every_run(tracking_server) if r.info.status == "RUNNING"] == []


def test_a_write_mlflow_refuses_is_one_warning_and_tracking_goes_on(
    spark: Any, tracking_server: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    def refused(self: ParentRun, loss: float, step: int) -> None:
        raise MlflowException("Metric refused.", error_code=INVALID_PARAMETER_VALUE)

    monkeypatch.setattr(ParentRun, "log_best_loss", refused)
    with captured_log(level=logging.WARNING) as log:
        run_fmin(spark, lambda p: p["x"], X_SPACE, max_evals=3)

    assert log.getvalue().count("MLflow refused part of this fmin's tracking") == 1
    assert "MLflow tracking is off" not in log.getvalue()
    parent, children = tracking_server.parent_and_children()
    assert parent.info.status == "FINISHED" and parent.data.metrics["total_trials_count"] == 3
    assert sorted(run.data.tags["trial_status"] for run in children) == ["success"] * 3


def test_a_param_the_objective_logged_with_another_value_keeps_the_objectives_value(
    spark: Any, tracking_server: Tracking
) -> None:
    def logs_x_rounded(point: dict[str, Any]) -> float:
        import mlflow

        mlflow.log_param("x", round(point["x"], 1))  # tracking's own x is the full value
        return point["x"]

    with captured_log(level=logging.WARNING) as log:
        trials, _ = run_fmin(spark, logs_x_rounded, X_SPACE, max_evals=2)

    assert "MLflow refused" not in log.getvalue()
    _, children = tracking_server.parent_and_children()
    for run in children:
        x = trial_of(trials, run)["misc"]["vals"]["x"][0]
        assert run.data.params["x"] == str(round(x, 1))
        assert (run.info.status, run.data.tags["trial_status"]) == ("FINISHED", "success")
        assert "loss" in run.data.metrics


# -- the objective's own param logging (issue: scripts written for SparkTrials) --------------------
MODEL_SPACE = {
    "n": scope.int(hp.quniform("n", 10, 100, 1)),
    "lr": hp.loguniform("lr", -5, 0),
    "step": hp.quniform("step", 0, 1, 0.25),
    "optimizer": {"name": "adam", "beta": hp.uniform("beta", 0.8, 0.99)},
    "model": hp.choice(
        "model",
        [
            {"type": "forest", "depth": scope.int(hp.quniform("depth", 2, 8, 1))},
            {"type": "linear", "l2": hp.loguniform("l2", -4, 0)},
        ],
    ),
}


def logs_its_own_params(params: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    mlflow.log_params(params)  # the common SparkTrials pattern
    return {"loss": params["lr"], "status": STATUS_OK, "received": {k: str(v) for k, v in params.items()}}


def test_an_objective_that_logs_its_own_params_runs_every_trial_and_its_child_run_holds_them(
    spark: Any, tracking_server: Tracking
) -> None:
    trials, _ = run_fmin(spark, logs_its_own_params, MODEL_SPACE, max_evals=6, seed=4)

    assert trials.count_successful_trials() == 6 and trials.count_failed_trials() == 0
    _, children = tracking_server.parent_and_children()
    models = set()
    for run in children:
        trial = trial_of(trials, run)
        received = trial["result"]["received"]
        assert {k: run.data.params[k] for k in received} == received
        assert received["n"] == str(int(received["n"]))  # scope.int: "51", not hyperopt's "51.0"
        assert run.data.params["model_index"] == str(trial["misc"]["vals"]["model"][0])
        models.add(eval(received["model"])["type"])
        assert run.info.status == "FINISHED"
    assert models == {"forest", "linear"}  # the seed reaches both branches


def fits_a_tree_with_autolog(params: dict[str, Any]) -> float:
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    mlflow.sklearn.autolog(log_models=False, log_datasets=False)
    features, labels = load_iris(return_X_y=True)
    model = DecisionTreeClassifier(
        max_depth=params["max_depth"], min_samples_leaf=params["leaf"], random_state=0
    )
    model.fit(features, labels)
    return 1.0 - float(model.score(features, labels))


def test_sklearn_autolog_in_the_objective_keeps_every_param_it_logs(
    spark: Any, tracking_server: Tracking
) -> None:
    space = {
        "max_depth": scope.int(hp.quniform("max_depth", 1, 6, 1)),
        "leaf": scope.int(hp.quniform("leaf", 1, 9, 1)),
    }
    trials, _ = run_fmin(spark, fits_a_tree_with_autolog, space, max_evals=3, seed=2)

    assert trials.count_successful_trials() == 3
    _, children = tracking_server.parent_and_children()
    for run in children:
        vals = trial_of(trials, run)["misc"]["vals"]
        params = run.data.params
        assert params["max_depth"] == str(int(vals["max_depth"][0]))
        assert params["min_samples_leaf"] == str(int(vals["leaf"][0]))
        assert params["criterion"] == "gini"  # logged by autolog alone
        assert "training_score" in run.data.metrics


def every_run(server: Tracking) -> list[Any]:
    """Every run of the test's experiment, deleted ones included."""
    from mlflow.entities import ViewType

    return server.client.search_runs([server.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def logs_a_param_autolog_then_logs_again(params: dict[str, Any]) -> float:
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    mlflow.sklearn.autolog(log_models=False, log_datasets=False)
    mlflow.log_param("max_depth", "shallow")  # autolog's max_depth=<int> will conflict with it
    print("fitting a tree")
    features, labels = load_iris(return_X_y=True)
    model = DecisionTreeClassifier(max_depth=params["max_depth"], random_state=0).fit(features, labels)
    return 1.0 - float(model.score(features, labels))


def test_mlflows_own_warning_inside_a_trial_reaches_the_clients_log_once_and_output_is_attached(
    spark: Any, tracking_server: Tracking
) -> None:
    space = {"max_depth": scope.int(hp.quniform("max_depth", 1, 6, 1))}
    with captured_log(level=logging.WARNING) as log:
        trials, _ = run_fmin(spark, logs_a_param_autolog_then_logs_again, space, max_evals=3)

    assert trials.count_successful_trials() == 3
    warned = [line for line in log.getvalue().splitlines() if "warned on its worker" in line]
    assert len([line for line in warned if "Changing param values is not allowed" in line]) == 1, warned
    _, children = tracking_server.parent_and_children()
    for run in children:
        output_file = tracking_server.client.download_artifacts(run.info.run_id, "output.txt")
        with open(output_file) as f:
            text = f.read()
        assert text == trial_of(trials, run)["misc"]["output"]
        assert "fitting a tree" in text
