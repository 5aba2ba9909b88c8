"""The MLflow tracker: one fmin's parent run and a child run per trial (what it records: the
package docstring). MLflow is called off the scheduler's thread: child runs are created in
each trial's own thread (``ChildRunLedger``), writes go to one write thread, and fmin waits
for MLflow only in ``fmin_started`` (for the parent run) and ``fmin_finished`` (for the writes
still queued), and only while MLflow keeps answering within ``CALL_TIMEOUT_S``.

Tracking trouble never fails an fmin: a failure turns tracking off for the rest of it with
one warning, and ``fmin_finished`` still ends every run this fmin created. A parent run
created after fmin stopped waiting for it is ended when it lands. No run is ever deleted."""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from connect_trials.tracking.call_thread import CallThread, wait_while_progress
from connect_trials.tracking.hooks import FminTracker
from connect_trials.tracking.hyperparameters import SearchSpace
from connect_trials.tracking.mlflow_runs import MlflowRuns
from connect_trials.tracking.outcome import RunStatus
from connect_trials.tracking.parent_run import ParentRun, open_parent
from connect_trials.tracking.run_ledger import ChildRunLedger
from connect_trials.tracking.settings import TRACKING_CONF, FminSettings
from connect_trials.tracking.uris import absolute_tracking_uri, probe, redacted_uri, worker_environ
from connect_trials.tracking.writes import CALL_TIMEOUT_S, TrackingWrites

logger = logging.getLogger("connect_trials")


