"""What the benchmark runs: the workloads, their search spaces and the sizes of each plan.

A :class:`Workload` is one column of the table: how many trials, how many in flight, which
objective, which search space, and which systems run it in this plan. The same space is
given to hyperopt (``hyperopt_space``) and to Optuna (``optuna_objective``) so that every
system searches the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from benchmarks import objectives

FLOOR_RAW = "floor-raw-jobs"
IN_PROCESS = "hyperopt-in-process"
SPARK_TRIALS = "hyperopt-SparkTrials"
MLFLOW_OPTUNA = "mlflow-MlflowSparkStudy"
CONNECT_TRIALS = "connect-trials"
CONNECT_TRIALS_TRACKED = "connect-trials+mlflow"
RAY_TUNE = "ray-tune"

ALL_SYSTEMS = (
    FLOOR_RAW,
    IN_PROCESS,
    SPARK_TRIALS,
    MLFLOW_OPTUNA,
    CONNECT_TRIALS,
    CONNECT_TRIALS_TRACKED,
    RAY_TUNE,
)

PAYLOAD_LARGE_BYTES = 50 * 1024 * 1024
PAYLOAD_SMALL_BYTES = 1024


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter: uniform on [low, high], or log-uniform when ``log``."""

    name: str
    low: float
    high: float
    log: bool = False


X_SPACE = (Dimension("x", -1.0, 1.0),)
SVC_SPACE = (Dimension("C", 1e-2, 1e3, log=True), Dimension("gamma", 1e-5, 1e-1, log=True))


@dataclass(frozen=True)
class Workload:
    """One column of the table."""

    name: str
    n_trials: int
    parallelism: int
    systems: tuple[str, ...]
    repeats: int = 1  # runs, each with its own seed; the table shows the median (min-max)
    once: tuple[str, ...] = ()  # systems that run only the first repeat (slow references)
    sleep_s: float = 0.0
    payload_bytes: int = 0
    variant: str = ""
    space: tuple[Dimension, ...] = X_SPACE

    @property
    def key(self) -> str:
        return f"{self.name}/{self.variant}" if self.variant else self.name

    @property
    def ideal_wall_s(self) -> float:
        """Wall time with zero overhead: the trials' own work spread over the slots."""
        return self.n_trials * self.sleep_s / self.parallelism

    def objective(self) -> objectives.Objective:
        """A fresh objective (for payload: one that captures a fresh array)."""
        if self.name == "model":
            return objectives.digits_svc_error
        if self.sleep_s > 0:
            return objectives.sleeper(self.sleep_s)
        if self.payload_bytes > 0:
            import numpy as np

            # Random bytes: a compressing transport must not make the array look small.
            payload = np.random.default_rng(0).integers(0, 256, size=self.payload_bytes, dtype=np.uint8)
            return objectives.capturing(payload)
        return objectives.quadratic

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        data = dict(data)
        data["systems"] = tuple(data["systems"])
        data["once"] = tuple(data.get("once", ()))
        data["space"] = tuple(Dimension(**d) for d in data["space"])
        return cls(**data)

    def default_point(self) -> dict[str, float]:
        """The point a raw job evaluates (no search involved)."""
        return {d.name: (math.sqrt(d.low * d.high) if d.log else (d.low + d.high) / 2) for d in self.space}

    def hyperopt_space(self) -> dict[str, Any]:
        from hyperopt import hp

        return {
            d.name: hp.loguniform(d.name, math.log(d.low), math.log(d.high))
            if d.log
            else hp.uniform(d.name, d.low, d.high)
            for d in self.space
        }

    def optuna_objective(self) -> Callable[[Any], float]:
        """The same objective over the same space, driven by an Optuna trial."""
        bounds = [(d.name, d.low, d.high, d.log) for d in self.space]
        return objectives.optuna_adapter(self.objective(), bounds)


