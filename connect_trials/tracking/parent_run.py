"""The parent run of one fmin: the caller's active run, or one created for the fmin."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

from connect_trials.tracking.hyperparameters import (
    MAX_TAG_CHARS,
    algo_name,
    param_value,
    space_text,
    truncated,
)
from connect_trials.tracking.mlflow_runs import RUN_SOURCE, MlflowRuns
from connect_trials.tracking.outcome import RunStatus
from connect_trials.tracking.settings import FminSettings

COUNT_METRICS = (
    "successful_trials_count",
    "failed_trials_count",
    "cancelled_trials_count",
    "total_trials_count",
)
_BEST_LOSS_METRIC = "best_trial_loss"


class Ownership(enum.Enum):
    """Whose the parent run is, which decides what this fmin may do with it."""

    CREATED = "created"  # made by this fmin: it holds no names yet, and this fmin ends it
    RESUMED = "resumed"  # a search's parent reopened (from_mlflow): set RUNNING, ended again
    LENT = "lent"  # the caller's active run: written to, left open

    @property
    def ends_run(self) -> bool:
        return self is not Ownership.LENT


def open_parent(
    runs: MlflowRuns, active: Any, objective_name: str, fmin_uuid: str, resume_run_id: str | None = None
) -> ParentRun:
    """The run of a search being resumed (``ConnectTrials.from_mlflow``), running again until
    this fmin ends; else the caller's active run; else a new run named
    after the objective (``fmin-<name>``) in the experiment ``mlflow.start_run()`` would use."""
    from mlflow.tracking import fluent
    from mlflow.tracking.context import registry

    if resume_run_id is not None:  # asked for by name: it wins over an active run
        info = runs.client.get_run(resume_run_id).info
        runs.client.update_run(resume_run_id, status="RUNNING")
        runs.track_open(resume_run_id)
        resumed = ParentRun(runs, info.experiment_id, resume_run_id, Ownership.RESUMED, fmin_uuid)
        resumed.status_before = RunStatus(info.status) if info.status in RunStatus.__members__ else None
        return resumed
    if active is not None:
        return ParentRun(runs, active.info.experiment_id, active.info.run_id, Ownership.LENT, fmin_uuid)
    experiment_id = fluent._get_experiment_id() or "0"
    tags = {**registry.resolve_tags(), "runSource": RUN_SOURCE}
    run_name = f"fmin-{objective_name}" if objective_name else "fmin"
    run_id = runs.create(experiment_id, {k: str(v) for k, v in tags.items()}, run_name)
    return ParentRun(runs, experiment_id, run_id, Ownership.CREATED, fmin_uuid)


class ParentRun:
    """Writes one fmin's settings and counts on its parent run. On a run that already holds
    one of these names (a second fmin in the same active run), this fmin writes that name
    with the suffix ``_<fmin_uuid>``."""

    def __init__(
        self, runs: MlflowRuns, experiment_id: str, run_id: str, ownership: Ownership, fmin_uuid: str
    ) -> None:
        self.runs = runs
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.ownership = ownership
        self.fmin_uuid = fmin_uuid
        self.status_before: RunStatus | None = None  # a resumed parent's status before this fmin
        self.keys: dict[str, str] = {}  # a name -> the name this fmin writes it under

    def log_settings(self, settings: FminSettings) -> None:
        params = {
            "max_evals": settings.max_evals,
            "actual_parallelism": settings.parallelism,
            "parallelism": settings.user_specified_parallelism,
            "timeout": settings.timeout,
            "algo": algo_name(settings.algo),
            "max_queue_len": settings.max_queue_len,
        }
        written = {k: param_value(v) for k, v in params.items()}
        tags = {
            "runSource": RUN_SOURCE,
            "fmin_uuid": self.fmin_uuid,
            "space": truncated(space_text(settings.space)),
        }
        self._choose_keys(written, tags)
        self.runs.log_batch(
            self.run_id,
            params={self.keys[k]: v for k, v in written.items()},
            tags={self.keys[k]: v for k, v in tags.items()},
        )

    def log_space_text(self, settings: FminSettings, refused: Callable[[BaseException], None]) -> None:
        """The whole space as an artifact when the tag had to be truncated."""
        space = space_text(settings.space)
        if len(space) > MAX_TAG_CHARS:
            self.runs.log_text(self.run_id, space, f"{self.keys['space']}.txt", refused)

    def log_best_loss(self, loss: float, step: int) -> None:
        self.runs.client.log_metric(self.run_id, self.keys[_BEST_LOSS_METRIC], loss, step=step)

    def create_child(self, tid: int, trial_tags: dict[str, str]) -> str:
        """The child run of trial ``tid``, named and tagged with its trial from the start (so
        a search resumed after its client died knows whose it is)."""
        tags = {
            "mlflow.parentRunId": self.run_id,
            "fmin_uuid": self.fmin_uuid,
            "runSource": RUN_SOURCE,
            **trial_tags,
        }
        return self.runs.create(self.experiment_id, tags, child_run_name(tid))

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
        if self.ownership.ends_run:
            self.runs.end(self.run_id, status)

    def _choose_keys(self, params: dict[str, str], tags: dict[str, str]) -> None:
        """The names this fmin writes under (``keys``), and the params it cannot write again.

        On the caller's run, a name another fmin wrote gets the suffix ``_<fmin_uuid>``. A
        resumed search writes under the names it wrote before: suffixed if the parent holds
        its suffixed name, else plain; a param it already wrote keeps its first value."""
        if self.ownership is Ownership.CREATED:
            held_params: Any = {}
            held_tags: Any = {}
            held_metrics: Any = {}
        else:
            data = self.runs.client.get_run(self.run_id).data
            held_params, held_tags, held_metrics = data.params, data.tags, data.metrics
        suffix = f"_{self.fmin_uuid}"
        resumed = self.ownership is Ownership.RESUMED
        names: list[tuple[str, Any]] = [(n, held_params) for n in params]
        names += [(n, held_metrics) for n in (*COUNT_METRICS, _BEST_LOSS_METRIC)]
        names += [(n, held_tags) for n in tags]
        for name, held in names:
            if resumed:
                self.keys[name] = name + suffix if name + suffix in held else name
            elif name == "runSource":  # the same for every fmin: only another value is a conflict
                self.keys[name] = name + suffix if held.get(name, RUN_SOURCE) != RUN_SOURCE else name
            else:
                self.keys[name] = name + suffix if name in held else name
        if resumed:
            for name in [n for n in params if self.keys[n] in held_params]:
                del params[name]  # params cannot change; the search's first value stands


def child_run_name(tid: int) -> str:
    return f"trial-{tid}"
