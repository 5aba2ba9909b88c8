"""The fmin loop: suggest on the client, keep at most ``parallelism`` trial jobs in flight.

Every trial job runs in a thread of its own (Spark Connect tags are thread-local) and posts
its outcome to one queue. The loop blocks on that queue, so a finished trial frees its
slot and the next suggestion is submitted at once: no polling. The same wait carries the
deadline of ``timeout`` (counted from the fmin call), and the watchdog's word that the
server is gone. Timeout, ``loss_threshold``, ``early_stop_fn`` and Ctrl-C cancel running
jobs through the fmin's tag, mark unfinished trials CANCEL and keep every finished result.
Whether a late result counts is decided from the client's clock only: it counts when its
job had returned before the cancellation was issued.

Whatever ends a trial (it returned, raised, failed, was cancelled, never launched, or its
server went away) goes through one function, ``_end_trial``: it records the outcome, relays
the objective's MLflow logging, updates the progress, tells the tracker once and saves. The
loop only routes outcomes there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hyperopt import base
from hyperopt.utils import coarse_utcnow
from pyspark import cloudpickle

from connect_trials import job
from connect_trials.compat import ClusterMismatchError
from connect_trials.errors import ClusterUnavailableError, last_line, one_line
from connect_trials.job import OutcomeKind
from connect_trials.progress import TrialProgress
from connect_trials.stopping import StopRules
from connect_trials.tracking import FminTracker
from connect_trials.tracking.uris import redacted_text
from connect_trials.trial_end import (
    WARNING_VARIABLES,
    TrialEnd,
    argument_of,
    failure_summary,
    output_excerpt,
)

logger = logging.getLogger("connect_trials")

FMIN_CANCELLED_REASON_EARLY_STOPPING = "early stopping condition"
FMIN_CANCELLED_REASON_TIMEOUT = "fmin run timeout"
FMIN_CANCELLED_REASON_USER = "fmin run cancelled by user"

# After a cancellation, how long the loop waits for interrupted jobs to report back
# (interruptTag makes a blocked collect() raise within about 0.2 s).
_CANCEL_GRACE_S = 5.0
_SIGNAL_SLICE_S = 0.5
# The tid of the outcome the watchdog posts when the server is gone (no trial has it).
_SERVER_GONE_TID = -1


@dataclass(frozen=True)
class SearchLimits:
    max_evals: int
    loss_threshold: float | None = None
    early_stop_fn: Callable[..., Any] | None = None
    max_queue_len: int = 1
    # time.monotonic() at which fmin's ``timeout`` ends (it counts from the fmin call).
    deadline: float | None = None


class TrialScheduler:
    """Runs one fmin's trials on a :class:`job.TrialExecutor`."""

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
        after_trial: Callable[[], None] = lambda: None,
    ) -> None:
        self.trials = trials
        self.domain = domain
        self.algo = algo
        self.rstate = rstate
        self.executor = executor
        self.parallelism = parallelism
        self.limits = limits
        self.tracker = tracker
        self.progress = progress
        self.after_trial = after_trial  # e.g. save the trials (trials_save_file)
        self._n_failed = 0
        self._warnings_shown: set[str] = set()  # the workers' warnings, each logged once per fmin
        self._completions: queue.Queue[job.TrialOutcome] = queue.Queue()
        self._pending: list[dict[str, Any]] = []  # suggested, not yet submitted
        self._running: dict[int, dict[str, Any]] = {}  # submitted, not yet ended
        self._n_suggested = 0
        # As hyperopt's FMinIter.exhaust: max_evals - len(trials) (a ConnectTrials counts every
        # trial it holds, cancelled and failed ones included).
        trials.refresh()
        self._n_to_run = limits.max_evals - len(trials)
        self._exhausted = False
        self._stop_rules = StopRules(
            [t for t in trials._dynamic_trials if t["state"] == base.JOB_STATE_DONE],
            limits.loss_threshold, limits.early_stop_fn,
        )  # fmt: skip
        self._cancelled_at = math.inf  # time.monotonic() when the first cancellation was issued
        self._settle_grace_s = _CANCEL_GRACE_S

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while True:
                self._fill_slots()
                if self._deadline_passed():
                    self._cancel(FMIN_CANCELLED_REASON_TIMEOUT)
                    break
                if not self._running:
                    break
                outcome = self._next_outcome(self.limits.deadline)
                if outcome is None:
                    self._cancel(FMIN_CANCELLED_REASON_TIMEOUT)
                    break
                if self._route(outcome):
                    break
        except KeyboardInterrupt:
            self._cancel(FMIN_CANCELLED_REASON_USER)
            raise
        except BaseException:
            # The server is gone, or the algorithm or early_stop_fn raised: nothing may run on
            # without its fmin.
            self._interrupt_running()
            raise
        finally:
            self._settle()

    def _next_outcome(self, deadline: float | None) -> job.TrialOutcome | None:
        """The next finished trial, or None at the deadline. Returns the moment one arrives;
        the wait is cut into slices only so that a Ctrl-C reaches the main thread even when
        the signal lands on another thread."""
        while True:
            remaining = _remaining(deadline)
            if remaining == 0.0:
                return None
            try:
                return self._completions.get(
                    timeout=_SIGNAL_SLICE_S if remaining is None else min(remaining, _SIGNAL_SLICE_S)
                )
            except queue.Empty:
                continue

    def server_gone(self, reason: str) -> None:
        """Called from any thread (the watchdog's) when the server is gone: ends the loop."""
        self._completions.put(job.TrialOutcome(_SERVER_GONE_TID, OutcomeKind.UNAVAILABLE, error_text=reason))

    def _deadline_passed(self) -> bool:
        return self.limits.deadline is not None and time.monotonic() >= self.limits.deadline

    def _fill_slots(self) -> None:
        """Submit trials while slots are free; never once the fmin is cancelled or its
        deadline has passed (points that fail before launch would loop here otherwise)."""
        while len(self._running) < self.parallelism:
            if self.trials._fmin_cancelled or self._deadline_passed():
                return
            if not self._pending and not self._suggest():
                return
            self._submit(self._pending.pop(0))

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

    def _submit(self, trial: dict[str, Any]) -> None:
        tid = trial["tid"]
        self._running[tid] = trial
        now = coarse_utcnow()
        trial["state"] = base.JOB_STATE_RUNNING
        trial["book_time"] = now
        trial["refresh_time"] = now
        logger.debug("trial task %s started", tid)
        try:
            argument = argument_of(self.domain, trial)
            argument_blob = cloudpickle.dumps(argument)
        except Exception as exc:  # noqa: BLE001 - a bad point fails its trial, not the search
            self._end_trial(trial, TrialEnd.failed(str(type(exc)), traceback.format_exc()))
            return
        if self.executor.runs_in_caller:
            # Debug mode: the objective runs here, in fmin's own thread, where an IDE's
            # breakpoints and pdb's prompt work; one trial at a time.
            self._run_trial(trial, argument, argument_blob)
            return
        thread = threading.Thread(
            target=self._run_trial, args=(trial, argument, argument_blob), name=f"connect-trials-trial-{tid}",
            daemon=True,
        )  # fmt: skip
        thread.start()

    def _run_trial(self, trial: dict[str, Any], argument: Any, argument_blob: bytes) -> None:
        """In the trial's own thread (fmin's in debug mode): its tracking, then its job. The
        loop always hears back, also when a Ctrl-C in debug mode unwinds through here."""
        tid = trial["tid"]
        outcome = job.not_submitted(tid)
        try:
            environ = self.tracker.trial_started(trial, argument)
            # The tracking may have outlasted the fmin: then nothing is launched.
            if not (self.trials._fmin_cancelled or self._deadline_passed()):
                outcome = self.executor.run_trial(job.TrialRequest(tid, argument_blob, environ))
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise  # debug mode's Ctrl-C (the IDE's stop button): the loop cancels the search
            outcome = job.TrialOutcome(
                tid, OutcomeKind.FAILED, error_type=str(type(exc)), error_text=traceback.format_exc()
            )
        finally:
            # When the result reached the client, on the client's clock: what decides whether
            # it came before a cancellation (the executor's clock is another machine's).
            self._completions.put(dataclasses.replace(outcome, received_at=time.monotonic()))

    # -- outcomes ---------------------------------------------------------------------------
    def _route(self, outcome: job.TrialOutcome) -> bool:
        """Send one outcome to its trial's way out; True when the search must stop."""
        if outcome.tid == _SERVER_GONE_TID:
            self._settle_grace_s = 0.0  # a dead server reports nothing more
            raise ClusterUnavailableError(
                f"{outcome.error_text}; fmin stopped. Every finished trial is kept in the "
                "trials object; the running ones are cancelled."
            )
        trial = self._running.get(outcome.tid)
        if trial is None:
            return False  # its trial has ended already
        self._end_trial(trial, TrialEnd.of(outcome))
        if outcome.kind is OutcomeKind.UNAVAILABLE:
            raise ClusterUnavailableError(
                "the Spark Connect server stopped answering during fmin "
                f"(trial {outcome.tid}); every finished trial is kept in the trials object. "
                f"Last error: {last_line(outcome.error_text)}"
            )
        if outcome.kind is OutcomeKind.MISMATCH:  # its objective never ran
            raise ClusterMismatchError(
                outcome.error_text or "the Spark workers cannot run this client's objectives"
            )
        if self._stop_rules.stop_after(trial):
            self._cancel(FMIN_CANCELLED_REASON_EARLY_STOPPING)
            return True
        return False

    def _end_trial(self, trial: dict[str, Any], end: TrialEnd) -> None:
        """The one way out of a trial, whatever ended it: record the outcome, relay what its
        objective logged, show it, tell the tracker, save. A trial ends once."""
        tid = trial["tid"]
        if self._running.pop(tid, None) is None:
            pending = [t for t in self._pending if t is not trial]
            if len(pending) == len(self._pending):
                return  # it has ended already
            self._pending = pending
        outcome = end.outcome
        if outcome is not None:
            self._show_worker_warnings(outcome)
            if outcome.relayed:
                self.tracker.objective_logged(trial, outcome.relayed)
        end.write_into(trial)
        if end.state == base.JOB_STATE_DONE:
            logger.debug("trial task %s succeeded, result is %s", tid, end.result)
            self._stop_rules.trial_done(trial)
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
        best_loss = self._stop_rules.best_loss
        if end.state != base.JOB_STATE_CANCEL:  # cancelled trials are not progress
            self.progress.trial_finished(best_loss, running=len(self._running), failed=self._n_failed)
        self.tracker.trial_finished(trial, best_loss)
        try:
            self.after_trial()
        except Exception as exc:  # noqa: BLE001 - a full disk must not end the search, nor its settling
            logger.warning("could not save the trials after trial %s: %s", tid, one_line(exc))

    def _show_worker_warnings(self, outcome: job.TrialOutcome) -> None:
        """Log what the objective warned about on its worker (MLflow's own warnings among
        them), once per fmin for each distinct message: otherwise it reaches only the
        executor's log, which users of a shared cluster rarely see."""
        for message in outcome.warnings:
            key = WARNING_VARIABLES.sub("#", message)  # the same warning names each trial's run id
            if key not in self._warnings_shown:
                self._warnings_shown.add(key)
                logger.warning("trial %s warned on its worker: %s", outcome.tid, redacted_text(message))

    # -- cancellation ----------------------------------------------------------------------
    def _cancel(self, reason: str) -> None:
        trials = self.trials
        if trials._fmin_cancelled:
            return
        trials._fmin_cancelled = True
        trials._fmin_cancelled_reason = reason
        logger.warning("fmin cancelled because of %s", reason)
        self._interrupt_running()
        logger.warning("fmin is cancelled, so new trials will not be launched.")

    def _interrupt_running(self) -> None:
        """Interrupt the running jobs through the fmin's tag (they end in ``_settle``)."""
        self._cancelled_at = min(self._cancelled_at, time.monotonic())
        logger.debug("Cancelling all running jobs of this fmin")
        # Also with no trial running: a trial thread may be about to submit its job.
        _call_bounded(self.executor.cancel_all, 2.0)

    def _settle(self) -> None:
        """End every trial still open: wait (bounded) for interrupted jobs to report, so that
        their errors and relayed logging are recorded; a result that reached the client
        before the cancellation counts."""
        deadline = time.monotonic() + self._settle_grace_s
        while self._running and time.monotonic() < deadline:
            try:
                outcome = self._completions.get(timeout=_remaining(deadline))
            except queue.Empty:
                break
            trial = self._running.get(outcome.tid)
            if trial is None:
                continue
            in_time = outcome.received_at is not None and outcome.received_at <= self._cancelled_at
            counts = in_time and outcome.kind in (OutcomeKind.RETURNED, OutcomeKind.RAISED)
            self._end_trial(trial, TrialEnd.of(outcome) if counts else TrialEnd.cancelled(outcome))
        for trial in [*self._running.values(), *self._pending]:
            self._end_trial(trial, TrialEnd.cancelled())
        self.trials.refresh()


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)


def _call_bounded(fn: Callable[[], Any], seconds: float) -> None:
    """Call ``fn`` in a helper thread and give up waiting after ``seconds``: a dead server
    must not hold up the cancellation of an fmin."""

    def call() -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            logger.warning("cancelling the fmin's Spark jobs failed: %s", one_line(exc))

    helper = threading.Thread(target=call, name="connect-trials-cancel", daemon=True)
    helper.start()
    helper.join(seconds)
