"""The tracker interface the engine calls, and the choice of tracker for one fmin."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("connect_trials")

TRACKING_CONF = "spark.databricks.mlflow.trackHyperopt.enabled"


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
    objective_name: str = ""  # the objective's __name__: the parent run is "fmin-<name>"
    resume_run_id: str | None = None  # the parent run of a search resumed from MLflow


class FminTracker:
    """Tracking hooks. None of them raises, and none waits on the tracking server on a
    trial's way to its job (``fmin_started`` and ``fmin_finished`` wait a bounded time).
    This base class tracks nothing."""

    def fmin_started(self, settings: FminSettings) -> None:
        """Called once before the first trial is suggested. Cleans up after itself if
        interrupted; the caller still calls :meth:`fmin_finished`."""

    def worker_environ(self) -> dict[str, str]:
        """The environment every trial of this fmin runs in (tracking URI, experiment,
        credentials): ship it once per fmin, never inside a Spark plan. Valid after
        :meth:`fmin_started`."""
        return {}

    def trial_started(self, trial: dict[str, Any], argument: Any) -> dict[str, str]:
        """Called before the trial's job with the argument the objective will receive.
        Returns the trial's own, non-secret environment variables (its child run id)."""
        return {}

    def objective_logged(self, trial: dict[str, Any], relayed: bytes) -> None:
        """Called, before :meth:`trial_finished`, with what the objective logged to MLflow on
        a worker that could not reach the tracking store (see ``worker._MlflowRelay``)."""

    def trial_finished(self, trial: dict[str, Any], best_loss: float) -> None:
        """Called once the trial is DONE, ERROR or CANCEL."""

    def fmin_finished(self, trials: Any, error: BaseException | None) -> None:
        """Called once when fmin ends, also when it raises or is cancelled: every run this
        tracker created ends here."""


def tracking_enabled(spark: Any, mlflow_tracking: bool | None) -> bool:
    """``mlflow_tracking`` when given, else on unless the Spark conf ``TRACKING_CONF`` is false."""
    if mlflow_tracking is not None:
        return mlflow_tracking
    from connect_trials.cluster import spark_conf

    return (spark_conf(spark, TRACKING_CONF) or "").strip().lower() != "false"


def create_tracker(spark: Any, mlflow_tracking: bool | None) -> FminTracker:
    """The tracker for one fmin call: MLflow-backed when tracking is on."""
    if not tracking_enabled(spark, mlflow_tracking):
        return FminTracker()
    try:
        import mlflow  # noqa: F401 - imported here: it takes a second or two
    except ImportError:
        logger.warning("MLflow tracking is on but mlflow is not installed; fmin runs untracked.")
        return FminTracker()
    from connect_trials.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker()
