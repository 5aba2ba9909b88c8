"""The fmin loop: suggest on the client, keep at most ``parallelism`` trial jobs in flight.

Every trial job runs in a thread of its own (Spark Connect tags are thread-local) and posts
its outcome to one queue. The loop blocks on that queue, so a finished trial frees its
slot and the next suggestion is submitted at once: no polling. The same wait carries the
deadline of ``timeout`` (counted from the fmin call), and the watchdog's word that the
server is gone. Timeout, ``early_stop_fn`` and Ctrl-C cancel running jobs through the fmin's
tag, mark unfinished trials CANCEL and keep every finished result; ``loss_threshold`` only
stops suggesting, and the trials in flight finish (see ``stopping.py``).
Whether a late result counts is decided from the client's clock only: it counts when its
job had returned before the cancellation was issued.

Whatever ends a trial (it returned, raised, failed, was cancelled, never launched, or its
server went away) goes through one function, ``_end_trial``: it records the outcome, relays
the objective's MLflow logging, updates the progress, tells the tracker once and saves. The
loop only routes outcomes there.

A trial whose job was lost with its server or session (the server stopped answering, its
driver restarted, it dropped the operation of a client that slept) does not end: it goes back
to the front of the queue, and the search waits out the outage. Such a loss says nothing
against the objective (it may not even have started), so it is not one of the objective's
attempts (``MAX_OBJECTIVE_ATTEMPTS``, which count Spark's retries after a worker died); a
trial whose job was lost ``MAX_JOBS_LOST`` times ends ERROR and says so. Nothing is submitted while the
server does not answer; once it does, ``SessionRecovery`` goes on with the same session or a
new one, and the queue runs again. An outage that lasts ``reconnect_timeout`` fails fmin with
``ClusterUnavailableError``: finished trials are kept, the others end CANCEL.

Two states that many places read have one owner each: ``FminCancellation`` (cancelled? why?
since when? which late results count) and ``Outages`` (does the server answer? since when?).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
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
from connect_trials.cancellation import (
    FMIN_CANCELLED_REASON_EARLY_STOPPING,
    FMIN_CANCELLED_REASON_TIMEOUT,
    FMIN_CANCELLED_REASON_USER,
    FminCancellation,
)
from connect_trials.compat import ClusterMismatchError
from connect_trials.errors import ClusterUnavailableError, last_line, one_line
from connect_trials.job import OutcomeKind
from connect_trials.outage import Outages
from connect_trials.outputs import OutputBudget
from connect_trials.progress import TrialProgress
from connect_trials.reconnect import SessionRecovery
from connect_trials.session import SERVER_GONE_AFTER_S
from connect_trials.stopping import Stop, StopRules
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

_SIGNAL_SLICE_S = 0.5
# Jobs of one trial that may be lost with their server or session before the trial ends ERROR:
# bounds a trial whose own job brings its driver down (a huge result, say) every time.
MAX_JOBS_LOST = 3


class ServerNews(enum.Enum):
    """What the watchdog posts to the loop, beside the trials' outcomes."""

    REFUSED = "refused"  # the first refused connection of an outage
    ANSWERED = "answered"  # a connection accepted again after refusals
    GONE = "gone"  # refused for the whole reconnect_timeout


