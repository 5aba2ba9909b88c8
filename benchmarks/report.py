"""What a suite leaves behind: a markdown report, a JSON file and a PNG.

- ``markdown``: the system x workload tables (medians, min-max where repeated), detail
  tables for scale and payload, the targets with PASS / MISS, and notes (what did not run and
  why, fewer repeats and why).
- ``readme_section`` / ``write_readme``: the tables, targets and notes, with the engine
  revision and date, between the README's ``<!-- bench:begin -->`` / ``<!-- bench:end -->``.
- ``write_json``: everything, including every run's raw timings.
- ``plot_trials_vs_time``: trials completed against wall-clock time, one line per system, for
  the wide and model workloads (the median run of each cell).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import workloads as wl
from benchmarks.analysis import Cell, Stat, summarize
from benchmarks.measure import RunResult
from benchmarks.suite import SuiteResult
from benchmarks.targets import TargetCheck, evaluate

# Below this per-trial overhead (in-process hyperopt), a last/first ratio is noise.
_MIN_WINDOW_OVERHEAD_S = 0.005

_LEGEND = {
    "overhead": "wall time per trial (objective returns at once)",
    "wide": "ideal / actual wall time (trials sleep 1 s)",
    "first-trial": "fmin called -> first trial's result, fresh session on a warm server (SparkTrials: "
    "its classic session, which cannot be fresh without a new JVM)",
    "model": "wall time; best loss (1 - CV accuracy), medians over seeds",
    "scale": "wall time; client peak RSS; last-50 / first-50 per-trial overhead after 10 warm-up trials "
    "(suggestion excluded), median over repeats; where trials use rand.suggest: pace of the last 10% of "
    "trials / the first 10% after 50 warm-up ones, and client CPU time per trial",
    "tracking": "wall time per trial (trials sleep 1 s); ideal / actual wall time",
    "payload": "wall time per trial (median time of one trial, submitted to result back); every byte "
    "the client sent per trial, artifacts included",
}
# The first table: the workloads the speed targets are about.
_SPEED = ("wide", "overhead", "tracking", "first-trial")
# Systems that are not searchers of their own: no "ahead / behind" line for them.
_NOT_PEERS = (wl.FLOOR_RAW, wl.IN_PROCESS, wl.CONNECT_TRIALS, wl.CONNECT_TRIALS_TRACKED)
README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"


def build(suite: SuiteResult) -> tuple[dict[tuple[str, str], Cell], list[TargetCheck]]:
    cells = summarize(suite.plan, suite.runs)
    return cells, evaluate(cells)


# -- markdown ----------------------------------------------------------------------------------
def markdown(suite: SuiteResult, cells: dict[tuple[str, str], Cell], checks: list[TargetCheck]) -> str:
    servers = suite.meta.get("servers") or {}
    lines = [
        f"## connect-trials benchmark ({suite.meta.get('started', '')}, "
        f"engine {suite.meta.get('engine', '?')}, "
        f"{suite.meta.get('mode', '')} run, {suite.meta.get('cpus')} cores; "
        f"{suite.meta.get('duration_s', 0) / 60:.1f} min)",
        "",
    ]
    if servers:
        lines += ["Servers: " + "; ".join(f"{k}: {v}" for k, v in servers.items()) + ".", ""]
    lines += _merged_lines(suite)
    lines += tables(suite, cells)
    if suite.floor_latency_s:
        floor = Stat.of(suite.floor_latency_s)
        assert floor is not None
        lines.append(
            f"One trivial single-task `spark.range(0, 1, 1, 1).mapInPandas(...)` job alone on the main "
            f"server takes {_range(floor, 's', 3)} (median of {floor.n}; shown, judges nothing)."
        )
    lines += _peer_lines(suite, cells)
    lines += _scale_details(cells) + _scale_pace_details(cells) + _tracked_scale_lines(cells)
    lines += _payload_details(suite, cells) + _phase_details(suite, cells)
    lines += _targets(checks) + _notes(suite)
    return "\n".join(lines) + "\n"


def tables(suite: SuiteResult, cells: dict[tuple[str, str], Cell]) -> list[str]:
    """The system x workload tables: speed targets first, then the search workloads."""
    lines: list[str] = []
    speed = [w for w in suite.plan if w.name in _SPEED]
    search = [w for w in suite.plan if w.name not in _SPEED]
    for group in (speed, search):
        if not group:
            continue
        systems = [s for s in wl.ALL_SYSTEMS if any(s in w.systems for w in group)]
        lines += [
            "| system | " + " | ".join(_column_title(w) for w in group) + " |",
            "|---|" + "---|" * len(group),
        ]
        for system in systems:
            row = [_cell_text(cells.get((system, w.key)), suite, system, w) for w in group]
            lines.append(f"| {system} | " + " | ".join(row) + " |")
        names = list(dict.fromkeys(w.name for w in group))
        lines += ["", "Columns: " + "; ".join(f"**{n}**: {_LEGEND[n]}" for n in names) + ".", ""]
    return lines


def readme_section(suite: SuiteResult, cells: dict[tuple[str, str], Cell], checks: list[TargetCheck]) -> str:
    """What ``make bench`` writes between the README's markers."""
    date = str(suite.meta.get("started", ""))[:10]
    lines = [
        f"Measured by `make bench` at engine revision {suite.meta.get('engine', '?')} on {date} "
        f"({suite.meta.get('cpus')} cores, {suite.meta.get('duration_s', 0) / 60:.0f} min). "
        "Generated from `benchmarks/results/latest.json`; do not edit by hand.",
        "",
        *_merged_lines(suite),
        *tables(suite, cells),
        "![trials completed versus wall-clock time](benchmarks/results/trials_vs_time.png)",
        *_peer_lines(suite, cells),
        *_scale_pace_details(cells),
        *_tracked_scale_lines(cells),
        *_targets(checks),
        *_notes(suite),
    ]
    return "\n".join(lines) + "\n"


