"""``ConnectTrials``: hyperopt's ``SparkTrials`` over the Spark Connect client.

    from hyperopt import fmin, hp, tpe
    from connect_trials import ConnectTrials

    trials = ConnectTrials(parallelism=4, timeout=600)
    best = fmin(objective, hp.uniform("x", -5, 5), algo=tpe.suggest, max_evals=100,
                trials=trials)

Same surface and semantics as hyperopt 0.3.0's ``SparkTrials``; the session may be a Spark
Connect session (``sc://`` URL, ``SPARK_REMOTE``) or a classic one.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from hyperopt import base
from hyperopt.base import Trials

from connect_trials import arguments, cluster, job, resume
from connect_trials.arguments import FALLBACK_PARALLELISM
from connect_trials.fmin_run import FminRun
from connect_trials.inline import DEBUG_ENV, debug_requested
from connect_trials.outputs import OutputBudget
from connect_trials.progress import progress_callback_for
from connect_trials.session import session_kind
from connect_trials.trial_end import argument_of

logger = logging.getLogger("connect_trials")


class ConnectTrials(Trials):
    """Trials that run each hyperopt trial as one Spark job through Spark Connect.

    :param parallelism: most trials in flight at once. ``None`` or ``<= 0``: the cluster's
        task slots when they can be learned over Connect, else ``FALLBACK_PARALLELISM`` (1);
        both with a warning. Capped at ``MAX_CONCURRENT_JOBS_ALLOWED`` (128).
    :param timeout: seconds fmin may take; then running trials are cancelled, finished ones
        kept, and fmin returns the best so far.
    :param loss_threshold: suggest no more trials once a trial's loss is below it; the trials
        in flight finish (hyperopt's rule: nothing is cancelled). The fmin argument of the
        same name takes precedence.
    :param spark_session: a Spark Connect or classic ``SparkSession``; by default the active
        session (as ``SparkTrials()``), else ``SparkSession.builder.getOrCreate()``, which
        honours ``SPARK_REMOTE``.
    :param resource_profile: a ``pyspark.resource.ResourceProfile`` for the trial tasks
        (stage-level scheduling; ignored with a warning on a local master).
    :param mlflow_tracking: ``None`` (on unless the Spark conf
        ``spark.databricks.mlflow.trackHyperopt.enabled`` is ``false``), ``True`` or ``False``.
    :param reconnect_timeout: seconds fmin waits for a Spark Connect server that stopped
        answering (a restarted driver, a network outage) before it raises
        ``ClusterUnavailableError``; trials in flight then run again. After a driver restart
        the search goes on in a new session, :attr:`spark_session`.
    """

    asynchronous = True

    # Hard cap on the number of concurrent hyperopt tasks (Spark jobs) to run. Set at 128.
    MAX_CONCURRENT_JOBS_ALLOWED = arguments.MAX_CONCURRENT_JOBS_ALLOWED

    def __init__(
        self,
        parallelism: int | None = None,
        timeout: float | None = None,
        loss_threshold: float | None = None,
        spark_session: Any = None,
        resource_profile: Any = None,
        mlflow_tracking: bool | None = None,
        debug: bool | None = None,
        reconnect_timeout: float = arguments.DEFAULT_RECONNECT_TIMEOUT_S,
    ) -> None:
        super().__init__(exp_key=None, refresh=False)
        self.reconnect_timeout = arguments.validated_reconnect_timeout(reconnect_timeout)
        arguments.validate_parallelism(parallelism)
        arguments.validate_timeout(timeout)
        arguments.validate_loss_threshold(loss_threshold)
        if mlflow_tracking is not None and not isinstance(mlflow_tracking, bool):
            raise TypeError(f"mlflow_tracking must be None, True or False, not {mlflow_tracking!r}")
        if debug is not None and not isinstance(debug, bool):
            raise TypeError(f"debug must be None, True or False, not {debug!r}")
        self.debug = debug_requested(debug)
        # Debug mode needs no Spark: it takes a session when there is one (for the tracking
        # switch in its conf), and makes none.
        self._spark = arguments.resolve_session(spark_session, create=not self.debug)
        self._session_kind = session_kind(self._spark)
        self._resource_profile = arguments.accepted_resource_profile(self._spark, resource_profile)
        if self.debug:
            self.parallelism = 1
            logger.info(
                "ConnectTrials debug mode is on: every trial runs in this process, one at a time, "
                "through the same path as on a cluster (no Spark jobs). Switch it off with "
                f"debug=False or by unsetting {DEBUG_ENV}."
            )
        elif parallelism is None or parallelism <= 0:
            slots = cluster.task_slots(self._spark, self._resource_profile)
            self.parallelism = self._decide_parallelism(parallelism, slots)
        else:
            self.parallelism = self._decide_parallelism(parallelism, None)
        self.user_specified_parallelism = parallelism
        self.timeout = timeout
        self.loss_threshold = loss_threshold
        self.mlflow_tracking = mlflow_tracking
        self._fmin_cancelled = False
        self._fmin_cancelled_reason: str | None = None
        self._last_fmin: _LastFmin | None = None
        self._resume_parent_run_id: str | None = None
        self._resume_fmin_uuid: str | None = None
        # resume.file_identity of the trials_save_file that holds every trial here, as this
        # object left it: only that file is appended to.
        self._saved_to: str | None = None
        self.refresh()

    # -- pickling (trials_save_file): sessions do not pickle, and die with their process --------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_spark", "_session_kind", "_resource_profile", "_last_fmin", "_saved_to"):
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.reconnect_timeout = arguments.DEFAULT_RECONNECT_TIMEOUT_S  # files saved before it
        self._saved_to = None
        self.__dict__.update(state)
        self._spark = None  # the active session is taken when the trials are used again
        self.refresh()  # trials.trials is derived from the documents: the saved one may lag them

    @property
    def spark_session(self) -> Any:
        """The Spark session fmin runs on: the one given (or found), or, after its server
        restarted during an fmin, the new session the search went on in (the old one is
        gone on the server)."""
        return self._session()

    def _session(self) -> Any:
        """The session fmin runs on: the one given or found at construction, else (after
        unpickling) the active one."""
        if self._spark is None and not self.debug:
            self._spark = arguments.resolve_session(None)
            self._session_kind = session_kind(self._spark)
        return self._spark

    # -- from your IDE ----------------------------------------------------------------------
    def replay(self, tid: int) -> Any:
        """Run the objective of trial ``tid`` of the last fmin again, here, with the argument
        it got on the cluster. Returns what the objective returns, raises what it raises: in
        an IDE, the debugger stops at the failing line of a trial that failed remotely."""
        if self._last_fmin is None:
            raise ValueError(
                "replay needs the objective of an fmin run by this ConnectTrials object in this "
                "process; run fmin(..., trials=trials) first (trials loaded from a file or from "
                "MLflow have no objective)."
            )
        trial = next((t for t in self._dynamic_trials if t["tid"] == tid), None)
        if trial is None:
            known = sorted(t["tid"] for t in self._dynamic_trials)
            raise KeyError(f"there is no trial with tid {tid!r}; the trials are {known}")
        return self._last_fmin.replay(trial)

    @classmethod
    def from_mlflow(
        cls, parent_run_id: str, spark_session: Any = None, fmin_uuid: str | None = None, **kwargs: Any
    ) -> ConnectTrials:
        """Rebuild the finished trials of a tracked search from its parent run's child runs;
        a following fmin continues the search under the same parent run and ``fmin_uuid``.

        ``fmin_uuid``: which search to resume when the parent run holds several (two fmins in
        one active run); by default the last one to start a trial. ``kwargs`` are the other
        constructor arguments (``parallelism=``, ``timeout=``, ...). Restores each ended
        trial's hyperparameters, status and loss; not the rest of its result dictionary, and
        not trials that were cancelled or still running (a child run of that search left
        RUNNING by a client that died is ended: KILLED, or as its recorded outcome says)."""
        from mlflow import MlflowClient

        from connect_trials.tracking.resume_runs import end_orphaned_runs, fmin_child_runs

        client = MlflowClient()
        chosen, runs = fmin_child_runs(client, parent_run_id, fmin_uuid)
        trials = cls(spark_session=spark_session, **kwargs)
        runs = end_orphaned_runs(client, runs)
        resume.insert_finished(trials, resume.trial_docs_from_runs(trials, runs, client))
        # New trials take tids after every trial of the search, cancelled ones too: a tid names
        # one child run of its fmin_uuid.
        top = max((int(r.data.tags["trial_tid"]) for r in runs), default=-1)
        trials._ids = set(range(max(top + 1, len(trials._ids))))
        trials._resume_parent_run_id = parent_run_id
        trials._resume_fmin_uuid = chosen
        logger.info(
            "Resuming MLflow run %s (fmin_uuid %s): %d finished trials restored.",
            parent_run_id, chosen, len(trials._dynamic_trials),
        )  # fmt: skip
        return trials

    def __str__(self) -> str:
        return f"ConnectTrials(trials={self.trials})"

    @staticmethod
    def _decide_parallelism(requested_parallelism: int | None, spark_default_parallelism: int | None) -> int:
        """The parallelism fmin will use; see ``parallelism`` in the class docstring."""
        return arguments.decide_parallelism(requested_parallelism, spark_default_parallelism)

    @property
    def fmin_cancelled_reason(self) -> str | None:
        return self._fmin_cancelled_reason

    def count_successful_trials(self) -> int:
        """The number of trials that ran successfully."""
        return self.count_by_state_unsynced(base.JOB_STATE_DONE)

    def count_failed_trials(self) -> int:
        """The number of trials whose objective (or job) failed."""
        return self.count_by_state_unsynced(base.JOB_STATE_ERROR)

    def count_cancelled_trials(self) -> int:
        """The number of cancelled trials (timeout, early stop, Ctrl-C)."""
        return self.count_by_state_unsynced(base.JOB_STATE_CANCEL)

    def count_total_trials(self) -> int:
        """The number of successful, failed and cancelled trials."""
        return self.count_by_state_unsynced(
            [base.JOB_STATE_DONE, base.JOB_STATE_ERROR, base.JOB_STATE_CANCEL]
        )

    def delete_all(self) -> None:
        """Reset the trials to their initial state."""
        super().delete_all()
        self._saved_to = None  # the save file holds trials these no longer do
        # A new search: the next fmin makes its own parent run, never adds to the old one.
        self._resume_parent_run_id = None
        self._resume_fmin_uuid = None
        self._fmin_cancelled = False
        self._fmin_cancelled_reason = None

    def trial_attachments(self, trial: Any) -> Any:
        raise NotImplementedError("ConnectTrials does not support trial attachments.")

    def fmin(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        space: Any,
        algo: Callable[..., Any] | None = None,
        max_evals: int | None = None,
        timeout: float | None = None,
        loss_threshold: float | None = None,
        max_queue_len: int = 1,
        rstate: np.random.Generator | None = None,
        verbose: bool = False,
        pass_expr_memo_ctrl: bool | None = None,
        catch_eval_exceptions: bool = False,
        return_argmin: bool = True,
        show_progressbar: bool | Any = True,
        early_stop_fn: Callable[..., Any] | None = None,
        trials_save_file: str = "",
    ) -> Any:
        """Called by :func:`hyperopt.fmin`; see it for the arguments."""
        call = arguments.check_fmin_call(
            fn, max_evals, algo, loss_threshold, self.loss_threshold, max_queue_len, rstate,
            pass_expr_memo_ctrl, catch_eval_exceptions,
        )  # fmt: skip
        if timeout is not None:
            if self.timeout is not None:
                logger.warning("Timeout param was defined in Trials object, ignoring fmin definition")
            else:
                arguments.validate_timeout(timeout)
                self.timeout = timeout
        if self.parallelism > call.max_evals:
            logger.warning(
                f"parallelism ({self.parallelism}) is greater than max_evals ({call.max_evals}): "
                f"at most {call.max_evals} trials will run at once."
            )
        # A new fmin call runs its trials even if the last one on these trials was cancelled
        # (resuming with a larger max_evals is how users continue a search).
        self._fmin_cancelled = False
        self._fmin_cancelled_reason = None
        if trials_save_file:
            self._resume_from_file(trials_save_file)
        points = arguments.points_given_to_hyperopt_fmin(sys._getframe(1))
        objective_blob = job.pickle_objective(fn)
        self._seed(points)  # after the objective's checks: a refused fmin leaves no seed behind
        domain = base.Domain(fn, space, pass_expr_memo_ctrl=None)
        self._last_fmin = _LastFmin(objective_blob, domain)
        spark = self._session()
        progress_callback = progress_callback_for(show_progressbar, verbose)
        FminRun(self, call, objective_blob, domain, space, early_stop_fn, progress_callback,
                trials_save_file).run(spark)  # fmt: skip
        self.refresh()
        return _fmin_return_value(self, space, return_argmin)

    def _seed(self, points: list[dict[str, Any]] | None) -> None:
        """``fmin(points_to_evaluate=...)``: hyperopt drops them when a trials object is
        given; here they seed a new search as they seed hyperopt's own (``trials=None``):
        evaluated first, on top of ``max_evals``. A search that already holds trials (a
        second fmin, a resume) ignores them, as hyperopt does when it resumes a save file."""
        if not points:
            return
        if self._dynamic_trials:
            logger.warning(
                "points_to_evaluate is ignored: these trials already hold %d trials, and only a new "
                "search is seeded with it (as hyperopt ignores it when it resumes a trials_save_file). "
                "To evaluate more points, run another fmin on new trials, or insert NEW trial "
                "documents with fresh tids (trials.new_trial_ids) before fmin.",
                len(self._dynamic_trials),
            )
            return
        from hyperopt.fmin import generate_trials_to_calculate

        seeds = generate_trials_to_calculate(points)
        # Not refreshed, as hyperopt's generate_trials_to_calculate leaves them: len(trials) is
        # as of the last refresh, so the seeds come on top of max_evals.
        self.insert_trial_docs(seeds._dynamic_trials)
        logger.info("fmin evaluates the %d points_to_evaluate first.", len(points))

    def _resume_from_file(self, path: str) -> None:
        """hyperopt's ``trials_save_file``: continue the search saved in ``path`` (when these
        trials are still empty), and save to it after every finished trial."""
        if self._dynamic_trials or not os.path.exists(path):
            return
        saved, ends_cleanly = resume.load_journal(path)
        if not isinstance(saved, Trials):
            raise TypeError(
                f"trials_save_file {path!r} does not hold hyperopt trials; remove it or pass another path"
            )
        resume.adopt(self, saved)
        OutputBudget(self, kept_in=f"the trials_save_file {path}")  # beyond the budget: in the file only
        # The file holds every trial adopted: this fmin appends to it, if no one writes it
        # first (unless its last record is partial, which a fresh snapshot replaces).
        self._saved_to = resume.file_identity(path) if ends_cleanly else None
        if self._resume_parent_run_id is None:
            self._resume_parent_run_id = getattr(saved, "_resume_parent_run_id", None)
            self._resume_fmin_uuid = getattr(saved, "_resume_fmin_uuid", None)
        logger.info("Resuming from %s: %d finished trials restored.", path, len(self._dynamic_trials))


class _LastFmin:
    """What ``replay`` needs of the last fmin: its objective, as shipped, and its space."""

    def __init__(self, objective_blob: bytes, domain: base.Domain) -> None:
        self.objective_blob = objective_blob
        self.domain = domain

    def replay(self, trial: dict[str, Any]) -> Any:
        from pyspark import cloudpickle

        argument = argument_of(self.domain, trial)
        # Through pickle, as on the cluster: the objective gets what its worker got.
        objective = cloudpickle.loads(self.objective_blob)
        return objective(cloudpickle.loads(cloudpickle.dumps(argument)))


def _fmin_return_value(trials: ConnectTrials, space: Any, return_argmin: bool) -> Any:
    """What hyperopt.fmin returns for these trials."""
    if return_argmin:
        if len(trials.trials) == 0:
            raise Exception("There are no evaluation tasks, cannot return argmin of task losses.")
        return trials.argmin
    if len(trials.trials) > 0:
        from hyperopt import space_eval

        return space_eval(space, trials.argmin)
    return None


__all__ = ["ConnectTrials", "FALLBACK_PARALLELISM"]