@dataclass(frozen=True)
class ServerEvent:
    news: ServerNews
    detail: str = ""


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
        self.executor = executor
        self.parallelism = parallelism
        self.limits = limits
        self.tracker = tracker
        self.progress = progress
        self.after_trial = after_trial  # e.g. append the trial to the trials_save_file
        # Connect sessions only: outages are waited out across server restarts (None: an
        # outage fails fmin).
        self.outages = None if recovery is None else Outages(recovery, reconnect_timeout, progress.note)
        self.cancellation = cancellation or FminCancellation(lambda reason: record_cancelled(trials, reason))
        self.cancellation.interrupt_jobs = executor.cancel_all
        self._jobs_lost: dict[int, int] = {}  # tid -> its jobs lost with their server or session
        self._n_failed = 0
        self._warnings_shown: set[str] = set()  # the workers' warnings, each logged once per fmin
        self._completions: queue.Queue[job.TrialOutcome | ServerEvent] = queue.Queue()
        self._running: dict[int, dict[str, Any]] = {}  # submitted, not yet ended
        self._n_suggested = 0
        # As hyperopt's FMinIter.exhaust: max_evals - len(trials), where len counts the NEW,
        # RUNNING and DONE trials (not ERROR nor CANCEL ones) as of the last refresh: documents
        # inserted since (generate_trials_to_calculate's seeds) come on top of max_evals.
        self._n_to_run = limits.max_evals - len(trials)
        trials.refresh()
        # Trials inserted NEW before fmin (hyperopt's way to seed a search:
        # generate_trials_to_calculate + insert_trial_docs) count in len(trials) and run
        # first, as SparkTrials' dispatcher runs every NEW trial it finds.
        self._pending: list[dict[str, Any]] = [  # NEW: seeded or suggested, not yet submitted
            t for t in trials._dynamic_trials if t["state"] == base.JOB_STATE_NEW
        ]
        self._exhausted = False
        self._stop_rules = StopRules(
            trials, [t for t in trials._dynamic_trials if t["state"] == base.JOB_STATE_DONE],
            limits.loss_threshold, limits.early_stop_fn,
        )  # fmt: skip
        self.outputs = OutputBudget(trials, output_kept_in)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while True:
                self._fill_slots()
                if self._deadline_passed():
                    self.cancellation.cancel(FMIN_CANCELLED_REASON_TIMEOUT)
                    break
                if not self._running and not (self._in_outage() and self._more_to_run()):
                    break
                item = self._next_item(self.limits.deadline)
                if item is None:
                    self.cancellation.cancel(FMIN_CANCELLED_REASON_TIMEOUT)
                    break
                if self._route(item):
                    break
        except KeyboardInterrupt:
            self.cancellation.cancel(FMIN_CANCELLED_REASON_USER)
            raise
        except BaseException as exc:
            # The server is gone, or the algorithm or early_stop_fn raised: nothing may run on
            # without its fmin.
            if isinstance(exc, ClusterUnavailableError):
                self.cancellation.server_gone()
            self.cancellation.interrupt()
            raise
        finally:
            self._settle()

    def _next_item(self, deadline: float | None) -> job.TrialOutcome | ServerEvent | None:
        """The next outcome or watchdog news, None at the deadline, or a ``ServerEvent`` of
        the loop's own once an outage is over. Returns the moment one arrives; the wait is
        cut into slices so that a Ctrl-C reaches the main thread even when the signal lands
        on another thread, and so that an outage is looked at every slice."""
        while True:
            if self._in_outage() and self._outage_over():
                return ServerEvent(ServerNews.ANSWERED, "recovered")
            remaining = _remaining(deadline)
            if remaining == 0.0:
                return None
            wait = _SIGNAL_SLICE_S if remaining is None else min(remaining, _SIGNAL_SLICE_S)
            try:
                return self._completions.get(timeout=wait)
            except queue.Empty:
                continue

    def server_gone(self, reason: str) -> None:
        """Called from any thread (the watchdog's) when the server is gone: ends the loop."""
        self._completions.put(ServerEvent(ServerNews.GONE, reason))

    def server_refused(self, detail: str) -> None:
        """Called from the watchdog's thread at the first refused connection of an outage."""
        self._completions.put(ServerEvent(ServerNews.REFUSED, detail))

    def server_answered(self) -> None:
        """Called from the watchdog's thread when the server accepts connections again."""
        self._completions.put(ServerEvent(ServerNews.ANSWERED))

    def _deadline_passed(self) -> bool:
        return self.limits.deadline is not None and time.monotonic() >= self.limits.deadline

    def _fill_slots(self) -> None:
        """Submit trials while slots are free; never once the fmin is cancelled or its
        deadline has passed (points that fail before launch would loop here otherwise)."""
        while len(self._running) < self.parallelism:
            if self.cancellation.cancelled or self._deadline_passed() or self._in_outage():
                return
            if not self._pending and not self._suggest():
                return
            self._submit(self._pending.pop(0))

    def _more_to_run(self) -> bool:
        return bool(self._pending) or (self._n_to_run > self._n_suggested and not self._exhausted)

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
        if self.outages is not None:
            self.outages.submitting(tid)
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
            if not (self.cancellation.cancelled or self._deadline_passed()):
                request = job.TrialRequest(tid, argument_blob, environ)
                outcome = self.executor.run_trial(request)
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
    def _route(self, item: job.TrialOutcome | ServerEvent) -> bool:
        """Send one outcome to its trial's way out; True when the search must stop."""
        if isinstance(item, ServerEvent):
            self._hear(item)
            return False
        outcome = item
        trial = self._running.get(outcome.tid)
        if trial is None:
            return False  # its trial has ended already
        if outcome.kind is OutcomeKind.UNAVAILABLE and self.outages is not None:
            self._lost(trial, outcome)
            return False
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
        stop = self._stop_rules.stop_after(trial)
        if stop is Stop.EARLY_STOP_FN:
            self.cancellation.cancel(FMIN_CANCELLED_REASON_EARLY_STOPPING)
            return True
        if stop is Stop.LOSS_THRESHOLD:
            # FMinIter leaves its loop and blocks until the trials in flight are done: they
            # (and any already suggested) run to their end, and no new one is suggested.
            self._exhausted = True
        return False

    # -- outages ----------------------------------------------------------------------------
    def _in_outage(self) -> bool:
        return self.outages is not None and self.outages.active

    def _outage_over(self) -> bool:
        assert self.outages is not None
        lost_again = sum(1 for t in self._pending if t["tid"] in self._jobs_lost)
        return self.outages.over(lost_again=lost_again, in_flight=len(self._running))

    def _hear(self, event: ServerEvent) -> None:
        if event.news is ServerNews.GONE:
            raise ClusterUnavailableError(
                f"{event.detail}; fmin stopped. Every finished trial is kept in the trials "
                "object; the ones that were running are cancelled."
            )
        if self.outages is None:
            return
        if event.news is ServerNews.REFUSED:
            self.outages.refused(event.detail, in_flight=len(self._running))
        elif event.news is ServerNews.ANSWERED:
            self.outages.answered()

    def _lost(self, trial: dict[str, Any], outcome: job.TrialOutcome) -> None:
        """A trial's job was lost with its server or session: it runs again once the server
        answers, unless its jobs were lost ``MAX_JOBS_LOST`` times."""
        tid = trial["tid"]
        lost = self._jobs_lost[tid] = self._jobs_lost.get(tid, 0) + 1
        if lost < MAX_JOBS_LOST:
            del self._running[tid]
            trial["state"] = base.JOB_STATE_NEW
            self._pending.insert(0, trial)
            logger.debug("trial task %s lost with its server, runs again: %s", tid,
                         last_line(outcome.error_text))  # fmt: skip
        else:
            self._end_trial(trial, TrialEnd.failed(
                outcome.error_type or "<class 'connect_trials.ClusterUnavailableError'>",
                f"this trial's job was lost {lost} times with its Spark Connect server or session (a "
                "restarted driver, a network outage, or a client silent for longer than the server "
                "keeps its operations), so it is not run again; its objective did not fail (it may "
                f"not even have started). Last loss:\n{outcome.error_text or ''}",
            ))  # fmt: skip
        assert self.outages is not None
        self.outages.job_lost(tid, outcome.error_text, in_flight=len(self._running))

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
            self.after_trial(trial)
        except Exception as exc:  # noqa: BLE001 - a full disk must not end the search, nor its settling
            logger.warning("could not save the trials after trial %s: %s", tid, one_line(exc))
        self.outputs.hold(trial)  # after the save: the file keeps what leaves memory

    def _show_worker_warnings(self, outcome: job.TrialOutcome) -> None:
        """Log what the objective warned about on its worker (MLflow's own warnings among
        them), once per fmin for each distinct message: otherwise it reaches only the
        executor's log, which users of a shared cluster rarely see."""
        for message in outcome.warnings:
            key = WARNING_VARIABLES.sub("#", message)  # the same warning names each trial's run id
            if key not in self._warnings_shown:
                self._warnings_shown.add(key)
                logger.warning("trial %s warned on its worker: %s", outcome.tid, redacted_text(message))

    # -- the end ---------------------------------------------------------------------------
    def _settle(self) -> None:
        """End every trial still open: wait (bounded) for interrupted jobs to report, so that
        their errors and relayed logging are recorded; a result that reached the client
        before the cancellation counts."""
        deadline = self.cancellation.settle_deadline()
        while self._running:
            left = _remaining(deadline)
            try:
                # With no grace left (a server declared gone reports nothing more), what has
                # reached the client already is still read: no result it holds is dropped.
                outcome = self._completions.get(timeout=left) if left else self._completions.get_nowait()
            except queue.Empty:
                break
            if isinstance(outcome, ServerEvent):
                continue
            trial = self._running.get(outcome.tid)
            if trial is None:
                continue
            counts = self.cancellation.counts(outcome)
            self._end_trial(trial, TrialEnd.of(outcome) if counts else TrialEnd.cancelled(outcome))
        for trial in [*self._running.values(), *self._pending]:
            self._end_trial(trial, TrialEnd.cancelled())
        self.trials.refresh()


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)


def record_cancelled(trials: Any, reason: str) -> None:
    """Where hyperopt's SparkTrials keeps a cancellation: scripts read
    ``trials.fmin_cancelled_reason``."""
    trials._fmin_cancelled = True
    trials._fmin_cancelled_reason = reason
