"""fmin with ConnectTrials against a real Spark Connect server: results, failures, counts.

Mirrors the cases of hyperopt's own tests/integration/test_spark.py that apply.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hyperopt import STATUS_FAIL, STATUS_OK, anneal, base, fmin, hp, rand, tpe
from hyperopt.tests.unit.test_fmin import test_quadratic1_tpe as hyperopt_quadratic1_tpe

from connect_trials import ConnectTrials
from tests.conftest import captured_log


def fn_succeed_within_range(x: float) -> float:
    """1 inside (-3, 3), RuntimeError outside (upstream's helper)."""
    if -3 < x < 3:
        return 1
    raise RuntimeError(f"{x} is out of range")


def check_run_status(trials: ConnectTrials, log: str, total: int, success: int, failure: int) -> None:
    assert trials.count_total_trials() == total
    assert trials.count_successful_trials() == success
    assert trials.count_failed_trials() == failure
    assert f"Total Trials: {total}" in log
    assert f"{success} succeeded" in log
    assert f"{failure} failed" in log


def test_quadratic_with_tpe_finds_the_minimum(spark):
    hyperopt_quadratic1_tpe(ConnectTrials(parallelism=2, spark_session=spark))


def test_trial_run_info_counts_successes_and_failures_with_remote_tracebacks(spark):
    trials = ConnectTrials(parallelism=2, spark_session=spark)
    with captured_log() as out:
        fmin(
            fn=fn_succeed_within_range,
            space=hp.uniform("x", -5, 5),
            algo=anneal.suggest,
            max_evals=8,
            return_argmin=False,
            trials=trials,
            rstate=np.random.default_rng(94),
            show_progressbar=False,
        )
    check_run_status(trials, out.getvalue(), total=8, success=6, failure=2)
    for trial in trials._dynamic_trials:
        if trial["state"] == base.JOB_STATE_DONE:
            assert trial["result"] == {"loss": 1.0, "status": "ok"}
        else:
            assert trial["state"] == base.JOB_STATE_ERROR
            error_type, text = trial["misc"]["error"]
            assert error_type == "<class 'RuntimeError'>"
            assert "Traceback (most recent call last)" in text
            assert "is out of range" in text
            assert "fn_succeed_within_range" in text  # the objective's own frame, from the worker


def test_all_successful_trials_log_the_thread_lines(spark):
    trials = ConnectTrials(parallelism=1, spark_session=spark)
    with captured_log() as out:
        fmin(fn_succeed_within_range, hp.uniform("x", -1, 1), anneal.suggest, 1, trials=trials)
    log = out.getvalue()
    assert trials.count_successful_trials() == 1
    assert "fmin thread exits normally" in log
    assert "trial 0 task thread exits normally" in log


def test_all_failed_trials_raise_no_evaluation_tasks_when_argmin_is_asked(spark):
    trials = ConnectTrials(parallelism=1, spark_session=spark)
    with captured_log() as out:
        fmin(
            fn_succeed_within_range,
            hp.uniform("x", 5, 10),
            anneal.suggest,
            1,
            trials=trials,
            return_argmin=False,
        )
    assert trials.count_failed_trials() == 1
    assert "trial 0 task thread catches an exception" in out.getvalue()

    trials = ConnectTrials(parallelism=2, spark_session=spark)
    with pytest.raises(Exception, match="There are no evaluation tasks"):
        fmin(fn_succeed_within_range, hp.uniform("x", 5, 8), anneal.suggest, 2, trials=trials)
    assert trials.count_failed_trials() == 2


def test_nan_loss_is_recorded_and_does_not_affect_other_trials(spark):
    def objective(x: float) -> float:
        return float("nan") if x < 0 else x

    trials = ConnectTrials(parallelism=2, spark_session=spark)
    best = fmin(
        objective,
        hp.uniform("x", -1, 1),
        rand.suggest,
        12,
        trials=trials,
        rstate=np.random.default_rng(3),
        show_progressbar=False,
    )
    losses = [t["result"]["loss"] for t in trials.trials]
    assert trials.count_successful_trials() == 12
    assert any(math.isnan(loss) for loss in losses)
    assert best["x"] == min(loss for loss in losses if not math.isnan(loss))


def test_dict_results_keep_their_extra_keys_and_fail_status(spark):
    def objective(x: float) -> dict:
        if x < 0:
            return {"status": STATUS_FAIL, "why": "negative"}
        return {"loss": x, "status": STATUS_OK, "other_info": "hello", "model": {"w": [1, 2]}}

    trials = ConnectTrials(parallelism=2, spark_session=spark)
    fmin(
        objective,
        hp.uniform("x", -1, 1),
        rand.suggest,
        10,
        trials=trials,
        rstate=np.random.default_rng(1),
        show_progressbar=False,
    )
    results = [t["result"] for t in trials.trials]
    assert {r["status"] for r in results} == {STATUS_OK, STATUS_FAIL}
    ok = [r for r in results if r["status"] == STATUS_OK]
    assert all(r["other_info"] == "hello" and r["model"] == {"w": [1, 2]} for r in ok)
    assert all(r["why"] == "negative" for r in results if r["status"] == STATUS_FAIL)


def test_invalid_result_status_is_an_error_trial_like_in_hyperopt(spark):
    trials = ConnectTrials(parallelism=1, spark_session=spark)
    fmin(
        lambda x: {"status": "bogus"},
        hp.uniform("x", 0, 1),
        rand.suggest,
        1,
        trials=trials,
        return_argmin=False,
    )
    (trial,) = trials._dynamic_trials
    assert trial["state"] == base.JOB_STATE_ERROR
    assert "InvalidResultStatus" in trial["misc"]["error"][0]


def test_conditional_space_passes_the_chosen_values_to_the_objective(spark):
    space = hp.choice(
        "model",
        [
            {"kind": "a", "alpha": hp.uniform("alpha", 0, 1)},
            {"kind": "b", "depth": hp.quniform("depth", 1, 5, 1)},
        ],
    )

    def objective(params: dict) -> dict:
        assert isinstance(params, dict) and params["kind"] in ("a", "b")
        loss = params["alpha"] if params["kind"] == "a" else params["depth"]
        return {"loss": loss, "status": STATUS_OK, "seen": params}

    trials = ConnectTrials(parallelism=2, spark_session=spark)
    fmin(
        objective,
        space,
        tpe.suggest,
        10,
        trials=trials,
        rstate=np.random.default_rng(7),
        show_progressbar=False,
    )
    assert trials.count_successful_trials() == 10
    for trial in trials.trials:
        seen = trial["result"]["seen"]
        index = trial["misc"]["vals"]["model"][0]
        assert seen["kind"] == ("a", "b")[index]


def test_accepts_a_session_and_returns_space_eval_without_argmin(spark):
    trials = ConnectTrials(parallelism=2, spark_session=spark)
    best = fmin(
        lambda x: x + 1,
        hp.choice("x", [5.0, 6.0, 7.0]),
        rand.suggest,
        6,
        trials=trials,
        return_argmin=False,
        rstate=np.random.default_rng(0),
    )
    assert best in (5.0, 6.0, 7.0)
    assert best + 1 == min(t["result"]["loss"] for t in trials.trials)


def test_a_failing_objective_is_never_retried_by_spark(spark, tmp_path):
    output_dir = str(tmp_path)

    def objective(_: float) -> float:
        import tempfile

        tempfile.NamedTemporaryFile(dir=output_dir, delete=False).close()
        raise Exception("Failed!")

    trials = ConnectTrials(parallelism=2, spark_session=spark)
    fmin(objective, hp.uniform("x", 0, 1), anneal.suggest, 2, trials=trials, return_argmin=False)
    assert len(os.listdir(output_dir)) == 2
    assert trials.count_failed_trials() == 2


def test_trials_accumulate_over_two_fmin_calls_and_delete_all_resets(spark):
    trials = ConnectTrials(parallelism=2, spark_session=spark)
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 3, trials=trials, show_progressbar=False)
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 5, trials=trials, show_progressbar=False)
    assert trials.count_successful_trials() == 5
    assert sorted(t["tid"] for t in trials.trials) == [0, 1, 2, 3, 4]
    trials.delete_all()
    assert trials.count_total_trials() == 0
    assert trials.fmin_cancelled_reason is None


