"""The tracker interface the engine calls (the MLflow implementation lives apart from it)."""

from __future__ import annotations

from typing import Any

from connect_trials.tracking.settings import FminSettings


class FminTracker:
    """Tracking hooks. None of them raises, and none waits on the tracking server on the
    scheduler's thread: ``trial_started`` runs in the trial's own thread, and ``fmin_started``
    and ``fmin_finished`` wait a bounded time. This base class tracks nothing."""

    def fmin_started(self, settings: FminSettings) -> None:
        """Called once before the first trial is suggested. Cleans up after itself if
        interrupted; the caller still calls :meth:`fmin_finished`."""

    def worker_environ(self) -> dict[str, str]:
        """The environment every trial of this fmin runs in (tracking URI, experiment,
        credentials): ship it once per fmin, never inside a Spark plan. Valid after
        :meth:`fmin_started`."""
        return {}

    @property
    def keeps_output(self) -> bool:
        """Whether each trial's output is kept outside the client (its child run's output.txt),
        so that it may leave memory (``outputs.OutputBudget``). Valid after
        :meth:`fmin_started`."""
        return False

    def trial_started(self, trial: dict[str, Any], argument: Any) -> dict[str, str]:
        """Called in the trial's own thread before its job, with the argument the objective
        will receive. Returns the trial's own, non-secret environment variables: its child
        run id, or nothing when the trial has no child run to log into (the worker then keeps
        the objective's MLflow logging local and relays it)."""
        return {}

    def objective_logged(self, trial: dict[str, Any], relayed: bytes) -> None:
        """Called, before :meth:`trial_finished`, with what the objective logged to MLflow on
        a worker that kept it local (see ``worker.relay.MlflowRelay``)."""

    def trial_finished(self, trial: dict[str, Any], best_loss: float) -> None:
        """Called once the trial is DONE, ERROR or CANCEL."""

    def fmin_finished(self, trials: Any, error: BaseException | None) -> None:
        """Called once when fmin ends, also when it raises or is cancelled: every run this
        tracker created ends here."""
