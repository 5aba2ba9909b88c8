"""How a trial ended, in the words its child run uses."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class TrialStatus(str, enum.Enum):
    """The child run's ``trial_status`` tag (Databricks' values)."""

    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"


class RunStatus(str, enum.Enum):
    """How a run we created ends (MLflow's run statuses)."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


@dataclass(frozen=True)
class ChildOutcome:
    """What a child run records about its trial's end."""

    trial_status: TrialStatus
    run_status: RunStatus
    loss: float | None = None
    error_type: str | None = None
    error_text: str | None = None
    attempts: int | None = None  # Spark task attempts that ran the objective
    output: str = ""  # the tail of what the objective printed, attached as output.txt


def child_outcome(trial: dict[str, Any]) -> ChildOutcome:
    """The outcome of a trial document. A DONE trial whose result's status is "fail" is a
    failure here, although hyperopt counts it among the successful trials; a trial that is
    neither DONE nor ERROR (cancelled, or abandoned when fmin was interrupted) is cancelled."""
    from hyperopt import base

    state = trial.get("state")
    result = trial.get("result") or {}
    attempt = (trial.get("misc", {}).get("connect_trials") or {}).get("attempt")
    attempts = None if attempt is None else int(attempt) + 1
    output = trial.get("misc", {}).get("output") or ""
    if state == base.JOB_STATE_DONE and result.get("status") == base.STATUS_OK:
        loss = result.get("loss")
        return ChildOutcome(
            TrialStatus.SUCCESS,
            RunStatus.FINISHED,
            loss=None if loss is None else float(loss),
            attempts=attempts,
            output=output,
        )
    if state in (base.JOB_STATE_DONE, base.JOB_STATE_ERROR):
        error = trial.get("misc", {}).get("error") or (None, None)
        return ChildOutcome(
            TrialStatus.FAILURE,
            RunStatus.FAILED,
            error_type=error[0],
            error_text=error[1],
            attempts=attempts,
            output=output,
        )
    return ChildOutcome(TrialStatus.CANCELLED, RunStatus.KILLED, attempts=attempts, output=output)
