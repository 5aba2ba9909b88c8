"""The code that runs inside one trial's ``mapInPandas`` task, on a Spark worker.

The cluster has neither connect_trials nor hyperopt installed, so this module travels by
value inside every trial job (``job.py`` registers it with pyspark's cloudpickle) and
imports nothing but the standard library at module level. It imports nothing from the
client-side scheduler.

What happens in the task:
1. The MLflow shim sets the environment for the trial's child run (tracking URI, run id,
   experiment id, credentials) so that MLflow calls in the objective land on that run.
2. The objective is called once with its argument, already resolved on the client.
3. Whatever happens (a return value, an exception, a value that does not pickle), the task
   itself succeeds and yields one row: Spark never sees a failure, so it never retries
   the trial, and a retried attempt after a lost executor refuses to run the objective
   a second time.
4. The environment is restored and any MLflow run the objective left open is ended,
   because Python workers are reused across tasks.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Column order of the one row a trial task yields; ``job.py`` decodes it.
RESULT_SCHEMA = (
    "status string, value binary, error_type string, error_text string, "
    "started_at double, finished_at double, attempt int"
)
STATUS_RETURNED = "returned"
STATUS_RAISED = "raised"
STATUS_REFUSED = "refused"


def trial_task(
    objective_blob: bytes, argument_blob: bytes, environ: dict[str, str]
) -> Callable[[Iterable[Any]], Iterator[Any]]:
    """The ``mapInPandas`` function of one trial: runs the objective, yields one row."""

    def run(batches: Iterable[Any]) -> Iterator[Any]:
        for _ in batches:  # one empty-ish input row; consume it so Spark sees the input done
            pass
        yield _result_frame(**run_trial(objective_blob, argument_blob, environ))

    return run


def run_trial(objective_blob: bytes, argument_blob: bytes, environ: dict[str, str]) -> dict[str, Any]:
    """Call the objective once and describe what happened, never raising."""
    import pickle

    started_at = time.time()
    attempt = _task_attempt()
    row: dict[str, Any] = {
        "status": STATUS_RETURNED,
        "value": None,
        "error_type": None,
        "error_text": None,
        "attempt": attempt,
    }
    if attempt > 0:
        row.update(
            status=STATUS_REFUSED,
            error_type="<class 'connect_trials.TrialRetriedError'>",
            error_text=(
                f"Spark retried this trial's task (attempt {attempt}) after the first attempt "
                "was lost with its executor; the objective is not run twice."
            ),
        )
    else:
        saved_environ = dict(os.environ)
        os.environ.update(environ)
        try:
            objective = pickle.loads(objective_blob)
            argument = pickle.loads(argument_blob)
            value = objective(argument)
            row["value"] = _dumps(value)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the trial's error
            row.update(
                status=STATUS_RAISED,
                value=None,
                error_type=str(type(exc)),
                error_text=traceback.format_exc(),
            )
        finally:
            _end_mlflow_runs()
            os.environ.clear()
            os.environ.update(saved_environ)
    row["started_at"] = started_at
    row["finished_at"] = time.time()
    return row


def _dumps(value: Any) -> bytes:
    try:
        from pyspark import cloudpickle
    except ImportError:  # pragma: no cover - a worker always has pyspark
        import pickle as cloudpickle  # type: ignore[no-redef]
    try:
        return cloudpickle.dumps(value)
    except Exception as exc:
        raise TypeError(
            f"the objective returned a value of type {type(value).__name__} that cannot be "
            f"pickled to send it back to the client: {exc}"
        ) from exc


def _task_attempt() -> int:
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover
        return 0
    context = TaskContext.get()
    return int(context.attemptNumber()) if context is not None else 0


def _end_mlflow_runs() -> None:
    """End runs the objective left active: the next task on this worker must start clean."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    try:
        while mlflow.active_run() is not None:
            mlflow.end_run()
    except Exception:  # noqa: BLE001 - MLflow trouble never fails a trial
        pass


def _result_frame(**row: Any) -> Any:
    import pandas as pd

    columns = [c.split()[0] for c in RESULT_SCHEMA.split(", ")]
    return pd.DataFrame({c: [row[c]] for c in columns})
