"""How a trial ended, in the words its child run uses."""

from __future__ import annotations

import enum
import json
import numbers
from dataclasses import dataclass
from typing import Any

# A DONE trial's result as the objective returned it (status, and loss when it has one), JSON:
# what ``from_mlflow`` restores. The ``loss`` metric cannot say it: the objective may log its
# own ``loss`` (Keras autolog, per epoch), and a DONE trial whose status is "fail" ends FAILED
# with the tag ``trial_status=failure``, as an ERROR trial does.
RESULT_TAG = "hyperopt_result"


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
    result: str | None = None  # RESULT_TAG's value: a DONE trial's status and loss (JSON)


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
    done = _result_text(result) if state == base.JOB_STATE_DONE else None
    if state == base.JOB_STATE_DONE and result.get("status") == base.STATUS_OK:
        loss = result.get("loss")
        return ChildOutcome(
            TrialStatus.SUCCESS,
            RunStatus.FINISHED,
            loss=None if loss is None else float(loss),
            attempts=attempts,
            output=output,
            result=done,
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
            result=done,
        )
    return ChildOutcome(TrialStatus.CANCELLED, RunStatus.KILLED, attempts=attempts, output=output)


def _result_text(result: dict[str, Any]) -> str:
    """RESULT_TAG's value; JSON writes a float as its shortest repr, so it reads back exact."""
    kept: dict[str, Any] = {"status": result.get("status")}
    loss = result.get("loss")
    if isinstance(loss, numbers.Real) and not isinstance(loss, bool):
        kept["loss"] = float(loss)
    return json.dumps(kept)
