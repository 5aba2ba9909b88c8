"""The engine's loop: keep at most ``parallelism`` trial jobs in flight, for any search.

A search (hyperopt's fmin, see ``scheduler.py``) is a :class:`SearchFrontEnd`: it hands the
loop one trial at a time (an id and its pickled argument, :class:`TrialToRun`) and hears back
how each ended (:class:`Ending`). The loop knows nothing else of it: no documents, no
algorithm, no losses.

Every trial job runs in a thread of its own (Spark Connect tags are thread-local) and posts
its outcome to one queue. The loop blocks on that queue, so a finished trial frees its slot
and the next trial is asked for at once: no polling. The same wait carries the deadline
(``timeout``, counted from the fmin call), and the watchdog's news of the server.

Whatever ends a trial (it returned, raised, failed, was cancelled, never launched, or its
server went away) leaves through one function, ``_end``, which tells the front end once.

A trial whose job was lost with its server or session (the server stopped answering, its
driver restarted, it dropped the operation of a client that slept) does not end: it goes back
to the front of the queue, and the search waits out the outage. Such a loss says nothing
against the objective (it may not even have started), so it is not one of the objective's
attempts (``MAX_OBJECTIVE_ATTEMPTS``, which count Spark's retries after a worker died); a
trial whose job was lost ``MAX_JOBS_LOST`` times ends ERROR and says so. Nothing is submitted
while the server does not answer; once it does, ``SessionRecovery`` goes on with the same
session or a new one, and the queue runs again. An outage that lasts ``reconnect_timeout``
fails the search with ``ClusterUnavailableError``: finished trials are kept, the others end
cancelled.

Two states that many places read have one owner each: ``FminCancellation`` (cancelled? why?
since when? which late results count) and ``Outages`` (does the server answer? since when?).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import queue
import re
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Protocol

from connect_trials import job
from connect_trials.cancellation import (
    FMIN_CANCELLED_REASON_TIMEOUT,
    FMIN_CANCELLED_REASON_USER,
    FminCancellation,
)
from connect_trials.compat import ClusterMismatchError
from connect_trials.errors import ClusterUnavailableError, last_line
from connect_trials.job import OutcomeKind
from connect_trials.outage import Outages
from connect_trials.tracking.uris import redacted_text

logger = logging.getLogger("connect_trials")

_SIGNAL_SLICE_S = 0.5
# Jobs of one trial that may be lost with their server or session before the trial ends ERROR:
# bounds a trial whose own job brings its driver down (a huge result, say) every time.
MAX_JOBS_LOST = 3
_LOST_TYPE = "<class 'connect_trials.ClusterUnavailableError'>"
# What differs between two trials' copies of one warning: run ids and other hex ids, numbers.
_WARNING_VARIABLES = re.compile(r"\b[0-9a-f]{16,}\b|\d+(\.\d+)?")


@dataclass(frozen=True)
class TrialToRun:
    """One trial as the engine sees it. ``failure`` (type, text): it cannot run (its argument
    did not pickle), and ends at once."""

    tid: int
    argument_blob: bytes = b""
    failure: tuple[str, str] | None = None


@dataclass(frozen=True)
class Ending:
    """How a trial ended, for its front end: ``outcome`` is what its job answered (if it
    answered); ``cancelled``: the search was cancelled before that counted; ``failure``
    (type, text): it failed on the client's side (before launch, or lost too often)."""

    outcome: job.TrialOutcome | None = None
    cancelled: bool = False
    failure: tuple[str, str] | None = None


class SearchFrontEnd(Protocol):
    """What the loop asks of a search."""

    def next_trial(self) -> TrialToRun | None:
        """The next trial to run, now that a slot is free; None: none (more) for now."""
        ...

    def more_to_come(self) -> bool:
        """Whether ``next_trial`` may still give a trial."""
        ...

    def trial_started(self, tid: int) -> dict[str, str]:
        """In the trial's own thread, before its job: its tracking; the job's environment."""
        ...

    def trial_requeued(self, tid: int) -> None:
        """Its job was lost with its server: it waits to run again."""
        ...

    def trial_ended(self, tid: int, ending: Ending, in_flight: int) -> None:
        """Once per trial, from the loop's thread. The front end may cancel the search here
        (``FminCancellation.cancel``), which ends the loop; not once the loop is settling."""
        ...

    def withdraw(self) -> list[int]:
        """The search is over: the trials it holds that the loop never got, to end cancelled."""
        ...


class ServerNews(enum.Enum):
    """What the watchdog posts to the loop, beside the trials' outcomes."""

    REFUSED = "refused"  # the first refused connection of an outage
    ANSWERED = "answered"  # a connection accepted again after refusals
    GONE = "gone"  # refused for the whole reconnect_timeout


