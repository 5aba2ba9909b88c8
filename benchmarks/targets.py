"""The issue's targets for connect-trials, judged against one suite's numbers.

Each check says what was measured, the target, and PASS / MISS (or "not measured" when the
cells it needs did not run). Thresholds that the issue leaves open ("does not grow") are
stated in the check's text.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks import workloads as wl
from benchmarks.analysis import Cell

# "Does not grow": per-trial time and bytes with the large capture within these factors of
# the same run with a 1 KB capture.
PAYLOAD_TIME_GROWTH = 1.25
PAYLOAD_BYTES_GROWTH = 1.10


@dataclass(frozen=True)
class TargetCheck:
    name: str
    target: str
    measured: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "not measured"}[self.passed]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def evaluate(cells: dict[tuple[str, str], Cell], floor_latency_s: list[float]) -> list[TargetCheck]:
    def median(system: str, workload: str, metric: str) -> float | None:
        cell = cells.get((system, workload))
        stat = cell.stat(metric) if cell else None
        return stat.median if stat else None

    checks = []
    ct = wl.CONNECT_TRIALS
    overhead = median(ct, "overhead", "per_trial_s")
    floor = statistics.median(floor_latency_s) if floor_latency_s else None
    checks.append(
        _ratio_check(
            "overhead vs raw job latency",
            "per-trial wall time <= 1.25x the latency of one trivial single-task job",
            overhead,
            floor,
            1.25,
            "s/trial",
            "s/job",
        )
    )
    checks.append(
        _ratio_check(
            "overhead vs raw jobs, same parallelism",
            "(stricter reading) per-trial wall time <= 1.25x that of bare jobs submitted 2 at a time",
            overhead,
            median(wl.FLOOR_RAW, "overhead", "per_trial_s"),
            1.25,
            "s/trial",
            "s/trial",
        )
    )
    spark_trials = median(wl.SPARK_TRIALS, "overhead", "per_trial_s")
    checks.append(
        _ratio_check(
            "overhead vs SparkTrials",
            "per-trial wall time >= 5x lower than hyperopt SparkTrials (classic local[2])",
            spark_trials,
            overhead,
            5.0,
            "s/trial (SparkTrials)",
            "s/trial",
            at_least=True,
        )
    )
    efficiency = median(ct, "efficiency", "efficiency")
    shape = cells[(ct, "efficiency")].workload if (ct, "efficiency") in cells else None
    checks.append(
        TargetCheck(
            "efficiency",
            "ideal / actual wall time >= 0.85 at parallelism 2"
            + (f" ({shape.n_trials} x {shape.sleep_s:g} s trials)" if shape else ""),
            "-" if efficiency is None else f"{efficiency:.3f}",
            None if efficiency is None else efficiency >= 0.85,
        )
    )
    checks.append(
        _ratio_check(
            "tracking cost",
            "efficiency-workload wall time with MLflow tracking on <= 1.10x with it off",
            median(wl.CONNECT_TRIALS_TRACKED, "efficiency", "wall_s"),
            median(ct, "efficiency", "wall_s"),
            1.10,
            "s on",
            "s off",
        )
    )
    large, small = _payload_keys(cells)
    checks.append(
        _ratio_check(
            "payload time",
            f"median trial time (submitted to result back) with a {large or 'large'} capture "
            f"<= {PAYLOAD_TIME_GROWTH}x with a 1 KB one",
            median(ct, large, "trial_latency_s") if large else None,
            median(ct, small, "trial_latency_s") if small else None,
            PAYLOAD_TIME_GROWTH,
            "s/trial",
            "s/trial",
        )
    )
    checks.append(
        _ratio_check(
            "payload bytes",
            f"bytes sent per trial with a {large or 'large'} capture "
            f"<= {PAYLOAD_BYTES_GROWTH}x with a 1 KB one",
            median(ct, large, "bytes_per_trial") if large else None,
            median(ct, small, "bytes_per_trial") if small else None,
            PAYLOAD_BYTES_GROWTH,
            "B/trial",
            "B/trial",
            digits=0,
        )
    )
    scale = cells.get((ct, "scale"))
    first = scale.windows.get("first", {}) if scale else {}
    last = scale.windows.get("last", {}) if scale else {}
    checks.append(
        _ratio_check(
            "scale",
            f"per-trial overhead of the last {last.get('trials', 50)} trials <= 1.5x the first "
            f"{first.get('trials', 50)}, suggestion time excluded",
            last.get("overhead_per_trial_s"),
            first.get("overhead_per_trial_s"),
            1.5,
            "s/trial (last)",
            "s/trial (first)",
        )
    )
    return checks


def _payload_keys(cells: dict[tuple[str, str], Cell]) -> tuple[str | None, str | None]:
    payloads = {
        c.workload.key: c.workload.payload_bytes for c in cells.values() if c.workload.name == "payload"
    }
    if len(payloads) < 2:
        return None, None
    ordered = sorted(payloads, key=payloads.__getitem__)
    return ordered[-1], ordered[0]


def _ratio_check(
    name: str,
    target: str,
    value: float | None,
    reference: float | None,
    limit: float,
    value_unit: str,
    reference_unit: str,
    at_least: bool = False,
    digits: int = 3,
) -> TargetCheck:
    """``value / reference`` against ``limit`` (at most, or at least)."""
    if value is None or reference is None or reference <= 0:
        return TargetCheck(name, target, "-", None)
    ratio = value / reference
    measured = f"{value:.{digits}f} {value_unit} / {reference:.{digits}f} {reference_unit} = {ratio:.2f}x"
    return TargetCheck(name, target, measured, ratio >= limit if at_least else ratio <= limit)