def full_plan() -> list[Workload]:
    """``python -m benchmarks``: the sizes of the issue, in about 21 minutes on 2 cores.

    To fit, the systems that take about a second per trial whatever the trial (SparkTrials and
    Ray Tune poll) run one repeat where the others run three, Ray Tune (optional) skips the
    model workload (48 trials took it ~2 minutes), and the 500-trial scale run is
    for connect-trials and in-process hyperopt only: SparkTrials completes about one trial a
    second there (fmin's 1-s poll, one trial queued per poll) and MlflowSparkStudy's time per
    trial grows with the study, so those two run the 100-trial scale workload beside
    connect-trials instead.
    """
    searchers = (IN_PROCESS, SPARK_TRIALS, MLFLOW_OPTUNA, CONNECT_TRIALS, CONNECT_TRIALS_TRACKED, RAY_TUNE)
    slow = (SPARK_TRIALS, RAY_TUNE)
    return [
        Workload(
            "overhead", n_trials=32, parallelism=2, repeats=3, systems=(FLOOR_RAW, *searchers), once=slow
        ),
        Workload(
            "efficiency",
            n_trials=24,
            parallelism=2,
            repeats=3,
            sleep_s=1.0,
            systems=(FLOOR_RAW, *searchers),
            # Sequential by construction: 24 s and 0.50 every time.
            once=(*slow, IN_PROCESS),
        ),
        Workload(
            "model",
            n_trials=48,
            parallelism=2,
            repeats=3,
            space=SVC_SPACE,
            systems=tuple(s for s in searchers if s != RAY_TUNE),  # ~2 min a run: cut for time
            once=slow,
        ),
        Workload(
            "scale", n_trials=500, parallelism=4, systems=(IN_PROCESS, CONNECT_TRIALS, CONNECT_TRIALS_TRACKED)
        ),
        Workload(
            "scale",
            n_trials=100,
            parallelism=4,
            variant="100",
            systems=(SPARK_TRIALS, MLFLOW_OPTUNA, CONNECT_TRIALS),
        ),
        *payload_pair(
            n_trials=8, systems=(FLOOR_RAW, IN_PROCESS, SPARK_TRIALS, MLFLOW_OPTUNA, CONNECT_TRIALS)
        ),
    ]


def quick_plan() -> list[Workload]:
    """``python -m benchmarks --quick``: every workload once, small, in under 5 minutes (about 3.5
    here). Ray Tune, when installed, is left to the full run: starting it costs ~20 s."""
    every = (FLOOR_RAW, IN_PROCESS, SPARK_TRIALS, MLFLOW_OPTUNA, CONNECT_TRIALS, CONNECT_TRIALS_TRACKED)
    return [
        Workload("overhead", n_trials=12, parallelism=2, systems=every),
        Workload("efficiency", n_trials=8, parallelism=2, sleep_s=1.0, systems=every),
        Workload(
            "model",
            n_trials=12,
            parallelism=2,
            space=SVC_SPACE,
            systems=(IN_PROCESS, MLFLOW_OPTUNA, CONNECT_TRIALS),
        ),
        Workload("scale", n_trials=120, parallelism=4, systems=(IN_PROCESS, CONNECT_TRIALS)),
        *payload_pair(
            n_trials=4, systems=(FLOOR_RAW, IN_PROCESS, SPARK_TRIALS, MLFLOW_OPTUNA, CONNECT_TRIALS)
        ),
    ]


def smoke_plan() -> list[Workload]:
    """The test suite's smoke run: the harness end to end in seconds, no timing claims."""
    systems = (FLOOR_RAW, IN_PROCESS, CONNECT_TRIALS)
    return [
        Workload("overhead", n_trials=4, parallelism=2, systems=systems),
        Workload("efficiency", n_trials=4, parallelism=2, sleep_s=0.2, systems=systems),
        Workload("scale", n_trials=8, parallelism=4, systems=systems),
        *payload_pair(n_trials=2, systems=systems, large_bytes=1024 * 1024),
    ]


def payload_pair(
    n_trials: int, systems: tuple[str, ...], large_bytes: int = PAYLOAD_LARGE_BYTES
) -> list[Workload]:
    """The payload workload at a large and a tiny capture: growth is what the target judges."""
    large = Workload(
        "payload",
        n_trials=n_trials,
        parallelism=2,
        systems=systems,
        payload_bytes=large_bytes,
        variant=_size_label(large_bytes),
    )
    return [
        large,
        replace(large, payload_bytes=PAYLOAD_SMALL_BYTES, variant=_size_label(PAYLOAD_SMALL_BYTES)),
    ]


def _size_label(n: int) -> str:
    return f"{n // (1024 * 1024)}MB" if n >= 1024 * 1024 else f"{n // 1024}KB"


def select_systems(plan: list[Workload], systems: set[str]) -> list[Workload]:
    """The plan restricted to ``systems`` (workloads left with none are dropped)."""
    kept = []
    for workload in plan:
        chosen = tuple(s for s in workload.systems if s in systems)
        if chosen:
            kept.append(replace(workload, systems=chosen))
    return kept
