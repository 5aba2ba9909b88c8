"""hyperopt is the reference: the same scripts under its ``SparkTrials`` (a classic local
session) and under ``ConnectTrials`` end with the same trials (integration/hyperopt_reference.py).

Both run as processes of their own, side by side: a classic session and a Connect one do not
share a Python process well (``getOrCreate`` hands back the thread's active session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": sys.executable}
    env.pop("SPARK_REMOTE", None)
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)  # set by this process's own Connect session
    return subprocess.Popen(
        [sys.executable, "-m", "integration.hyperopt_reference", *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _scenarios(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=400)
    assert process.returncode == 0, err[-4000:]
    return {
        line.split(" ", 2)[1]: json.loads(line.split(" ", 2)[2])
        for line in out.splitlines()
        if line.startswith("SCENARIO ")
    }


@pytest.fixture(scope="module")
def ended_with(connect_server) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[no-untyped-def]
    """What each scenario ends with: (hyperopt's SparkTrials, ConnectTrials)."""
    reference = _start("sparktrials")
    ours = _start("connect", connect_server.url)
    try:
        return _scenarios(reference), _scenarios(ours)
    finally:
        for process in (reference, ours):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_len_counts_only_valid_trials_and_max_evals_after_failures_runs_as_many_as_hyperopt(ended_with):
    hyperopt_says, we_say = ended_with
    reference = hyperopt_says["max_evals_after_failures"]
    assert reference["first"]["error"] > 0 and reference["first"]["len"] == reference["first"]["done"]
    assert we_say["max_evals_after_failures"] == reference


def test_loss_threshold_lets_the_trials_in_flight_finish_uncancelled_as_hyperopt(ended_with):
    hyperopt_says, we_say = ended_with
    keys = ("error", "cancel", "unfinished", "cancelled_reason")
    reference = hyperopt_says["loss_threshold"]
    assert [reference[k] for k in keys] == [0, 0, 0, None]
    ours = we_say["loss_threshold"]
    assert {k: ours[k] for k in keys} == {k: reference[k] for k in keys}
    # Two trials were in flight when the first ended below the threshold: both finish DONE.
    # (SparkTrials may run one more: the point FMinIter had queued ahead before it saw the loss.)
    assert ours["done"] == ours["documents"] >= 2


def test_early_stop_fn_reads_the_trials_surface_and_gets_its_args_back_as_under_sparktrials(ended_with):
    hyperopt_says, we_say = ended_with
    assert we_say["early_stop_fn"]["cancelled_reason"] == "early stopping condition"
    for key in ("cancelled_reason", "args_passed_back", "reason_seen"):
        assert we_say["early_stop_fn"][key] == hyperopt_says["early_stop_fn"][key], key
    # Called after each new success, and stopped at the third (SparkTrials looks once a second,
    # so it may have seen a fourth by then).
    assert we_say["early_stop_fn"]["successes_at_last_call"] == 3
    assert hyperopt_says["early_stop_fn"]["successes_at_last_call"] >= 3


@pytest.mark.parametrize("scenario", ["seeded", "seeded_refreshed"])
def test_seeded_points_run_first_and_count_toward_max_evals_as_hyperopt_counts_them(ended_with, scenario):
    hyperopt_says, we_say = ended_with
    assert hyperopt_says[scenario]["seeds"] == [1.0, 2.0]
    assert we_say[scenario] == hyperopt_says[scenario]
