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
    once_why: str = ""  # why they do (shown in the table)
    once_trials: int = 0  # trials of a run of the `once` systems when fewer than n_trials (once_why says why)
    fewer: tuple[str, ...] = ()  # the `once` systems that run `once_trials` (empty: all of them)
    left_out: str = ""  # a system the issue names that this workload does not run, and why (in the notes)
    server: str = "main"  # "main" (local[2]), "cluster" (LocalCluster) or "local-wide" (local[p])
    sleep_s: float = 0.0
    payload_bytes: int = 0
    variant: str = ""
    space: tuple[Dimension, ...] = X_SPACE
    algo: str = "tpe"  # hyperopt's "tpe" or "rand" (scale: so that TPE's own cost is not what is measured)
    save_file: bool = False  # connect-trials runs with a trials_save_file (scale: its write cost is measured)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.variant}" if self.variant else self.name

    @property
    def ideal_wall_s(self) -> float:
        """Wall time with zero overhead: the trials' own work spread over the slots."""
        return self.n_trials * self.sleep_s / self.parallelism

    def for_system(self, system: str) -> Workload:
        """What ``system`` runs: fewer trials for a slow reference, when ``once_trials`` says so."""
        fewer = system in (self.fewer or self.once)
        if fewer and 0 < self.once_trials < self.n_trials:
            return replace(self, n_trials=self.once_trials)
        return self

    def suggest(self) -> Callable[..., Any]:
        """hyperopt's suggestion algorithm for this workload."""
        from hyperopt import rand, tpe

        return {"tpe": tpe.suggest, "rand": rand.suggest}[self.algo]

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
        data["fewer"] = tuple(data.get("fewer", ()))
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


# Why a peer runs fewer repeats than connect-trials, per workload: said in the table.
# A peer's run that takes longer than this is interrupted (and the table says so).
PEER_TIME_LIMIT_S = 150.0
POLL_BOUND = "fmin's 1-s poll makes it ~1 s a trial whatever the trial: more repeats would not fit the budget"


# MlflowSparkStudy completes a few trials a second at most here, and fewer as its study
# grows (each task re-reads the whole study from MLflow for every trial): one run per
# workload, and fewer trials where a full run would take minutes.
MLFLOW_OPTUNA_WHY = (
    "MlflowSparkStudy: ~3 s a trial here, growing with the study (each task re-reads it from MLflow "
    "for every trial); more repeats would not fit the budget"
)


def full_plan() -> list[Workload]:
    """``python -m benchmarks``: the issue's workloads, in about 24 minutes on 2 cores.

    Every system runs every repeat unless the workload's ``once_why`` says why not (SparkTrials
    completes about one trial a second whatever the trial, MlflowSparkStudy about one in three,
    so a repeat of theirs costs what the other systems' three do). Ray Tune runs beside
    connect-trials with the same trials on ``overhead`` (every repeat) and ``wide`` (once:
    32 actors on 2 cores take minutes a run). ``wide``
    runs on a ``LocalCluster`` of 2 workers with 16 logical cores each (SparkTrials, which needs
    a classic session, on local[p]; Ray Tune on a local Ray instance of p logical CPUs).
    """
    searchers = (IN_PROCESS, SPARK_TRIALS, MLFLOW_OPTUNA, CONNECT_TRIALS, CONNECT_TRIALS_TRACKED, RAY_TUNE)
    return [
        # First: the cluster it needs is stopped once it has run.
        *wide(parallelisms=(16, 32), trials_per_slot=4, repeats=3),
        Workload(
            "overhead",
            n_trials=32,
            parallelism=2,
            repeats=3,
            systems=(FLOOR_RAW, *searchers),
            once=(SPARK_TRIALS, MLFLOW_OPTUNA),
            once_trials=16,
            once_why=POLL_BOUND + "; " + MLFLOW_OPTUNA_WHY + " (32 trials took 120 s)",
        ),
        Workload(
            "overhead",
            n_trials=48,
            parallelism=4,
            variant="p4",
            repeats=3,
            # MlflowSparkStudy: its p2 run shows its cost per trial; at p4 one run took over 150 s.
            systems=(FLOOR_RAW, SPARK_TRIALS, CONNECT_TRIALS),
            once=(SPARK_TRIALS,),
            once_trials=24,
            once_why=POLL_BOUND + " (48 trials took 57 s; 24 keep make bench within its budget)",
        ),
        tracking(repeats=3),
        first_trial(repeats=3),
        Workload(
            "model",
            n_trials=24,
            parallelism=2,
            repeats=3,
            space=SVC_SPACE,
            # SparkTrials (~1 s a trial) and Ray Tune were cut here for time: the overhead
            # workloads already show what their polling costs.
            systems=(IN_PROCESS, MLFLOW_OPTUNA, CONNECT_TRIALS),
            once=(MLFLOW_OPTUNA,),
            once_trials=12,
            once_why=MLFLOW_OPTUNA_WHY,
        ),
        scale(FULL_SCALE_TRIALS, floor_trials=FULL_SCALE_FLOOR_TRIALS),
        Workload(
            "scale",
            n_trials=100,
            parallelism=4,
            variant="100",
            repeats=2,
            systems=(MLFLOW_OPTUNA, CONNECT_TRIALS),
            once=(MLFLOW_OPTUNA,),
            once_trials=20,
            once_why=MLFLOW_OPTUNA_WHY + " (100 trials took over 150 s, 30 took 116 s)",
        ),
        *payload_set(small_trials=8, large_trials=64, repeats=3),
    ]


