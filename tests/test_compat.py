"""Client and cluster must agree on Python and pyspark before any trial runs."""

from __future__ import annotations

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


def test_the_probe_reads_the_workers_versions_once_per_session(spark, monkeypatch):
    compat._checked.pop(compat._session_key(spark), None)
    first = compat.check_cluster(spark)
    assert first == compat.client_versions()  # the local server runs this interpreter

    def no_second_probe(_spark):
        raise AssertionError("probed twice")

    monkeypatch.setattr(compat, "_probe", no_second_probe)
    assert compat.check_cluster(spark) == first


def test_a_mismatching_cluster_is_refused_before_any_trial(spark, monkeypatch):
    compat._checked.pop(compat._session_key(spark), None)
    monkeypatch.setattr(compat, "_probe", lambda _spark: Versions("3.9.18", "4.3.0"))
    with pytest.raises(ClusterMismatchError, match="Python 3.9.18"):
        compat.check_cluster(spark)
    compat._checked.pop(compat._session_key(spark), None)
