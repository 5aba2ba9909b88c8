"""After any fmin, the MLflow store holds its parent run and one child run per trial, deleted
ones counted, and nothing else: however fmin ended (real Spark Connect and ``mlflow server``)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Any

import mlflow
import pytest
from hyperopt import fmin, hp, rand
from mlflow.entities import ViewType
from pyspark import cloudpickle

from connect_trials import ConnectTrials
from tests.test_tracking import Tracking, break_tracking_after, tracking_server  # noqa: F401 - the fixture

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def logging_objective(port: int | None, hold_s: float):  # type: ignore[no-untyped-def]
    """An objective that logs to MLflow, says it runs (a connection to ``port``), then holds
    its slot for ``hold_s``."""

    def objective(x: float) -> float:
        import socket
        import time

        import mlflow

        mlflow.log_metric("seen_x", x)
        if port is not None:
            socket.create_connection(("127.0.0.1", port)).close()
        time.sleep(hold_s)
        return x

    return objective


def runs_ever(server: Tracking) -> list[Any]:
    return server.client.search_runs([server.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def interrupt_once_running(listener: socket.socket, n: int) -> None:
    for _ in range(n):
        listener.accept()[0].close()
    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C


@pytest.mark.parametrize("ending", ["normal", "timeout", "early_stop", "ctrl_c", "tracking_breaks"])
def test_the_store_holds_the_parent_and_one_child_per_trial_and_nothing_else(
    ending: str, spark: Any, tracking_server: Tracking, monkeypatch: pytest.MonkeyPatch, ctrl_c: None  # noqa: F811
) -> None:
    kwargs: dict[str, Any] = {"parallelism": 2, "spark_session": spark}
    fmin_kwargs: dict[str, Any] = {}
    objective = logging_objective(None, 0.0)
    created: list[str] = []
    if ending == "timeout":
        kwargs["timeout"] = 6
        objective = logging_objective(None, 60.0)
    elif ending == "early_stop":
        fmin_kwargs["loss_threshold"] = 2.0  # the first result stops the search
    elif ending == "ctrl_c":
        listener = socket.create_server(("127.0.0.1", 0))
        objective = logging_objective(listener.getsockname()[1], 60.0)
        threading.Thread(target=interrupt_once_running, args=(listener, 2), daemon=True).start()
    elif ending == "tracking_breaks":
        created = break_tracking_after(2, monkeypatch)
        kwargs["parallelism"] = 1
    trials = ConnectTrials(**kwargs)
    try:
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 6, trials=trials, show_progressbar=False,
             return_argmin=False, **fmin_kwargs)  # fmt: skip
    except KeyboardInterrupt:
        assert ending == "ctrl_c"

    runs = runs_ever(tracking_server)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.run_name for p in parents] == ["fmin-objective"]  # no stray top-level run
    assert all(r.info.lifecycle_stage == "active" and r.info.status != "RUNNING" for r in runs)
    tids = sorted(int(r.data.tags["trial_tid"]) for r in children)
    if ending == "tracking_breaks":
        assert sorted(r.info.run_id for r in children) == sorted(created)
        assert trials.count_successful_trials() == 6
    else:
        assert tids == sorted(t["tid"] for t in trials._dynamic_trials)  # one per trial, each once
    assert mlflow.active_run() is None
