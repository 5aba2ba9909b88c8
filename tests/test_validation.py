"""Bad input gets a clear error that names the argument, before any job runs."""

from __future__ import annotations

import threading

import pytest
from hyperopt import fmin, hp, rand

from connect_trials import ConnectTrials


@pytest.mark.parametrize("timeout", [-1, 0, True, "10", float("nan"), float("inf")])
def test_invalid_timeout_is_refused_with_hyperopts_message(timeout):
    with pytest.raises(
        Exception, match=f"timeout argument should be None or a positive value. Given value: {timeout}"
    ):
        ConnectTrials(parallelism=4, timeout=timeout)


@pytest.mark.parametrize("loss_threshold", [True, "0.1", float("nan")])
def test_invalid_loss_threshold_is_refused(loss_threshold):
    with pytest.raises(ValueError, match="loss_threshold argument should be None or a numeric value"):
        ConnectTrials(parallelism=4, loss_threshold=loss_threshold)


@pytest.mark.parametrize("parallelism", [True, False, 2.5, "4"])
def test_non_integer_parallelism_is_refused(parallelism):
    with pytest.raises(TypeError, match="parallelism must be None or an integer"):
        ConnectTrials(parallelism=parallelism)


def test_mlflow_tracking_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="mlflow_tracking must be None, True or False"):
        ConnectTrials(parallelism=1, mlflow_tracking="yes")


def test_a_session_that_is_neither_connect_nor_classic_is_refused():
    with pytest.raises(TypeError, match="spark_session must be a pyspark SparkSession"):
        ConnectTrials(parallelism=1, spark_session=object())


def test_resource_profile_must_be_a_resource_profile(spark):
    with pytest.raises(TypeError, match="resource_profile must be a pyspark.resource.ResourceProfile"):
        ConnectTrials(parallelism=1, spark_session=spark, resource_profile={"cpus": 1})


def test_a_resource_profile_is_ignored_with_a_warning_on_a_local_master(spark, caplog):
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    profile = ResourceProfileBuilder().require(TaskResourceRequests().cpus(1)).build
    trials = ConnectTrials(parallelism=1, spark_session=spark, resource_profile=profile)
    assert trials._resource_profile is None
    assert "does not support stage-level scheduling" in caplog.text


def _fmin(spark, **kwargs):
    trials = ConnectTrials(parallelism=1, spark_session=spark)
    options = {"fn": lambda x: x, "space": hp.uniform("x", 0, 1), "algo": rand.suggest, "max_evals": 2}
    options.update(kwargs)
    return trials, lambda: fmin(trials=trials, show_progressbar=False, **options)


def test_pass_expr_memo_ctrl_is_refused_before_any_trial(spark):
    trials, run = _fmin(spark, pass_expr_memo_ctrl=True)
    with pytest.raises(ValueError, match="pass_expr_memo_ctrl is not supported"):
        run()
    assert trials.count_total_trials() == 0 and len(trials._dynamic_trials) == 0


def test_an_objective_capturing_a_lock_is_refused_before_any_trial(spark):
    lock = threading.Lock()

    def objective(x):
        with lock:
            return x

    trials, run = _fmin(spark, fn=objective)
    with pytest.raises(ValueError, match=r"fn \(the objective\) cannot be shipped.*lock"):
        run()
    assert len(trials._dynamic_trials) == 0


def test_an_objective_capturing_the_spark_session_is_refused_before_any_trial(spark):
    def objective(x):
        return spark.range(3).count() * x

    trials, run = _fmin(spark, fn=objective)
    with pytest.raises(ValueError, match=r"fn \(the objective\).*captures a .*SparkSession"):
        run()
    assert len(trials._dynamic_trials) == 0


def test_an_objective_capturing_a_dataframe_is_refused(spark):
    frame = spark.range(3)
    trials, run = _fmin(spark, fn=lambda x: frame.count() * x)
    with pytest.raises(ValueError, match=r"captures a .*DataFrame"):
        run()


def test_a_non_callable_objective_is_refused(spark):
    _, run = _fmin(spark, fn=42)
    with pytest.raises(TypeError, match="fn must be a callable objective"):
        run()


@pytest.mark.parametrize("max_queue_len", [0, True, 1.5])
def test_invalid_max_queue_len_is_refused(spark, max_queue_len):
    _, run = _fmin(spark, max_queue_len=max_queue_len)
    with pytest.raises(ValueError, match="max_queue_len must be a positive integer"):
        run()


def test_fmin_timeout_is_validated_too(spark):
    _, run = _fmin(spark, timeout=-3)
    with pytest.raises(Exception, match="timeout argument should be None or a positive value"):
        run()


def test_trial_attachments_are_not_supported(spark):
    with pytest.raises(NotImplementedError):
        ConnectTrials(parallelism=1, spark_session=spark).trial_attachments({})
