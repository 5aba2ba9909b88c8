"""What the engine tells tracking about one fmin, and whether tracking is on (no MLflow here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRACKING_CONF = "spark.databricks.mlflow.trackHyperopt.enabled"


@dataclass(frozen=True)
class FminSettings:
    """What the parent run records about one fmin call."""

    fmin_id: str
    max_evals: int | None  # None: no limit (logged as None, as ``timeout`` is)
    parallelism: int
    user_specified_parallelism: int | None
    timeout: float | None
    algo: Any
    max_queue_len: int
    space: Any
    objective_name: str = ""  # the objective's __name__: the parent run is "fmin-<name>"
    resume_run_id: str | None = None  # the parent run of a search resumed from MLflow
    # The search's id in MLflow (the ``fmin_uuid`` tag): a resumed search keeps its own.
    resume_fmin_uuid: str | None = None

    @property
    def fmin_uuid(self) -> str:
        return self.resume_fmin_uuid or self.fmin_id[:6]


def tracking_enabled(spark: Any, mlflow_tracking: bool | None) -> bool:
    """``mlflow_tracking`` when given, else on unless the Spark conf ``TRACKING_CONF`` is false."""
    if mlflow_tracking is not None:
        return mlflow_tracking
    from connect_trials.cluster import spark_conf

    return (spark_conf(spark, TRACKING_CONF) or "").strip().lower() != "false"
