"""hyperopt's fmin as a search on the engine's loop (``trial_loop.TrialLoop``).

This front end holds everything hyperopt: the trial documents, the algorithm that suggests
them (on the client, when a slot frees, ``max_queue_len`` at a time), ``max_evals`` as
hyperopt counts it, the stop rules (``stopping.py``), and what an ending means for a document
(``trial_end.py``). The loop hands it no hyperopt object and takes none from it: a trial goes
out as its id and its pickled argument, and comes back as one ``Ending``.

``trial_ended`` is the one way out of a trial on this side, whatever ended it: it records the
outcome, relays the objective's MLflow logging, updates the progress, tells the tracker once,
saves, and applies the stop rules.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hyperopt import base
from hyperopt.utils import coarse_utcnow
from pyspark import cloudpickle

from connect_trials import job
from connect_trials.cancellation import FMIN_CANCELLED_REASON_EARLY_STOPPING, FminCancellation
from connect_trials.errors import last_line, one_line
from connect_trials.outage import Outages
from connect_trials.outputs import OutputBudget
from connect_trials.progress import TrialProgress
from connect_trials.reconnect import SessionRecovery
from connect_trials.session import SERVER_GONE_AFTER_S
from connect_trials.stopping import Stop, StopRules
from connect_trials.tracking import FminTracker
from connect_trials.tracking.uris import redacted_text
from connect_trials.trial_end import TrialEnd, argument_of, failure_summary, output_excerpt
from connect_trials.trial_loop import Ending, TrialLoop, TrialToRun

logger = logging.getLogger("connect_trials")


@dataclass(frozen=True)
class SearchLimits:
    max_evals: int
    loss_threshold: float | None = None
    early_stop_fn: Callable[..., Any] | None = None
    max_queue_len: int = 1
    # time.monotonic() at which fmin's ``timeout`` ends (it counts from the fmin call).
    deadline: float | None = None


class TrialScheduler:
    """Runs one fmin's trials on a :class:`job.TrialExecutor`: hyperopt's search on the
    engine's loop."""

    def __init__(
        self,
        trials: Any,
        domain: base.Domain,
        algo: Callable[..., Any],
        rstate: Any,
        executor: job.TrialExecutor,
        parallelism: int,
        limits: SearchLimits,
        tracker: FminTracker,
        progress: TrialProgress,
        after_trial: Callable[[dict[str, Any]], None] = lambda trial: None,
        recovery: SessionRecovery | None = None,
        reconnect_timeout: float = SERVER_GONE_AFTER_S,
        output_kept_in: str = "",
        cancellation: FminCancellation | None = None,
    ) -> None:
        self.trials = trials
        self.domain = domain
        self.algo = algo
        self.rstate = rstate
        self.limits = limits
        self.tracker = tracker
        self.progress = progress
        self.after_trial = after_trial  # e.g. append the trial to the trials_save_file
        self.cancellation = cancellation or FminCancellation(lambda reason: record_cancelled(trials, reason))
        # Connect sessions only: outages are waited out across server restarts.
        outages = None if recovery is None else Outages(recovery, reconnect_timeout, progress.note)
        self.loop = TrialLoop(self, executor, parallelism, limits.deadline, self.cancellation, outages)
        self.outputs = OutputBudget(trials, output_kept_in)
        self._n_failed = 0
        # As hyperopt's FMinIter.exhaust: max_evals - len(trials), where len counts the NEW,
        # RUNNING and DONE trials (not ERROR nor CANCEL ones) as of the last refresh: documents
        # inserted since (generate_trials_to_calculate's seeds) come on top of max_evals.
        self._n_to_run = limits.max_evals - len(trials)
        trials.refresh()
        self._n_suggested = 0
        self._exhausted = False
        # Trials inserted NEW before fmin (hyperopt's way to seed a search:
        # generate_trials_to_calculate + insert_trial_docs) count in len(trials) and run
        # first, as SparkTrials' dispatcher runs every NEW trial it finds.
        self._pending: list[dict[str, Any]] = [  # NEW: seeded or suggested, not yet handed out
            t for t in trials._dynamic_trials if t["state"] == base.JOB_STATE_NEW
        ]
        self._open: dict[int, tuple[dict[str, Any], Any]] = {}  # handed out: tid -> (document, argument)
        self._stop_rules = StopRules(
            trials, [t for t in trials._dynamic_trials if t["state"] == base.JOB_STATE_DONE],
            limits.loss_threshold, limits.early_stop_fn,
        )  # fmt: skip
        if self._stop_rules.threshold_reached:
            # FMinIter queues its first suggestions before it looks at the losses: one batch.
            self._n_to_run = min(self._n_to_run, max(limits.max_queue_len, 1))

    def run(self) -> None:
        try:
            self.loop.run()
        finally:
            self.trials.refresh()

    # The watchdog's news, from its thread.
    def server_gone(self, reason: str) -> None:
        self.loop.server_gone(reason)

    def server_refused(self, detail: str) -> None:
        self.loop.server_refused(detail)

    def server_answered(self) -> None:
        self.loop.server_answered()

    # -- the loop asks ----------------------------------------------------------------------
    def next_trial(self) -> TrialToRun | None:
        if not self._pending and not self._suggest():
            return None
        trial = self._pending.pop(0)
        tid = trial["tid"]
        now = coarse_utcnow()
        trial["state"] = base.JOB_STATE_RUNNING
        trial["book_time"] = now
        trial["refresh_time"] = now
        try:
            argument = argument_of(self.domain, trial)
            argument_blob = cloudpickle.dumps(argument)
        except Exception as exc:  # noqa: BLE001 - a bad point fails its trial, not the search
            self._open[tid] = (trial, None)
            return TrialToRun(tid, failure=(str(type(exc)), traceback.format_exc()))
        self._open[tid] = (trial, argument)
        return TrialToRun(tid, argument_blob)

    def more_to_come(self) -> bool:
        return bool(self._pending) or (self._n_to_run > self._n_suggested and not self._exhausted)

    def trial_started(self, tid: int) -> dict[str, str]:
        trial, argument = self._open[tid]
        return self.tracker.trial_started(trial, argument)

    def trial_requeued(self, tid: int) -> None:
        self._open[tid][0]["state"] = base.JOB_STATE_NEW

    def withdraw(self) -> list[int]:
        pending, self._pending = self._pending, []
        for trial in pending:
            self._open[trial["tid"]] = (trial, None)
        return [t["tid"] for t in pending]

    def _suggest(self) -> bool:
        """Ask the algorithm for the next trials; False when there will be no more."""
        remaining = self._n_to_run - self._n_suggested
        if remaining <= 0 or self._exhausted:
            return False
        n = min(max(self.limits.max_queue_len, 1), remaining)
        new_ids = self.trials.new_trial_ids(n)
        self.trials.refresh()
        docs = self.algo(new_ids, self.domain, self.trials, self.rstate.integers(2**31 - 1))
        if not docs:
            self._exhausted = True
            return False
        self.trials.insert_trial_docs(docs)
        # insert_trial_docs stores copies: work on the stored documents.
        self._pending.extend(self.trials._dynamic_trials[-len(docs) :])
        self._n_suggested += len(docs)
        return True

    # -- a trial's end ----------------------------------------------------------------------
    def trial_ended(self, tid: int, ending: Ending, in_flight: int) -> None:
        """The one way out of a trial on hyperopt's side: record the outcome, relay what its
        objective logged, show it, tell the tracker, save, and apply the stop rules."""
        opened = self._open.pop(tid, None)
        if opened is None:
            return  # it has ended already
        trial = opened[0]
        outcome = ending.outcome
        if ending.failure is not None:
            end = TrialEnd.failed(*ending.failure, outcome)
        elif ending.cancelled or outcome is None:
            end = TrialEnd.cancelled(outcome)
        else:
            end = TrialEnd.of(outcome)
        if outcome is not None and outcome.relayed:
            self.tracker.objective_logged(trial, outcome.relayed)
        end.write_into(trial)
        self._log_end(tid, end)
        if end.state == base.JOB_STATE_DONE:
            self._stop_rules.trial_done(trial)
        best_loss = self._stop_rules.best_loss
        if end.state != base.JOB_STATE_CANCEL:  # cancelled trials are not progress
            self.progress.trial_finished(best_loss, running=in_flight, failed=self._n_failed)
        self.tracker.trial_finished(trial, best_loss)
        try:
            self.after_trial(trial)
        except Exception as exc:  # noqa: BLE001 - a full disk must not end the search, nor its settling
            logger.warning("could not save the trials after trial %s: %s", tid, one_line(exc))
        self.outputs.hold(trial)  # after the save: the file keeps what leaves memory
        if end.state == base.JOB_STATE_CANCEL or self.cancellation.cancelled or self.loop.settling:
            return
        stop = self._stop_rules.stop_after(trial)
        if stop is Stop.EARLY_STOP_FN:
            self.cancellation.cancel(FMIN_CANCELLED_REASON_EARLY_STOPPING)
        elif stop is Stop.LOSS_THRESHOLD:
            # FMinIter leaves its loop and blocks until the trials in flight are done: they
            # (and any already suggested) run to their end, and no new one is suggested.
            self._exhausted = True

    def _log_end(self, tid: int, end: TrialEnd) -> None:
        outcome = end.outcome
        if end.state == base.JOB_STATE_DONE:
            logger.debug("trial task %s succeeded, result is %s", tid, end.result)
        elif end.state == base.JOB_STATE_ERROR:
            error_type, error_text = end.error or ("", "")
            logger.error(
                "trial task %s failed, exception is %s.\n %s%s", tid, failure_summary(error_type, error_text),
                redacted_text(error_text), output_excerpt(outcome.output if outcome is not None else None),
            )  # fmt: skip
            self._n_failed += 1
        else:
            reason = last_line(end.error[1]) if end.error else "its job did not report back in time"
            logger.debug("trial task %s cancelled: %s", tid, reason)
        if end.state == base.JOB_STATE_DONE:  # upstream's texts, which scripts grep for
            logger.debug("trial %s task thread exits normally and writes results back correctly.", tid)
        else:
            logger.debug("trial %s task thread catches an exception and writes the info back correctly.", tid)


def record_cancelled(trials: Any, reason: str) -> None:
    """Where hyperopt's SparkTrials keeps a cancellation: scripts read
    ``trials.fmin_cancelled_reason``."""
    trials._fmin_cancelled = True
    trials._fmin_cancelled_reason = reason