@dataclass(frozen=True)
class ServerEvent:
    news: ServerNews
    detail: str = ""


class TrialLoop:
    """Runs one search's trials on a :class:`job.TrialExecutor`."""

    def __init__(self, front: SearchFrontEnd, executor: job.TrialExecutor, parallelism: int,
                 deadline: float | None, cancellation: FminCancellation,
                 outages: Outages | None = None) -> None:  # fmt: skip
        self.front = front
        self.executor = executor
        self.parallelism = parallelism
        self.deadline = deadline  # time.monotonic() at which the search's timeout ends
        self.cancellation = cancellation
        self.cancellation.bind(executor.cancel_all)
        self.outages = outages  # Connect sessions only (None: an outage fails the search)
        self._completions: queue.Queue[job.TrialOutcome | ServerEvent] = queue.Queue()
        self._running: dict[int, TrialToRun] = {}  # submitted, not yet ended
        self._requeued: list[TrialToRun] = []  # lost with their server: they run again first
        self._jobs_lost: dict[int, int] = {}  # tid -> its jobs lost with their server or session
        self._warnings_shown: set[str] = set()  # the workers' warnings, each logged once
        self.settling = False  # the search is over: what ends now ends it no further

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while True:
                self._fill_slots()
                if self._deadline_passed():
                    self.cancellation.cancel(FMIN_CANCELLED_REASON_TIMEOUT)
                    break
                if self.cancellation.cancelled:
                    break
                if not self._running and not (self._in_outage() and self._more_to_run()):
                    break
                item = self._next_item()
                if item is None:
                    self.cancellation.cancel(FMIN_CANCELLED_REASON_TIMEOUT)
                    break
                self._route(item)
        except KeyboardInterrupt:
            self.cancellation.cancel(FMIN_CANCELLED_REASON_USER)
            raise
        except BaseException as exc:
            # The server is gone, or the search's own code raised: nothing may run on without it.
            if isinstance(exc, ClusterUnavailableError):
                self.cancellation.server_gone()
            self.cancellation.interrupt()
            raise
        finally:
            self._settle()

    def _next_item(self) -> job.TrialOutcome | ServerEvent | None:
        """The next outcome or watchdog news, None at the deadline, or a ``ServerEvent`` of
        the loop's own once an outage is over. Returns the moment one arrives; the wait is
        cut into slices so that a Ctrl-C reaches the main thread even when the signal lands
        on another thread, and so that an outage is looked at every slice."""
        while True:
            if self._in_outage() and self._outage_over():
                return ServerEvent(ServerNews.ANSWERED, "recovered")
            remaining = _remaining(self.deadline)
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
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _fill_slots(self) -> None:
        """Submit trials while slots are free; never once the search is cancelled or its
        deadline has passed (points that fail before launch would loop here otherwise)."""
        while len(self._running) < self.parallelism:
            if self.cancellation.cancelled or self._deadline_passed() or self._in_outage():
                return
            trial = self._requeued.pop(0) if self._requeued else self.front.next_trial()
            if trial is None:
                return
            self._submit(trial)

    def _more_to_run(self) -> bool:
        return bool(self._requeued) or self.front.more_to_come()

    def _submit(self, trial: TrialToRun) -> None:
        self._running[trial.tid] = trial
        logger.debug("trial task %s started", trial.tid)
        if trial.failure is not None:  # a bad point fails its trial, not the search
            self._end(trial.tid, Ending(failure=trial.failure))
            return
        if self.executor.runs_in_caller:
            # Debug mode: the objective runs here, in fmin's own thread, where an IDE's
            # breakpoints and pdb's prompt work; one trial at a time.
            self._run_trial(trial)
            return
        if self.outages is not None:
            self.outages.submitting(trial.tid)
        thread = threading.Thread(
            target=self._run_trial, args=(trial,), name=f"connect-trials-trial-{trial.tid}", daemon=True
        )
        thread.start()

    def _run_trial(self, trial: TrialToRun) -> None:
        """In the trial's own thread (fmin's in debug mode): its tracking, then its job. The
        loop always hears back, also when a Ctrl-C in debug mode unwinds through here."""
        tid = trial.tid
        outcome = job.not_submitted(tid)
        try:
            environ = self.front.trial_started(tid)
            # The tracking may have outlasted the search: then nothing is launched.
            if not (self.cancellation.cancelled or self._deadline_passed()):
                outcome = self.executor.run_trial(job.TrialRequest(tid, trial.argument_blob, environ))
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
    def _route(self, item: job.TrialOutcome | ServerEvent) -> None:
        """Send one outcome to its trial's way out."""
        if isinstance(item, ServerEvent):
            self._hear(item)
            return
        outcome = item
        if outcome.tid not in self._running:
            return  # its trial has ended already
        if outcome.kind is OutcomeKind.UNAVAILABLE and self.outages is not None:
            self._lost(outcome)
            return
        self._end(outcome.tid, Ending(outcome))
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

    def _end(self, tid: int, ending: Ending) -> bool:
        """The one way out of a trial the loop holds, whatever ended it. A trial ends once:
        False when the loop does not hold it (it ended already, or was never handed over)."""
        if self._running.pop(tid, None) is None:
            requeued = [t for t in self._requeued if t.tid != tid]
            if len(requeued) == len(self._requeued):
                return False
            self._requeued = requeued
        if ending.outcome is not None:
            self._show_worker_warnings(ending.outcome)
        self.front.trial_ended(tid, ending, in_flight=len(self._running))
        return True

    def _show_worker_warnings(self, outcome: job.TrialOutcome) -> None:
        """Log what the objective warned about on its worker (MLflow's own warnings among
        them), once per search for each distinct message: otherwise it reaches only the
        executor's log, which users of a shared cluster rarely see."""
        for message in outcome.warnings:
            key = _WARNING_VARIABLES.sub("#", message)  # the same warning names each trial's run id
            if key not in self._warnings_shown:
                self._warnings_shown.add(key)
                logger.warning("trial %s warned on its worker: %s", outcome.tid, redacted_text(message))

    # -- outages ----------------------------------------------------------------------------
    def _in_outage(self) -> bool:
        return self.outages is not None and self.outages.active

    def _outage_over(self) -> bool:
        assert self.outages is not None
        return self.outages.over(lost_again=len(self._requeued), in_flight=len(self._running))

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

    def _lost(self, outcome: job.TrialOutcome) -> None:
        """A trial's job was lost with its server or session: it runs again once the server
        answers, unless its jobs were lost ``MAX_JOBS_LOST`` times."""
        tid = outcome.tid
        lost = self._jobs_lost[tid] = self._jobs_lost.get(tid, 0) + 1
        if lost < MAX_JOBS_LOST:
            self._requeued.insert(0, self._running.pop(tid))
            self.front.trial_requeued(tid)
            logger.debug("trial task %s lost with its server, runs again: %s", tid,
                         last_line(outcome.error_text))  # fmt: skip
        else:
            self._end(tid, Ending(outcome, failure=(
                outcome.error_type or _LOST_TYPE,
                f"this trial's job was lost {lost} times with its Spark Connect server or session (a "
                "restarted driver, a network outage, or a client silent for longer than the server "
                "keeps its operations), so it is not run again; its objective did not fail (it may "
                f"not even have started). Last loss:\n{outcome.error_text or ''}",
            )))  # fmt: skip
        assert self.outages is not None
        self.outages.job_lost(tid, outcome.error_text, in_flight=len(self._running))

    # -- the end ---------------------------------------------------------------------------
    def _settle(self) -> None:
        """End every trial still open: wait (bounded) for interrupted jobs to report, so that
        their errors and relayed logging are recorded; a result that reached the client
        before the cancellation counts. Whatever interrupts this (a second Ctrl-C, a front
        end that raises), every trial still ends, and the first such error is raised after."""
        self.settling = True
        interrupted: BaseException | None = None
        try:
            self._collect_late_outcomes()
        except BaseException as exc:  # noqa: BLE001 - raised once every trial has ended
            interrupted = exc
        for tid in [*self._running, *(t.tid for t in self._requeued), *self.front.withdraw()]:
            try:
                if not self._end(tid, Ending(cancelled=True)):  # the front end's own, never handed over
                    self.front.trial_ended(tid, Ending(cancelled=True), in_flight=len(self._running))
            except BaseException as exc:  # noqa: BLE001 - the next trial still ends
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted

    def _collect_late_outcomes(self) -> None:
        deadline = self.cancellation.settle_deadline()
        while self._running:
            left = _remaining(deadline)
            try:
                # With no grace left (a server declared gone reports nothing more), what has
                # reached the client already is still read: no result it holds is dropped.
                outcome = self._completions.get(timeout=left) if left else self._completions.get_nowait()
            except queue.Empty:
                return
            if isinstance(outcome, ServerEvent) or outcome.tid not in self._running:
                continue
            self._end(outcome.tid, Ending(outcome, cancelled=not self.cancellation.counts(outcome)))


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)
