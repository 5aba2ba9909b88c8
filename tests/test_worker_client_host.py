"""The worker code in the user's own process (``Host.CLIENT``, debug mode) leaves the user's
MLflow runs, Ctrl-C and process-wide settings alone; on an executor it may own the process."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from pyspark import cloudpickle

from connect_trials import inline, job, worker


def payload_of(fn: Any, fmin_environ: dict[str, str] | None = None) -> bytes:
    return worker.objective_payload(cloudpickle.dumps(fn), fmin_environ or {})


def logs_into_its_child_run_and_leaves_a_run_open(_: Any) -> tuple[str, str]:
    import mlflow

    mlflow.log_metric("from_the_objective", 1.0)  # the first call resumes MLFLOW_RUN_ID's run
    child_run_id = mlflow.active_run().info.run_id
    left_open = mlflow.start_run(nested=True)
    return child_run_id, left_open.info.run_id


def test_in_the_client_a_trial_leaves_the_callers_run_active_and_ends_only_the_runs_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns: not in the checkout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    client = MlflowClient(uri)
    with mlflow.start_run() as users_run:
        experiment_id = users_run.info.experiment_id
        child = client.create_run(experiment_id, tags={"mlflow.parentRunId": users_run.info.run_id})
        row = worker.run_objective(
            payload_of(logs_into_its_child_run_and_leaves_a_run_open,
                       {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment_id}),
            pickle.dumps(None),
            {"MLFLOW_RUN_ID": child.info.run_id},
            host=worker.Host.CLIENT,
        )  # fmt: skip
        assert row["status"] == worker.STATUS_RETURNED, row["error_text"]
        assert mlflow.active_run() is not None and mlflow.active_run().info.run_id == users_run.info.run_id
        mlflow.log_param("after_the_trial", "yes")  # into the user's run, not a new one

    seen_child, left_open = pickle.loads(row["value"])
    assert seen_child == child.info.run_id
    assert client.get_run(child.info.run_id).data.metrics == {"from_the_objective": 1.0}
    assert client.get_run(left_open).info.status == "FINISHED"  # ended by the worker
    users = client.get_run(users_run.info.run_id)
    assert users.info.status == "FINISHED"  # by its own `with`, after it stayed active throughout
    assert users.data.params == {"after_the_trial": "yes"} and users.data.metrics == {}
    runs = client.search_runs([experiment_id])
    assert {r.info.run_id for r in runs} == {users_run.info.run_id, child.info.run_id, left_open}


def stops(exception: type[BaseException]) -> None:
    print("the user pressed the stop button")
    raise exception()


@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit])
def test_in_the_client_ctrl_c_and_sys_exit_propagate_once_the_trial_is_cleaned_up(
    exception: type[BaseException],
) -> None:
    streams = (sys.stdout, sys.stderr)
    environ = dict(os.environ)
    hooks = (warnings.showwarning, logging.getLogRecordFactory())
    with pytest.raises(exception):
        worker.run_objective(
            payload_of(stops, {"CT_FMIN_VAR": "1"}), pickle.dumps(exception), {"CT_TRIAL_VAR": "1"},
            host=worker.Host.CLIENT,
        )  # fmt: skip
    assert (sys.stdout, sys.stderr) == streams
    assert dict(os.environ) == environ
    assert (warnings.showwarning, logging.getLogRecordFactory()) == hooks


def test_the_inline_executor_lets_ctrl_c_in_the_objective_stop_the_fmin() -> None:
    executor = inline.InlineExecutor(cloudpickle.dumps(stops), {})
    with pytest.raises(KeyboardInterrupt):
        executor.run_trial(job.TrialRequest(tid=0, argument_blob=pickle.dumps(KeyboardInterrupt)))


def test_on_an_executor_ctrl_c_in_the_objective_is_the_trials_error() -> None:
    row = worker.run_objective(
        payload_of(stops), pickle.dumps(KeyboardInterrupt), {}, host=worker.Host.EXECUTOR
    )
    assert row["status"] == worker.STATUS_RAISED
    assert "KeyboardInterrupt" in row["error_type"]
    assert row["output"] == "the user pressed the stop button\n"


HOOKS: dict[str, Any] = {}


def sees_the_process_hooks(_: Any) -> bool:
    warnings.warn("reported from the trial", UserWarning, stacklevel=1)
    return logging.getLogRecordFactory() is HOOKS["factory"]


def test_in_the_client_the_log_record_factory_and_the_tracer_provider_are_left_alone() -> None:
    from mlflow.tracing import provider

    HOOKS["factory"] = logging.getLogRecordFactory()
    tracer_provider = provider.provider.get()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        row = worker.run_objective(
            payload_of(sees_the_process_hooks), pickle.dumps(None), {}, host=worker.Host.CLIENT
        )
    assert pickle.loads(row["value"]) is True  # no factory of ours while the objective ran
    assert logging.getLogRecordFactory() is HOOKS["factory"]
    assert provider.provider.get() is tracer_provider
    assert any("UserWarning: reported from the trial" in m for m in row["warnings"])


def installs_its_own_record_factory(_: Any) -> None:
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return previous(*args, **kwargs)

    factory.installed_by_the_objective = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def warns_through_logging(_: Any) -> None:
    logging.getLogger("ct-test-library").warning("a library's warning")


def test_on_an_executor_a_record_factory_installed_during_a_trial_is_kept_and_ours_goes_quiet() -> None:
    before = logging.getLogRecordFactory()
    try:
        worker.run_objective(payload_of(installs_its_own_record_factory), pickle.dumps(None), {})
        assert getattr(logging.getLogRecordFactory(), "installed_by_the_objective", False)
        row = worker.run_objective(payload_of(warns_through_logging), pickle.dumps(None), {})
    finally:
        logging.setLogRecordFactory(before)
    # Reported once, by this trial's hook: the first trial's, left in the chain, passes through.
    assert row["warnings"] == ["WARNING ct-test-library: a library's warning"]
