"""The code that runs inside one trial's ``mapInPandas`` task, on a Spark worker.

The cluster has neither connect_trials nor hyperopt installed, so this module travels by
value inside every trial job (``job.py`` registers it with pyspark's cloudpickle) and
imports nothing but the standard library at module level. It imports nothing from the
client-side scheduler.

What happens in the task:
1. The MLflow shim sets the environment for the trial's child run: the fmin's variables
   (tracking URI, experiment id, credentials), which travel once per fmin inside the
   objective's payload and never inside a Spark plan, then the trial's own (its run id).
2. The objective is called with its argument, already resolved on the client.
3. Whatever the objective does (return, raise, return a value that does not pickle), the
   task itself succeeds and yields one row, so Spark retries a trial's task only when its
   Python worker or executor died under it. Such a retry runs the objective again, up to
   ``MAX_OBJECTIVE_ATTEMPTS`` attempts in all; a later one is refused, so an objective that
   kills its own worker cannot run forever.
4. The environment is restored (by difference: other threads of the worker may read it)
   and any MLflow run the objective left open is ended, because Python workers are reused
   across tasks.
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

# Attempts of one trial's task that may run the objective: the first, and one more after its
# Python worker or executor died (a lost executor, a speculative copy). Later ones are refused.
MAX_OBJECTIVE_ATTEMPTS = 2


def trial_task(
    objective: bytes | str, argument_blob: bytes, environ: dict[str, str]
) -> Callable[[Iterable[Any]], Iterator[Any]]:
    """The ``mapInPandas`` function of one trial: runs the objective, yields one row.

    ``objective`` is the fmin's payload (see :func:`objective_payload`) itself, or the name
    of the session artifact that holds it (shipped once per fmin, see
    ``job.ship_objective``). ``environ`` holds the trial's own, non-secret variables."""

    def run(batches: Iterable[Any]) -> Iterator[Any]:
        for _ in batches:  # one empty-ish input row; consume it so Spark sees the input done
            pass
        yield _result_frame(**run_trial(objective, argument_blob, environ))

    return run


def objective_payload(objective_blob: bytes, fmin_environ: dict[str, str]) -> bytes:
    """What one fmin ships to the workers once: the pickled objective and the fmin's
    environment for it (plain pickle of bytes and strings, readable with the stdlib)."""
    return pickle.dumps({"objective": objective_blob, "environ": dict(fmin_environ)})


def run_trial(objective_ref: bytes | str, argument_blob: bytes, environ: dict[str, str]) -> dict[str, Any]:
    """Call the objective and describe what happened, never raising."""
    started_at = time.time()
    attempt = _task_attempt()
    row: dict[str, Any] = {
        "status": STATUS_RETURNED,
        "value": None,
        "error_type": None,
        "error_text": None,
        "attempt": attempt,
    }
    if attempt >= MAX_OBJECTIVE_ATTEMPTS:
        row.update(
            status=STATUS_REFUSED,
            error_type="<class 'connect_trials.TrialRetriedError'>",
            error_text=(
                f"Spark retried this trial's task once more (attempt {attempt}, counting from "
                f"0): in each of the {attempt} earlier attempts the objective's Python worker "
                "or its executor died before the trial ended (os._exit, a segfault, an OOM kill, a lost "
                f"executor). The objective is run at most {MAX_OBJECTIVE_ATTEMPTS} times."
            ),
        )
    else:
        saved_environ = dict(os.environ)
        saved_mlflow_state = _mlflow_process_state()
        try:
            objective, fmin_environ = _load_objective(objective_ref)
            os.environ.update(fmin_environ)
            os.environ.update(environ)
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
            _restore_environ(saved_environ)
    row["started_at"] = started_at
    row["finished_at"] = time.time()
    return row


# Objectives shipped as artifacts, unpickled once per Python worker process. The cache
# lives in a module of its own in sys.modules because this module arrives by value with
# every job, so its own globals are new each time.
_CACHE_MODULE = "_connect_trials_objective_cache"
_CACHE_SIZE = 4


def _restore_environ(saved: dict[str, str]) -> None:
    """Undo what the task changed in ``os.environ``, key by key: clearing it, even for a
    moment, would hide every variable from the worker's other threads."""
    for key in [k for k in os.environ if k not in saved]:
        os.environ.pop(key, None)
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _load_objective(ref: bytes | str) -> tuple[Any, dict[str, str]]:
    """The objective and the fmin's environment, from the payload inline or in an artifact."""
    if isinstance(ref, bytes):
        return _unpack(ref)
    cache_module = sys.modules.get(_CACHE_MODULE)
    if cache_module is None:
        import types

        cache_module = sys.modules.setdefault(_CACHE_MODULE, types.ModuleType(_CACHE_MODULE))
    cache: dict[str, Any] = cache_module.__dict__.setdefault("objectives", {})
    if ref not in cache:
        with open(_artifact_path(ref), "rb") as f:
            loaded = _unpack(f.read())
        while len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[ref] = loaded
    objective, fmin_environ = cache[ref]
    return objective, fmin_environ


def _unpack(payload: bytes) -> tuple[Any, dict[str, str]]:
    parts = pickle.loads(payload)
    return pickle.loads(parts["objective"]), dict(parts["environ"])


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