# The scale workload's trial counts: in `make bench` as many as its budget allows, in
# `make bench-scale` the 10,000.
FULL_SCALE_TRIALS = 2000
FULL_SCALE_FLOOR_TRIALS = 500
BENCH_SCALE_TRIALS = 10_000
SCALE_TRACKED_LEFT_OUT = (
    "connect-trials+mlflow: thousands of tracked trials would take minutes more than the budget "
    "has; what tracking costs is measured on overhead (no-op trials) and tracking (1-s trials)"
)


def scale(n_trials: int, floor_trials: int = 0, variant: str = "", tracked: bool = False) -> Workload:
    """``n_trials`` no-op trials at p4 with ``rand.suggest`` (TPE's own cost, which grows with
    the trials, is not what is measured), connect-trials with a ``trials_save_file``; beside
    bare jobs submitted the same way (``floor_trials`` of them when fewer: a bare job keeps no
    bookkeeping, so its cost per job does not depend on how many ran) and hyperopt's serial
    in-process ``Trials`` (hyperopt's own bookkeeping cost per trial, at the same count).
    ``tracked`` adds connect-trials+mlflow at the same count: every child run must end, and
    ``from_mlflow`` on the parent is timed."""
    fewer = 0 < floor_trials < n_trials
    return Workload(
        "scale",
        n_trials=n_trials,
        parallelism=4,
        variant=variant,
        systems=(FLOOR_RAW, IN_PROCESS, CONNECT_TRIALS) + ((CONNECT_TRIALS_TRACKED,) if tracked else ()),
        algo="rand",
        save_file=True,
        once=(FLOOR_RAW,) if fewer else (),
        once_trials=floor_trials if fewer else 0,
        once_why=(
            f"bare jobs: {floor_trials} of them keep the run within its budget; a bare job keeps no "
            "bookkeeping, so its CPU and time per job do not depend on how many ran before"
        )
        if fewer
        else "",
        left_out="" if tracked else SCALE_TRACKED_LEFT_OUT,
    )


def scale_plan(n_trials: int = BENCH_SCALE_TRIALS) -> list[Workload]:
    """``make bench-scale``: the issue's 10,000 trials (or ``n_trials``), every system at the
    full count; its cells are merged into the full run's results."""
    label = f"{n_trials // 1000}k" if n_trials % 1000 == 0 else str(n_trials)
    return [scale(n_trials, variant=label, tracked=True)]


def tracking(repeats: int, n_trials: int = 32) -> Workload:
    """Tracking on and off with trials that do something: 1-s sleeps at p4."""
    return Workload(
        "tracking",
        n_trials=n_trials,
        parallelism=4,
        repeats=repeats,
        sleep_s=1.0,
        systems=(CONNECT_TRIALS, CONNECT_TRIALS_TRACKED),
    )


def quick_plan() -> list[Workload]:
    """``python -m benchmarks --quick``: every target once, small, in under 5 minutes. Ray Tune
    is left to the full run (starting it costs ~20 s); ``wide`` runs on local[16], not the
    standalone cluster, whose start (a master, 2 workers, their executors) would take a
    fifth of the budget on 2 cores, and for connect-trials and bare jobs only (SparkTrials takes
    ~2 minutes there, MlflowSparkStudy several)."""
    return [
        *wide(parallelisms=(16,), trials_per_slot=4, repeats=1, cluster=False, peers=False),
        Workload(
            "overhead",
            n_trials=16,
            parallelism=2,
            repeats=2,
            # MlflowSparkStudy (~2 s a trial with its store on the mlflow server) is left to
            # the full run here; it runs in first-trial.
            systems=(FLOOR_RAW, SPARK_TRIALS, CONNECT_TRIALS, CONNECT_TRIALS_TRACKED),
            once=(SPARK_TRIALS,),
            once_why=POLL_BOUND,
        ),
        Workload(
            "overhead",
            n_trials=16,
            parallelism=4,
            variant="p4",
            repeats=2,
            systems=(FLOOR_RAW, CONNECT_TRIALS),
        ),
        first_trial(repeats=1, systems=(FLOOR_RAW, MLFLOW_OPTUNA, CONNECT_TRIALS)),
        tracking(repeats=1, n_trials=16),
        scale(300, floor_trials=150),
        *payload_set(small_trials=8, large_trials=64, repeats=1, systems=(FLOOR_RAW, CONNECT_TRIALS)),
    ]


