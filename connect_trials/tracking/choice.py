"""Which tracker one fmin gets: MLflow-backed when tracking is on and mlflow is installed."""

from __future__ import annotations

import logging
from typing import Any

from connect_trials.tracking.hooks import FminTracker
from connect_trials.tracking.settings import tracking_enabled

logger = logging.getLogger("connect_trials")


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
