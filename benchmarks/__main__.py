"""The command line: ``python -m benchmarks [--quick] [--systems ...] [--out DIR]``."""

from __future__ import annotations

import argparse
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
        help="repeats that would end past this many minutes are cut (default: 24, quick: 4.5)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    # Only the full run's results are committed; quick runs go beside them, ignored by git.
    out = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
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
    suite = run_suite(plan, budget_s=budget_min * 60)
    suite.meta["mode"] = "quick" if args.quick else "full"
    cells, checks = report.build(suite)
    json_paths = report.write_json(report.to_json(suite, cells, checks), out)
    png = report.plot_trials_vs_time(suite, cells, out / "trials_vs_time.png")
    text = report.markdown(suite, cells, checks)
    (out / "latest.md").write_text(text)
    print(text)
    print(f"JSON: {', '.join(str(p) for p in json_paths)}\nPNG: {png}\nMarkdown: {out / 'latest.md'}")
    # Only a full, unfiltered run into the committed results speaks for the README.
    if not args.quick and not args.systems and not args.workloads and out == RESULTS_DIR:
        if report.write_readme(README, report.readme_section(suite, cells, checks)):
            print(f"README: its benchmark section now shows this run ({README})")
        else:
            print(f"README: no {report.README_BEGIN} / {report.README_END} markers in {README}; not written")
    return 0


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", message=".*does not yet fully support pandas.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import mlflow  # noqa: F401 - it configures its loggers when imported: quiet them after that

    for name in ("mlflow", "py4j", "hyperopt", "connect_trials", "optuna", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
