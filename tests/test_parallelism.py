"""Parallelism: explicit, learned from the cluster's task slots over Connect, or capped."""

from __future__ import annotations

import pytest
from hyperopt import fmin, hp, rand

from connect_trials import ConnectTrials, cluster
from connect_trials.trials import FALLBACK_PARALLELISM
from tests.conftest import captured_log


def test_class_constants_match_spark_trials():
    assert ConnectTrials.asynchronous is True
    assert ConnectTrials.MAX_CONCURRENT_JOBS_ALLOWED == 128


@pytest.mark.parametrize("requested", [None, -1, 0])
def test_none_or_non_positive_takes_the_default_parallelism_with_a_warning(requested):
    with captured_log() as out:
        assert ConnectTrials._decide_parallelism(requested, 2) == 2
    assert (
        "Because the requested parallelism was None or a non-positive value, parallelism will be set to (2)"
        in out.getvalue()
    )


def test_unknown_task_slots_fall_back_to_the_documented_default_with_a_warning():
    with captured_log() as out:
        assert ConnectTrials._decide_parallelism(None, None) == FALLBACK_PARALLELISM
    assert "could not be learned over Spark Connect" in out.getvalue()


def test_parallelism_above_the_cap_is_capped_with_a_warning():
    with captured_log() as out:
        assert ConnectTrials._decide_parallelism(129, 2) == 128
    assert "SparkTrials.MAX_CONCURRENT_JOBS_ALLOWED (128)" in out.getvalue()


def test_task_slots_are_learned_over_connect(spark):
    assert cluster.task_slots(spark) == 2  # the fixture's server runs local[2]


def test_default_parallelism_is_the_clusters_task_slots(spark):
    with captured_log() as out:
        trials = ConnectTrials(spark_session=spark)
    assert trials.parallelism == 2
    assert trials.user_specified_parallelism is None
    assert "parallelism will be set to (2)" in out.getvalue()


def test_explicit_parallelism_is_kept_without_warning(spark):
    with captured_log() as out:
        trials = ConnectTrials(parallelism=3, spark_session=spark)
    assert trials.parallelism == 3 and trials.user_specified_parallelism == 3
    assert "parallelism will be set" not in out.getvalue()


def test_parallelism_above_max_evals_warns(spark):
    trials = ConnectTrials(parallelism=8, spark_session=spark)
    with captured_log() as out:
        fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 2, trials=trials, show_progressbar=False)
    assert "parallelism (8) is greater than max_evals (2)" in out.getvalue()
    assert trials.count_successful_trials() == 2


def test_task_slots_come_from_the_servers_conf_without_a_probe_job(spark, monkeypatch):
    cluster._slots_by_session.clear()

    def no_job(_spark):
        raise AssertionError("a probe job ran")

    monkeypatch.setattr(cluster, "_slots_from_probe", no_job)
    assert cluster.task_slots(spark) == 2  # local[2], read from spark.master
