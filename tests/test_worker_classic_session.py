"""On a classic (py4j) session the fmin's environment, credentials included, reaches the
workers in a broadcast variable, never inside a job's plan."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLASSIC = """
    import os, pickle, sys
    from pyspark.core.rdd import _prepare_for_python_RDD
    from pyspark.sql import SparkSession
    from connect_trials import job

    spark = (SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .getOrCreate())
    secret = "s3cret-" + os.urandom(8).hex()

    def objective(x):
        import os
        return os.environ.get("MLFLOW_TRACKING_TOKEN")

    ref = job.ship_objective(spark, job.pickle_objective(objective), {"MLFLOW_TRACKING_TOKEN": secret})
    request = job.TrialRequest(tid=0, argument_blob=pickle.dumps(1))
    trial_job = job.build_trial_job(job.trial_source(spark), ref, request)
    # What pyspark puts into the plan for the task: its pickled command.
    task = job.worker.trial_task(ref, request.argument_blob, request.environ)
    command, broadcasts, _, _ = _prepare_for_python_RDD(spark.sparkContext, (task, job.result_struct()))
    plan = trial_job._jdf.queryExecution().toString()
    outcome = job.decode_row(0, trial_job.collect()[0])
    print("IN_COMMAND", secret.encode() in bytes(command))
    print("IN_PLAN", secret in plan)
    print("BROADCASTS", len(broadcasts))
    print("WORKER_SAW", outcome.value == secret, outcome.kind, outcome.error_text)
    spark.stop()
"""


def test_on_a_classic_session_the_fmin_environment_is_in_no_plan_and_still_reaches_the_objective() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": sys.executable}
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CLASSIC)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IN_COMMAND False" in result.stdout
    assert "IN_PLAN False" in result.stdout
    assert "BROADCASTS 1" in result.stdout  # the payload's
    assert "WORKER_SAW True OutcomeKind.RETURNED" in result.stdout, result.stdout + result.stderr[-3000:]