def test_parallelism_bounds_the_trials_in_flight(spark, tmp_path):
    """Each trial records its wall-clock span; no instant sees more than 2 trials running."""
    trials = ConnectTrials(parallelism=2, spark_session=spark)

    def objective(x: float) -> float:
        import time

        time.sleep(0.3)
        return x

    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 6, trials=trials, show_progressbar=False)
    spans = [
        (t["misc"]["connect_trials"]["started_at"], t["misc"]["connect_trials"]["finished_at"])
        for t in trials.trials
    ]
    for start, _ in spans:
        in_flight = sum(1 for s, f in spans if s <= start < f)
        assert in_flight <= 2
    assert max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans) == 2


def test_an_objective_that_kills_its_python_worker_ends_error_and_says_so(spark):
    def objective(x: float) -> float:
        import os

        os._exit(3)

    trials = ConnectTrials(parallelism=1, spark_session=spark)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 1, trials=trials, return_argmin=False)
    assert trials.count_failed_trials() == 1
    _, text = trials._dynamic_trials[0]["misc"]["error"]
    assert text.startswith("the objective's Python worker died while it ran this trial"), text[:300]


def test_each_trial_records_the_attempt_that_ran_it(spark):
    trials = ConnectTrials(parallelism=2, spark_session=spark)
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 2, trials=trials)
    for trial in trials.trials:
        stamps = trial["misc"]["connect_trials"]
        assert stamps["attempt"] == 0
        assert stamps["started_at"] <= stamps["finished_at"]


