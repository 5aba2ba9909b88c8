"""What a trial printed and warned about reaches the client: ``trial["misc"]["output"]``, the
failed trial's log line, and one WARNING per distinct worker-side warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from hyperopt import STATUS_OK, fmin, hp, rand
from pyspark import cloudpickle

from connect_trials import ConnectTrials, worker
from tests.conftest import captured_log

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def run(spark: Any, fn: Any, max_evals: int = 1, **kwargs: Any) -> ConnectTrials:
    trials = ConnectTrials(spark_session=spark, parallelism=2, mlflow_tracking=False, **kwargs)
    fmin(fn, hp.uniform("x", 0, 1), algo=rand.suggest, max_evals=max_evals, trials=trials,
         rstate=np.random.default_rng(0), show_progressbar=False, return_argmin=False)  # fmt: skip
    return trials


def prints_through_every_channel(x: float) -> dict[str, Any]:
    print("1 print to stdout")
    print("2 print to stderr", file=sys.stderr)
    os.write(1, b"3 C-level write to fd 1\n")
    subprocess.run(
        [sys.executable, "-c", "import sys; print('4 from a subprocess', file=sys.stderr)"], check=True
    )
    sys.stdout.write("5 last line, no newline")
    return {"loss": x, "status": STATUS_OK}


def test_prints_writes_and_subprocess_output_are_kept_in_the_order_written(spark: Any) -> None:
    trials = run(spark, prints_through_every_channel)

    output = trials.trials[0]["misc"]["output"]
    expected = [
        "1 print to stdout",
        "2 print to stderr",
        "3 C-level write to fd 1",
        "4 from a subprocess",
        "5 last line, no newline",
    ]
    assert output.splitlines() == expected


def prints_a_lot(x: float) -> float:
    for i in range(20_000):
        print(f"line {i:05d}")  # 11 bytes a line: 220 KB in all
    return x


def test_only_the_last_64_kib_are_kept_starting_at_a_whole_line(spark: Any) -> None:
    trials = run(spark, prints_a_lot)

    output = trials.trials[0]["misc"]["output"]
    assert len(output.encode()) <= worker.OUTPUT_TAIL_BYTES
    lines = output.splitlines()
    assert lines[-1] == "line 19999"
    assert len(lines) > 5000
    assert all(line.startswith("line ") and len(line) == 10 for line in lines)


def quiet(x: float) -> float:
    return x


def test_a_trial_that_prints_nothing_has_empty_output_and_the_next_trial_does_not_inherit_any(
    spark: Any,
) -> None:
    run(spark, prints_through_every_channel, max_evals=2)  # the same reused Python workers
    trials = run(spark, quiet, max_evals=2)

    assert [t["misc"]["output"] for t in trials.trials] == ["", ""]


def prints_then_fails(x: float) -> float:
    print("loading the data")
    print("the data has 0 rows", file=sys.stderr)
    raise ValueError("empty training set")


def test_a_failed_trials_log_line_shows_the_last_lines_it_printed_after_the_traceback(spark: Any) -> None:
    with captured_log(level=logging.ERROR) as log:
        trials = run(spark, prints_then_fails)

    text = log.getvalue()
    assert "exception is ValueError: empty training set" in text
    traceback_at = text.index("raise ValueError")
    assert text.index("   loading the data", traceback_at) < text.index(
        "   the data has 0 rows", traceback_at
    )
    assert trials._dynamic_trials[0]["misc"]["output"] == "loading the data\nthe data has 0 rows\n"


def warns(x: float) -> float:
    warnings.warn("this solver is deprecated", FutureWarning, stacklevel=1)
    logging.getLogger("mlflow.utils.autologging_utils").warning(
        "Encountered unexpected error during autologging"
    )
    logging.getLogger("some.library").info("an info record is not a warning")
    return x


def test_each_distinct_worker_warning_and_warning_log_record_is_logged_once_on_the_client(spark: Any) -> None:
    with captured_log(level=logging.WARNING) as log:
        trials = run(spark, warns, max_evals=4)

    assert trials.count_successful_trials() == 4
    lines = [line for line in log.getvalue().splitlines() if "warned on its worker" in line]
    assert len(lines) == 2, lines
    assert any("FutureWarning: this solver is deprecated" in line for line in lines)
    assert any(
        "WARNING mlflow.utils.autologging_utils: Encountered unexpected error during autologging" in line
        for line in lines
    )
    # Python's warning filters still apply and the warning is still printed, into the output.
    assert "this solver is deprecated" in "".join(t["misc"]["output"] for t in trials.trials)


def test_debug_mode_captures_the_output_and_still_shows_it_on_the_terminal(
    capfd: pytest.CaptureFixture[str],
) -> None:
    trials = ConnectTrials(debug=True, mlflow_tracking=False)
    fmin(prints_then_fails, hp.uniform("x", 0, 1), algo=rand.suggest, max_evals=1, trials=trials,
         show_progressbar=False, return_argmin=False)  # fmt: skip

    assert trials._dynamic_trials[0]["misc"]["output"] == "loading the data\nthe data has 0 rows\n"
    shown = capfd.readouterr()
    assert "loading the data" in shown.out
    assert "the data has 0 rows" in shown.err


def prints_2_mib_and_looks_at_its_stdout(x: float) -> dict[str, Any]:
    import stat

    for _ in range(2 * 1024):
        print("y" * 1023)
    stdout = os.fstat(1)
    return {"loss": x, "status": STATUS_OK, "stdout_is_a_file": stat.S_ISREG(stdout.st_mode),
            "stdout_size": stdout.st_size}  # fmt: skip


def test_a_trial_that_prints_megabytes_holds_them_in_no_file_on_its_worker(spark: Any) -> None:
    trials = run(spark, prints_2_mib_and_looks_at_its_stdout)

    [trial] = trials.trials
    assert not (trial["result"]["stdout_is_a_file"] and trial["result"]["stdout_size"] > 1024 * 1024)
    assert len(trial["misc"]["output"].encode()) <= worker.OUTPUT_TAIL_BYTES
    assert trial["misc"]["output"].splitlines()[-1] == "y" * 1023
