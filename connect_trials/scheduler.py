"""The fmin loop: suggest on the client, keep at most ``parallelism`` trial jobs in flight.

Every trial job runs in a thread of its own (Spark Connect tags are thread-local) and posts
its outcome to one queue. The loop blocks on that queue, so a finished trial frees its
slot and the next suggestion is submitted at once: no polling. The same wait carries the
deadline of ``timeout`` (counted from the fmin call), and the watchdog's word that the
server is gone. Timeout, ``loss_threshold``, ``early_stop_fn`` and Ctrl-C cancel running
jobs through the fmin's tag, mark unfinished trials CANCEL and keep every finished result.
Whether a late result counts is decided from the client's clock only: it counts when its
job had returned before the cancellation was issued.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hyperopt import base, pyll
from hyperopt.utils import coarse_utcnow
from pyspark import cloudpickle

from connect_trials import job
from connect_trials.compat import ClusterMismatchError
from connect_trials.errors import ClusterUnavailableError, last_line, one_line
from connect_trials.job import OutcomeKind
from connect_trials.progress import TrialProgress
from connect_trials.tracking import FminTracker

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
    timeout: float | None = None
    loss_threshold: float | None = None
    early_stop_fn: Callable[..., Any] | None = None
    max_queue_len: int = 1
    # time.monotonic() at which ``timeout`` ends, when fmin started counting before the loop.
    deadline: float | None = None

    def deadline_from(self, now: float) -> float | None:
        if self.deadline is not None:
            return self.deadline
        return None if self.timeout is None else now + self.timeout


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
        self._running: dict[int, dict[str, Any]] = {}
        self._n_suggested = 0
        # As in hyperopt, max_evals counts the valid trials already in the trials object.
        trials.refresh()
        self._n_to_run = limits.max_evals - len(trials.trials)
        self._exhausted = False
        self._early_stop_args: list[Any] = []
        # Finished trials in the order they finished: what early_stop_fn sees (see _should_stop).
        self._finished = [t for t in trials._dynamic_trials if t["state"] == base.JOB_STATE_DONE]
        self._cancelled_at = math.inf  # time.monotonic() when the first cancellation was issued
        self._deadline: float | None = None
        self._settle_grace_s = _CANCEL_GRACE_S
        self.best_loss = min((_ok_loss(t) for t in self._finished), default=math.inf)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        self._deadline = self.limits.deadline_from(time.monotonic())
        try:
            while True:
                self._fill_slots()
                if self._deadline_passed():
                    self._cancel(FMIN_CANCELLED_REASON_TIMEOUT)
                    break
                if not self._running:
                    break
                outcome = self._next_outcome(self._deadline)
                if outcome is None:
                    self._cancel(FMIN_CANCELLED_REASON_TIMEOUT)
                    break
                if self._handle(outcome):
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
            self._settle_cancelled()

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
        return self._deadline is not None and time.monotonic() >= self._deadline

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
        self.trials.refresh()
        # insert_trial_docs stores copies: work on the stored documents.
        self._pending.extend(self.trials._dynamic_trials[-len(docs) :])
        self._n_suggested += len(docs)
        return True

    def _submit(self, trial: dict[str, Any]) -> None:
        tid = trial["tid"]
        # Running from here on, before anything that can block or be interrupted (resolving
        # the point, the tracker waiting for its child run): a Ctrl-C now cancels the trial
        # instead of orphaning it.
        self._running[tid] = trial
        now = coarse_utcnow()
        trial["state"] = base.JOB_STATE_RUNNING
        trial["book_time"] = now
        trial["refresh_time"] = now
        logger.debug("trial task %s started", tid)
        try:
            try:
                argument = self._argument_of(trial)
                argument_blob = cloudpickle.dumps(argument)
            except Exception as exc:  # noqa: BLE001 - a bad point fails its trial, not the search
                self._running.pop(tid)
                self._finish_error(trial, str(type(exc)), traceback.format_exc())
                return
            environ = self.tracker.trial_started(trial, argument)
        except BaseException:
            self._finish_unlaunched(trial)  # no job was started for it; the loop unwinds
            raise
        if self.trials._fmin_cancelled or self._deadline_passed():
            self._finish_unlaunched(trial)  # the tracking outlasted the fmin: launch nothing
            return
        request = job.TrialRequest(tid, argument_blob, environ)
        if self.executor.runs_in_caller:
            # Debug mode: the objective runs here, in fmin's own thread, where an IDE's
            # breakpoints and pdb's prompt work; one trial at a time.
            self._run_in_thread(request)
            return
        thread = threading.Thread(
            target=self._run_in_thread, args=(request,), name=f"connect-trials-trial-{tid}", daemon=True
        )
        thread.start()

    def _argument_of(self, trial: dict[str, Any]) -> Any:
        return argument_of(self.domain, trial)

    def _run_in_thread(self, request: job.TrialRequest) -> None:
        try:
            outcome = self.executor.run_trial(request)
        except BaseException as exc:  # noqa: BLE001 - the loop must always hear back
            outcome = job.TrialOutcome(
                request.tid, OutcomeKind.FAILED, error_type=str(type(exc)), error_text=traceback.format_exc()
            )
        # When the result reached the client, on the client's clock: what decides whether
        # it came before a cancellation (the executor's clock is another machine's).
        self._completions.put(dataclasses.replace(outcome, received_at=time.monotonic()))

    def _finish_unlaunched(self, trial: dict[str, Any]) -> None:
        self._running.pop(trial["tid"], None)
        logger.debug("trial task %s cancelled before its job was submitted", trial["tid"])
        trial["state"] = base.JOB_STATE_CANCEL
        trial["refresh_time"] = coarse_utcnow()
        self.tracker.trial_finished(trial, self.best_loss)

    # -- outcomes ---------------------------------------------------------------------------
    def _handle(self, outcome: job.TrialOutcome) -> bool:
        """Record one outcome; True when the search must stop."""
        if outcome.tid == _SERVER_GONE_TID:
            self._settle_grace_s = 0.0  # a dead server reports nothing more
            raise ClusterUnavailableError(
                f"{outcome.error_text}; fmin stopped. Every finished trial is kept in the "
                "trials object; the running ones are cancelled."
            )
        trial = self._running.pop(outcome.tid)
        self._show_worker_warnings(outcome)
        if outcome.relayed:
            self.tracker.objective_logged(trial, outcome.relayed)
        if outcome.kind == OutcomeKind.UNAVAILABLE:
            self._finish_cancelled(trial, outcome)
            raise ClusterUnavailableError(
                "the Spark Connect server stopped answering during fmin "
                f"(trial {outcome.tid}); every finished trial is kept in the trials object. "
                f"Last error: {last_line(outcome.error_text)}"
            )
        if outcome.kind == OutcomeKind.MISMATCH:
            self._finish_cancelled(trial, outcome)  # its objective never ran
            raise ClusterMismatchError(
                outcome.error_text or "the Spark workers cannot run this client's objectives"
            )
        if outcome.kind == OutcomeKind.CANCELLED:
            self._finish_cancelled(trial, outcome)
        elif outcome.kind == OutcomeKind.RETURNED:
            try:
                result = _validated_result(outcome.value)
            except Exception as exc:  # noqa: BLE001 - hyperopt's own rules for results
                self._finish_error(trial, str(type(exc)), traceback.format_exc(), outcome)
            else:
                self._finish_done(trial, result, outcome)
        else:
            self._finish_error(trial, outcome.error_type or "", outcome.error_text or "", outcome)
        return self._should_stop(trial)

    def _handle_late(self, outcome: job.TrialOutcome) -> None:
        trial = self._running.pop(outcome.tid)
        if outcome.relayed:
            self.tracker.objective_logged(trial, outcome.relayed)
        try:
            result = _validated_result(outcome.value)
        except Exception:  # noqa: BLE001
            self._finish_cancelled(trial, outcome)
        else:
            self._finish_done(trial, result, outcome)

    def _finish_done(self, trial: dict[str, Any], result: dict[str, Any], outcome: job.TrialOutcome) -> None:
        tid = trial["tid"]
        logger.debug("trial task %s succeeded, result is %s", tid, result)
        trial["state"] = base.JOB_STATE_DONE
        trial["result"] = result
        _stamp(trial, outcome)
        self.trials.refresh()
        self._finished.append(trial)
        logger.debug("trial %s task thread exits normally and writes results back correctly.", tid)
        self.best_loss = min(self.best_loss, _ok_loss(trial))
        self._trial_ended(trial)

    def _finish_error(
        self, trial: dict[str, Any], error_type: str, error_text: str, outcome: job.TrialOutcome | None = None
    ) -> None:
        tid = trial["tid"]
        logger.error(
            "trial task %s failed, exception is %s.\n %s%s",
            tid,
            _failure_summary(error_type, error_text),
            error_text,
            _output_excerpt(outcome.output if outcome is not None else None),
        )
        trial["state"] = base.JOB_STATE_ERROR
        trial["misc"]["error"] = (error_type, error_text)
        _stamp(trial, outcome)
        self.trials.refresh()
        logger.debug("trial %s task thread catches an exception and writes the info back correctly.", tid)
        self._n_failed += 1
        self._trial_ended(trial)

    def _trial_ended(self, trial: dict[str, Any]) -> None:
        """A trial is DONE or ERROR: show it, track it, and let the fmin save its trials."""
        self.progress.trial_finished(self.best_loss, running=len(self._running), failed=self._n_failed)
        self.tracker.trial_finished(trial, self.best_loss)
        self.after_trial()

    def _show_worker_warnings(self, outcome: job.TrialOutcome) -> None:
        """Log what the objective warned about on its worker (MLflow's own warnings among
        them), once per fmin for each distinct message: otherwise it reaches only the
        executor's log, which users of a shared cluster rarely see."""
        for message in outcome.warnings:
            key = _WARNING_VARIABLES.sub("#", message)  # the same warning names each trial's run id
            if key not in self._warnings_shown:
                self._warnings_shown.add(key)
                logger.warning("trial %s warned on its worker: %s", outcome.tid, message)

    def _finish_cancelled(self, trial: dict[str, Any], outcome: job.TrialOutcome) -> None:
        tid = trial["tid"]
        logger.debug("trial task %s cancelled, exception is %s", tid, last_line(outcome.error_text))
        trial["state"] = base.JOB_STATE_CANCEL
        trial["misc"]["error"] = (outcome.error_type or "", outcome.error_text or "")
        _stamp(trial, outcome)
        logger.debug("trial %s task thread catches an exception and writes the info back correctly.", tid)
        self.tracker.trial_finished(trial, self.best_loss)

    def _should_stop(self, trial: dict[str, Any]) -> bool:
        threshold = self.limits.loss_threshold
        if threshold is not None and self.best_loss < threshold:
            logger.info("fmin reached the loss threshold (%s < %s).", self.best_loss, threshold)
            self._cancel(FMIN_CANCELLED_REASON_EARLY_STOPPING)
            return True
        succeeded = trial["state"] == base.JOB_STATE_DONE and trial["result"].get("status") == base.STATUS_OK
        if self.limits.early_stop_fn is not None and succeeded:
            # As upstream, after each successful trial. The function sees the finished trials
            # in the order they finished, as in a serial fmin: hyperopt's no_progress_loss
            # reads the last trial's loss, which would be a running trial's in self.trials.
            stop, args = self.limits.early_stop_fn(self._finished_trials(), *self._early_stop_args)
            self._early_stop_args = list(args)
            if stop:
                self._cancel(FMIN_CANCELLED_REASON_EARLY_STOPPING)
                return True
        return False

    def _finished_trials(self) -> base.Trials:
        view = base.Trials()
        view._dynamic_trials = list(self._finished)
        view.refresh()
        return view

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
        """Interrupt the running jobs through the fmin's tag; mark unfinished trials CANCEL."""
        self._cancelled_at = min(self._cancelled_at, time.monotonic())
        logger.debug("Cancelling all running jobs of this fmin")
        # Also with no trial running: a trial thread may be about to submit its job.
        _call_bounded(self.executor.cancel_all, 2.0)
        now = coarse_utcnow()
        for trial in list(self._running.values()) + self._pending:
            trial["state"] = base.JOB_STATE_CANCEL
            trial["refresh_time"] = now
        self._pending.clear()

    def _settle_cancelled(self) -> None:
        """Wait (bounded) for interrupted jobs to report, so their errors are recorded."""
        deadline = time.monotonic() + self._settle_grace_s
        while self._running and time.monotonic() < deadline:
            try:
                outcome = self._completions.get(timeout=_remaining(deadline))
            except queue.Empty:
                break
            trial = self._running.pop(outcome.tid, None)
            if trial is None:
                continue
            finished_in_time = outcome.received_at is not None and outcome.received_at <= self._cancelled_at
            if outcome.kind == OutcomeKind.RETURNED and finished_in_time:
                # It finished before the cancellation and only reported after: keep it.
                self._running[outcome.tid] = trial
                self._handle_late(outcome)
            else:
                self._finish_cancelled(trial, outcome)
        for trial in self._running.values():
            logger.debug("trial task %s cancelled, its job did not report back in time", trial["tid"])
            trial["state"] = base.JOB_STATE_CANCEL
            self.tracker.trial_finished(trial, self.best_loss)
        self._running.clear()
        for trial in self._pending:
            trial["state"] = base.JOB_STATE_CANCEL
        self._pending.clear()
        self.trials.refresh()


