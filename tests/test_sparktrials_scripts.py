"""Scripts written for hyperopt's SparkTrials run with only the class name changed.

Each scenario runs as its own Python process, as a user's script would: no logging set up,
no ``spark_session=`` argument, the session made the way the script makes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(source: str, url: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONNECT_URL": url}
    env.pop("SPARK_REMOTE", None)
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


QUADRATIC_WITH_ONE_FAILURE = """
    import os
    import numpy as np
    from hyperopt import fmin, hp, rand
    from pyspark.sql import SparkSession
    from connect_trials import ConnectTrials

    spark = SparkSession.builder.remote(os.environ["CONNECT_URL"]).getOrCreate()

    def objective(x):
        if x < 0:
            raise ValueError(f"x must not be negative, got {x}")
        return (x - 3) ** 2

    trials = ConnectTrials(parallelism=2)  # no spark_session: the active one, as SparkTrials()
    # This seed suggests 1.82, 3.27, -0.578, 4.09: one trial fails.
    best = fmin(objective, hp.uniform("x", -5, 5), algo=rand.suggest, max_evals=4,
                trials=trials, show_progressbar=False, rstate=np.random.default_rng(0))
    print("BEST", trials._spark is spark, trials.count_successful_trials())
    spark.stop()
"""


@pytest.fixture(scope="module")
def default_logging_run(connect_server) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return run_script(QUADRATIC_WITH_ONE_FAILURE, connect_server.url)


def test_without_spark_session_the_active_connect_session_is_used(default_logging_run):
    assert default_logging_run.returncode == 0, default_logging_run.stderr[-3000:]
    assert "BEST True 3" in default_logging_run.stdout


def test_with_logging_unconfigured_the_summary_line_reaches_stderr_as_with_sparktrials(default_logging_run):
    assert "Total Trials: 4: 3 succeeded, 1 failed, 0 cancelled." in default_logging_run.stderr


def test_a_failed_trial_line_carries_the_exception_message(default_logging_run):
    lines = [line for line in default_logging_run.stderr.splitlines() if "failed, exception is" in line]
    assert len(lines) == 1, default_logging_run.stderr[-3000:]
    assert "ValueError" in lines[0] and "x must not be negative, got -0.57" in lines[0]


def test_a_session_created_in_another_thread_is_found_too(connect_server):
    result = run_script(
        """
        import os, threading
        from pyspark.sql import SparkSession
        from connect_trials import ConnectTrials

        made = {}

        def make():
            made["s"] = SparkSession.builder.remote(os.environ["CONNECT_URL"]).getOrCreate()

        thread = threading.Thread(target=make)
        thread.start(); thread.join()
        trials = ConnectTrials(parallelism=1)
        print("SAME", trials._spark is made["s"])
        made["s"].stop()
        """,
        connect_server.url,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SAME True" in result.stdout


def test_an_application_that_configures_logging_gets_each_line_once(connect_server):
    result = run_script(
        """
        import logging
        import connect_trials
        logging.basicConfig(level=logging.INFO, format="APP %(name)s %(message)s")
        logging.getLogger("connect_trials").info("Total Trials: 0: 0 succeeded, 0 failed, 0 cancelled.")
        """,
        connect_server.url,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Total Trials: 0") == 1
    assert "APP connect_trials Total Trials: 0" in result.stderr


def test_importing_the_library_prints_no_pandas_warning():
    result = subprocess.run(
        [sys.executable, "-W", "always::FutureWarning", "-c",
         "import connect_trials; import pyspark.sql.connect.session; import pyspark.sql.pandas.utils"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "does not yet fully support pandas" not in result.stderr
