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

import contextlib
import logging
import math
import numbers
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from hyperopt import base, tpe
from hyperopt.base import Trials

from connect_trials import cluster, job, resume
from connect_trials.errors import ClusterUnavailableError
from connect_trials.inline import DEBUG_ENV, InlineExecutor, debug_requested
from connect_trials.progress import progress_callback_for, trial_progress
from connect_trials.scheduler import (
    FMIN_CANCELLED_REASON_USER,
    SearchLimits,
    TrialScheduler,
    argument_of,
)
from connect_trials.session import (
    ServerWatchdog,
    give_up_quickly,
    server_address,
    session_kind,
    wakeable_backoffs,
)
from connect_trials.tracking import FminSettings, FminTracker, create_tracker

logger = logging.getLogger("connect_trials")

# Parallelism when it is not given and the cluster's task slots cannot be learned.
FALLBACK_PARALLELISM = 1


class ConnectTrials(Trials):
    """Trials that run each hyperopt trial as one Spark job through Spark Connect.

    :param parallelism: most trials in flight at once. ``None`` or ``<= 0``: the cluster's
        task slots when they can be learned over Connect, else ``FALLBACK_PARALLELISM`` (1);
        both with a warning. Capped at ``MAX_CONCURRENT_JOBS_ALLOWED`` (128).
    :param timeout: seconds fmin may take; then running trials are cancelled, finished ones
        kept, and fmin returns the best so far.
    :param loss_threshold: stop (and cancel running trials) once a trial's loss is below it.
        The fmin argument of the same name takes precedence.
    :param spark_session: a Spark Connect or classic ``SparkSession``; by default the active
        session (as ``SparkTrials()``), else ``SparkSession.builder.getOrCreate()``, which
        honours ``SPARK_REMOTE``.
    :param resource_profile: a ``pyspark.resource.ResourceProfile`` for the trial tasks
        (stage-level scheduling; ignored with a warning on a local master).
    :param mlflow_tracking: ``None`` (on unless the Spark conf
        ``spark.databricks.mlflow.trackHyperopt.enabled`` is ``false``), ``True`` or ``False``.
    """

    asynchronous = True

    # Hard cap on the number of concurrent hyperopt tasks (Spark jobs) to run. Set at 128.
    MAX_CONCURRENT_JOBS_ALLOWED = 128

    def __init__(
        self,
        parallelism: int | None = None,
        timeout: float | None = None,
        loss_threshold: float | None = None,
        spark_session: Any = None,
        resource_profile: Any = None,
        mlflow_tracking: bool | None = None,
        debug: bool | None = None,
    ) -> None:
        super().__init__(exp_key=None, refresh=False)
        _validate_parallelism(parallelism)
        _validate_timeout(timeout)
        _validate_loss_threshold(loss_threshold)
        if mlflow_tracking is not None and not isinstance(mlflow_tracking, bool):
            raise TypeError(f"mlflow_tracking must be None, True or False, not {mlflow_tracking!r}")
        if debug is not None and not isinstance(debug, bool):
            raise TypeError(f"debug must be None, True or False, not {debug!r}")
        self.debug = debug_requested(debug)
        # Debug mode needs no Spark: it takes a session when there is one (for the tracking
        # switch in its conf), and makes none.
        self._spark = _resolve_session(spark_session, create=not self.debug)
        self._session_kind = session_kind(self._spark)
        self._resource_profile = self._accept_resource_profile(resource_profile)
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
        self.refresh()

    # -- pickling (trials_save_file): sessions do not pickle, and die with their process --------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_spark", "_session_kind", "_resource_profile", "_last_fmin"):
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._spark = None  # the active session is taken when the trials are used again

    def _session(self) -> Any:
        """The session fmin runs on: the one given or found at construction, else (after
        unpickling) the active one."""
        if self._spark is None and not self.debug:
            self._spark = _resolve_session(None)
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
        resume.insert_finished(trials, resume.trial_docs_from_runs(trials, runs))
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
        if requested_parallelism is None or requested_parallelism <= 0:
            if spark_default_parallelism is None:
                parallelism = FALLBACK_PARALLELISM
                logger.warning(
                    "Because the requested parallelism was None or a non-positive value, "
                    f"and the cluster's task slots could not be learned over Spark Connect, "
                    f"parallelism will be set to ({parallelism}). "
                    "We recommend setting parallelism explicitly to a positive value because "
                    "the total of Spark task slots is subject to cluster sizing."
                )
            else:
                parallelism = max(spark_default_parallelism, 1)
                logger.warning(
                    "Because the requested parallelism was None or a non-positive value, "
                    f"parallelism will be set to ({parallelism}), which is Spark's default "
                    f"parallelism ({spark_default_parallelism}), or 1, whichever is greater. "
                    "We recommend setting parallelism explicitly to a positive value because "
                    "the total of Spark task slots is subject to cluster sizing."
                )
        else:
            parallelism = requested_parallelism
        cap = ConnectTrials.MAX_CONCURRENT_JOBS_ALLOWED
        if parallelism > cap:
            logger.warning(
                f"Parallelism ({parallelism}) is capped at SparkTrials.MAX_CONCURRENT_JOBS_ALLOWED ({cap})."
            )
            parallelism = cap
        return parallelism

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
        called_at = time.monotonic()  # timeout counts from here, uploads and tracking included
        if pass_expr_memo_ctrl:
            raise ValueError(
                "pass_expr_memo_ctrl is not supported by ConnectTrials: the objective runs on a "
                "Spark worker and receives the resolved point only. Remove pass_expr_memo_ctrl."
            )
        if catch_eval_exceptions:
            raise ValueError(
                "catch_eval_exceptions is not supported by ConnectTrials: a failing trial is "
                "always recorded as ERROR and the search goes on. Remove catch_eval_exceptions."
            )
        if not callable(fn):
            raise TypeError(f"fn must be a callable objective, not {type(fn).__name__}")
        unlimited = max_evals is None or max_evals == sys.maxsize  # hyperopt.fmin's None arrives so
        if max_evals is None:
            max_evals = sys.maxsize
        if isinstance(max_evals, bool) or not isinstance(max_evals, numbers.Integral) or max_evals < 0:
            raise ValueError(f"max_evals must be a non-negative integer, not {max_evals!r}")
        if (
            isinstance(max_queue_len, bool)
            or not isinstance(max_queue_len, numbers.Integral)
            or max_queue_len < 1
        ):
            raise ValueError(f"max_queue_len must be a positive integer, not {max_queue_len!r}")
        if timeout is not None:
            if self.timeout is not None:
                logger.warning("Timeout param was defined in Trials object, ignoring fmin definition")
            else:
                _validate_timeout(timeout)
                self.timeout = timeout
        if loss_threshold is not None:
            _validate_loss_threshold(loss_threshold)
        else:
            loss_threshold = self.loss_threshold
        if algo is None:
            algo = tpe.suggest
            logger.warning("TPE is being used as the default algorithm.")
        if rstate is None:
            seed = os.environ.get("HYPEROPT_FMIN_SEED", "")
            rstate = np.random.default_rng(int(seed)) if seed else np.random.default_rng()
        if self.parallelism > max_evals:
            logger.warning(
                f"parallelism ({self.parallelism}) is greater than max_evals ({max_evals}): "
                f"at most {max_evals} trials will run at once."
            )

        # A new fmin call runs its trials even if the last one on these trials was cancelled
        # (resuming with a larger max_evals is how users continue a search).
        self._fmin_cancelled = False
        self._fmin_cancelled_reason = None
        if trials_save_file:
            self._resume_from_file(trials_save_file)
        objective_blob = job.pickle_objective(fn)
        domain = base.Domain(fn, space, pass_expr_memo_ctrl=None)
        self._last_fmin = _LastFmin(objective_blob, domain)
        spark = self._session()
        limits = SearchLimits(
            max_evals=int(max_evals),
            loss_threshold=loss_threshold,
            early_stop_fn=early_stop_fn,
            max_queue_len=int(max_queue_len),
            deadline=None if self.timeout is None else called_at + self.timeout,
        )
        fmin_id = uuid.uuid4().hex
        progress_callback = progress_callback_for(show_progressbar, verbose)
        total = int(max_evals) if max_evals != sys.maxsize else None
        settings = FminSettings(
            fmin_id=fmin_id,
            max_evals=None if unlimited else int(max_evals),
            parallelism=self.parallelism,
            user_specified_parallelism=self.user_specified_parallelism,
            timeout=self.timeout,
            algo=algo,
            max_queue_len=int(max_queue_len),
            space=space,
            objective_name=str(getattr(fn, "__name__", "") or ""),
            resume_run_id=self._resume_parent_run_id,
            resume_fmin_uuid=getattr(self, "_resume_fmin_uuid", None),  # None in older save files
        )
        tracker = create_tracker(spark, self.mlflow_tracking)
        # The client's retry policy is left alone (other threads and fmins share it); a
        # watchdog tells a dead server from a slow one instead (see session.py), from the
        # objective's upload to the last trial.
        server_gone = _ServerGoneRelay(spark)
        address = None if self.debug else server_address(spark)
        error: BaseException | None = None
        try:
            if address:
                wakeable_backoffs(spark)
            watchdog = ServerWatchdog(address, server_gone) if address else None
            with watchdog or contextlib.nullcontext():
                self._start_and_run(
                    settings, objective_blob, domain, algo, rstate, limits, tracker,
                    progress_callback, total, server_gone, trials_save_file,
                )  # fmt: skip
        except BaseException as exc:
            error = exc
            if isinstance(exc, KeyboardInterrupt):
                self._fmin_cancelled = True
                self._fmin_cancelled_reason = FMIN_CANCELLED_REASON_USER
            raise
        finally:
            tracker.fmin_finished(self, error)
            logger.info(
                f"Total Trials: {self.count_total_trials()}: {self.count_successful_trials()} "
                f"succeeded, {self.count_failed_trials()} failed, "
                f"{self.count_cancelled_trials()} cancelled."
            )
        self.refresh()
        return _fmin_return_value(self, space, return_argmin)

    def _start_and_run(
        self,
        settings: FminSettings,
        objective_blob: bytes,
        domain: base.Domain,
        algo: Callable[..., Any],
        rstate: np.random.Generator,
        limits: SearchLimits,
        tracker: FminTracker,
        progress_callback: Any,
        total: int | None,
        server_gone: _ServerGoneRelay,
        trials_save_file: str,
    ) -> None:
        """Open the tracking, ship the objective (after the tracking: its environment travels
        with it), run the trials (each checks that the worker can run this client's pickles)."""
        tracker.fmin_started(settings)
        # The fmin's worker environment (credentials included) travels once, inside the
        # objective's artifact, never inside a job's plan; trackers without it send none.
        fmin_environ: dict[str, str] = getattr(tracker, "worker_environ", lambda: {})()
        executor: job.TrialExecutor
        if self.debug:
            executor = InlineExecutor(objective_blob, fmin_environ)
        else:
            executor = job.SparkJobExecutor(
                self._spark, settings.fmin_id, objective_blob, fmin_environ, self._resource_profile
            )
        after_trial = (lambda: resume.save_trials(self, trials_save_file)) if trials_save_file else None
        self._run_scheduler(
            domain, algo, rstate, executor, limits, tracker, progress_callback, total, server_gone,
            after_trial,
        )  # fmt: skip

    def _run_scheduler(
        self,
        domain: base.Domain,
        algo: Callable[..., Any],
        rstate: np.random.Generator,
        executor: job.TrialExecutor,
        limits: SearchLimits,
        tracker: FminTracker,
        progress_callback: Any,
        total: int | None,
        server_gone: _ServerGoneRelay,
        after_trial: Callable[[], None] | None,
    ) -> None:
        """Run the trials; say how the fmin thread ended."""
        try:
            with trial_progress(progress_callback, initial=0, total=total) as progress_ctx:
                scheduler = TrialScheduler(
                    trials=self,
                    domain=domain,
                    algo=algo,
                    rstate=rstate,
                    executor=executor,
                    parallelism=self.parallelism,
                    limits=limits,
                    tracker=tracker,
                    progress=progress_ctx,
                    after_trial=after_trial or (lambda: None),
                )
                server_gone.scheduler = scheduler
                scheduler.run()
        except ClusterUnavailableError:
            # The session died with its server: let what still talks to it give up quickly.
            give_up_quickly(self._spark)
            logger.debug("fmin thread exits with an exception raised.")
            raise
        except KeyboardInterrupt:
            logger.debug("fmin thread terminated by user.")  # fmin marks the cancellation
            raise
        except BaseException:
            logger.debug("fmin thread exits with an exception raised.")
            raise
        else:
            logger.debug("fmin thread exits normally.")

    def _resume_from_file(self, path: str) -> None:
        """hyperopt's ``trials_save_file``: continue the search saved in ``path`` (when these
        trials are still empty), and save to it after every finished trial."""
        if self._dynamic_trials or not os.path.exists(path):
            return
        saved = resume.load_trials(path)
        if not isinstance(saved, Trials):
            raise TypeError(
                f"trials_save_file {path!r} does not hold hyperopt trials; remove it or pass another path"
            )
        resume.adopt(self, saved)
        if self._resume_parent_run_id is None:
            self._resume_parent_run_id = getattr(saved, "_resume_parent_run_id", None)
            self._resume_fmin_uuid = getattr(saved, "_resume_fmin_uuid", None)
        logger.info("Resuming from %s: %d finished trials restored.", path, len(self._dynamic_trials))

    def _accept_resource_profile(self, resource_profile: Any) -> Any:
        if resource_profile is None:
            return None
        from pyspark.resource import ResourceProfile

        if not isinstance(resource_profile, ResourceProfile):
            raise TypeError(
                "resource_profile must be a pyspark.resource.ResourceProfile (built with "
                f"ResourceProfileBuilder), not {type(resource_profile).__name__}"
            )
        master = cluster.spark_conf(self._spark, "spark.master") or ""
        if master.startswith("local"):
            logger.warning(
                "ConnectTrials was constructed with a ResourceProfile, but the cluster's master "
                f"({master}) does not support stage-level scheduling; it is ignored."
            )
            return None
        cluster.check_task_cpus(self._spark, resource_profile)
        cluster.bind_resource_profile(self._spark, resource_profile)
        return resource_profile


