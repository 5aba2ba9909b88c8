"""MLflow logging from inside the objective on workers that cannot reach the client's tracking
store (the suite's default sqlite store is hidden from the cluster's workers), and on workers
that can (a real ``mlflow server`` on loopback)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from typing import Any

import mlflow
import pytest
from hyperopt import fmin, hp, rand
from mlflow import MlflowClient
from pyspark import cloudpickle

from connect_trials import ConnectTrials, worker
from connect_trials.worker import relay
from tests.conftest import captured_log

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BASE_MS = 1_700_000_000_000  # metric timestamps the objective chooses, to check they are kept


def logs_everything(x: float) -> float:
    import tempfile

    import mlflow

    mlflow.log_param("single", "one")
    mlflow.log_params({"lr": 0.1, "depth": 3})
    for step in range(10):
        mlflow.log_metric("val_loss", 1.0 / (step + 1), step=step, timestamp=BASE_MS + step)
    mlflow.set_tag("family", "forest")
    mlflow.log_dict({"x": x}, "config/argument.json")
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("small")
    mlflow.log_artifact(os.path.join(folder, "notes.txt"))
    with open(os.path.join(folder, "huge.bin"), "wb") as f:
        f.truncate(worker.MAX_RELAYED_ARTIFACT_BYTES + 1)
    mlflow.log_artifact(os.path.join(folder, "huge.bin"))
    return x


@pytest.fixture
def hidden_store_experiment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> tuple[MlflowClient, str]:
    """A fresh experiment in the suite's default store, a sqlite file the workers cannot see;
    its artifacts under the test's folder (a sqlite store's default is ./mlruns, the checkout)."""
    uri = mlflow.get_tracking_uri()
    assert uri.startswith("sqlite:///")
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(
        f"relay-{uuid.uuid4().hex}", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    return client, experiment_id


def test_what_the_objective_logs_is_relayed_into_its_child_run_when_workers_cannot_reach_the_store(
    cluster_spark: Any, hidden_store_experiment: tuple[MlflowClient, str]
) -> None:
    client, experiment_id = hidden_store_experiment
    with captured_log(level=logging.INFO) as log:
        trials = ConnectTrials(parallelism=2, spark_session=cluster_spark)
        fmin(logs_everything, hp.uniform("x", 0, 1), rand.suggest, 2, trials=trials, show_progressbar=False)

    assert trials.count_successful_trials() == 2
    children = client.search_runs([experiment_id], "tags.trial_status = 'success'")
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert {k: run.data.params[k] for k in ("single", "lr", "depth")} == {
            "single": "one",
            "lr": "0.1",
            "depth": "3",
        }
        assert run.data.tags["family"] == "forest"
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [(m.step, m.timestamp, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (step, BASE_MS + step, 1.0 / (step + 1)) for step in range(10)
        ]
        paths = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config", "notes.txt"} <= paths
        assert "huge.bin" not in paths
        argument = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/config/argument.json")
        tid = int(run.data.tags["trial_tid"])
        assert argument == {"x": trials._dynamic_trials[tid]["misc"]["vals"]["x"][0]}
    text = log.getvalue()
    assert "cannot reach the tracking store" in text
    skipped = [line for line in text.splitlines() if "huge.bin" in line and "warned on its worker" in line]
    assert len(skipped) == 1  # one warning per fmin, naming what was left out


def logs_and_reads_back_live(server_url: str) -> Any:
    def objective(x: float) -> dict[str, Any]:
        import mlflow
        from mlflow import MlflowClient

        mlflow.log_metric("progress", 0.5)
        run = MlflowClient(server_url).get_run(mlflow.active_run().info.run_id)  # while the trial runs
        return {"loss": x, "status": "ok", "live": run.data.metrics.get("progress")}

    return objective


def test_workers_that_reach_the_tracking_server_log_to_it_directly_while_the_trial_runs(
    cluster_spark: Any, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = MlflowClient(mlflow_server).create_experiment(uuid.uuid4().hex)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    saved_uri = mlflow.get_tracking_uri()  # other tests' set_tracking_uri wins over the variable
    mlflow.set_tracking_uri(mlflow_server)
    try:
        trials = ConnectTrials(parallelism=2, spark_session=cluster_spark)
        fmin(logs_and_reads_back_live(mlflow_server), hp.uniform("x", 0, 1), rand.suggest, 2, trials=trials,
             show_progressbar=False)  # fmt: skip
    finally:
        mlflow.set_tracking_uri(saved_uri)

    assert [t["result"]["live"] for t in trials.trials] == [0.5, 0.5]


# -- whether a worker can reach the store (no server needed) -------------------------------------
def test_a_store_is_unreachable_when_its_file_or_server_is_not_there(tmp_path: Any) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        assert relay.probe_store(f"http://127.0.0.1:{open_port}")
        assert not relay.probe_store(f"http://127.0.0.1:{closed_port}")
    (tmp_path / "mlflow.db").touch()
    assert relay.probe_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not relay.probe_store(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert relay.probe_store(tmp_path.as_uri())
    assert not relay.probe_store((tmp_path / "missing").as_uri())
    assert relay.probe_store("databricks")


def test_the_store_is_probed_once_per_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[str] = []
    monkeypatch.setattr(relay, "probe_store", lambda uri: probes.append(uri) or False)
    uri = f"http://127.0.0.1:1/{uuid.uuid4().hex}"
    assert [relay.store_reachable(uri) for _ in range(3)] == [False] * 3
    assert probes == [uri]
