"""One trial on its host: check, set up, call the objective, clean up, answer with one row."""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from connect_trials.worker.capture import output_capture
from connect_trials.worker.client_files import place_client_files
from connect_trials.worker.host import Host
from connect_trials.worker.mlflow_env import MlflowState
from connect_trials.worker.objective import ObjectiveRef, dumps_value, load_objective
from connect_trials.worker.relay import MlflowRelay
from connect_trials.worker.reported import ReportedWarnings
from connect_trials.worker.row import (
    MAX_OBJECTIVE_ATTEMPTS,
    STATUS_ATTEMPTS_EXHAUSTED,
    STATUS_MISMATCH,
    STATUS_RAISED,
    TrialRetriedError,
    new_row,
    result_frame,
)


def trial_task(
    objective: ObjectiveRef,
    argument_blob: bytes,
    environ: dict[str, str],
    client_versions: tuple[str, str] | None = None,
) -> Callable[[Iterable[Any]], Iterator[Any]]:
    """The ``mapInPandas`` function of one trial on an executor: runs the objective, yields
    one row.

    ``objective`` refers to the fmin's payload (see ``objective.ObjectiveRef``, shipped once
    per fmin by ``job.ship_objective``). ``environ`` holds the trial's own, non-secret
    variables. ``client_versions``: the client's Python and pyspark versions, checked before
    the objective is unpickled (see :func:`run_objective`)."""

    def run(batches: Iterable[Any]) -> Iterator[Any]:
        for _ in batches:  # one empty-ish input row; consume it so Spark sees the input done
            pass
        row = run_objective(
            objective, argument_blob, environ, host=Host.EXECUTOR, client_versions=client_versions
        )
        if row["status"] == STATUS_ATTEMPTS_EXHAUSTED:
            raise TrialRetriedError(row["error_text"])
        yield result_frame(row)

    return run


def run_objective(
    objective_ref: ObjectiveRef,
    argument_blob: bytes,
    environ: dict[str, str],
    *,
    host: Host = Host.EXECUTOR,
    client_versions: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Call the objective and describe what happened in a row (see ``row.py``).

    On an executor this never raises: whatever the objective does (return, raise, return a
    value that does not pickle, even ``KeyboardInterrupt``), the task succeeds and yields
    its row, so Spark retries a trial's task only when its Python worker or executor died
    under it. Such a retry runs the objective again, up to ``MAX_OBJECTIVE_ATTEMPTS``
    attempts in all; a later one answers ``STATUS_ATTEMPTS_EXHAUSTED``. (A job lost with its
    server or session is not evidence against the objective: the client counts those apart,
    see ``trial_loop.MAX_JOBS_LOST``.) In the client
    (``Host.CLIENT``), ``KeyboardInterrupt`` and ``SystemExit`` propagate, after clean-up.

    ``client_versions`` (Python, pyspark): a worker whose Python major.minor or pyspark major
    differs does not unpickle the objective, and answers ``STATUS_MISMATCH`` with its own
    versions in ``error_text``. The check rides in every trial's job, so no job of its own is
    needed."""
    started_at = time.time()
    attempt = _task_attempt()
    row = new_row(attempt)
    mine = _versions()
    if client_versions is not None and _incompatible(client_versions, mine):
        row.update(status=STATUS_MISMATCH, error_text=" ".join(mine))
    elif attempt >= MAX_OBJECTIVE_ATTEMPTS:
        row.update(
            status=STATUS_ATTEMPTS_EXHAUSTED,
            error_type=str(TrialRetriedError),
            error_text=(
                f"this trial's task was started once more (attempt {attempt}, counting from 0) "
                f"after {attempt} attempts that ran the objective, whose Python worker or "
                "executor died before the trial ended (os._exit, a segfault, an OOM kill, a lost "
                "executor), or that still run (speculative copies). The objective is run at most "
                f"{MAX_OBJECTIVE_ATTEMPTS} times."
            ),
        )
    else:
        _call_objective(row, objective_ref, argument_blob, environ, host)
    row["started_at"] = started_at
    row["finished_at"] = time.time()
    return row


def _call_objective(
    row: dict[str, Any],
    objective_ref: ObjectiveRef,
    argument_blob: bytes,
    environ: dict[str, str],
    host: Host,
) -> None:
    """Run the objective inside the trial's environment, capture and MLflow shim; fill ``row``."""
    saved_environ = dict(os.environ)
    mlflow_state = MlflowState(host)
    output = output_capture(host)
    reported = ReportedWarnings(host)
    relay = MlflowRelay()
    runs_end_as = "FINISHED"
    try:
        output.start()
        reported.start()
        objective, fmin_environ = load_objective(objective_ref)
        os.environ.update(fmin_environ)
        os.environ.update(environ)
        place_client_files(reported)
        relayed_to = relay.start(
            reported, fmin_environ.get("MLFLOW_TRACKING_URI", ""), environ.get("MLFLOW_RUN_ID", "")
        )
        mlflow_state.isolate()
        if relayed_to is not None:
            mlflow_state.use_store(relayed_to)
        argument = pickle.loads(argument_blob)
        value = objective(argument)
        row["value"] = dumps_value(value)
    except Exception:  # noqa: BLE001 - every failure becomes the trial's error
        runs_end_as = "FAILED"
        _record_error(row)
    except BaseException:
        if host is Host.CLIENT:  # Ctrl-C or sys.exit() stops the user's fmin, after clean-up
            runs_end_as = "KILLED"
            raise
        runs_end_as = "FAILED"
        _record_error(row)
    finally:
        mlflow_state.end_objective_runs(runs_end_as)
        row["relayed"] = relay.collect(reported)
        reported.stop()
        row["output"] = output.stop()
        row["warnings"] = reported.messages
        mlflow_state.restore()
        _restore_environ(saved_environ)


def _record_error(row: dict[str, Any]) -> None:
    exc = sys.exc_info()[1]
    row.update(status=STATUS_RAISED, value=None, error_type=str(type(exc)), error_text=traceback.format_exc())


def _restore_environ(saved: dict[str, str]) -> None:
    """Undo what the task changed in ``os.environ``, key by key: clearing it, even for a
    moment, would hide every variable from the worker's other threads."""
    for key in [k for k in os.environ if k not in saved]:
        os.environ.pop(key, None)
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _versions() -> tuple[str, str]:
    """This Python's major.minor.micro and pyspark's version."""
    import pyspark

    return ".".join(map(str, sys.version_info[:3])), pyspark.__version__


def _incompatible(client: tuple[str, str], worker: tuple[str, str]) -> bool:
    """Objectives pickled under ``client`` cannot load under ``worker``: another Python
    major.minor or pyspark major (``compat.mismatch`` says why, on the client)."""
    return (
        client[0].split(".")[:2] != worker[0].split(".")[:2]
        or client[1].split(".")[0] != worker[1].split(".")[0]
    )


def _task_attempt() -> int:
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover
        return 0
    context = TaskContext.get()
    return int(context.attemptNumber()) if context is not None else 0
