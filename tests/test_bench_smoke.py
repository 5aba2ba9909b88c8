"""The benchmark harness runs end to end at tiny sizes. Benchmarks are not tests: nothing here
asserts a timing; it checks that every cell ran and that the report, JSON and PNG come out."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report
from benchmarks.suite import run_suite
from benchmarks.workloads import smoke_plan


def test_bench_harness_runs_every_smoke_cell_and_writes_its_report(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = smoke_plan()
    suite = run_suite(plan, spark=spark, work_dir=tmp_path / "work", floor_jobs=3, log=lambda _line: None)

    assert suite.unavailable == {}
    assert suite.failures == []
    cells, checks = report.build(suite)
    for workload in plan:
        for system in workload.systems:
            cell = cells[(system, workload.key)]
            assert cell.runs[0].n_ok == workload.n_trials, (system, workload.key)
    assert len(suite.floor_latency_s) == 3

    text = report.markdown(suite, cells, checks)
    assert "| connect-trials |" in text
    assert "### targets (connect-trials)" in text

    written = report.write_json(report.to_json(suite, cells, checks), tmp_path / "results", timestamped=False)
    data = json.loads(written[0].read_text())
    assert len(data["runs"]) == sum(len(w.systems) for w in plan)
    assert {t["verdict"] for t in data["targets"]} <= {"PASS", "MISS", "not measured"}

    png = report.plot_trials_vs_time(suite, cells, tmp_path / "results" / "trials_vs_time.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
