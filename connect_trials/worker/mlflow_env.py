"""MLflow around the objective: what it sees while it runs, and what is put back after.

The objective's MLflow calls find no active run in their thread, so the first of them
resumes the trial's child run through ``MLFLOW_RUN_ID`` (set in the environment for the
trial). Afterwards the runs the objective left open are ended (they are the child run and
any it started itself: nothing else was on the stack it saw), and the thread's run stack and
MLflow's per-process settings are put back as they were. In debug mode that thread is fmin's
own, and its stack holds the user's ``with mlflow.start_run()`` run: it stays active.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from connect_trials.worker.host import Host

# What MLflow keeps per process besides os.environ: the URIs set by set_tracking_uri and
# set_registry_uri, and the experiment set by set_experiment. They are private names, read
# defensively: with another MLflow version the worst case is that they are not reset.
_TRACKING_URI = ("mlflow.tracking._tracking_service.utils", "_tracking_uri")
_REGISTRY_URI = ("mlflow.tracking._model_registry.utils", "_registry_uri")
_EXPERIMENT_ID = ("mlflow.tracking.fluent", "_active_experiment_id")
_PROCESS_GLOBALS = (_TRACKING_URI, _REGISTRY_URI, _EXPERIMENT_ID)
_FLUENT = "mlflow.tracking.fluent"
# The runs the objective may leave open: a bound, so that a misbehaving store cannot loop us.
_MAX_RUNS_ENDED = 100
_QUICK_CALLS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class MlflowState:
    """MLflow's state around one trial, in this thread and this process."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._globals = {key: getattr(sys.modules.get(key[0]), key[1], None) for key in _PROCESS_GLOBALS}
        self._saved_stack: list[Any] | None = None  # this thread's run stack, when set aside
        self._saved_last_run_id: Any = None
        self._isolated = False

    def isolate(self) -> None:
        """Give the objective an empty run stack in this thread (nothing to do if MLflow is
        not imported yet: its stack starts empty)."""
        fluent = sys.modules.get(_FLUENT)
        if fluent is None:
            self._isolated = True
            return
        stack: Any = getattr(fluent, "_active_run_stack", None)
        last: Any = getattr(fluent, "_last_active_run_id", None)
        if hasattr(stack, "get") and hasattr(stack, "set"):  # a ThreadLocalVariable (MLflow >= 2.13)
            self._saved_stack = stack.get()
            stack.set([])
            if hasattr(last, "get") and hasattr(last, "set"):
                self._saved_last_run_id = last.get()
            self._isolated = True
        elif isinstance(stack, list):  # older MLflow: one stack for the process
            self._saved_stack = list(stack)
            stack.clear()
            self._isolated = True

    def use_store(self, uri: str) -> None:
        """Send the objective's MLflow calls to ``uri`` (the relay's store) even where the
        process set a tracking URI of its own (``mlflow.set_tracking_uri``), whose setting wins
        over the environment."""
        settings = ((_TRACKING_URI, uri), (_REGISTRY_URI, None), (_EXPERIMENT_ID, None))
        for (module_name, attribute), value in settings:
            module = sys.modules.get(module_name)
            if module is not None and hasattr(module, attribute):
                setattr(module, attribute, value)

    def end_objective_runs(self, status: str) -> None:
        """End the runs the objective left active. The client sets the child run's final
        status afterwards; here MLflow gets one quick try, so a tracking server that went away
        cannot hold up the trial. Where the run stack could not be set aside, runs are ended
        only on an executor: in the user's process they may be the user's."""
        mlflow = sys.modules.get("mlflow")
        if mlflow is None or not (self._isolated or self._host is Host.EXECUTOR):
            return
        os.environ.update(_QUICK_CALLS)  # restored with the rest of the environment
        for _ in range(_MAX_RUNS_ENDED):
            try:
                if mlflow.active_run() is None:
                    return
                mlflow.end_run(status)  # pops the run first, even if telling the store fails
            except Exception:  # noqa: BLE001 - MLflow trouble never fails a trial
                continue

    def restore(self) -> None:
        """Put this thread's run stack and MLflow's per-process settings back; on an executor,
        also drop the tracer provider, which keeps the tracking URI it was first used with."""
        try:
            fluent = sys.modules.get(_FLUENT)
            stack: Any = getattr(fluent, "_active_run_stack", None)
            if hasattr(stack, "set"):
                stack.set(self._saved_stack if self._saved_stack is not None else [])
                last: Any = getattr(fluent, "_last_active_run_id", None)
                if hasattr(last, "set"):
                    last.set(self._saved_last_run_id)
            elif isinstance(stack, list) and self._saved_stack is not None:
                stack[:] = self._saved_stack
            for (module_name, attribute), value in self._globals.items():
                module = sys.modules.get(module_name)
                if module is not None and hasattr(module, attribute):
                    setattr(module, attribute, value)
            provider = sys.modules.get("mlflow.tracing.provider")
            if self._host is Host.EXECUTOR and provider is not None:
                provider.reset()
        except Exception:  # noqa: BLE001
            pass
