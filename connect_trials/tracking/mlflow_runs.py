"""The MLflow writes of one fmin, through one ``MlflowClient``, and which of our runs are open."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from connect_trials.errors import last_line
from connect_trials.tracking.hyperparameters import truncated
from connect_trials.tracking.outcome import RESULT_TAG, ChildOutcome, RunStatus, TrialStatus
from connect_trials.tracking.uris import redacted_text

RUN_SOURCE = "hyperoptAutoTracking"
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

# MLflow error codes that mean "this request was wrong", as opposed to "MLflow is unwell".
_REFUSALS = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_STATE",
        "BAD_REQUEST",
    }
)


def is_refusal(exc: BaseException) -> bool:
    """The server answered and refused this one write."""
    return getattr(exc, "error_code", None) in _REFUSALS


class MlflowRuns:
    """Creates, writes and ends runs; ``open_run_ids`` holds the runs created here that have
    not ended yet (what would stay RUNNING if the server went away now)."""

    def __init__(self, tracking_uri: str) -> None:
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri)  # a SQL store migrates here
        self._open_lock = threading.Lock()
        self._open_run_ids: set[str] = set()

    @property
    def open_run_ids(self) -> list[str]:
        with self._open_lock:
            return sorted(self._open_run_ids)

    def create(self, experiment_id: str, tags: dict[str, str], run_name: str) -> str:
        run = self.client.create_run(experiment_id, tags=tags, run_name=run_name)
        run_id = str(run.info.run_id)
        self.track_open(run_id)
        return run_id

    def track_open(self, run_id: str) -> None:
        """A run this fmin must end (created, or set RUNNING again to resume it)."""
        with self._open_lock:
            self._open_run_ids.add(run_id)

    def end(self, run_id: str, status: RunStatus) -> None:
        """End a run. ``set_terminated`` would read the
        run back and print two "View run" lines per trial; the store's ``update_run_info`` is
        the same write without both."""
        from mlflow.entities import RunStatus as MlflowRunStatus

        self._store.update_run_info(
            run_id, MlflowRunStatus.from_string(status.value), int(time.time() * 1000), None
        )
        with self._open_lock:
            self._open_run_ids.discard(run_id)

    def end_child(self, run_id: str, params: dict[str, str], outcome: ChildOutcome,
                  refused: Callable[[BaseException], None]) -> None:  # fmt: skip
        """Write a trial's outcome and hyperparameters on its child run, then end it. A param
        the run already has is left as it is: the objective's own logging wins."""
        from mlflow.entities import Metric

        tags = {"trial_status": outcome.trial_status.value}
        if outcome.attempts is not None:
            tags["attempts"] = str(outcome.attempts)
        if outcome.result is not None:
            tags[RESULT_TAG] = outcome.result
        if outcome.trial_status is TrialStatus.FAILURE and outcome.error_type:
            tags["error_type"] = truncated(outcome.error_type)
            tags["error_message"] = truncated(redacted_text(last_line(outcome.error_text)))
        metrics = [] if outcome.loss is None else [Metric("loss", outcome.loss, int(time.time() * 1000), 0)]
        try:
            try:
                self.log_batch(run_id, params=params, tags=tags, metrics=metrics)
            except Exception as exc:
                if not (params and is_refusal(exc)):
                    raise
                # The objective logged some of these names with other values: keep its values.
                taken = self.client.get_run(run_id).data.params
                params = {k: v for k, v in params.items() if k not in taken}
                self.log_batch(run_id, params=params, tags=tags, metrics=metrics)
            if outcome.error_text:
                self.log_text(run_id, redacted_text(outcome.error_text), "error_traceback.txt", refused)
            if outcome.output:
                self.log_text(run_id, outcome.output, "output.txt", refused)
        finally:
            self.end(run_id, outcome.run_status)

    def log_batch(self, run_id: str, params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
                  metrics: list[Any] | None = None) -> None:  # fmt: skip
        from mlflow.entities import Param, RunTag

        entities: list[Any] = [Param(k, v) for k, v in (params or {}).items()]
        entities += [RunTag(k, v) for k, v in (tags or {}).items()]
        chunks = [
            entities[i : i + _MAX_PARAMS_TAGS_PER_BATCH]
            for i in range(0, len(entities), _MAX_PARAMS_TAGS_PER_BATCH)
        ] or [[]]
        for i, chunk in enumerate(chunks):
            self.client.log_batch(
                run_id,
                params=[e for e in chunk if isinstance(e, Param)],
                tags=[e for e in chunk if isinstance(e, RunTag)],
                # With the last chunk: a refused chunk before it leaves them unwritten, so a
                # retry (a param the objective logged with another value) logs them once.
                metrics=(metrics or []) if i == len(chunks) - 1 else [],
            )

    def replay(self, run_id: str, relayed: bytes, refused: Callable[[BaseException], None]) -> None:
        """Write what the objective logged in a worker's relay store into its child run:
        params, tags, every metric value with its own step and timestamp, and artifacts."""
        import pickle
        import tempfile
        from pathlib import Path

        from mlflow.entities import Metric

        records = pickle.loads(relayed)
        metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in records["metrics"]]
        self.log_batch(run_id, params=records["params"], tags=records["tags"])
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH])
        if records["artifacts"]:
            with tempfile.TemporaryDirectory(prefix="connect-trials-relayed-") as folder:
                for relative, content in records["artifacts"].items():
                    path = Path(folder, relative)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(content)
                try:
                    self.client.log_artifacts(run_id, folder)
                except Exception as exc:  # noqa: BLE001 - as log_text: the artifact store's refusal
                    refused(exc)

    def log_text(self, run_id: str, text: str, name: str, refused: Callable[[BaseException], None]) -> None:
        """An artifact that only complements a tag: the artifact store (which may need
        credentials the tracking server does not) failing to take it is a refusal."""
        try:
            self.client.log_text(run_id, text, name)
        except Exception as exc:  # noqa: BLE001
            refused(exc)

    @property
    def _store(self) -> Any:
        return self.client._tracking_client.store