class _ServerGoneRelay:
    """What follows the watchdog's word that the server is gone: the dead session's retries
    end, and the fmin's scheduler stops (if it runs yet: before it does, the bounded
    retries fail the setup's calls instead)."""

    def __init__(self, spark: Any) -> None:
        self._spark = spark
        self.scheduler: TrialScheduler | None = None

    def __call__(self, reason: str) -> None:
        give_up_quickly(self._spark)
        if self.scheduler is not None:
            self.scheduler.server_gone(reason)


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
    if len(trials) > 0:
        from hyperopt import space_eval

        return space_eval(space, trials.argmin)
    return None


def _resolve_session(spark_session: Any, create: bool = True) -> Any:
    """The given session, else the active one, else (with ``create``) a new one."""
    if spark_session is None:
        spark_session = _default_session(create)
        if spark_session is None:
            return None
    if session_kind(spark_session) is None:
        raise TypeError(
            "spark_session must be a pyspark SparkSession (Spark Connect or classic), not "
            f"{type(spark_session).__module__}.{type(spark_session).__name__}; pass "
            "SparkSession.builder.remote('sc://host:15002').getOrCreate() or leave it None"
        )
    return spark_session


def _default_session(create: bool = True) -> Any:
    """The session a script written for ``SparkTrials()`` means: the active one (Spark Connect
    or classic; a Connect session made in another thread is the process's default), else
    ``SparkSession.builder.getOrCreate()``, which honours ``SPARK_REMOTE``.

    ``builder.getOrCreate()`` alone is not enough: once a Connect session exists the builder
    is in Connect mode and, without ``SPARK_REMOTE``, refuses with CONNECT_URL_NOT_SET."""
    from pyspark.sql import SparkSession

    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        connect_session = ConnectSession.getActiveSession() or ConnectSession._get_default_session()
    except ImportError:  # pragma: no cover - pyspark without the connect extra
        connect_session = None
    if connect_session is not None:
        return connect_session
    try:
        classic = SparkSession.getActiveSession()
    except Exception:  # noqa: BLE001 - Connect mode without a URL: no classic session here
        classic = None
    if classic is not None or not create:
        return classic
    return SparkSession.builder.getOrCreate()


def _validate_parallelism(parallelism: Any) -> None:
    if parallelism is None:
        return
    if isinstance(parallelism, bool) or not isinstance(parallelism, numbers.Integral):
        raise TypeError(
            f"parallelism must be None or an integer, not {parallelism!r}; e.g. ConnectTrials(parallelism=4)"
        )


def _validate_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, numbers.Real)
        or not math.isfinite(float(timeout))
        or timeout <= 0
    ):
        raise ValueError(
            "The timeout argument should be None or a positive value. "
            f"Given value: {timeout}. Pass seconds as a positive number, or None for no timeout."
        )


def _validate_loss_threshold(loss_threshold: Any) -> None:
    if loss_threshold is None:
        return
    if (
        isinstance(loss_threshold, bool)
        or not isinstance(loss_threshold, numbers.Real)
        or math.isnan(float(loss_threshold))
    ):
        raise ValueError(
            f"The loss_threshold argument should be None or a numeric value. Given value: {loss_threshold}"
        )


__all__ = ["ConnectTrials", "FALLBACK_PARALLELISM"]