def write_readme(readme: Path, section: str) -> bool:
    """Replace what lies between the README's bench markers with ``section``. False, and the
    README untouched, when the markers are missing."""
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        return False
    readme.write_text(text[: begin + len(README_BEGIN)] + "\n" + section + text[end:])
    return True


def _column_title(workload: wl.Workload) -> str:
    size = f"{workload.n_trials} trials, p{workload.parallelism}"
    repeats = f", x{workload.repeats}" if workload.repeats > 1 else ""
    return f"{workload.key} ({size}{repeats})"


def _range(stat: Stat, unit: str, digits: int) -> str:
    text = f"{stat.median:.{digits}f} {unit}".rstrip()
    if stat.n > 1:
        text += f" ({stat.low:.{digits}f}–{stat.high:.{digits}f})"
    return text


def _cell_text(
    cell: Cell | None, suite: SuiteResult, system: str, workload: wl.Workload | None = None
) -> str:
    if cell is None:
        if workload is not None and system not in workload.systems:
            return "–"
        if system in suite.unavailable:
            return "unavailable"
        return "failed" if any(f["system"] == system for f in suite.failures) else "–"
    text = _cell_value(cell)
    runs = len(cell.runs)
    if cell.workload.repeats > 1 and runs < cell.workload.repeats:
        # †: fewer by design (the notes say why); ‡: cut to keep to the time budget.
        mark = "†" if system in cell.workload.once else "‡"
        text += f" ({runs} run{'s' if runs > 1 else ''}{mark})"
    return text


def _cell_value(cell: Cell) -> str:
    name = cell.workload.name
    stat = cell.stat
    if name == "overhead":
        return _range(stat("per_trial_s"), "s/trial", 3)  # type: ignore[arg-type]
    if name == "wide":
        return _range(stat("efficiency"), "", 2)  # type: ignore[arg-type]
    if name == "tracking":
        efficiency = stat("efficiency")
        text = _range(stat("per_trial_s"), "s/trial", 3)  # type: ignore[arg-type]
        return text + (f"; {efficiency.median:.2f} of ideal" if efficiency else "")
    if name == "first-trial":
        first = stat("first_trial_s")
        return _range(first, "s", 2) if first else "–"
    if name == "model":
        loss = stat("best_loss")
        return _range(stat("wall_s"), "s", 1) + (f"; loss {loss.median:.4f}" if loss else "")  # type: ignore[arg-type]
    if name == "scale":
        wall = stat("wall_s")
        rss = stat("peak_rss_mb")
        text = f"{wall.median:.0f} s" if wall else "–"
        if rss:
            text += f"; {rss.median:.0f} MB"
        window = cell.windows.get("first", {})
        growth = stat("scale_growth")
        if window.get("overhead_per_trial_s", 0) >= _MIN_WINDOW_OVERHEAD_S and growth:
            text += f"; x{growth.median:.2f}"
        elif window:
            text += "; overhead ~0"
        pace, cpu = stat("pace_ratio"), stat("cpu_per_trial_s")
        if cell.workload.algo == "rand" and pace:
            text += f"; pace x{pace.median:.2f}"
        if cell.workload.algo == "rand" and cpu:
            text += f"; {cpu.median * 1e3:.1f} ms CPU/trial"
        return text
    if name == "payload":
        per_trial, latency = stat("per_trial_s"), stat("trial_latency_s")
        text = f"{per_trial.median:.2f} s/trial" if per_trial else "–"
        text += f" (one trial {latency.median:.2f} s)" if latency else ""
        sent = stat("bytes_per_trial")
        return text + (f"; {_bytes(sent.median)}/trial" if sent else "; bytes n/a")
    return "?"


