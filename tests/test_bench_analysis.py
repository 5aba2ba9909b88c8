"""The benchmark's pure parts behind the scale targets: pace windows, save-write windows, the
save probe's wrapping, merging a scale run into earlier results. No Spark, no timing claims."""

from __future__ import annotations

import types

from benchmarks import report
from benchmarks import workloads as wl
from benchmarks.analysis import pace_windows, save_windows, summarize
from benchmarks.measure import SAVE_PER_TRIAL, RunResult, SaveProbe
from benchmarks.suite import SuiteResult
from benchmarks.targets import evaluate


def test_pace_windows_compare_the_last_tenth_with_the_first_tenth_after_the_warm_up() -> None:
    # 1,000 trials: 10 a second for the first 500, then 5 a second.
    done = [i * 0.1 for i in range(500)] + [50.0 + i * 0.2 for i in range(500)]

    pace = pace_windows(done, fraction=0.1, warm_up=50)

    assert pace["trials"] == 100 and pace["warm_up"] == 50
    assert round(pace["first_per_s"], 6) == 10.0
    assert round(pace["last_per_s"], 6) == 5.0
    assert round(pace["ratio"], 6) == 0.5


def test_pace_windows_shrink_for_short_runs_and_give_nothing_when_too_short() -> None:
    pace = pace_windows([float(i) for i in range(8)])
    assert pace["warm_up"] == 0 and pace["trials"] == 1
    assert pace_windows([0.0, 1.0]) == {}
    assert pace_windows([1.0] * 100) == {}  # no time passed in a window


def test_save_windows_take_the_median_write_of_each_window() -> None:
    # The first write is a whole snapshot (in the warm-up); then 1 ms writes, and 3 ms ones at the end.
    durations = [0.5] + [0.001] * 899 + [0.003] * 100

    window = save_windows(durations, fraction=0.1, warm_up=50)

    assert window["writes"] == 100
    assert window["first_s"] == 0.001 and window["last_s"] == 0.003
    assert round(window["ratio"], 6) == 3.0


def test_save_probe_times_the_first_save_function_it_finds_and_puts_it_back() -> None:
    calls: list[int] = []

    class Journal:
        def trial_ended(self, n: int) -> None:
            calls.append(n)

    module = types.SimpleNamespace(SaveJournal=Journal, save_trials=lambda *a: None)
    original = Journal.trial_ended
    probe = SaveProbe()
    durations: list[float] = []

    name = probe._wrap(module, SAVE_PER_TRIAL, durations)
    Journal().trial_ended(7)
    probe.__exit__(None, None, None)

    assert name == "SaveJournal.trial_ended"
    assert calls == [7] and len(durations) == 1
    assert Journal.trial_ended is original
    # Neither name: nothing wrapped, and the report says "not measured".
    assert SaveProbe()._wrap(types.SimpleNamespace(), SAVE_PER_TRIAL, []) is None


def test_scale_targets_say_not_measured_when_the_save_probe_found_nothing() -> None:
    workload = wl.scale(200)
    runs = [
        RunResult(
            wl.CONNECT_TRIALS,
            workload.key,
            1000,
            20.0,
            n_trials=200,
            completed_at_s=[0.1 * i for i in range(200)],
            cpu_s=2.0,
            extras={"save": {"probe": None, "per_trial_s": [], "file_bytes": 1000}},
        ),
        RunResult(wl.FLOOR_RAW, workload.key, 1000, 18.0, n_trials=200, cpu_s=1.0),
        RunResult(wl.IN_PROCESS, workload.key, 1000, 0.5, n_trials=200, cpu_s=0.4),
    ]
    checks = {c.name: c for c in evaluate(summarize([workload], runs))}

    assert checks["scale pace (scale)"].verdict == "PASS"
    # 10 ms > 1.2 x 5 ms + 2 ms = 8 ms
    assert checks["scale client CPU (scale)"].verdict == "MISS"
    assert checks["scale save writes (scale)"].verdict == "not measured"


def test_merge_puts_a_scale_run_beside_earlier_results_and_replaces_only_its_own_columns() -> None:
    overhead = wl.Workload("overhead", n_trials=4, parallelism=2, systems=(wl.CONNECT_TRIALS,))
    old_scale, new_scale = wl.scale_plan(500)[0], wl.scale_plan(500)[0]
    base = SuiteResult(
        plan=[overhead, old_scale],
        runs=[
            RunResult(wl.CONNECT_TRIALS, "overhead", 1000, 1.0, n_trials=4),
            RunResult(wl.CONNECT_TRIALS, old_scale.key, 1000, 99.0, n_trials=500),
        ],
        notes=[f"{old_scale.key}: an old note", "overhead: kept"],
        meta={"engine": "aaa"},
    )
    extra = SuiteResult(
        plan=[new_scale], runs=[RunResult(wl.CONNECT_TRIALS, new_scale.key, 1000, 50.0, n_trials=500)]
    )

    merged = report.merge(base, extra, {new_scale.key: {"engine": "bbb", "command": "make bench-scale"}})

    assert [w.key for w in merged.plan] == ["overhead", "scale/500"]
    assert sorted(r.wall_s for r in merged.runs) == [1.0, 50.0]
    assert merged.notes == ["overhead: kept"]
    assert merged.meta["engine"] == "aaa" and merged.meta["merged"]["scale/500"]["engine"] == "bbb"
    # Through JSON and back, as `make bench-scale` reads the results it merges into.
    cells, checks = report.build(merged)
    again = report.suite_from_json(report.to_json(merged, cells, checks))
    assert [w.key for w in again.plan] == ["overhead", "scale/500"]
    assert again.plan[1].save_file and again.plan[1].algo == "rand"
    assert "Merged from another run: **scale/500**" in report.markdown(again, *report.build(again))


def _tracked_run(workload: wl.Workload, children_by_status: dict[str, int], restored: int) -> RunResult:
    record = {
        "parent_run_id": "p1",
        "parent_status": "FINISHED",
        "children": sum(children_by_status.values()),
        "children_by_status": children_by_status,
        "from_mlflow_s": 3.5,
        "from_mlflow_restored": restored,
    }
    return RunResult(
        wl.CONNECT_TRIALS_TRACKED, workload.key, 1000, 30.0, n_trials=200, extras={"mlflow": record}
    )


def test_a_tracked_scale_search_passes_only_when_every_child_run_ended_and_resumes_whole() -> None:
    workload = wl.scale_plan(200)[0]
    assert wl.CONNECT_TRIALS_TRACKED in workload.systems and not workload.left_out
    ours = RunResult(wl.CONNECT_TRIALS, workload.key, 1000, 20.0, n_trials=200)
    name = f"scale tracked runs ({workload.key})"

    def verdict(run: RunResult) -> str:
        return {c.name: c for c in evaluate(summarize([workload], [ours, run]))}[name].verdict

    assert verdict(_tracked_run(workload, {"FINISHED": 200}, restored=200)) == "PASS"
    assert verdict(_tracked_run(workload, {"FINISHED": 199, "RUNNING": 1}, restored=199)) == "MISS"
    assert verdict(_tracked_run(workload, {"FINISHED": 200}, restored=150)) == "MISS"
    suite = SuiteResult(plan=[workload], runs=[ours, _tracked_run(workload, {"FINISHED": 200}, restored=200)])
    text = report.markdown(suite, *report.build(suite))
    assert "200 child runs (200 FINISHED)" in text and "restored 200 trials in 3.5 s" in text
