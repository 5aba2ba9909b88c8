"""Debug mode: every trial runs in this process, through the same path as on a cluster.

``ConnectTrials(debug=True)`` (or ``CONNECT_TRIALS_DEBUG=1`` in the environment, so that an
IDE's run configuration can switch it on without a code change) swaps the Spark executor for
:class:`InlineExecutor`. The trial still goes through everything a cluster trial goes
through except Spark: the objective and its argument are pickled as for a worker and
unpickled again, and ``worker.run_objective`` calls it with the worker's MLflow shim, output
capture and error handling, on the client host (``worker.Host.CLIENT``): the user's MLflow
runs, streams and process-wide settings are left as they were, and Ctrl-C (or
``sys.exit``) in the objective propagates out of ``run_trial`` once the trial is cleaned up.
So an objective that would not survive the trip to a worker fails here the same way,
MLflow tracking is the same, and no Spark session or server is needed. The scheduler runs
inline trials in fmin's own thread, one at a time, so a breakpoint in the objective (an
IDE's, or ``breakpoint()``) stops there.
"""

from __future__ import annotations

import os
import threading

from connect_trials import job, worker

DEBUG_ENV = "CONNECT_TRIALS_DEBUG"


def debug_requested(debug: bool | None) -> bool:
    """``debug`` when given, else whether ``CONNECT_TRIALS_DEBUG`` is set to a true value."""
    if debug is not None:
        return debug
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class InlineExecutor:
    """Runs each trial in the calling thread with the worker's own code."""

    runs_in_caller = True

    def __init__(self, objective_blob: bytes, fmin_environ: dict[str, str]) -> None:
        self._payload = worker.objective_payload(objective_blob, fmin_environ)
        self._cancelled = threading.Event()

    def run_trial(self, request: job.TrialRequest) -> job.TrialOutcome:
        if self._cancelled.is_set():
            return job.TrialOutcome(request.tid, job.OutcomeKind.CANCELLED, error_type="cancelled")
        row = worker.run_objective(
            self._payload, request.argument_blob, request.environ, host=worker.Host.CLIENT
        )
        return job.decode_row(request.tid, row)

    def cancel_all(self) -> None:
        # The trial in progress runs in fmin's thread: by the time anyone cancels, it is over.
        self._cancelled.set()
