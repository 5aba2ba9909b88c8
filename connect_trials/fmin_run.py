"""One fmin call on a ``ConnectTrials``, from its checked arguments to its last trial.

The order matters and is kept here only: the tracking opens first (the fmin's worker
environment comes from it), then the objective ships with that environment, then the
scheduler runs the trials, under a watchdog that tells a dead server from a slow one. On a
Spark Connect session the trials run through a ``SessionRecovery``, which takes the search to
a new session if the server restarts. On the way out, whatever happened, the tracker ends
every run it created and the counts are logged.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from hyperopt import base

from connect_trials import job, resume
from connect_trials.arguments import FminCall
from connect_trials.cancellation import FMIN_CANCELLED_REASON_USER, FminCancellation
from connect_trials.errors import one_line
from connect_trials.inline import InlineExecutor
from connect_trials.progress import trial_progress
from connect_trials.reconnect import SessionRecovery
from connect_trials.scheduler import SearchLimits, TrialScheduler, record_cancelled
from connect_trials.session import CONNECT, ServerWatch, session_kind, watched
from connect_trials.tracking import FminSettings, FminTracker, create_tracker

logger = logging.getLogger("connect_trials")


class FminRun:
    """Runs one fmin's trials on ``trials`` (a ``ConnectTrials``)."""

    def __init__(self, trials: Any, call: FminCall, objective_blob: bytes, domain: base.Domain,
                 space: Any, early_stop_fn: Callable[..., Any] | None, progress_callback: Any,
                 trials_save_file: str) -> None:  # fmt: skip
        self.trials = trials
        self.call = call
        self.objective_blob = objective_blob
        self.domain = domain
        self.progress_callback = progress_callback
        self.trials_save_file = trials_save_file
        self.settings = FminSettings(
            fmin_id=uuid.uuid4().hex,
            max_evals=None if call.unlimited else call.max_evals,
            parallelism=trials.parallelism,
            user_specified_parallelism=trials.user_specified_parallelism,
            timeout=trials.timeout,
            algo=call.algo,
            max_queue_len=call.max_queue_len,
            space=space,
            objective_name=str(getattr(domain.fn, "__name__", "") or ""),
            resume_run_id=trials._resume_parent_run_id,
            resume_fmin_uuid=getattr(trials, "_resume_fmin_uuid", None),  # None in older save files
        )
        self.limits = SearchLimits(
            max_evals=call.max_evals,
            loss_threshold=call.loss_threshold,
            early_stop_fn=early_stop_fn,
            max_queue_len=call.max_queue_len,
            deadline=None if trials.timeout is None else call.called_at + trials.timeout,
        )
        self.scheduler: TrialScheduler | None = None
        self.cancellation = FminCancellation(lambda reason: record_cancelled(trials, reason))
        self.journal: resume.SaveJournal | None = None

    def run(self, spark: Any) -> None:
        trials = self.trials
        tracker = create_tracker(spark, trials.mlflow_tracking)
        error: BaseException | None = None
        try:
            # A watchdog tells a dead server from a slow one, from the objective's upload to
            # the last trial; the session's retry policies are left as they were found.
            watch = watched(
                spark, self._server_gone, gone_after=trials.reconnect_timeout,
                on_refused=self._server_refused, on_answered=self._server_answered,
            )  # fmt: skip
            with contextlib.nullcontext() if trials.debug else watch:
                self._start_and_run(spark, tracker, watch)
        except BaseException as exc:
            error = exc
            if isinstance(exc, KeyboardInterrupt):  # also before the trials' loop began
                self.cancellation.cancel(FMIN_CANCELLED_REASON_USER)
            raise
        finally:
            tracker.fmin_finished(trials, error)
            logger.info(
                f"Total Trials: {trials.count_total_trials()}: {trials.count_successful_trials()} "
                f"succeeded, {trials.count_failed_trials()} failed, "
                f"{trials.count_cancelled_trials()} cancelled."
            )

    def _start_and_run(self, spark: Any, tracker: FminTracker, watch: ServerWatch) -> None:
        """Open the tracking, ship the objective (after the tracking: its environment travels
        with it), run the trials (each checks that the worker can run this client's pickles)."""
        trials = self.trials
        tracker.fmin_started(self.settings)
        # The fmin's worker environment (credentials included) travels once, inside the
        # objective's artifact, never inside a job's plan.
        fmin_environ = tracker.worker_environ()
        executor: job.TrialExecutor
        recovery: SessionRecovery | None = None

        def executor_on(session: Any) -> job.SparkJobExecutor:
            return job.SparkJobExecutor(
                session, self.settings.fmin_id, self.objective_blob, fmin_environ, trials._resource_profile
            )

        if trials.debug:
            executor = InlineExecutor(self.objective_blob, fmin_environ)
        elif session_kind(spark) == CONNECT:
            executor = recovery = SessionRecovery(trials, spark, watch, executor_on)
        else:
            executor = executor_on(spark)
        path = self.trials_save_file
        # Appended to when it is the file these trials were last saved to (or resumed from), as
        # they left it; else a fresh snapshot of them, as hyperopt's.
        saved_to = getattr(trials, "_saved_to", None)
        append = bool(path) and saved_to is not None and saved_to == resume.file_identity(path)
        journal = self.journal = resume.SaveJournal(path, append=append) if path else None
        total = None if self.call.unlimited else self.call.max_evals
        # hyperopt's bar starts at the trials DONE already (FMinIter.run's initial), of max_evals.
        done = trials.count_by_state_unsynced(base.JOB_STATE_DONE)
        with trial_progress(self.progress_callback, initial=done, total=total) as progress:
            self.scheduler = TrialScheduler(
                trials=trials, domain=self.domain, algo=self.call.algo, rstate=self.call.rstate,
                executor=executor, parallelism=trials.parallelism, limits=self.limits, tracker=tracker,
                progress=progress,
                after_trial=(lambda t: journal.trial_ended(trials, t)) if journal else (lambda t: None),
                recovery=recovery, reconnect_timeout=trials.reconnect_timeout,
                output_kept_in=_output_kept_in(tracker, self.trials_save_file),
                cancellation=self.cancellation,
            )  # fmt: skip
            try:
                self.scheduler.run()
            except KeyboardInterrupt:
                logger.debug("fmin thread terminated by user.")
                raise
            except BaseException:
                logger.debug("fmin thread exits with an exception raised.")
                raise
            finally:
                if recovery is not None:
                    recovery.close()
                if journal is not None:
                    self._close_journal(journal)
            logger.debug("fmin thread exits normally.")

    def _close_journal(self, journal: resume.SaveJournal) -> None:
        """Compact the save file into one pickle, unless outputs have left memory: then the
        trials no longer hold what its records do, and the journal stays as it is."""
        trials = self.trials
        moved = any("output_moved_to" in t["misc"] for t in trials._dynamic_trials)
        try:
            journal.close(trials, compact=not moved)
        except Exception as exc:  # noqa: BLE001 - the journal as written is a valid save file
            logger.warning("could not compact the trials_save_file %s: %s", journal.path, one_line(exc))
        if journal.holds_trials:  # else the file is as this fmin found it: not known to be ours
            trials._saved_to = resume.file_identity(journal.path)

    def _server_refused(self, detail: str) -> None:
        if self.scheduler is not None:
            self.scheduler.server_refused(detail)

    def _server_answered(self) -> None:
        if self.scheduler is not None:
            self.scheduler.server_answered()

    def _server_gone(self, reason: str) -> None:
        """The watchdog's word that the server is gone, to the scheduler (if it runs yet:
        before it does, the session's calls give up at once instead, see session.watched)."""
        if self.scheduler is not None:
            self.scheduler.server_gone(reason)


def _output_kept_in(tracker: FminTracker, save_file: str) -> str:
    """Where a trial's output can still be read once it leaves memory (``outputs``)."""
    places = (["output.txt of the trial's MLflow child run"] if tracker.keeps_output else []) + (
        [f"the trials_save_file {save_file}"] if save_file else []
    )
    return " and ".join(places)
