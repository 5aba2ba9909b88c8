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

- ``pace_ratio`` (scale): trials/s over the last ``PACE_FRACTION`` of a run's trials / over
  the first ``PACE_FRACTION`` after ``PACE_WARM_UP`` warm-up ones (``pace_windows``);
  ``pace_first_per_s`` and ``pace_last_per_s`` are the two paces.
- ``cpu_per_trial_s``: CPU time (user + system) of the process that ran the search / trials.
- ``save_growth`` (scale, connect-trials with a ``trials_save_file``): median time of one
  save-file write over the last ``PACE_FRACTION`` of trials / over the first after the warm-up
  (``save_windows``); ``save_per_trial_s`` is the mean of all of them, ``save_file_mb`` the
  file's size at the end.

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
# Pace windows (scale): the first and last 10% of a run's trials, after 50 warm-up ones.
PACE_FRACTION = 0.10
PACE_WARM_UP = 50
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
    per_run["cpu_per_trial_s"] = [r.cpu_s / r.n_trials for r in runs if r.cpu_s is not None and r.n_trials]
    if workload.name == "scale":
        per_run["scale_growth"] = [g for r in runs if (g := scale_growth(r)) is not None]
        paces = [pace_windows(r.completed_at_s) for r in runs]
        per_run["pace_ratio"] = [p["ratio"] for p in paces if p]
        per_run["pace_first_per_s"] = [p["first_per_s"] for p in paces if p]
        per_run["pace_last_per_s"] = [p["last_per_s"] for p in paces if p]
        saves = [r.extras["save"] for r in runs if r.extras.get("save", {}).get("probe")]
        save_windows_ = [w for s in saves if (w := save_windows(s["per_trial_s"]))]
        per_run["save_growth"] = [w["ratio"] for w in save_windows_]
        per_run["save_per_trial_s"] = [statistics.fmean(s["per_trial_s"]) for s in saves if s["per_trial_s"]]
        per_run["save_file_mb"] = [s["file_bytes"] / 2**20 for s in saves if s.get("file_bytes") is not None]
        run = cell.median_run()
        cell.windows = {"first": window(run, first=True), "last": window(run, first=False)}
        if pace := pace_windows(run.completed_at_s):
            cell.windows["pace"] = pace
        save = run.extras.get("save")
        if save and save.get("probe") and (w := save_windows(save["per_trial_s"])):
            cell.windows["save"] = w
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


def _pace_sizes(n: int, fraction: float, warm_up: int) -> tuple[int, int]:
    """(window size, warm-up) for ``n`` trials: ``fraction`` of them after ``warm_up``, both
    shrunk for a short run so that the two windows never overlap; size 0: too few."""
    warm_up = min(warm_up, n // 10)
    size = min(round(n * fraction), (n - 1 - warm_up) // 2)
    return max(size, 0), warm_up


def pace_windows(
    completed_at_s: list[float], fraction: float = PACE_FRACTION, warm_up: int = PACE_WARM_UP
) -> dict[str, float]:
    """Trials completed per second over the first ``fraction`` of the trials after the
    ``warm_up`` first ones, and over the last ``fraction``; ``ratio`` is last / first (1: a
    flat pace; below 1: the run slows down as trials pile up). Empty when the run is too short
    or a window took no time."""
    done = sorted(completed_at_s)
    size, warm_up = _pace_sizes(len(done), fraction, warm_up)
    if size < 1:
        return {}
    first_span = done[warm_up + size] - done[warm_up]
    last_span = done[-1] - done[-size - 1]
    if first_span <= 0 or last_span <= 0:
        return {}
    first, last = size / first_span, size / last_span
    return {
        "trials": size,
        "warm_up": warm_up,
        "first_per_s": first,
        "last_per_s": last,
        "ratio": last / first,
    }


def save_windows(
    durations_s: list[float], fraction: float = PACE_FRACTION, warm_up: int = PACE_WARM_UP
) -> dict[str, float]:
    """The median time of one save-file write over the first ``fraction`` of the writes after
    the ``warm_up`` first ones (the first write is a whole snapshot), and over the last
    ``fraction``; ``ratio`` is last / first (1: the write does not grow with the trials)."""
    size, warm_up = _pace_sizes(len(durations_s), fraction, warm_up)
    if size < 1:
        return {}
    first = statistics.median(durations_s[warm_up : warm_up + size])
    last = statistics.median(durations_s[-size:])
    if first <= 0:
        return {}
    return {"writes": size, "warm_up": warm_up, "first_s": first, "last_s": last, "ratio": last / first}
