"""The objectives the benchmark runs: code that executes on the Spark workers.

Every system calls the same functions with the same point (a dict of hyperparameters) and
gets a loss back. The cluster does not have the ``benchmarks`` package installed, so this
module is shipped by value (``ship_by_value``) and imports only the standard library at
module level; numpy and scikit-learn are imported inside the functions that need them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Objective = Callable[[dict[str, Any]], float]


def quadratic(point: dict[str, Any]) -> float:
    """Returns at once: what the overhead and scale workloads measure is everything else."""
    return float(point["x"]) ** 2


def sleeper(seconds: float) -> Objective:
    """An objective that holds its task slot for ``seconds`` and then returns."""

    def sleep_then_return(point: dict[str, Any]) -> float:
        time.sleep(seconds)
        return float(point["x"]) ** 2

    return sleep_then_return


def capturing(payload: Any) -> Objective:
    """An objective whose closure holds ``payload`` (a NumPy array) and reads one element of it,
    so that every system has to ship the array to wherever the objective runs."""

    def read_payload(point: dict[str, Any]) -> float:
        return float(point["x"]) ** 2 + 0.0 * float(payload[0])

    return read_payload


def digits_svc_error(point: dict[str, Any]) -> float:
    """1 - mean 3-fold accuracy of an RBF SVC on scikit-learn's bundled digits data set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    features, labels = load_digits(return_X_y=True)
    model = SVC(C=float(point["C"]), gamma=float(point["gamma"]))
    return 1.0 - float(cross_val_score(model, features, labels, cv=3).mean())


def optuna_adapter(
    objective: Objective, bounds: list[tuple[str, float, float, bool]]
) -> Callable[[Any], float]:
    """``objective`` driven by an Optuna trial over ``bounds`` (name, low, high, log): the same
    search space the hyperopt systems get."""

    def optuna_objective(trial: Any) -> float:
        point = {name: trial.suggest_float(name, low, high, log=log) for name, low, high, log in bounds}
        return objective(point)

    return optuna_objective


def raw_job_task(objective: Objective, point: dict[str, Any]) -> Callable[[Any], Any]:
    """The ``mapInPandas`` function of a raw floor job: call ``objective(point)``, yield the loss."""

    def run(batches: Any) -> Any:
        import pandas as pd

        for _ in batches:
            pass
        yield pd.DataFrame({"loss": [float(objective(point))]})

    return run


def ship_by_value() -> None:
    """Make pyspark's cloudpickle carry this module's code inside each job: the workers
    cannot import ``benchmarks``. (The standalone cloudpickle's registry is a different one.)"""
    import sys

    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