class MlflowTracker(FminTracker):
    """Records one fmin in MLflow."""

    def __init__(self) -> None:
        self.writes = TrackingWrites()
        self._state_lock = threading.Lock()
        self._closed = False  # fmin_finished ran, or fmin_started gave up
        self._parent: ParentRun | None = None
        self._parent_creation = CallThread("connect-trials-mlflow-parent")
        self._worker_environ: dict[str, str] = {}
        self.child_runs: ChildRunLedger | None = None
        self._n_finished = 0
        self._best_logged = math.inf
        self._relay_announced = False

    # -- the hooks -------------------------------------------------------------------------
    def fmin_started(self, settings: FminSettings) -> None:
        import mlflow

        try:
            self.writes.tracking_uri = absolute_tracking_uri(mlflow.get_tracking_uri())
            probe(self.writes.tracking_uri)
            opened = self._parent_creation.submit(self._open_parent, mlflow.active_run(), settings)
            self._parent = wait_while_progress(self._parent_creation, opened, CALL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - tracking trouble never fails an fmin
            self.writes.disable(exc)
            self._give_up()
            return
        except BaseException:  # Ctrl-C: nothing may stay behind
            self._give_up()
            raise
        finally:
            self._parent_creation.close()
        parent = self._parent
        if parent is None:
            return
        try:
            self._worker_environ = worker_environ(self.writes.tracking_uri, parent.experiment_id)
        except Exception as exc:  # noqa: BLE001 - an unreadable certificate file, say
            self.writes.disable(exc)  # fmin_finished still ends the parent
            return
        self.child_runs = ChildRunLedger(parent, SearchSpace.of(settings.space), self.writes)
        self.writes.later(parent.log_settings, settings)
        self.writes.later(parent.log_space_text, settings, self.writes.refused)
        logger.info(
            "MLflow tracking: this fmin is recorded in %s, experiment %s, parent run %s. Turn it off "
            "with ConnectTrials(mlflow_tracking=False) or the Spark conf %s=false.",
            redacted_uri(self.writes.tracking_uri), parent.experiment_id, parent.run_id, TRACKING_CONF,
        )  # fmt: skip

    def worker_environ(self) -> dict[str, str]:
        return dict(self._worker_environ)

    @property
    def keeps_output(self) -> bool:
        return self.child_runs is not None

    def trial_started(self, trial: dict[str, Any], argument: Any) -> dict[str, str]:
        if self.child_runs is None:
            return {}
        run_id = self.child_runs.start(trial, argument)
        return {} if run_id is None else {"MLFLOW_RUN_ID": run_id}

    def objective_logged(self, trial: dict[str, Any], relayed: bytes) -> None:
        if self.child_runs is None or self.writes.broken.is_set():
            return
        if not self._relay_announced:
            self._relay_announced = True
            logger.info(
                "The objectives' MLflow logging is kept on the Spark workers (they cannot reach the "
                "tracking store %s, or a trial had no child run yet) and relayed through this client "
                "into each trial's child run, at the trial's end.",
                redacted_uri(self.writes.tracking_uri),
            )
        self.child_runs.relayed(trial["tid"], relayed)

    def trial_finished(self, trial: dict[str, Any], best_loss: float) -> None:
        parent, child_runs = self._parent, self.child_runs
        if parent is None or child_runs is None or self.writes.broken.is_set():
            return  # a run left open here is ended by fmin_finished
        child_runs.end(trial)
        self._n_finished += 1
        if math.isfinite(best_loss) and best_loss < self._best_logged:
            self._best_logged = best_loss
            self.writes.later(parent.log_best_loss, best_loss, self._n_finished)

    def fmin_finished(self, trials: Any, error: BaseException | None) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        parent, child_runs = self._parent, self.child_runs
        try:
            if parent is None:
                return
            status = _parent_status(error)
            if child_runs is not None:
                child_runs.end_unfinished()
                child_runs.wait_for_creations()
            if not self.writes.broken.is_set():
                self.writes.later(parent.log_counts, trials)
                self.writes.later(parent.end, status)
                self.writes.drain()
            if self.writes.broken.is_set():
                self._end_after_failure(parent, child_runs, status)
            self._warn_left_open(parent, child_runs)
        finally:
            self.writes.close()

    # -- on the tracker's threads ------------------------------------------------------------
    def _open_parent(self, active: Any, settings: FminSettings) -> ParentRun | None:
        parent = open_parent(
            MlflowRuns(self.writes.tracking_uri), active, settings.objective_name, settings.fmin_uuid,
            settings.resume_run_id,
        )  # fmt: skip
        with self._state_lock:
            if not self._closed:
                return parent
        # fmin_started gave up waiting for it (a timeout, Ctrl-C): a parent this fmin made ends
        # KILLED; a resumed search's parent gets back the status it had.
        if parent.ownership.ends_run:
            self.writes.quietly(parent.runs.end, parent.run_id, parent.status_before or RunStatus.KILLED)
        return None

    # -- ending well -----------------------------------------------------------------------
    def _end_after_failure(
        self, parent: ParentRun, child_runs: ChildRunLedger | None, status: RunStatus
    ) -> None:
        """After tracking broke: end every run still open, on a fresh thread (the writer may
        be stuck in MLflow's retries), if the server takes connections at all."""
        try:
            probe(self.writes.tracking_uri)
        except ConnectionError:
            return
        closing = CallThread("connect-trials-mlflow-close")
        for child in child_runs.runs_to_end() if child_runs is not None else []:
            closing.submit(self.writes.quietly, child_runs.write_end, child)  # type: ignore[union-attr]
        closing.submit(self.writes.quietly, parent.end, status)
        try:
            wait_while_progress(closing, closing.submit(lambda: None), CALL_TIMEOUT_S)
        except TimeoutError:
            pass  # what is still open is listed by _warn_left_open
        closing.close()

    def _warn_left_open(self, parent: ParentRun, child_runs: ChildRunLedger | None) -> None:
        left_open = parent.runs.open_run_ids
        in_flight = child_runs.creations_in_flight if child_runs is not None else 0
        if left_open or in_flight:
            logger.warning(
                "The MLflow tracking server %s did not answer at the end of fmin: run(s) %s stay RUNNING%s.",
                redacted_uri(self.writes.tracking_uri), ", ".join(left_open) or "(none)",
                f"; {in_flight} run(s) still being created will be ended when they land" if in_flight else "",
            )  # fmt: skip

    def _give_up(self) -> None:
        """fmin_started failed or was interrupted: a parent run that lands later is ended."""
        with self._state_lock:
            self._closed = True
        self.writes.close()


def _parent_status(error: BaseException | None) -> RunStatus:
    if error is None:
        return RunStatus.FINISHED
    return RunStatus.KILLED if isinstance(error, KeyboardInterrupt) else RunStatus.FAILED


__all__ = ["CALL_TIMEOUT_S", "MlflowTracker"]
