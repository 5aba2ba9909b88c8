"""From runs to numbers: per-run metrics and per-cell (system x workload) summaries.

A cell's summary holds, for each metric, the median and the range over its repeats. The
metrics are:

- ``per_trial_s``: wall time / trials.
- ``efficiency``: ideal wall time / actual (workloads whose trials sleep).
- ``bytes_per_trial``: bytes the client sent / trials, not counting ``bytes_once``, the
  session artifacts it uploaded (once per search, whatever the number of trials).
- ``first_window`` / ``last_window`` (scale): over the first and last ``WINDOW`` completions,
  the time per completed trial, the search algorithm's suggestion time per trial in that
  window, and the difference (the system's own per-trial overhead).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from benchmarks.measure import RunResult
from benchmarks.workloads import Workload

WINDOW = 50
# Spark Connect RPCs that upload session artifacts: a system sends these once per search.
ONCE_PER_RUN_METHODS = ("AddArtifacts", "ArtifactStatus")


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
        "bytes_per_trial": [
            (r.bytes_sent - _bytes_once(r)) / max(r.n_trials, 1) for r in runs if r.bytes_sent is not None
        ],
        "bytes_once": [_bytes_once(r) for r in runs if r.bytes_sent is not None],
        "trial_latency_s": [statistics.median(r.trial_latency_s) for r in runs if r.trial_latency_s],
    }
    if workload.sleep_s > 0:
        per_run["efficiency"] = [workload.ideal_wall_s / r.wall_s for r in runs if r.wall_s > 0]
    cell.stats = {k: s for k, v in per_run.items() if (s := Stat.of(v)) is not None}
    if workload.name == "scale":
        run = cell.median_run()
        cell.windows = {"first": window(run, first=True), "last": window(run, first=False)}
    return cell


def _bytes_once(run: RunResult) -> float:
    """Bytes sent once per run rather than per trial: session artifact uploads."""
    return float(sum(run.bytes_by_method.get(method, 0) for method in ONCE_PER_RUN_METHODS))


def window(run: RunResult, first: bool, size: int = WINDOW) -> dict[str, float]:
    """Per-trial time over ``size`` consecutive completions at the start or the end of a run,
    with the suggestion time that fell inside the window taken out."""
    done = run.completed_at_s
    size = min(size, (len(done) - 1) // 2)
    if size < 1:
        return {}
    start, end = (done[0], done[size]) if first else (done[-size - 1], done[-1])
    suggest = sum(max(0.0, min(e, end) - max(s, start)) for s, e in run.suggest_spans_s)
    latencies = run.trial_latency_s[:size] if first else run.trial_latency_s[-size:]
    per_trial = (end - start) / size
    return {
        "trials": size,
        "per_trial_s": per_trial,
        "suggest_per_trial_s": suggest / size,
        "overhead_per_trial_s": per_trial - suggest / size,
        "median_latency_s": statistics.median(latencies) if latencies else float("nan"),
    }
