"""The worker's side of the relay contract: a tracked trial without a child run never
reaches the real store, and the relay's messages show no credentials."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path
from typing import Any

import pytest
from pyspark import cloudpickle

from connect_trials import worker
from connect_trials.worker.redaction import redacted_uri


def logs_a_metric_and_a_param(_: Any) -> None:
    import mlflow

    mlflow.log_param("depth", 3)
    mlflow.log_metric("val_loss", 0.5, step=2)


@pytest.mark.parametrize("host", [worker.Host.EXECUTOR, worker.Host.CLIENT])
def test_a_tracked_trial_without_a_child_run_logs_to_a_task_local_store_and_no_run_is_created(
    host: worker.Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service import utils

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns: not in the checkout
    store = MlflowClient(uri)
    experiment_id = store.create_experiment("tracked")  # the store is there and reachable
    # In the client, the user's own mlflow.set_tracking_uri wins over the environment.
    monkeypatch.setattr(utils, "_tracking_uri", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    payload = worker.objective_payload(
        cloudpickle.dumps(logs_a_metric_and_a_param),
        {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment_id},
    )
    row = worker.run_objective(payload, pickle.dumps(None), {}, host=host)  # no MLFLOW_RUN_ID

    assert row["status"] == worker.STATUS_RETURNED, row["error_text"]
    assert store.search_runs([experiment_id, "0"]) == []  # no stray top-level run anywhere
    relayed = pickle.loads(row["relayed"])
    assert relayed["params"] == {"depth": "3"}
    assert [(key, value, step) for key, value, _, step in relayed["metrics"]] == [("val_loss", 0.5, 2)]


def test_the_relays_warning_about_a_store_it_could_not_open_shows_no_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient

    def no_local_store(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError("no space left on device")

    monkeypatch.setattr(MlflowClient, "create_run", no_local_store)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    uri = f"http://alice:s3cret@127.0.0.1:{closed_port}/mlflow?token=t0ken#frag"  # unreachable
    payload = worker.objective_payload(cloudpickle.dumps(len), {"MLFLOW_TRACKING_URI": uri})
    row = worker.run_objective(payload, pickle.dumps("abc"), {"MLFLOW_RUN_ID": "child"})

    [message] = [m for m in row["warnings"] if "could not open a store" in m]
    assert f"http://***@127.0.0.1:{closed_port}/mlflow" in message
    for secret in ("alice", "s3cret", "t0ken", "frag"):
        assert secret not in message


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://user:pw@host:5000/path?x=1", "https://***@host:5000/path"),
        ("https://t0ken@host/path", "https://***@host/path"),
        ("http://host:5000", "http://host:5000"),
        ("databricks://profile", "databricks://profile"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("file:///tmp/mlruns?x=1", "file:///tmp/mlruns"),
    ],
)
def test_the_workers_redacted_uri_drops_userinfo_and_the_query(uri: str, shown: str) -> None:
    assert redacted_uri(uri) == shown