def smoke_plan() -> list[Workload]:
    """The test suite's smoke run: the harness end to end in seconds, no timing claims."""
    systems = (FLOOR_RAW, IN_PROCESS, CONNECT_TRIALS)
    return [
        Workload("overhead", n_trials=4, parallelism=2, systems=systems),
        scale(8),
        *payload_set(small_trials=2, large_trials=4, repeats=1, systems=systems, large_bytes=1024 * 1024),
    ]


def first_trial(repeats: int, systems: tuple[str, ...] | None = None) -> Workload:
    """fmin called -> first trial's result, each run on a fresh session of a warm server."""
    return Workload(
        "first-trial",
        n_trials=2,
        parallelism=2,
        repeats=repeats,
        systems=systems or (FLOOR_RAW, SPARK_TRIALS, MLFLOW_OPTUNA, CONNECT_TRIALS),
    )


# Measured in the full run at 649cc05 (2026-11-28), on the cluster: it was cut at the 150-s limit.
WIDE_LEFT_OUT = (
    "MlflowSparkStudy(n_jobs=p): its tasks re-read the whole study from MLflow for every trial; in "
    "the full run at 649cc05 it did not finish 32 1-s trials at p16 within 150 s (efficiency < 0.013), "
    "so it is left out of wide to keep the run within 25 minutes"
)


# Measured at 1b78383 (2026-12-02): the same trials as connect-trials, a Ray instance of p CPUs.
RAY_WIDE_WHY = (
    "Ray Tune: one run of the same trials (a run at p32 took 86 s here, its 32 actors on 2 real "
    "cores; 15 s at p16): more repeats would not fit the budget"
)


def wide(
    parallelisms: tuple[int, ...],
    trials_per_slot: int,
    repeats: int,
    cluster: bool = True,
    peers: bool = True,
) -> list[Workload]:
    """N x 1-s sleeping trials at high parallelism (Ray Tune's bookkeeping release test, scaled
    down). ``cluster``: on a standalone LocalCluster, else on local[p]. ``peers``: Ray Tune
    (one run of the same trials, on a Ray instance of p logical CPUs) and SparkTrials (it
    completes ~1 trial a second): one run of two trials per slot, at p16 only.
    MlflowSparkStudy is left out (``WIDE_LEFT_OUT`` says why)."""
    return [
        Workload(
            "wide",
            n_trials=trials_per_slot * p,
            parallelism=p,
            variant=f"p{p}",
            repeats=repeats,
            sleep_s=1.0,
            systems=(FLOOR_RAW, CONNECT_TRIALS)
            + ((RAY_TUNE,) if peers else ())
            + ((SPARK_TRIALS,) if peers and p == 16 else ()),
            once=(SPARK_TRIALS, RAY_TUNE),
            once_trials=2 * p,
            fewer=(SPARK_TRIALS,),
            once_why=f"SparkTrials ~1 s a trial (fmin's poll): {2 * p} trials, one run, at p16 only; "
            + RAY_WIDE_WHY,
            left_out=WIDE_LEFT_OUT if peers else "",
            server="cluster" if cluster else "local-wide",
        )
        for p in parallelisms
    ]


def payload_set(
    small_trials: int,
    large_trials: int,
    repeats: int,
    systems: tuple[str, ...] = (FLOOR_RAW, SPARK_TRIALS, MLFLOW_OPTUNA, CONNECT_TRIALS),
    large_bytes: int = PAYLOAD_LARGE_BYTES,
) -> list[Workload]:
    """A large capture at ``small_trials`` and ``large_trials`` trials (bytes per trial must
    fall as trials grow), and a tiny one at ``small_trials`` (trial time must not grow with the
    capture). The many-trial run is for connect-trials, which ships the objective once per search:
    a bare job or SparkTrials would send the capture with each of its jobs, and
    MlflowSparkStudy's 64 trials would take minutes here."""
    large = Workload(
        "payload",
        n_trials=small_trials,
        parallelism=2,
        repeats=repeats,
        systems=systems,
        once=(SPARK_TRIALS, MLFLOW_OPTUNA),
        once_why=POLL_BOUND + "; " + MLFLOW_OPTUNA_WHY,
        payload_bytes=large_bytes,
        variant=f"{_size_label(large_bytes)}x{small_trials}",
    )
    return [
        large,
        replace(
            large,
            n_trials=large_trials,
            systems=tuple(s for s in systems if s == CONNECT_TRIALS),
            variant=f"{_size_label(large_bytes)}x{large_trials}",
        ),
        replace(
            large,
            payload_bytes=PAYLOAD_SMALL_BYTES,
            variant=f"{_size_label(PAYLOAD_SMALL_BYTES)}x{small_trials}",
        ),
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