def argument_of(domain: base.Domain, trial: dict[str, Any]) -> Any:
    """The value the objective receives for ``trial``, resolved on the client so that workers
    need no hyperopt."""
    spec = base.spec_from_misc(trial["misc"])
    memo = domain.memo_from_config(spec)
    return pyll.rec_eval(domain.expr, memo=memo, print_node_on_error=False)


def _validated_result(value: Any) -> dict[str, Any]:
    """hyperopt's rules for what an objective may return (``Domain.evaluate``)."""
    import numbers

    from hyperopt.exceptions import InvalidLoss, InvalidResultStatus

    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        return {"loss": float(value), "status": base.STATUS_OK}  # type: ignore[arg-type]
    result = dict(value)
    if result.get("status") not in base.STATUS_STRINGS:
        raise InvalidResultStatus(result)
    if result["status"] == base.STATUS_OK:
        try:
            result["loss"] = float(result["loss"])
        except (TypeError, KeyError) as exc:
            raise InvalidLoss(result) from exc
    return result


def _ok_loss(trial: dict[str, Any]) -> float:
    """The trial's loss if it counts towards the best one (status ok, not NaN), else inf."""
    result = trial["result"]
    loss = result.get("loss")
    if result.get("status") != base.STATUS_OK or loss is None or math.isnan(loss):
        return math.inf
    return float(loss)


