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
import pickle
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
    objective: bytes | str, argument_blob: bytes, environ: dict[str, str]
) -> Callable[[Iterable[Any]], Iterator[Any]]:
    """The ``mapInPandas`` function of one trial: runs the objective, yields one row.

    ``objective`` is the pickled objective itself, or the name of the session artifact
    that holds it (shipped once per fmin, see ``job.ship_objective``)."""

    def run(batches: Iterable[Any]) -> Iterator[Any]:
        for _ in batches:  # one empty-ish input row; consume it so Spark sees the input done
            pass
        yield _result_frame(**run_trial(objective, argument_blob, environ))

    return run


def run_trial(objective_ref: bytes | str, argument_blob: bytes, environ: dict[str, str]) -> dict[str, Any]:
    """Call the objective once and describe what happened, never raising."""
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
        saved_mlflow_state = _mlflow_process_state()
        os.environ.update(environ)
        try:
            objective = _load_objective(objective_ref)
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
            _end_mlflow_runs(failed=row["status"] == STATUS_RAISED)
            _restore_mlflow_process_state(saved_mlflow_state)
            os.environ.clear()
            os.environ.update(saved_environ)
    row["started_at"] = started_at
    row["finished_at"] = time.time()
    return row


# Objectives shipped as artifacts, unpickled once per Python worker process. The cache
# lives in a module of its own in sys.modules because this module arrives by value with
# every job, so its own globals are new each time.
_CACHE_MODULE = "_connect_trials_objective_cache"
_CACHE_SIZE = 4


def _load_objective(ref: bytes | str) -> Any:
    if isinstance(ref, bytes):
        return pickle.loads(ref)
    cache_module = sys.modules.get(_CACHE_MODULE)
    if cache_module is None:
        import types

        cache_module = sys.modules.setdefault(_CACHE_MODULE, types.ModuleType(_CACHE_MODULE))
    cache: dict[str, Any] = cache_module.__dict__.setdefault("objectives", {})
    if ref not in cache:
        with open(_artifact_path(ref), "rb") as f:
            objective = pickle.load(f)
        while len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[ref] = objective
    return cache[ref]


def _artifact_path(name: str) -> str:
    """Where a session file artifact is on this worker: Spark Connect runs Python workers in
    the session's artifact folder; SparkFiles knows it otherwise."""
    if os.path.exists(name):
        return name
    try:
        from pyspark import SparkFiles

        candidate = os.path.join(SparkFiles.getRootDirectory(), name)
        if os.path.exists(candidate):
            return candidate
    except Exception:  # noqa: BLE001
        pass
    raise FileNotFoundError(
        f"the objective's artifact {name} is not in this worker's session folder ({os.getcwd()})"
    )


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


def _end_mlflow_runs(failed: bool) -> None:
    """End the runs the objective left active (the child run, resumed through MLFLOW_RUN_ID,
    and any it started itself): the next task on this worker must start clean. The client
    sets the child run's final status afterwards; here MLflow gets one quick try, so a
    tracking server that went away cannot hold up the trial."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    os.environ.update(_MLFLOW_QUICK_CALLS)
    try:
        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED" if failed else "FINISHED")
    except Exception:  # noqa: BLE001 - MLflow trouble never fails a trial
        pass


# What MLflow keeps per process besides os.environ: the URIs set by set_tracking_uri and
# set_registry_uri, and the experiment set by set_experiment. They are private names, read
# defensively: with another MLflow version the worst case is that they are not reset.
_MLFLOW_PROCESS_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
    ("mlflow.tracking.fluent", "_active_experiment_id"),
)
_MLFLOW_QUICK_CALLS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def _mlflow_process_state() -> dict[tuple[str, str], Any]:
    """MLflow's per-process settings before the task (None, their default, if not imported)."""
    state: dict[tuple[str, str], Any] = {}
    for module_name, attribute in _MLFLOW_PROCESS_GLOBALS:
        module = sys.modules.get(module_name)
        state[(module_name, attribute)] = getattr(module, attribute, None)
    return state


def _restore_mlflow_process_state(state: dict[tuple[str, str], Any]) -> None:
    """Put MLflow's per-process settings back, and drop the tracer provider, which keeps the
    tracking URI it was first used with."""
    try:
        for (module_name, attribute), value in state.items():
            module = sys.modules.get(module_name)
            if module is not None and hasattr(module, attribute):
                setattr(module, attribute, value)
        provider = sys.modules.get("mlflow.tracing.provider")
        if provider is not None:
            provider.reset()
    except Exception:  # noqa: BLE001
        pass


def _result_frame(**row: Any) -> Any:
    import pandas as pd

    columns = [c.split()[0] for c in RESULT_SCHEMA.split(", ")]
    return pd.DataFrame({c: [row[c]] for c in columns})
