"""The parent run of one fmin: the caller's active run, or one created for the fmin."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from connect_trials.tracking.hooks import FminSettings
from connect_trials.tracking.hyperparameters import (
    MAX_TAG_CHARS,
    algo_name,
    param_value,
    space_text,
    truncated,
)
from connect_trials.tracking.mlflow_runs import RUN_SOURCE, MlflowRuns
from connect_trials.tracking.outcome import RunStatus

_PARAM_NAMES = ("max_evals", "actual_parallelism", "parallelism", "timeout", "algo", "max_queue_len")
COUNT_METRICS = (
    "successful_trials_count",
    "failed_trials_count",
    "cancelled_trials_count",
    "total_trials_count",
)
_BEST_LOSS_METRIC = "best_trial_loss"
PENDING_RUN_NAME = "trial-pending"  # a child run's name until a trial takes it


def open_parent(
    runs: MlflowRuns, active: Any, objective_name: str, fmin_uuid: str, resume_run_id: str | None = None
) -> ParentRun:
    """The caller's active run; else the run of a search being resumed
    (``ConnectTrials.from_mlflow``), running again until this fmin ends; else a new run named
    after the objective (``fmin-<name>``) in the experiment ``mlflow.start_run()`` would use."""
    from mlflow.tracking import fluent
    from mlflow.tracking.context import registry

    if active is not None:
        return ParentRun(runs, active.info.experiment_id, active.info.run_id, False, fmin_uuid)
    if resume_run_id is not None:
        experiment_id = runs.client.get_run(resume_run_id).info.experiment_id
        runs.client.update_run(resume_run_id, status="RUNNING")
        runs.track_open(resume_run_id)
        return ParentRun(runs, experiment_id, resume_run_id, True, fmin_uuid, created=False)
    experiment_id = fluent._get_experiment_id() or "0"
    tags = {**registry.resolve_tags(), "runSource": RUN_SOURCE}
    run_name = f"fmin-{objective_name}" if objective_name else "fmin"
    run_id = runs.create(experiment_id, {k: str(v) for k, v in tags.items()}, run_name)
    return ParentRun(runs, experiment_id, run_id, True, fmin_uuid)


class ParentRun:
    """Writes one fmin's settings and counts on its parent run. On a run that already holds
    one of these names (a second fmin in the same active run), this fmin writes that name
    with the suffix ``_<fmin_uuid>``."""

    def __init__(
        self, runs: MlflowRuns, experiment_id: str, run_id: str, owned: bool, fmin_uuid: str,
        created: bool | None = None,
    ) -> None:  # fmt: skip
        self.runs = runs
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.owned = owned  # ended by this fmin
        self.created = owned if created is None else created  # made by it: holds no names yet
        self.fmin_uuid = fmin_uuid
        self.keys: dict[str, str] = {}  # a name -> the name this fmin writes it under

    def log_settings(self, settings: FminSettings) -> None:
        self._choose_keys()
        params = {
            "max_evals": settings.max_evals,
            "actual_parallelism": settings.parallelism,
            "parallelism": settings.user_specified_parallelism,
            "timeout": settings.timeout,
            "algo": algo_name(settings.algo),
            "max_queue_len": settings.max_queue_len,
        }
        space = space_text(settings.space)
        tags = {"runSource": RUN_SOURCE, "fmin_uuid": self.fmin_uuid, "space": truncated(space)}
        self.runs.log_batch(
            self.run_id,
            params={self.keys[k]: param_value(v) for k, v in params.items()},
            tags={self.keys[k]: v for k, v in tags.items()},
        )

    def log_space_text(self, settings: FminSettings, refused: Callable[[BaseException], None]) -> None:
        """The whole space as an artifact when the tag had to be truncated."""
        space = space_text(settings.space)
        if len(space) > MAX_TAG_CHARS:
            self.runs.log_text(self.run_id, space, f"{self.keys['space']}.txt", refused)

    def log_best_loss(self, loss: float, step: int) -> None:
        self.runs.client.log_metric(self.run_id, self.keys[_BEST_LOSS_METRIC], loss, step=step)

    def create_child(self, run_name: str = PENDING_RUN_NAME) -> str:
        """A child run of this parent, in its experiment."""
        tags = {"mlflow.parentRunId": self.run_id, "fmin_uuid": self.fmin_uuid, "runSource": RUN_SOURCE}
        return self.runs.create(self.experiment_id, tags, run_name)

    def log_counts(self, trials: Any) -> None:
        """The trial counts of the trials object, hyperopt's way (DONE trials whose result
        says "fail" count as successful)."""
        from mlflow.entities import Metric

        counts = {
            "successful_trials_count": trials.count_successful_trials(),
            "failed_trials_count": trials.count_failed_trials(),
            "cancelled_trials_count": trials.count_cancelled_trials(),
            "total_trials_count": trials.count_total_trials(),
        }
        now = int(time.time() * 1000)
        self.runs.log_batch(
            self.run_id, metrics=[Metric(self.keys[k], float(v), now, 0) for k, v in counts.items()]
        )

    def end(self, status: RunStatus) -> None:
        if self.owned:
            self.runs.end(self.run_id, status)

    def _choose_keys(self) -> None:
        if self.created:
            params: Any = {}
            tags: Any = {}
            metrics: Any = {}
        else:
            data = self.runs.client.get_run(self.run_id).data
            params, tags, metrics = data.params, data.tags, data.metrics
        suffix = f"_{self.fmin_uuid}"
        for name in _PARAM_NAMES:
            self.keys[name] = name + suffix if name in params else name
        for name in (*COUNT_METRICS, _BEST_LOSS_METRIC):
            self.keys[name] = name + suffix if name in metrics else name
        for name in ("fmin_uuid", "space"):
            self.keys[name] = name + suffix if name in tags else name
        # runSource is the same for every fmin: only another value is a conflict.
        same_source = tags.get("runSource", RUN_SOURCE) == RUN_SOURCE
        self.keys["runSource"] = "runSource" if same_source else "runSource" + suffix
