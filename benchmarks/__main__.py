"""The command line: ``python -m benchmarks [--quick | --scale [--scale-trials N]] [--merge]
[--systems ...] [--workloads ...] [--out DIR] [--budget-min M]``.

``--scale`` (``make bench-scale``) runs only the 10,000-trial scale workload and merges its
cells into the results already in ``--out`` (the other workloads' results stay; ``--merge``
does the same for any run). A
full run into the committed results keeps the columns an earlier ``--merge`` put there and
that it does not run itself (the report says which run each came from)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from benchmarks import report
from benchmarks import workloads as wl
from benchmarks.suite import run_suite

RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every workload once, small (under 5 minutes)")
    parser.add_argument(
        "--scale",
        action="store_true",
        help=f"only the scale workload at {wl.BENCH_SCALE_TRIALS} trials (make bench-scale; ~40 minutes)",
    )
    parser.add_argument(
        "--scale-trials", type=int, help=f"trials of the --scale workload (default {wl.BENCH_SCALE_TRIALS})"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="merge this run's workloads into the results in --out instead of replacing them (--scale does)",
    )
    parser.add_argument(
        "--systems",
        help="comma-separated subset of: " + ", ".join(wl.ALL_SYSTEMS),
    )
    parser.add_argument(
        "--workloads", help="comma-separated subset of workload names or keys (overhead, wide/p16, ...)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"where the JSON, PNG and markdown go (default: {RESULTS_DIR}, quick: {RESULTS_DIR / 'quick'})",
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        help="repeats that would end past this many minutes are cut (default: 24, quick: 4.5, scale: none)",
    )
    args = parser.parse_args(argv)
    if args.quick and args.scale:
        parser.error("--quick and --scale are two different plans")
    if args.scale_trials is not None and not args.scale:
        parser.error("--scale-trials goes with --scale")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    # Only the full run's results are committed; quick runs go beside them, ignored by git.
    out = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    if args.scale:
        plan = wl.scale_plan(args.scale_trials or wl.BENCH_SCALE_TRIALS)
    else:
        plan = wl.quick_plan() if args.quick else wl.full_plan()
    if args.systems:
        chosen = {s.strip() for s in args.systems.split(",")}
        unknown = chosen - set(wl.ALL_SYSTEMS)
        if unknown:
            sys.exit(f"unknown systems: {', '.join(sorted(unknown))}; known: {', '.join(wl.ALL_SYSTEMS)}")
        plan = wl.select_systems(plan, chosen)
    if args.workloads:
        names = {n.strip() for n in args.workloads.split(",")}
        plan = [w for w in plan if w.name in names or w.key in names]
    if not plan:
        sys.exit("nothing to run: the filters left no workload")
    _quiet_libraries()
    budget_min = args.budget_min if args.budget_min is not None else (4.5 if args.quick else 24.0)
    suite = run_suite(plan, budget_s=None if args.scale and args.budget_min is None else budget_min * 60)
    suite.meta["mode"] = "quick" if args.quick else ("scale" if args.scale else "full")
    unfiltered = not args.quick and not args.systems and not args.workloads and out == RESULTS_DIR
    previous = _previous(out)
    # A scale run always merges: alone it would wipe the full run's results.
    merge = args.merge or args.scale
    if merge and previous is not None:
        command = (
            "make bench-scale" if args.scale else "python -m benchmarks " + " ".join(argv or sys.argv[1:])
        )
        suite = report.merge(previous, suite, {w.key: report.source_of(suite, command) for w in plan})
    elif unfiltered and not args.scale and previous is not None:
        # Columns an earlier --merge put here (make bench-scale) that this run does not have.
        own = {w.key for w in plan}
        carried = {k: v for k, v in (previous.meta.get("merged") or {}).items() if k not in own}
        if carried:
            suite = report.merge(suite, report.subset(previous, set(carried)), carried)
    cells, checks = report.build(suite)
    json_paths = report.write_json(report.to_json(suite, cells, checks), out)
    png = report.plot_trials_vs_time(suite, cells, out / "trials_vs_time.png")
    text = report.markdown(suite, cells, checks)
    (out / "latest.md").write_text(text)
    print(text)
    print(f"JSON: {', '.join(str(p) for p in json_paths)}\nPNG: {png}\nMarkdown: {out / 'latest.md'}")
    # Only a full, unfiltered run (or a scale run merged into one) into the committed results
    # speaks for the README.
    if unfiltered and (not args.scale or previous is not None):
        if report.write_readme(README, report.readme_section(suite, cells, checks)):
            print(f"README: its benchmark section now shows this run ({README})")
        else:
            print(f"README: no {report.README_BEGIN} / {report.README_END} markers in {README}; not written")
    return 0


def _previous(out: Path) -> report.SuiteResult | None:
    """The suite of the results already in ``out``, if there are any."""
    path = out / "latest.json"
    if not path.exists():
        return None
    try:
        return report.suite_from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        print(f"{path}: not read ({type(exc).__name__}: {exc}); written anew", file=sys.stderr)
        return None


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", message=".*does not yet fully support pandas.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import mlflow  # noqa: F401 - it configures its loggers when imported: quiet them after that

    for name in ("mlflow", "py4j", "hyperopt", "connect_trials", "optuna", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