def _stamp(trial: dict[str, Any], outcome: job.TrialOutcome | None) -> None:
    trial["refresh_time"] = coarse_utcnow()
    if outcome is not None and outcome.started_at is not None:
        trial["misc"]["connect_trials"] = {
            "started_at": outcome.started_at,
            "finished_at": outcome.finished_at,
            "attempt": outcome.attempt,
        }
    if outcome is not None and outcome.output is not None:
        trial["misc"]["output"] = outcome.output


# What differs between two trials' copies of one warning: run ids and other hex ids, numbers.
_WARNING_VARIABLES = re.compile(r"\b[0-9a-f]{16,}\b|\d+(\.\d+)?")

# Lines of a failed trial's output shown after its traceback in the log.
_OUTPUT_EXCERPT_LINES = 20


def _output_excerpt(output: str | None) -> str:
    """The last lines the failed trial printed, for its log line ('' if it printed nothing)."""
    lines = (output or "").rstrip().splitlines()[-_OUTPUT_EXCERPT_LINES:]
    if not lines:
        return ""
    return "\n Last lines of its output:\n" + "\n".join(f"   {line}" for line in lines)


def _failure_summary(error_type: str, error_text: str) -> str:
    """``Type: message`` of a failure, e.g. ``TypeError: bad operand``, for one log line."""
    name = error_type.removeprefix("<class '").removesuffix("'>").rsplit(".", 1)[-1]
    message = _failure_message(error_text)
    qualified, colon, rest = message.partition(":")
    if colon and qualified.rsplit(".", 1)[-1] == name:
        return f"{name}:{rest}"
    return f"{name}: {message}" if message else name


def _failure_message(text: str) -> str:
    """The exception's own line of a Python traceback (the last block's first unindented
    line: what follows may be a JVM stack trace), else the text's first line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    if not lines[0].startswith("Traceback (most recent call last)"):
        return lines[0].strip()
    message, in_traceback = lines[-1].strip(), False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and not line[0].isspace():
            message, in_traceback = line.strip(), False
    return message


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
