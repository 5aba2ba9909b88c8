"""The MLflow tracker: one fmin's parent run and a child run per trial (what it records: the
package docstring). MLflow is called off fmin's thread; fmin waits for it only in
``fmin_started`` (for the parent run) and ``fmin_finished`` (for the writes still queued),
and only while MLflow keeps answering within ``CALL_TIMEOUT_S``.

Tracking trouble never fails an fmin: the first failure turns tracking off for the rest of
it with one warning, and ``fmin_finished`` still ends every run this fmin created. A run
created after fmin stopped waiting for it is ended and deleted when it lands."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connect_trials.errors import last_line
from connect_trials.tracking.call_thread import CallThread, Timers, wait_while_progress
from connect_trials.tracking.child_run_pool import ChildRunPool
from connect_trials.tracking.hooks import TRACKING_CONF, FminSettings, FminTracker
from connect_trials.tracking.hyperparameters import SearchSpace, raw_params
from connect_trials.tracking.mlflow_runs import MlflowRuns, is_refusal
from connect_trials.tracking.outcome import ChildOutcome, RunStatus, child_outcome
from connect_trials.tracking.parent_run import ParentRun, open_parent
from connect_trials.tracking.resume_tags import TID_TAG, resume_tags
from connect_trials.tracking.uris import absolute_tracking_uri, probe, redacted_uri, worker_environ

logger = logging.getLogger("connect_trials")

# The longest fmin's thread waits for MLflow without seeing progress (MLflow itself retries
# an unreachable server for minutes).
CALL_TIMEOUT_S = 10.0
# Child runs kept ready beyond the first wave (which gets `parallelism`): enough for trials
# that end together, few enough that a run's start time is close to its trial's.
RUNS_AHEAD = 2
# A trial still running after this long gets its name and its tid tag on its child run at once;
# a shorter one gets them with its outcome, one request fewer (each costs the tracking server
# 15-25 ms of CPU: a third of what a no-op trial's tracking costs it).
NAME_RUNNING_TRIAL_AFTER_S = 1.0


@dataclass(frozen=True)
class OpenChildRun:
    """A child run a trial took, until the run has ended."""

    run_id: str
    trial: dict[str, Any]  # the trial document, updated in place by the scheduler
    argument: Any  # what the objective received: the run's hyperparameter params


class MlflowTracker(FminTracker):
    """Records one fmin in MLflow."""

    def __init__(self) -> None:
        self._broken = threading.Event()
        self._state_lock = threading.Lock()
        self._closed = False  # fmin_finished ran, or fmin_started gave up
        self._refusal_reported = False
        self._tracking_uri = ""
        self._parent: ParentRun | None = None
        self._space = SearchSpace(None, frozenset())
        self._worker_environ: dict[str, str] = {}
        self._worker_environ_shipped = False  # else trial_started adds it (engines before it)
        self.open_child_runs: dict[int, OpenChildRun] = {}  # tid -> its run, until ended
        self._ended_trials: set[int] = set()
        self._n_finished = 0
        self._best_logged = math.inf
        self._relay_announced = False
        self.run_creation = CallThread("connect-trials-mlflow-create")
        self.writes = CallThread("connect-trials-mlflow-write")
        self._naming = Timers("connect-trials-mlflow-name")
        self.name_running_trial_after_s = NAME_RUNNING_TRIAL_AFTER_S
        self._child_runs: ChildRunPool | None = None

    # -- the hooks -------------------------------------------------------------------------
    def fmin_started(self, settings: FminSettings) -> None:
        import mlflow

        try:
            self._tracking_uri = absolute_tracking_uri(mlflow.get_tracking_uri())
            probe(self._tracking_uri)
            opened = self.run_creation.submit(self._open_parent, mlflow.active_run(), settings)
            self._parent = wait_while_progress(self.run_creation, opened, CALL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - tracking trouble never fails an fmin
            self._disable(exc)
            self._give_up()
            return
        except BaseException:  # Ctrl-C: nothing may stay behind
            self._give_up()
            raise
        parent = self._parent
        self._worker_environ = worker_environ(self._tracking_uri, parent.experiment_id)
        self._space = SearchSpace.of(settings.space)
        self._child_runs = ChildRunPool(
            self.run_creation, parent.create_child, self._discard_quietly, self._disable, ahead=RUNS_AHEAD
        )
        self._child_runs.fill(max(settings.parallelism, RUNS_AHEAD))
        self._write_later(parent.log_settings, settings)
        self._write_later(parent.log_space_text, settings, self._refuse)
        logger.info(
            "MLflow tracking: this fmin is recorded in %s, experiment %s, parent run %s. Turn it off "
            "with ConnectTrials(mlflow_tracking=False) or the Spark conf %s=false.",
            redacted_uri(self._tracking_uri), parent.experiment_id, parent.run_id, TRACKING_CONF,
        )  # fmt: skip

    def worker_environ(self) -> dict[str, str]:
        self._worker_environ_shipped = True
        return dict(self._worker_environ)

    def trial_started(self, trial: dict[str, Any], argument: Any) -> dict[str, str]:
        if self._broken.is_set() or self._child_runs is None:
            return {}
        run_id = self._child_runs.take(CALL_TIMEOUT_S)
        if run_id is None:
            self._disable(TimeoutError(f"MLflow did not create a run within {CALL_TIMEOUT_S:g} s"))
            return {}
        tid = trial["tid"]
        with self._state_lock:
            self.open_child_runs[tid] = OpenChildRun(run_id, trial, argument)
        # A trial that runs on is named and tagged behind it, off its way to the job: it shows
        # under its name, and a search resumed after its client died knows it was taken.
        self._naming.call_later(self.name_running_trial_after_s, self._name_if_running, tid, run_id)
        environ = {"MLFLOW_RUN_ID": run_id}
        return environ if self._worker_environ_shipped else {**self._worker_environ, **environ}

    def objective_logged(self, trial: dict[str, Any], relayed: bytes) -> None:
        child = self.open_child_runs.get(trial["tid"])
        if self._broken.is_set() or child is None:
            return
        if not self._relay_announced:
            self._relay_announced = True
            logger.info(
                "The Spark workers cannot reach the tracking store %s: what objectives log with "
                "MLflow is relayed through this client into each trial's child run, at the trial's end.",
                redacted_uri(self._tracking_uri),
            )
        self._write_later(self._runs.replay, child.run_id, relayed, self._refuse)

    def trial_finished(self, trial: dict[str, Any], best_loss: float) -> None:
        tid = trial["tid"]
        with self._state_lock:
            if self._broken.is_set() or self._parent is None or tid in self._ended_trials:
                return  # a child left open here is ended by fmin_finished
            self._ended_trials.add(tid)  # its end write names and tags its run
        self._n_finished += 1
        if math.isfinite(best_loss) and best_loss < self._best_logged:
            self._best_logged = best_loss
            self._write_later(self._parent.log_best_loss, best_loss, self._n_finished)
        child = self.open_child_runs.get(tid)
        if child is None:  # failed before its job: its argument could not be built
            self._write_later(self._record_unstarted_trial, trial)
        else:
            self._write_later(self._end_child, tid, child, child_outcome(trial))

    def fmin_finished(self, trials: Any, error: BaseException | None) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        parent, pool = self._parent, self._child_runs
        try:
            if parent is None or pool is None:
                return
            unused = pool.close()
            status = _parent_status(error)
            if not self._broken.is_set():
                for tid, child in self._open_children():
                    self._write_later(self._end_child, tid, child, child_outcome(child.trial))
                for run_id in unused:
                    self._write_later(self._runs.discard, run_id)
                self._write_later(parent.log_counts, trials)
                self._write_later(parent.end, status)
                try:
                    wait_while_progress(self.writes, self.writes.submit(lambda: None), CALL_TIMEOUT_S)
                except TimeoutError as exc:
                    self._disable(exc)
            if self._broken.is_set():
                self._end_after_failure(unused, status)
            self._warn_left_open()
        finally:
            self._naming.close()
            self.run_creation.close()
            self.writes.close()

    # -- on the tracker's threads ------------------------------------------------------------
    @property
    def _runs(self) -> MlflowRuns:
        assert self._parent is not None
        return self._parent.runs

    def _open_parent(self, active: Any, settings: FminSettings) -> ParentRun | None:
        parent = open_parent(
            MlflowRuns(self._tracking_uri), active, settings.objective_name, settings.fmin_id[:6],
            settings.resume_run_id,
        )  # fmt: skip
        with self._state_lock:
            if not self._closed:
                return parent
        if parent.owned:  # fmin_started gave up waiting for it
            self._discard_quietly(parent.run_id, parent.runs)
        return None

    def _name_if_running(self, tid: int, run_id: str) -> None:
        with self._state_lock:  # against trial_finished: this write goes before the end's or not at all
            if tid not in self._ended_trials and not self._closed:
                self._write_later(self._runs.start_trial, run_id, f"trial-{tid}", {TID_TAG: str(tid)})

    def _end_child(self, tid: int, child: OpenChildRun, outcome: ChildOutcome) -> None:
        params = self._space.params(child.argument, child.trial["misc"]["vals"])
        self._runs.end_child(
            child.run_id, f"trial-{tid}", params, outcome, self._refuse, resume_tags(child.trial)
        )
        with self._state_lock:
            self.open_child_runs.pop(tid, None)

    def _record_unstarted_trial(self, trial: dict[str, Any]) -> None:
        assert self._parent is not None
        name = f"trial-{trial['tid']}"
        run_id = self._parent.create_child(name)
        self._runs.end_child(
            run_id, name, raw_params(trial["misc"]["vals"]), child_outcome(trial), self._refuse,
            resume_tags(trial),
        )  # fmt: skip

    def _discard_quietly(self, run_id: str, runs: MlflowRuns | None = None) -> None:
        try:
            (runs or self._runs).discard(run_id)
        except Exception as exc:  # noqa: BLE001 - listed by fmin_finished if it stays open
            logger.debug("could not end the unused MLflow run %s: %s", run_id, exc)

    # -- ending well -----------------------------------------------------------------------
    def _end_after_failure(self, unused: list[str], status: RunStatus) -> None:
        """After tracking broke: end every run still open, on a fresh thread (the writer may
        be stuck in MLflow's retries), if the server takes connections at all."""
        try:
            probe(self._tracking_uri)
        except ConnectionError:
            return
        closing = CallThread("connect-trials-mlflow-close")
        for tid, child in self._open_children():
            closing.submit(self._quietly, self._end_child, tid, child, child_outcome(child.trial))
        for run_id in unused:
            closing.submit(self._discard_quietly, run_id)
        assert self._parent is not None
        closing.submit(self._quietly, self._parent.end, status)
        try:
            wait_while_progress(closing, closing.submit(lambda: None), CALL_TIMEOUT_S)
        except TimeoutError:
            pass  # what is still open is listed by _warn_left_open
        closing.close()

    def _warn_left_open(self) -> None:
        left_open = self._runs.open_run_ids
        in_flight = self._child_runs.creations_in_flight if self._child_runs else 0
        if left_open or in_flight:
            logger.warning(
                "The MLflow tracking server %s did not answer at the end of fmin: run(s) %s stay RUNNING%s.",
                redacted_uri(self._tracking_uri), ", ".join(left_open) or "(none)",
                f"; {in_flight} run(s) still being created will be ended when they land" if in_flight else "",
            )  # fmt: skip

    def _open_children(self) -> list[tuple[int, OpenChildRun]]:
        with self._state_lock:
            return list(self.open_child_runs.items())

    def _give_up(self) -> None:
        """fmin_started failed or was interrupted: a parent run that lands later is discarded."""
        with self._state_lock:
            self._closed = True
        self._naming.close()
        self.run_creation.close()
        self.writes.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _write_later(self, call: Callable[..., Any], *args: Any) -> None:
        """Queue a write; it is skipped if tracking is off by the time its turn comes."""
        self.writes.submit(lambda: None if self._broken.is_set() else self._quietly(call, *args))

    def _quietly(self, call: Callable[..., Any], *args: Any) -> None:
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001
            (self._refuse if is_refusal(exc) else self._disable)(exc)

    def _refuse(self, exc: BaseException) -> None:
        """The server answered but refused one write: warn once, go on with the rest."""
        log = logger.debug if self._refusal_reported else logger.warning
        self._refusal_reported = True
        log("MLflow refused part of this fmin's tracking; the rest goes on: %s", last_line(str(exc))[:500])

    def _disable(self, exc: BaseException) -> None:
        with self._state_lock:
            if self._broken.is_set():
                return
            self._broken.set()
        logger.warning(
            "MLflow tracking is off for the rest of this fmin (tracking URI %s): %s: %s. The trials run on; "
            "fmin ends the runs it created when it finishes.",
            redacted_uri(self._tracking_uri) or "<unresolved>", type(exc).__name__, last_line(str(exc))[:500],
        )  # fmt: skip


def _parent_status(error: BaseException | None) -> RunStatus:
    if error is None:
        return RunStatus.FINISHED
    return RunStatus.KILLED if isinstance(error, KeyboardInterrupt) else RunStatus.FAILED
