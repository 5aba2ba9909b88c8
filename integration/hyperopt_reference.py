"""The same hyperopt scripts under hyperopt's own ``SparkTrials`` and under ``ConnectTrials``.

    python -m integration.hyperopt_reference sparktrials      # a classic local[2] session
    python -m integration.hyperopt_reference connect sc://...

Each scenario prints one line ``SCENARIO <name> <json>``: what the trials object ends with.
``tests/test_hyperopt_reference.py`` runs both and compares them, where hyperopt is the
reference for the rarer paths: ``len(trials)`` and ``max_evals`` after failures,
``loss_threshold``, ``early_stop_fn`` and seeded points. ``rand.suggest`` with the same seed
suggests the same points under both (one suggestion per trial, ``max_queue_len=1``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from hyperopt import base, fmin, hp, rand
from hyperopt.fmin import generate_trials_to_calculate

SPACE = hp.uniform("x", -5, 5)


def fails_below_zero(x: float) -> float:
    if x < 0:
        raise ValueError(f"x must not be negative, got {x}")
    return x * x


def slow_identity(x: float) -> float:
    time.sleep(2.0)  # holds its slot: the other trial is in flight when one ends
    return x


def square(x: float) -> float:
    return x * x


def summary(trials: Any) -> dict[str, Any]:
    states = [t["state"] for t in trials._dynamic_trials]
    return {
        "len": len(trials),
        "valid": len(trials.trials),
        "documents": len(states),
        "done": states.count(base.JOB_STATE_DONE),
        "error": states.count(base.JOB_STATE_ERROR),
        "cancel": states.count(base.JOB_STATE_CANCEL),
        "unfinished": states.count(base.JOB_STATE_NEW) + states.count(base.JOB_STATE_RUNNING),
        "cancelled_reason": trials.fmin_cancelled_reason,
    }


def max_evals_after_failures(make: Callable[..., Any]) -> dict[str, Any]:
    trials = make(parallelism=2)
    fmin(fails_below_zero, SPACE, rand.suggest, max_evals=8, trials=trials, return_argmin=False,
         rstate=np.random.default_rng(94), show_progressbar=False)  # fmt: skip
    first = summary(trials)
    fmin(fails_below_zero, SPACE, rand.suggest, max_evals=8, trials=trials, return_argmin=False,
         rstate=np.random.default_rng(95), show_progressbar=False)  # fmt: skip
    return {"first": first, "second": summary(trials)}


def loss_threshold(make: Callable[..., Any]) -> dict[str, Any]:
    trials = make(parallelism=2)
    fmin(slow_identity, hp.uniform("x", 0, 1), rand.suggest, max_evals=10, trials=trials,
         loss_threshold=0.99, rstate=np.random.default_rng(3), show_progressbar=False)  # fmt: skip
    return summary(trials)


def early_stop_fn(make: Callable[..., Any]) -> dict[str, Any]:
    calls: list[Any] = []

    def stop_after_three(trials: Any, *args: Any) -> tuple[bool, list[Any]]:
        # The SparkTrials surface that scripts read in their stop rules.
        calls.append([trials.count_successful_trials(), trials.fmin_cancelled_reason, list(args)])
        return trials.count_successful_trials() >= 3, [len(calls)]

    trials = make(parallelism=2)
    fmin(square, SPACE, rand.suggest, max_evals=20, trials=trials, early_stop_fn=stop_after_three,
         rstate=np.random.default_rng(5), show_progressbar=False)  # fmt: skip
    passed_back = all(args == ([i] if i else []) for i, (_, _, args) in enumerate(calls))
    return {**summary(trials), "args_passed_back": passed_back, "successes_at_last_call": calls[-1][0],
            "reason_seen": calls[-1][1]}  # fmt: skip


def seeded(make: Callable[..., Any], refresh: bool) -> dict[str, Any]:
    trials = make(parallelism=2)
    trials.insert_trial_docs(generate_trials_to_calculate([{"x": 1.0}, {"x": 2.0}])._dynamic_trials)
    if refresh:
        trials.refresh()
    fmin(square, SPACE, rand.suggest, max_evals=5, trials=trials, rstate=np.random.default_rng(7),
         show_progressbar=False)  # fmt: skip
    seeds = sorted(t["misc"]["vals"]["x"][0] for t in trials._dynamic_trials if t["tid"] < 2)
    return {**summary(trials), "seeds": seeds,
            "seed_states": [t["state"] for t in trials._dynamic_trials if t["tid"] < 2]}  # fmt: skip


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "sparktrials":
        from hyperopt import SparkTrials
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.master("local[2]").appName("hyperopt-reference").getOrCreate()

        def make(**kwargs: Any) -> Any:
            return SparkTrials(spark_session=spark, **kwargs)
    else:
        from pyspark.sql import SparkSession

        from connect_trials import ConnectTrials

        spark = SparkSession.builder.remote(argv[1]).create()

        def make(**kwargs: Any) -> Any:
            return ConnectTrials(spark_session=spark, mlflow_tracking=False, **kwargs)

    scenarios: dict[str, Callable[[], dict[str, Any]]] = {
        "max_evals_after_failures": lambda: max_evals_after_failures(make),
        "loss_threshold": lambda: loss_threshold(make),
        "early_stop_fn": lambda: early_stop_fn(make),
        "seeded": lambda: seeded(make, refresh=False),
        "seeded_refreshed": lambda: seeded(make, refresh=True),
    }
    for name, scenario in scenarios.items():
        print("SCENARIO", name, json.dumps(scenario()), flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
