"""From runs to numbers: per-run metrics and per-cell (system x workload) summaries.

A cell's summary holds, for each metric, the median and the range over its repeats. The
metrics are:

- ``per_trial_s``: wall time / trials.
- ``efficiency``: ideal wall time / actual (workloads whose trials sleep).
- ``bytes_per_trial``: every byte the client sent during the run (artifact uploads
  included) / trials.
- ``first_trial_s``: from the start of the run (fmin called) to the first trial's result.
- ``scale_growth`` (scale): per-trial overhead over the last ``WINDOW`` completions / over the
  first ``WINDOW`` after the ``WARM_UP`` first ones (start-up is in neither window). A
  window's overhead is its time per completed trial less the suggestion time inside it.

``paired_ratios`` pairs two systems' runs of one workload by seed (they ran in the same
round, one beside the other) and gives the ratio of each pair.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from benchmarks.measure import RunResult
from benchmarks.workloads import Workload

WINDOW = 50
WARM_UP = 10  # completions left out of the first window: the first jobs, the first suggestions
# Spark Connect RPCs that upload session artifacts (shown apart, counted in bytes_per_trial).
ARTIFACT_METHODS = ("AddArtifacts", "ArtifactStatus")


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat | None:
        values = [v for v in values if v is not None]
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


@dataclass
class Cell:
    """One system on one workload, summarised over its runs."""

    system: str
    workload: Workload
    runs: list[RunResult]
    stats: dict[str, Stat] = field(default_factory=dict)
    windows: dict[str, dict[str, float]] = field(default_factory=dict)

    def stat(self, metric: str) -> Stat | None:
        return self.stats.get(metric)

    def median_run(self) -> RunResult:
        """The run whose wall time is the median one (for the plot)."""
        ordered = sorted(self.runs, key=lambda r: r.wall_s)
        return ordered[(len(ordered) - 1) // 2]

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "workload": self.workload.key,
            "stats": {k: v.to_json() for k, v in self.stats.items()},
            "windows": self.windows,
        }


def summarize(plan: list[Workload], runs: list[RunResult]) -> dict[tuple[str, str], Cell]:
    """Cells keyed by (system, workload key), in plan order."""
    cells: dict[tuple[str, str], Cell] = {}
    for workload in plan:
        for system in workload.systems:
            mine = [r for r in runs if r.system == system and r.workload == workload.key]
            if mine:
                cells[(system, workload.key)] = _cell(system, workload, mine)
    return cells


def _cell(system: str, workload: Workload, runs: list[RunResult]) -> Cell:
    cell = Cell(system, workload, runs)
    per_run: dict[str, list[float]] = {
        "wall_s": [r.wall_s for r in runs],
        "per_trial_s": [r.wall_s / max(r.n_trials, 1) for r in runs],
        "peak_rss_mb": [r.peak_rss_mb for r in runs if r.peak_rss_mb is not None],
        "rss_growth_mb": [
            r.peak_rss_mb - r.start_rss_mb
            for r in runs
            if r.peak_rss_mb is not None and r.start_rss_mb is not None
        ],
        "suggest_s": [r.suggest_s for r in runs if r.suggest_spans_s],
        "best_loss": [r.best_loss for r in runs if r.best_loss is not None],
        "bytes_per_trial": [r.bytes_sent / max(r.n_trials, 1) for r in runs if r.bytes_sent is not None],
        "artifact_bytes": [_artifact_bytes(r) for r in runs if r.bytes_by_method],
        "trial_latency_s": [statistics.median(r.trial_latency_s) for r in runs if r.trial_latency_s],
        "first_trial_s": [r.completed_at_s[0] for r in runs if r.completed_at_s],
    }
    if workload.sleep_s > 0:
        # A slow reference may run fewer trials (Workload.once_trials): its own ideal.
        per_run["efficiency"] = [
            workload.for_system(r.system).ideal_wall_s / r.wall_s for r in runs if r.wall_s > 0
        ]
    if workload.name == "scale":
        per_run["scale_growth"] = [g for r in runs if (g := scale_growth(r)) is not None]
        run = cell.median_run()
        cell.windows = {"first": window(run, first=True), "last": window(run, first=False)}
    cell.stats = {k: s for k, v in per_run.items() if (s := Stat.of(v)) is not None}
    return cell


def _artifact_bytes(run: RunResult) -> float:
    return float(sum(run.bytes_by_method.get(method, 0) for method in ARTIFACT_METHODS))


def scale_growth(run: RunResult) -> float | None:
    """Last-window overhead per trial / first-window overhead per trial (warm-up excluded)."""
    first, last = window(run, first=True), window(run, first=False)
    if not first or not last or first["overhead_per_trial_s"] <= 0:
        return None
    return last["overhead_per_trial_s"] / first["overhead_per_trial_s"]


def paired_ratios(
    cells: dict[tuple[str, str], Cell], system: str, reference: str, workload: str, metric: str
) -> list[float]:
    """``metric`` of ``system``'s run / that of ``reference``'s run with the same seed (the
    same round: measured one beside the other), for every seed both ran."""
    mine, theirs = cells.get((system, workload)), cells.get((reference, workload))
    if mine is None or theirs is None:
        return []
    by_seed = {r.seed: run_metric(r, metric) for r in theirs.runs}
    ratios = []
    for run in mine.runs:
        value, ref = run_metric(run, metric), by_seed.get(run.seed)
        if value is not None and ref:
            ratios.append(value / ref)
    return ratios


def run_metric(run: RunResult, metric: str) -> float | None:
    """One run's ``per_trial_s``, ``wall_s`` or ``first_trial_s``."""
    if metric == "per_trial_s":
        return run.wall_s / max(run.n_trials, 1)
    if metric == "first_trial_s":
        return run.completed_at_s[0] if run.completed_at_s else None
    return float(getattr(run, metric))


def window(run: RunResult, first: bool, size: int = WINDOW, warm_up: int = WARM_UP) -> dict[str, float]:
    """Per-trial time over ``size`` consecutive completions, right after the ``warm_up`` first
    ones or at the end of a run, with the suggestion time that fell inside the window taken
    out. Short runs get smaller windows (the two never overlap)."""
    done = run.completed_at_s
    size = min(size, (len(done) - 1 - warm_up) // 2)
    if size < 1:
        return {}
    start, end = (done[warm_up], done[warm_up + size]) if first else (done[-size - 1], done[-1])
    suggest = sum(max(0.0, min(e, end) - max(s, start)) for s, e in run.suggest_spans_s)
    latencies = run.trial_latency_s[warm_up : warm_up + size] if first else run.trial_latency_s[-size:]
    per_trial = (end - start) / size
    return {
        "trials": size,
        "per_trial_s": per_trial,
        "suggest_per_trial_s": suggest / size,
        "overhead_per_trial_s": per_trial - suggest / size,
        "median_latency_s": statistics.median(latencies) if latencies else float("nan"),
    }
