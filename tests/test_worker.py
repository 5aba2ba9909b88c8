"""The worker shim, called directly as a task would call it (no server)."""

from __future__ import annotations

import os
import pickle

import pytest
from pyspark import cloudpickle

from connect_trials import worker


class FakeTaskContext:
    def __init__(self, attempt: int) -> None:
        self.attempt = attempt

    def attemptNumber(self) -> int:
        return self.attempt


@pytest.fixture
def task_attempt(monkeypatch):
    import pyspark

    def set_attempt(attempt: int) -> None:
        monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: FakeTaskContext(attempt)))

    return set_attempt


def double(x):
    return x * 2


@pytest.mark.parametrize("attempt", range(worker.MAX_OBJECTIVE_ATTEMPTS))
def test_the_first_attempts_run_the_objective(task_attempt, attempt):
    task_attempt(attempt)
    payload = worker.objective_payload(cloudpickle.dumps(double), {})
    row = worker.run_objective(payload, pickle.dumps(21), {})
    assert row["status"] == worker.STATUS_RETURNED
    assert pickle.loads(row["value"]) == 42  # the objective ran
    assert row["attempt"] == attempt


def test_a_later_attempt_does_not_run_the_objective_and_says_the_worker_died_before(task_attempt):
    task_attempt(worker.MAX_OBJECTIVE_ATTEMPTS)
    payload = worker.objective_payload(cloudpickle.dumps(double), {})
    row = worker.run_objective(payload, pickle.dumps(21), {})
    assert row["status"] == worker.STATUS_ATTEMPTS_EXHAUSTED
    assert row["value"] is None
    assert "Python worker or executor died" in row["error_text"]
    assert "os._exit" in row["error_text"]


def test_the_environment_is_restored_by_difference_not_cleared(monkeypatch):
    monkeypatch.setenv("CT_KEPT", "kept")
    monkeypatch.setenv("CT_CHANGED_BY_OBJECTIVE", "before")
    monkeypatch.setenv("CT_REMOVED_BY_OBJECTIVE", "before")

    def refuse_clear():
        raise AssertionError("os.environ was cleared while other threads may read it")

    monkeypatch.setattr(os.environ, "clear", refuse_clear, raising=False)

    def objective(_):
        seen = dict(os.environ)
        os.environ["CT_CHANGED_BY_OBJECTIVE"] = "after"
        os.environ["CT_NEW_FROM_OBJECTIVE"] = "new"
        del os.environ["CT_REMOVED_BY_OBJECTIVE"]
        return seen

    payload = worker.objective_payload(cloudpickle.dumps(objective), {"CT_FMIN_VAR": "fmin"})
    row = worker.run_objective(payload, pickle.dumps(None), {"CT_TRIAL_VAR": "trial"})
    assert row["status"] == worker.STATUS_RETURNED, row["error_text"]
    seen = pickle.loads(row["value"])
    assert seen["CT_FMIN_VAR"] == "fmin" and seen["CT_TRIAL_VAR"] == "trial"
    assert seen["CT_KEPT"] == "kept"
    assert os.environ["CT_KEPT"] == "kept"
    assert os.environ["CT_CHANGED_BY_OBJECTIVE"] == "before"
    assert os.environ["CT_REMOVED_BY_OBJECTIVE"] == "before"
    for name in ("CT_NEW_FROM_OBJECTIVE", "CT_FMIN_VAR", "CT_TRIAL_VAR"):
        assert name not in os.environ


def test_an_attempt_past_the_limit_fails_its_task_instead_of_answering_for_the_trial(task_attempt):
    """A speculative copy started after the limit must not end a trial whose running attempt
    may still succeed: it fails (Spark counts the failure), it yields no row."""
    task_attempt(worker.MAX_OBJECTIVE_ATTEMPTS)
    payload = worker.objective_payload(cloudpickle.dumps(double), {})
    task = worker.trial_task(payload, pickle.dumps(21), {})
    with pytest.raises(worker.TrialRetriedError, match="at most 2 times"):
        next(task(iter([])))


def test_a_permitted_attempt_answers_with_one_row(task_attempt):
    task_attempt(worker.MAX_OBJECTIVE_ATTEMPTS - 1)
    payload = worker.objective_payload(cloudpickle.dumps(double), {})
    frame = next(worker.trial_task(payload, pickle.dumps(21), {})(iter([])))
    assert list(frame["status"]) == [worker.STATUS_RETURNED]


def reads_the_ca_bundle(_):
    path = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    with open(path) as f:
        return path, f.read(), [k for k in os.environ if k.startswith(worker.SHIPPED_FILE_PREFIX)]


def test_a_certificate_file_the_worker_cannot_see_is_placed_there_from_the_client(tmp_path, monkeypatch):
    from connect_trials.tracking import uris

    bundle = tmp_path / "client-only" / "ca.pem"
    bundle.parent.mkdir()
    bundle.write_text("-----BEGIN CERTIFICATE-----\nclient's CA\n")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(bundle))
    fmin_environ = uris.worker_environ("https://tracking.example", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
    bundle.unlink()  # the worker does not see the client's disk

    payload = worker.objective_payload(cloudpickle.dumps(reads_the_ca_bundle), fmin_environ)
    row = worker.run_objective(payload, pickle.dumps(None), {})
    assert row["status"] == worker.STATUS_RETURNED, row["error_text"]
    path, content, leftover = pickle.loads(row["value"])
    assert path != str(bundle) and os.path.exists(path)
    assert content == "-----BEGIN CERTIFICATE-----\nclient's CA\n"
    assert leftover == []  # the objective sees the variable, not the shipped content
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH" not in os.environ


def test_a_certificate_file_the_worker_sees_is_left_where_it_is(tmp_path, monkeypatch):
    from connect_trials.tracking import uris

    bundle = tmp_path / "ca.pem"
    bundle.write_text("shared CA")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(bundle))
    payload = worker.objective_payload(
        cloudpickle.dumps(reads_the_ca_bundle), uris.worker_environ("https://tracking.example", "1")
    )
    row = worker.run_objective(payload, pickle.dumps(None), {})
    assert pickle.loads(row["value"])[:2] == (str(bundle), "shared CA")
