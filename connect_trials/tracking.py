"""MLflow on the client: the parent run of an fmin and one child run per trial."""

from __future__ import annotations

from typing import Any


class FminTracker:
    """Tracking hooks the scheduler calls; this base class tracks nothing."""

    def trial_started(self, trial: dict[str, Any], argument: Any) -> dict[str, str]:
        """Called before the trial's job; returns environment variables for the worker."""
        return {}

    def trial_finished(self, trial: dict[str, Any], best_loss: float) -> None:
        """Called once the trial is DONE, ERROR or CANCEL."""