def _bytes(n: float) -> str:
    for unit, size in (("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _scale_details(cells: dict[tuple[str, str], Cell]) -> list[str]:
    rows = [c for c in cells.values() if c.workload.name == "scale" and c.windows.get("first")]
    if not rows:
        return []
    lines = [
        "",
        "### scale: first vs last trials (median run)",
        "",
        "| system | wall | suggestion total | peak RSS (growth) "
        "| first-50 after 10 warm-up: s/trial, suggest, overhead, latency "
        "| last-50: s/trial, suggest, overhead, latency |",
        "|---|---|---|---|---|---|",
    ]
    for cell in rows:
        run = cell.median_run()
        first, last = cell.windows["first"], cell.windows["last"]
        suggest = f"{run.suggest_s:.1f} s" if run.suggest_spans_s else "on executors"
        growth = (run.peak_rss_mb or 0) - (run.start_rss_mb or 0)
        lines.append(
            f"| {cell.system} | {run.wall_s:.1f} s | {suggest} | {run.peak_rss_mb:.0f} MB (+{growth:.0f}) "
            f"| {_window_text(first)} | {_window_text(last)} |"
        )
    return lines


def _scale_pace_details(cells: dict[tuple[str, str], Cell]) -> list[str]:
    """The issue's done-when numbers for the scale workloads run with rand.suggest."""
    rows = [c for c in cells.values() if c.workload.name == "scale" and c.workload.algo == "rand"]
    if not rows:
        return []
    lines = [
        "",
        "### scale: pace, client CPU and the save file (median run; rand.suggest, no-op trials, p4)",
        "",
        "| workload | system | trials | wall | pace, first 10% after 50 warm-up -> last 10% (trials/s) "
        "| client CPU per trial | peak RSS (growth) | save file at the end | one save write, first 10% -> "
        "last 10% (median) | save writes per trial (mean) | compaction at fmin's end |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in rows:
        run = cell.median_run()
        pace = cell.windows.get("pace")
        pace_text = (
            f"{pace['first_per_s']:.1f} -> {pace['last_per_s']:.1f} (x{pace['ratio']:.2f})" if pace else "–"
        )
        cpu = f"{run.cpu_s / run.n_trials * 1e3:.2f} ms" if run.cpu_s is not None and run.n_trials else "–"
        rss = "–"
        if run.peak_rss_mb is not None:
            rss = f"{run.peak_rss_mb:.0f} MB (+{run.peak_rss_mb - (run.start_rss_mb or run.peak_rss_mb):.0f})"
        save_texts = _save_texts(run.extras.get("save"), cell.windows.get("save"))
        lines.append(
            f"| {cell.workload.key} | {cell.system} | {run.n_trials} | {run.wall_s:.1f} s | {pace_text} "
            f"| {cpu} | {rss} | " + " | ".join(save_texts) + " |"
        )
    probes = sorted(
        {
            f"`{s['probe']}`" + (f" (compaction: `{s['at_end']}`)" if s.get("at_end") else "")
            for c in rows
            for r in c.runs
            if (s := r.extras.get("save")) and s.get("probe")
        }
    )
    if probes:
        lines += ["", "Save writes timed by wrapping " + ", ".join(probes) + " while fmin ran."]
    lines += [
        "Client CPU: user + system time of the process that ran fmin (all its threads), over the run; "
        "hyperopt serial runs without a trials_save_file."
    ]
    return lines


def _tracked_scale_lines(cells: dict[tuple[str, str], Cell]) -> list[str]:
    """A tracked scale search in MLflow: its parent, its child runs by status, and the time
    ``from_mlflow`` took to resume it."""
    lines: list[str] = []
    for cell in cells.values():
        if cell.workload.name != "scale":
            continue
        for run in cell.runs:
            record = run.extras.get("mlflow")
            if not record:
                continue
            if not record.get("parent_run_id"):
                lines.append(f"- {cell.workload.key}, {cell.system}: no parent run found.")
                continue
            by_status = ", ".join(f"{n} {s}" for s, n in sorted(record["children_by_status"].items()))
            lines.append(
                f"- {cell.workload.key}, {cell.system}: parent run {record['parent_status']}; "
                f"{record['children']} child runs ({by_status}); "
                f"`ConnectTrials.from_mlflow(parent)` restored {record['from_mlflow_restored']} trials "
                f"in {record['from_mlflow_s']:.1f} s."
            )
    if not lines:
        return []
    return ["", "Tracked scale searches in MLflow (the suite's `mlflow server`, sqlite backend):", "", *lines]


def _save_texts(save: dict[str, Any] | None, window: dict[str, float] | None) -> list[str]:
    """The save-file columns of a scale row: size at the end, one write first -> last, the mean
    write, the compaction at fmin's end."""
    texts = ["–"] * 4
    if save is None:
        return texts
    if save.get("file_bytes") is not None:
        texts[0] = _bytes(save["file_bytes"])
    if not save.get("probe"):
        texts[1] = texts[2] = "not measured (no save function found to time)"
        return texts
    if window:
        texts[1] = (
            f"{window['first_s'] * 1e3:.3f} -> {window['last_s'] * 1e3:.3f} ms (x{window['ratio']:.2f})"
        )
    if save["per_trial_s"]:
        writes = save["per_trial_s"]
        texts[2] = f"{statistics.fmean(writes) * 1e3:.3f} ms ({len(writes)} writes)"
    if save.get("at_end_s") is not None:
        texts[3] = f"{save['at_end_s'] * 1e3:.0f} ms"
    return texts


def _peer_lines(suite: SuiteResult, cells: dict[tuple[str, str], Cell]) -> list[str]:
    """Each peer beside connect-trials, on every workload both ran: who is ahead, by how much."""
    lines = []
    for workload in suite.plan:
        mine = cells.get((wl.CONNECT_TRIALS, workload.key))
        if mine is None:
            continue
        metric, unit, higher = _peer_metric(workload)
        ours = mine.stat(metric)
        for system in workload.systems:
            peer = cells.get((system, workload.key))
            theirs = peer.stat(metric) if peer else None
            if system in _NOT_PEERS or ours is None or theirs is None or not ours.median or not theirs.median:
                continue
            ahead = (theirs.median > ours.median) == higher
            ratio = theirs.median / ours.median if higher == ahead else ours.median / theirs.median
            who = f"**{system} ahead**" if ahead else "connect-trials ahead"
            values = f"{theirs.median:.3f}{unit} | {ours.median:.3f}{unit}"
            lines.append(f"| {workload.key} | {system} | {metric} | {values} | {who} ({ratio:.2f}x) |")
    if not lines:
        return []
    return [
        "",
        "### peers beside connect-trials (medians; the same workload, run beside each other)",
        "",
        "| workload | peer | metric | peer | connect-trials | verdict |",
        "|---|---|---|---|---|---|",
        *lines,
    ]


def _peer_metric(workload: wl.Workload) -> tuple[str, str, bool]:
    """(metric, unit, higher is better) a peer is compared on for ``workload``."""
    if workload.name == "wide":
        return "efficiency", "", True
    if workload.name == "first-trial":
        return "first_trial_s", " s", False
    return "per_trial_s", " s/trial", False


def _window_text(w: dict[str, float]) -> str:
    return (
        f"{w['per_trial_s']:.3f}, {w['suggest_per_trial_s']:.3f}, {w['overhead_per_trial_s']:.3f}, "
        f"{w['median_latency_s']:.3f}"
    )


def _payload_details(suite: SuiteResult, cells: dict[tuple[str, str], Cell]) -> list[str]:
    payloads = [w for w in suite.plan if w.name == "payload"]
    if not payloads:
        return []
    lines = ["", "### payload: what each trial costs, by capture size", ""]
    lines += ["| system | " + " | ".join(w.key for w in payloads) + " | how bytes were counted |"]
    lines += ["|---|" + "---|" * (len(payloads) + 1)]
    for system in wl.ALL_SYSTEMS:
        present = [cells.get((system, w.key)) for w in payloads]
        if not any(present):
            continue
        note = next((c.runs[0].bytes_note for c in present if c is not None), "")
        texts = [_cell_text(c, suite, system, w) for c, w in zip(present, payloads, strict=True)]
        lines.append(f"| {system} | " + " | ".join(texts) + f" | {note} |")
    return lines


def _phase_details(suite: SuiteResult, cells: dict[tuple[str, str], Cell]) -> list[str]:
    """connect-trials' trials, split by the worker's own timestamps (medians of medians)."""
    rows = []
    for workload in suite.plan:
        for system in (wl.CONNECT_TRIALS, wl.CONNECT_TRIALS_TRACKED):
            cell = cells.get((system, workload.key))
            if cell is None:
                continue
            phases = [Stat.of([r.extras[k] for r in cell.runs if k in r.extras]) for k in _PHASES]
            if all(phases):
                texts = " | ".join(f"{p.median:.3f}" for p in phases if p)
                rows.append(f"| {system} | {workload.key} | {texts} |")
    if not rows:
        return []
    return [
        "",
        "### where a connect-trials trial's time goes (median s; client and worker clocks are one)",
        "",
        "| system | workload | booked -> objective starts on the worker | objective | "
        "objective ends -> result recorded |",
        "|---|---|---|---|---|",
        *rows,
    ]


_PHASES = ("median_to_worker_s", "median_objective_s", "median_back_s")


def _targets(checks: list[TargetCheck]) -> list[str]:
    lines = ["", "### targets (connect-trials)", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {c.name}: {c.target} | {c.measured} | {c.verdict} |" for c in checks]
    return lines


def _notes(suite: SuiteResult) -> list[str]:
    notes = [_once_note(w) for w in suite.plan if (w.repeats > 1 or w.once_trials) and _once_in(w)]
    notes += [f"{w.key}: left out: {w.left_out}" for w in suite.plan if w.left_out]
    notes += [f"‡ {n}" if "budget" in n else n for n in suite.notes]
    notes += [f"{system} did not run: {why}" for system, why in suite.unavailable.items()]
    notes += [
        f"{f['system']} on {f['workload']} (seed {f['seed']}) failed: {f['error']}" for f in suite.failures
    ]
    if not notes:
        return []
    return ["", "### notes", ""] + [f"- {n}" for n in notes]


def _once_in(workload: wl.Workload) -> list[str]:
    return [s for s in workload.once if s in workload.systems]


def _once_note(workload: wl.Workload) -> str:
    """† which systems ran once (and which of them on fewer trials), and why."""
    once = _once_in(workload)
    fewer = [s for s in once if workload.for_system(s).n_trials < workload.n_trials]
    text = f"† {workload.key}: {', '.join(once)} ran once"
    if fewer:
        text += f" ({', '.join(fewer)}: {workload.once_trials} trials of {workload.n_trials})"
    if workload.repeats > 1:
        text += f", the others {workload.repeats} times"
    return text + f": {workload.once_why or 'for time'}"


def _merged_lines(suite: SuiteResult) -> list[str]:
    """Which columns come from another run (``make bench-scale``), merged into these results."""
    merged = suite.meta.get("merged") or {}
    if not merged:
        return []
    lines = [
        f"Merged from another run: **{key}** from `{m.get('command', 'make bench-scale')}` at engine "
        f"{m.get('engine', '?')} ({str(m.get('started', ''))[:16]}, {m.get('duration_s', 0) / 60:.0f} min)"
        for key, m in merged.items()
    ]
    return ["; ".join(lines) + ".", ""]


# -- merging runs ------------------------------------------------------------------------------
def suite_from_json(data: dict[str, Any]) -> SuiteResult:
    """The suite a ``latest.json`` was written from (its cells and targets are rebuilt from its runs)."""
    return SuiteResult(
        plan=[wl.Workload.from_json(w) for w in data.get("workloads", [])],
        runs=[RunResult.from_json(r) for r in data.get("runs", [])],
        floor_latency_s=list((data.get("floor_job_latency_s") or {}).get("samples") or []),
        unavailable=dict(data.get("unavailable") or {}),
        failures=list(data.get("failures") or []),
        notes=list(data.get("notes") or []),
        meta=dict(data.get("meta") or {}),
    )


def merge(base: SuiteResult, extra: SuiteResult, sources: dict[str, dict[str, Any]]) -> SuiteResult:
    """``base`` with the workloads of ``extra`` (their runs, notes, failures) in place of its
    own of the same keys, or added after them; ``sources`` says, per merged workload key,
    which run it came from (shown in the report). Everything else is ``base``'s."""
    keys = {w.key for w in extra.plan}

    def about(text: str) -> bool:
        return any(text.startswith(f"{k}:") or text.startswith(f"{k} ") for k in keys)

    meta = dict(base.meta)
    meta["merged"] = {
        **{k: v for k, v in (base.meta.get("merged") or {}).items() if k not in keys},
        **{k: sources[k] for k in sorted(keys) if k in sources},
    }
    return SuiteResult(
        plan=[w for w in base.plan if w.key not in keys] + list(extra.plan),
        runs=[r for r in base.runs if r.workload not in keys] + list(extra.runs),
        floor_latency_s=list(base.floor_latency_s),
        unavailable={**base.unavailable, **extra.unavailable},
        unavailable_on={**base.unavailable_on, **extra.unavailable_on},
        failures=[f for f in base.failures if f.get("workload") not in keys] + list(extra.failures),
        notes=[n for n in base.notes if not about(n)] + list(extra.notes),
        cut={**{k: v for k, v in base.cut.items() if k not in keys}, **extra.cut},
        meta=meta,
    )


def subset(suite: SuiteResult, keys: set[str]) -> SuiteResult:
    """Only the workloads ``keys`` of ``suite``: their plan, runs, failures and notes."""
    return SuiteResult(
        plan=[w for w in suite.plan if w.key in keys],
        runs=[r for r in suite.runs if r.workload in keys],
        failures=[f for f in suite.failures if f.get("workload") in keys],
        notes=[n for n in suite.notes if any(n.startswith(f"{k}:") for k in keys)],
    )


def source_of(suite: SuiteResult, command: str) -> dict[str, Any]:
    """What ``merge`` records about the run ``suite`` came from."""
    meta = suite.meta
    return {
        "command": command,
        "engine": meta.get("engine"),
        "started": meta.get("started"),
        "duration_s": meta.get("duration_s"),
        "mode": meta.get("mode"),
    }


# -- JSON ----------------------------------------------------------------------------------------
def to_json(
    suite: SuiteResult, cells: dict[tuple[str, str], Cell], checks: list[TargetCheck]
) -> dict[str, Any]:
    return {
        "meta": suite.meta,
        "workloads": [w.to_json() for w in suite.plan],
        "floor_job_latency_s": {
            "median": statistics.median(suite.floor_latency_s) if suite.floor_latency_s else None,
            "samples": suite.floor_latency_s,
        },
        "cells": [c.to_json() for c in cells.values()],
        "targets": [c.to_json() for c in checks],
        "unavailable": suite.unavailable,
        "failures": suite.failures,
        "notes": suite.notes,
        "runs": [r.to_json() for r in suite.runs],
    }


def write_json(data: dict[str, Any], out_dir: Path, timestamped: bool = True) -> list[Path]:
    """``latest.json`` and, if asked, a copy named after the run's start time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json"]
    if timestamped:
        paths.append(out_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json")
    text = json.dumps(data, indent=1, default=str) + "\n"
    for path in paths:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths


# -- PNG -----------------------------------------------------------------------------------------
def plot_trials_vs_time(suite: SuiteResult, cells: dict[tuple[str, str], Cell], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [w for w in suite.plan if w.name in ("wide", "model")] or suite.plan[:1]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, workload in zip(axes[0], panels, strict=True):
        for system in wl.ALL_SYSTEMS:
            cell = cells.get((system, workload.key))
            if cell is None:
                continue
            done = cell.median_run().completed_at_s
            if done:
                color = f"C{wl.ALL_SYSTEMS.index(system)}"  # one colour per system in every panel
                ax.step([0.0, *done], range(len(done) + 1), where="post", label=system, color=color)
        if workload.sleep_s > 0:
            # No overhead at all: every sleep_s, another `parallelism` trials finish.
            rounds = -(-workload.n_trials // workload.parallelism)
            times = [workload.sleep_s * (k + 1) for k in range(rounds)]
            counts = [min((k + 1) * workload.parallelism, workload.n_trials) for k in range(rounds)]
            ax.step([0.0, *times], [0, *counts], "k--", where="post", linewidth=1, label="ideal")
        ax.set_title(f"{workload.key}: {workload.n_trials} trials, parallelism {workload.parallelism}")
        ax.set_xlabel("wall-clock time since start (s)")
        ax.set_ylabel("trials completed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Trials completed vs wall-clock time (median run per system)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
