"""A resume reads back exactly one search: its own trials, once each, and touches nothing else
(real ``mlflow server``)."""

from __future__ import annotations

import sys
from typing import Any

import mlflow
import numpy as np
import pytest
from hyperopt import fmin, hp, rand
from mlflow.entities import ViewType
from pyspark import cloudpickle

from connect_trials import ConnectTrials
from connect_trials.tracking import RUN_SOURCE
from tests.test_tracking import Tracking, tracking_server  # noqa: F401 - the fixture

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPACE = hp.uniform("x", 0, 1)


def square(x: float) -> float:
    return x * x


def search(trials: ConnectTrials, max_evals: int, seed: int) -> None:
    fmin(square, SPACE, algo=rand.suggest, max_evals=max_evals, trials=trials,
         rstate=np.random.default_rng(seed), show_progressbar=False)  # fmt: skip


def children(server: Tracking, parent_run_id: str) -> list[Any]:
    runs = server.client.search_runs(
        [server.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
        run_view_type=ViewType.ALL, max_results=1000,
    )  # fmt: skip
    return list(runs)


def test_a_resume_of_a_parent_holding_two_fmins_takes_the_last_one_and_its_tids_stay_unique(
    spark: Any, tracking_server: Tracking  # noqa: F811
) -> None:
    with mlflow.start_run() as run:
        first = ConnectTrials(parallelism=2, spark_session=spark)
        second = ConnectTrials(parallelism=2, spark_session=spark)
        search(first, 3, seed=1)
        search(second, 3, seed=2)
    parent_id = run.info.run_id
    uuids = {r.data.tags["fmin_uuid"] for r in children(tracking_server, parent_id)}
    assert len(uuids) == 2

    resumed = ConnectTrials.from_mlflow(parent_id, spark_session=spark, parallelism=2)
    assert sorted(t["tid"] for t in resumed.trials) == [0, 1, 2]
    assert sorted(resumed.losses()) == sorted(second.losses())
    search(resumed, 5, seed=3)
    tids = [t["tid"] for t in resumed.trials]
    assert sorted(tids) == [0, 1, 2, 3, 4]
    by_fmin: dict[str, list[int]] = {}
    for r in children(tracking_server, parent_id):
        by_fmin.setdefault(r.data.tags["fmin_uuid"], []).append(int(r.data.tags["trial_tid"]))
    # The resumed search went on under its own fmin_uuid: one run per trial, none twice.
    assert sorted(map(sorted, by_fmin.values())) == [[0, 1, 2], [0, 1, 2, 3, 4]]
    # It wrote its counts under its own (suffixed) names again, never over the first fmin's.
    metrics = tracking_server.client.get_run(parent_id).data.metrics
    assert metrics["total_trials_count"] == 3
    assert metrics[f"total_trials_count_{resumed._resume_fmin_uuid}"] == 5

    first_uuid = next(u for u, tids in by_fmin.items() if len(tids) == 3)
    older = ConnectTrials.from_mlflow(parent_id, spark_session=spark, fmin_uuid=first_uuid, parallelism=2)
    assert sorted(older.losses()) == sorted(first.losses())
    with pytest.raises(ValueError, match="fmin_uuid='nope'.*holds no trials of that fmin"):
        ConnectTrials.from_mlflow(parent_id, spark_session=spark, fmin_uuid="nope")


def test_a_resume_after_a_crash_ends_each_orphan_as_its_outcome_says_and_touches_no_other_run(
    tracking_server: Tracking,  # noqa: F811
) -> None:
    client = tracking_server.client
    exp = tracking_server.experiment_id
    parent = client.create_run(exp, tags={"runSource": RUN_SOURCE}).info.run_id

    def child(tid: int, fmin_uuid: str = "abc123", **tags: str) -> str:
        base = {"mlflow.parentRunId": parent, "runSource": RUN_SOURCE, "fmin_uuid": fmin_uuid,
                "trial_tid": str(tid), "hyperopt_vals": f'{{"x": [{tid / 10}]}}'}  # fmt: skip
        return client.create_run(exp, tags={**base, **tags}, run_name=f"trial-{tid}").info.run_id

    other_fmin = child(0, fmin_uuid="0ther0")  # an earlier search's trial, left RUNNING
    done = child(0, trial_status="success")
    client.log_metric(done, "loss", 0.5)
    client.set_terminated(done, "FINISHED")
    written_not_ended = child(1, trial_status="success")  # the client died between the two writes
    client.log_metric(written_not_ended, "loss", 0.25)
    never_finished = child(2)
    users_own = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id  # their nested run

    for _ in range(2):  # a second resume reads the same search back
        trials = ConnectTrials.from_mlflow(parent, debug=True)
        assert {t["tid"]: t["result"].get("loss") for t in trials.trials} == {0: 0.5, 1: 0.25}
        assert trials.new_trial_ids(1) == [3]  # the cancelled trial 2 keeps its tid

    def status(run_id: str) -> tuple[str, str | None]:
        run = client.get_run(run_id)
        return run.info.status, run.data.tags.get("trial_status")

    assert status(written_not_ended) == ("FINISHED", "success")
    assert status(never_finished) == ("KILLED", "cancelled")
    assert status(users_own) == ("RUNNING", None)
    assert status(other_fmin) == ("RUNNING", None)
    assert all(r.info.lifecycle_stage == "active" for r in children(tracking_server, parent))


def test_max_evals_none_is_logged_on_the_parent_as_none(
    tracking_server: Tracking,  # noqa: F811
) -> None:
    def stop_after_two(trials: Any, *args: Any) -> tuple[bool, list[Any]]:
        return len(trials.trials) >= 2, []

    trials = ConnectTrials(debug=True)
    fmin(square, SPACE, algo=rand.suggest, max_evals=None, trials=trials, early_stop_fn=stop_after_two,
         show_progressbar=False)  # fmt: skip
    parents = [r for r in tracking_server.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert [p.data.params["max_evals"] for p in parents] == ["None"]