def test_two_concurrent_fmins_on_one_session_both_finish_and_leave_its_retry_policy_alone(spark):
    import threading

    policies_before = spark.client.get_retry_policies()
    results: dict[int, ConnectTrials] = {}
    errors: list[BaseException] = []

    def search(seed: int) -> None:
        try:
            trials = ConnectTrials(parallelism=1, spark_session=spark)
            fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 3, trials=trials,
                 rstate=np.random.default_rng(seed), show_progressbar=False)  # fmt: skip
            results[seed] = trials
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=search, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert [results[seed].count_successful_trials() for seed in (1, 2)] == [3, 3]
    assert spark.client.get_retry_policies() == policies_before


def test_points_to_evaluate_seed_a_new_search_as_they_seed_hyperopts_own(spark):
    from hyperopt.fmin import generate_trials_to_calculate

    def evaluated(trials):
        return [t["misc"]["vals"]["x"][0] for t in trials._dynamic_trials]

    def search(trials, max_evals, **kwargs):
        fmin(lambda x: x**2, hp.uniform("x", -5, 5), rand.suggest, max_evals=max_evals, trials=trials,
             rstate=np.random.default_rng(1), show_progressbar=False, **kwargs)  # fmt: skip

    points = [{"x": 0.5}, {"x": -1.5}]
    # hyperopt's fmin(trials=None, points_to_evaluate=points) seeds its search this way.
    reference = generate_trials_to_calculate(points)
    search(reference, 4)
    trials = ConnectTrials(parallelism=2, spark_session=spark, mlflow_tracking=False)
    search(trials, 4, points_to_evaluate=points)
    assert evaluated(trials) == evaluated(reference)  # the points first, then the same suggestions
    assert len(trials) == len(reference) == 6

    with captured_log() as out:  # a search that holds trials is not seeded again
        search(trials, 7, points_to_evaluate=points)
    assert "points_to_evaluate is ignored" in out.getvalue()
    assert len(trials) == 7 and evaluated(trials).count(0.5) == 1


def test_points_to_evaluate_that_are_not_a_list_of_dicts_are_refused_before_any_job(spark):
    trials = ConnectTrials(parallelism=1, spark_session=spark, mlflow_tracking=False)
    with pytest.raises(TypeError, match="points_to_evaluate must be a list of dicts"):
        fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, max_evals=2, trials=trials,
             points_to_evaluate={"x": 0.5})  # fmt: skip
    assert len(trials._dynamic_trials) == 0
