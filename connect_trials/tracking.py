"""MLflow on the client: the parent run of an fmin and one child run per trial.

The scheduler and ``ConnectTrials.fmin`` talk to MLflow only through :class:`FminTracker`;
``create_tracker`` decides whether tracking is on. This base class tracks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FminSettings:
    """What the parent run records about one fmin call."""

    fmin_id: str
    max_evals: int
    parallelism: int
    user_specified_parallelism: int | None
    timeout: float | None
    algo: Any
    max_queue_len: int
    space: Any


class FminTracker:
    """Tracking hooks; every method must return quickly and never raise."""

    def fmin_started(self, settings: FminSettings) -> None:
        """Called once before the first trial is suggested."""

    def trial_started(self, trial: dict[str, Any], argument: Any) -> dict[str, str]:
        """Called before the trial's job; returns environment variables for the worker."""
        return {}

    def trial_finished(self, trial: dict[str, Any], best_loss: float) -> None:
        """Called once the trial is DONE, ERROR or CANCEL."""

    def fmin_finished(self, trials: Any, error: BaseException | None) -> None:
        """Called once when fmin ends, also when it raises or is cancelled."""


def create_tracker(spark: Any, mlflow_tracking: bool | None) -> FminTracker:
    """The tracker for one fmin call: MLflow-backed when tracking is on."""
    return FminTracker()
