"""Client and cluster must agree on Python and pyspark before any trial runs."""

from __future__ import annotations

import threading

import pytest

from connect_trials import compat
from connect_trials.compat import ClusterMismatchError, Versions, mismatch


def test_a_python_minor_mismatch_names_both_versions_and_the_fix():
    reason = mismatch(Versions("3.11.7", "4.3.0"), Versions("3.10.12", "4.3.0"))
    assert reason is not None
    assert "Python 3.10.12" in reason and "Python 3.11.7" in reason
    assert "PYSPARK_PYTHON" in reason


def test_a_pyspark_major_mismatch_names_both_versions_and_the_fix():
    reason = mismatch(Versions("3.11.7", "4.3.0"), Versions("3.11.2", "3.5.1"))
    assert reason is not None and "pyspark 3.5.1" in reason and "pyspark==3.5.1" in reason


def test_same_python_minor_and_pyspark_major_agree():
    assert mismatch(Versions("3.11.7", "4.3.0"), Versions("3.11.2", "4.1.0")) is None


def test_a_worker_that_cannot_run_the_clients_pickles_stops_fmin_before_any_objective_runs(
    spark, monkeypatch, tmp_path
):
    """The client says it runs Python 3.9: the local server's worker (this interpreter) must
    refuse before it unpickles the objective, and fmin raise with both versions and the fix."""
    from hyperopt import fmin, hp, rand

    from connect_trials import ConnectTrials

    pyspark = compat.client_versions().pyspark
    monkeypatch.setattr(compat, "client_versions", lambda: Versions("3.9.18", pyspark))
    ran = tmp_path / "ran"

    def objective(x):
        ran.write_text("the objective ran")
        return x

    trials = ConnectTrials(parallelism=2, spark_session=spark, mlflow_tracking=False)
    with pytest.raises(ClusterMismatchError, match=r"Python 3\.9\.18") as raised:
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 4, trials=trials, show_progressbar=False)
    assert "PYSPARK_PYTHON" in str(raised.value)
    assert not ran.exists()
    assert trials.count_successful_trials() == 0


def test_pysparks_own_refusal_of_this_python_becomes_the_same_clear_error():
    from connect_trials.job import OutcomeKind, SparkJobExecutor

    executor = SparkJobExecutor.__new__(SparkJobExecutor)
    executor._cancelled = threading.Event()
    executor._abandoned = threading.Event()
    refusal = RuntimeError(
        "[PYTHON_VERSION_MISMATCH] Python in worker has different version: 3.10 than that in driver: 3.11, "
        "PySpark cannot run with different minor versions."
    )
    outcome = executor._outcome_of_exception(3, refusal)
    assert outcome.kind is OutcomeKind.MISMATCH
    assert "PYTHON_VERSION_MISMATCH" in outcome.error_text and "PYSPARK_PYTHON" in outcome.error_text
