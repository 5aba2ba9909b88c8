"""MLflow on the client: the parent run of an fmin and one child run per trial.

The scheduler and ``ConnectTrials.fmin`` talk to MLflow only through :class:`FminTracker`;
``create_tracker`` decides whether tracking is on (:func:`tracking_enabled`). The base class
tracks nothing; :class:`MlflowTracker` records what Databricks' hyperopt tracking records,
under the same names, so existing dashboards and queries keep working::

    parent run (the fmin call; the caller's active run if there is one)
      params   max_evals, actual_parallelism, parallelism, timeout, algo, max_queue_len
      tags     runSource=hyperoptAutoTracking, space, fmin_uuid
      metrics  successful_trials_count, failed_trials_count, cancelled_trials_count,
               total_trials_count, best_trial_loss (logged at each improvement, with the
               number of finished trials as its step)
    child run per trial ("trial-<tid>")
      tags     mlflow.parentRunId, fmin_uuid, runSource, trial_status (success / failure /
               cancelled); failures also error_type, error_message and the artifact
               error_traceback.txt
      params   the trial's hyperparameters; for hp.choice / hp.pchoice the value the
               objective received, plus ``<label>_index`` for the index hyperopt stores
      metrics  loss (successful trials)
      status   FINISHED (success), FAILED (failure), KILLED (cancelled)

``fmin_uuid`` is the first six hex digits of the fmin's id (the Spark job tag carries the
whole id). When the parent is a run that already has one of these names (a second fmin in
the same active run), this fmin writes that name with the suffix ``_<fmin_uuid>``.

The workers get the child run through environment variables (:meth:`trial_started`):
``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_ID``, ``MLFLOW_RUN_ID`` and the client's MLflow
credentials and HTTP settings (``_FORWARDED_ENV``), which are never logged.

The trial counts are hyperopt's (``count_successful_trials`` counts DONE trials, also those
whose result says "fail"). A cancelled trial's objective may run on for a few seconds until
its Python worker is killed; MLflow calls it makes then can still change its child run.

Tracking never fails or stalls an fmin. The only MLflow call on the submission path is the
child run's ``create_run``; everything else runs in order on a background thread that gives
way to run creation and that ``fmin_finished`` waits for. A child's params are logged while
its trial runs, or together with its outcome when that thread is behind. Callers wait at most
``_CALL_TIMEOUT_S`` for any call (MLflow itself retries an unreachable server for minutes),
an HTTP server that refuses connections is noticed before the first trial, and after the
first failure tracking stops for the rest of that fmin with one warning on the
``connect_trials`` logger. A write the server refuses (say, a param the objective already
logged with another value) is one warning, and tracking goes on.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import queue
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connect_trials.errors import last_line

logger = logging.getLogger("connect_trials")

TRACKING_CONF = "spark.databricks.mlflow.trackHyperopt.enabled"
RUN_SOURCE = "hyperoptAutoTracking"
TRIAL_SUCCESS = "success"
TRIAL_FAILURE = "failure"
TRIAL_CANCELLED = "cancelled"

# The client's values of these are handed to the workers with the child run: credentials,
# TLS and retry settings of the tracking server, and where a file store may be used.
_FORWARDED_ENV = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_AWS_SIGV4",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_ALLOW_FILE_STORE",
    "MLFLOW_S3_ENDPOINT_URL",
)

# The longest the fmin thread waits for one MLflow call (MLflow itself retries an
# unreachable server for minutes), and for a TCP connection to an HTTP tracking server.
_CALL_TIMEOUT_S = 10.0
_PROBE_TIMEOUT_S = 2.0
# How long a finished trial's logging waits for the next trial's run creation to go first.
_SUBMISSION_GRACE_S = 0.25

# MLflow's limits (mlflow.utils.validation).
_MAX_PARAM_CHARS = 6000
_MAX_TAG_CHARS = 8000
_MAX_KEY_CHARS = 250
_MAX_PARAMS_TAGS_PER_BATCH = 100

_PARAM_NAMES = ("max_evals", "actual_parallelism", "parallelism", "timeout", "algo", "max_queue_len")
_COUNT_METRICS = (
    "successful_trials_count",
    "failed_trials_count",
    "cancelled_trials_count",
    "total_trials_count",
)
_BEST_LOSS_METRIC = "best_trial_loss"


@dataclass(frozen=True)
class FminSettings:
    """What the parent run records about one fmin call."""

    fmin_id: str
    max_evals: int
    parallelism: int
    user_specified_parallelism: int | None
    timeout: float | None
    algo: Any
    max_queue_len: int
    space: Any


class FminTracker:
    """Tracking hooks; every method must return quickly and never raise."""

    def fmin_started(self, settings: FminSettings) -> None:
        """Called once before the first trial is suggested."""

    def trial_started(self, trial: dict[str, Any], argument: Any) -> dict[str, str]:
        """Called before the trial's job; returns environment variables for the worker."""
        return {}

    def trial_finished(self, trial: dict[str, Any], best_loss: float) -> None:
        """Called once the trial is DONE, ERROR or CANCEL."""

    def fmin_finished(self, trials: Any, error: BaseException | None) -> None:
        """Called once when fmin ends, also when it raises or is cancelled."""


def tracking_enabled(spark: Any, mlflow_tracking: bool | None) -> bool:
    """``mlflow_tracking`` when given, else on unless the Spark conf ``TRACKING_CONF`` is false."""
    if mlflow_tracking is not None:
        return mlflow_tracking
    from connect_trials.cluster import spark_conf

    return (spark_conf(spark, TRACKING_CONF) or "").strip().lower() != "false"


def create_tracker(spark: Any, mlflow_tracking: bool | None) -> FminTracker:
    """The tracker for one fmin call: MLflow-backed when tracking is on."""
    if not tracking_enabled(spark, mlflow_tracking):
        return FminTracker()
    try:
        import mlflow  # noqa: F401 - imported here: it takes a second or two
    except ImportError:
        logger.warning("MLflow tracking is on but mlflow is not installed; fmin runs untracked.")
        return FminTracker()
    return MlflowTracker()


@dataclass(frozen=True)
class _ChildOutcome:
    """How a trial ended, as its child run records it."""

    trial_status: str
    run_status: str
    loss: float | None = None
    error_type: str | None = None
    error_text: str | None = None


def _child_outcome(trial: dict[str, Any]) -> _ChildOutcome:
    """The child run's ending for a trial document. A DONE trial whose result's status is
    "fail" is a failure here, although hyperopt counts it among the successful trials."""
    from hyperopt import base

    state = trial.get("state")
    result = trial.get("result") or {}
    if state == base.JOB_STATE_DONE and result.get("status") == base.STATUS_OK:
        loss = result.get("loss")
        return _ChildOutcome(TRIAL_SUCCESS, "FINISHED", loss=None if loss is None else float(loss))
    if state in (base.JOB_STATE_DONE, base.JOB_STATE_ERROR):
        error = trial.get("misc", {}).get("error") or (None, None)
        return _ChildOutcome(TRIAL_FAILURE, "FAILED", error_type=error[0], error_text=error[1])
    return _ChildOutcome(TRIAL_CANCELLED, "KILLED")


class MlflowTracker(FminTracker):
    """Records one fmin in MLflow; see the module docstring for what and where."""

    def __init__(self) -> None:
        self._broken = threading.Event()
        self._broken_lock = threading.Lock()
        self._client: Any = None
        self._tracking_uri = ""
        self._experiment_id = ""
        self._parent_run_id: str | None = None
        self._owns_parent = False
        self._fmin_uuid = ""
        self._worker_env: dict[str, str] = {}
        self._hyperparameters: _Hyperparameters | None = None
        self._child_runs: dict[int, tuple[str, dict[str, Any]]] = {}  # tid -> (run id, trial)
        self._ended: set[int] = set()  # tids
        # A child's params wait here until they are logged: on their own while the trial
        # runs, or in the batch with its outcome when logging is behind (one write fewer).
        self._unlogged_params: dict[str, dict[str, list[Any]]] = {}
        self._finished_runs: set[str] = set()
        self._refused = False
        self._names: dict[str, str] = {}  # parent names -> the names this fmin writes
        self._n_finished = 0
        self._best_logged = math.inf
        # Run creation is waited for; everything else is logged in order behind the trials,
        # and gives way to run creation (_log_later).
        self._creator = _CallThread("connect-trials-mlflow-runs")
        self._logger = _CallThread("connect-trials-mlflow-log")

    # -- the hooks ---------------------------------------------------------------------------
    def fmin_started(self, settings: FminSettings) -> None:
        import mlflow

        try:
            self._fmin_uuid = settings.fmin_id[:6]
            self._tracking_uri = _absolute_tracking_uri(mlflow.get_tracking_uri())
            _probe(self._tracking_uri)
            self._experiment_id, self._parent_run_id = self._wait(self._open_parent, mlflow.active_run())
            self._worker_env = {
                "MLFLOW_TRACKING_URI": self._tracking_uri,
                "MLFLOW_EXPERIMENT_ID": self._experiment_id,
                **{name: os.environ[name] for name in _FORWARDED_ENV if name in os.environ},
            }
        except Exception as exc:  # noqa: BLE001 - tracking trouble never fails an fmin
            self._disable(exc)
            return
        self._hyperparameters = _Hyperparameters.of(settings.space)
        self._log_later(self._log_parent_settings, settings)

    def trial_started(self, trial: dict[str, Any], argument: Any) -> dict[str, str]:
        if self._broken.is_set() or self._parent_run_id is None:
            return {}
        tid = trial["tid"]
        try:
            run_id = self._wait(self._create_child, tid)
        except Exception as exc:  # noqa: BLE001
            self._disable(exc)
            return {}
        self._child_runs[tid] = (run_id, trial)
        self._unlogged_params[run_id] = dict(trial["misc"]["vals"])
        self._log_later(self._log_child_params, run_id)
        return {**self._worker_env, "MLFLOW_RUN_ID": run_id}

    def trial_finished(self, trial: dict[str, Any], best_loss: float) -> None:
        if self._broken.is_set() or self._parent_run_id is None:
            return
        tid = trial["tid"]
        if tid in self._ended:
            return
        self._ended.add(tid)
        self._n_finished += 1
        if math.isfinite(best_loss) and best_loss < self._best_logged:
            self._best_logged = best_loss
            self._log_later(self._log_best_loss, best_loss, self._n_finished, after_next_submission=True)
        started = self._child_runs.pop(tid, None)
        outcome = _child_outcome(trial)
        if started is None:  # failed before its job (its point could not be resolved)
            self._log_later(self._log_unstarted_child, tid, dict(trial["misc"]["vals"]), outcome)
        else:
            self._finished_runs.add(started[0])
            self._log_later(self._end_child, started[0], outcome, after_next_submission=True)

    def fmin_finished(self, trials: Any, error: BaseException | None) -> None:
        self._creator.release()  # no trial will be submitted any more
        try:
            if self._broken.is_set() or self._parent_run_id is None:
                return
            for run_id, trial in self._child_runs.values():  # e.g. abandoned with a dead server
                self._finished_runs.add(run_id)
                self._log_later(self._end_child, run_id, _child_outcome(trial))
            self._child_runs.clear()
            counts = {
                "successful_trials_count": trials.count_successful_trials(),
                "failed_trials_count": trials.count_failed_trials(),
                "cancelled_trials_count": trials.count_cancelled_trials(),
                "total_trials_count": trials.count_total_trials(),
            }
            self._log_later(self._log_counts, counts)
            if self._owns_parent:
                if error is None:
                    status = "FINISHED"
                elif isinstance(error, KeyboardInterrupt):
                    status = "KILLED"
                else:
                    status = "FAILED"
                self._log_later(self._end_parent, status)
            self._flush()
        except Exception as exc:  # noqa: BLE001
            self._disable(exc)
        finally:
            self._creator.close()
            self._logger.close()

    # -- MLflow calls (on the tracker's threads) --------------------------------------------
    def _open_parent(self, active: Any) -> tuple[str, str]:
        """The parent run: the caller's active run, else a new one (experiment id, run id)."""
        import mlflow
        from mlflow.tracking import fluent
        from mlflow.tracking.context import registry

        self._client = mlflow.MlflowClient(self._tracking_uri)  # a SQL store migrates here
        if active is not None:
            return active.info.experiment_id, active.info.run_id
        # What mlflow.start_run() would use, without making the run active in the fmin's thread.
        experiment_id = fluent._get_experiment_id() or "0"
        tags = {**registry.resolve_tags(), "runSource": RUN_SOURCE}
        run = self._client.create_run(experiment_id, tags={k: str(v) for k, v in tags.items()})
        self._owns_parent = True
        return experiment_id, run.info.run_id

    def _create_child(self, tid: int) -> str:
        tags = {
            "mlflow.parentRunId": self._parent_run_id,
            "fmin_uuid": self._fmin_uuid,
            "runSource": RUN_SOURCE,
        }
        run = self._client.create_run(self._experiment_id, tags=tags, run_name=f"trial-{tid}")
        return str(run.info.run_id)

    def _log_parent_settings(self, settings: FminSettings) -> None:
        if self._owns_parent:
            taken: dict[str, Any] = {"params": {}, "tags": {}, "metrics": {}}
        else:
            data = self._client.get_run(self._parent_run_id).data
            taken = {"params": data.params, "tags": data.tags, "metrics": data.metrics}
        suffix = f"_{self._fmin_uuid}"
        for name in _PARAM_NAMES:
            self._names[name] = name + suffix if name in taken["params"] else name
        for name in (*_COUNT_METRICS, _BEST_LOSS_METRIC):
            self._names[name] = name + suffix if name in taken["metrics"] else name
        for name in ("fmin_uuid", "space"):
            self._names[name] = name + suffix if name in taken["tags"] else name
        # runSource is the same for every fmin: only another value is a conflict.
        run_source = taken["tags"].get("runSource", RUN_SOURCE)
        self._names["runSource"] = "runSource" + suffix if run_source != RUN_SOURCE else "runSource"

        params = {
            "max_evals": settings.max_evals,
            "actual_parallelism": settings.parallelism,
            "parallelism": settings.user_specified_parallelism,
            "timeout": settings.timeout,
            "algo": _algo_name(settings.algo),
            "max_queue_len": settings.max_queue_len,
        }
        space = _space_text(settings.space)
        tags = {"runSource": RUN_SOURCE, "fmin_uuid": self._fmin_uuid, "space": _truncated(space)}
        self._log_batch(
            self._parent_run_id,
            params={self._names[k]: _param_value(v) for k, v in params.items()},
            tags={self._names[k]: v for k, v in tags.items()},
        )
        if len(space) > _MAX_TAG_CHARS:
            self._log_text(self._parent_run_id, space, f"{self._names['space']}.txt")

    def _log_child_params(self, run_id: str) -> None:
        if run_id in self._finished_runs:
            return  # the batch with the trial's outcome takes them
        vals = self._unlogged_params.pop(run_id, None)
        if vals:
            self._log_batch(run_id, params=self._child_params(vals))

    def _child_params(self, vals: dict[str, list[Any]] | None) -> dict[str, str]:
        if not vals or self._hyperparameters is None:
            return {}
        return self._hyperparameters.params(vals)

    def _log_best_loss(self, loss: float, step: int) -> None:
        self._client.log_metric(self._parent_run_id, self._names[_BEST_LOSS_METRIC], loss, step=step)

    def _end_child(self, run_id: str, outcome: _ChildOutcome) -> None:
        from mlflow.entities import Metric

        tags = {"trial_status": outcome.trial_status}
        metrics = []
        if outcome.loss is not None:
            metrics.append(Metric("loss", outcome.loss, int(time.time() * 1000), 0))
        if outcome.trial_status == TRIAL_FAILURE and outcome.error_type:
            tags["error_type"] = _truncated(outcome.error_type)
            tags["error_message"] = _truncated(last_line(outcome.error_text))
        params = self._child_params(self._unlogged_params.pop(run_id, None))
        try:
            self._log_batch(run_id, params=params, tags=tags, metrics=metrics)
        except Exception as exc:
            if not (params and _is_refusal(exc)):
                raise
            self._refuse(exc)  # say, the objective logged one of these params with another value
            self._log_batch(run_id, tags=tags, metrics=metrics)
        if outcome.error_text:
            self._log_text(run_id, outcome.error_text, "error_traceback.txt")
        self._terminate_quietly(run_id, outcome.run_status)

    def _log_unstarted_child(self, tid: int, vals: dict[str, list[Any]], outcome: _ChildOutcome) -> None:
        run_id = self._create_child(tid)
        self._unlogged_params[run_id] = vals
        self._end_child(run_id, outcome)

    def _log_counts(self, counts: dict[str, int]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(self._names[k], float(v), now, 0) for k, v in counts.items()]
        self._log_batch(self._parent_run_id, metrics=metrics)

    def _log_text(self, run_id: str | None, text: str, name: str) -> None:
        """An artifact that only complements a tag: the artifact store (which may need
        credentials the tracking server does not) failing to take it costs a warning."""
        try:
            self._client.log_text(run_id, text, name)
        except Exception as exc:  # noqa: BLE001
            self._refuse(exc)

    def _end_parent(self, status: str) -> None:
        self._client.set_terminated(self._parent_run_id, status)

    def _terminate_quietly(self, run_id: str, status: str) -> None:
        """End a child run. ``set_terminated`` would read the run back and print two "View
        run" lines per trial; the store's ``update_run_info`` is the same write without both."""
        from mlflow.entities import RunStatus

        store = getattr(getattr(self._client, "_tracking_client", None), "store", None)
        if store is None:
            self._client.set_terminated(run_id, status)
            return
        store.update_run_info(run_id, RunStatus.from_string(status), int(time.time() * 1000), None)

    def _log_batch(
        self,
        run_id: str | None,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        metrics: list[Any] | None = None,
    ) -> None:
        from mlflow.entities import Param, RunTag

        entities: list[Any] = [Param(k, v) for k, v in (params or {}).items()]
        entities += [RunTag(k, v) for k, v in (tags or {}).items()]
        chunks = [
            entities[i : i + _MAX_PARAMS_TAGS_PER_BATCH]
            for i in range(0, len(entities), _MAX_PARAMS_TAGS_PER_BATCH)
        ] or [[]]
        for i, chunk in enumerate(chunks):
            self._client.log_batch(
                run_id,
                params=[e for e in chunk if isinstance(e, Param)],
                tags=[e for e in chunk if isinstance(e, RunTag)],
                metrics=(metrics or []) if i == 0 else [],
            )

    # -- plumbing ------------------------------------------------------------------------------
    def _wait(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run ``call`` on the creation thread; give up after ``_CALL_TIMEOUT_S``."""
        future = self._creator.submit(call, *args)
        try:
            return future.result(timeout=_CALL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"MLflow did not answer within {_CALL_TIMEOUT_S:g} s") from None

    def _log_later(self, call: Callable[..., Any], *args: Any, after_next_submission: bool = False) -> None:
        """Queue ``call`` for the logging thread. A trial waits for its child run, so logging
        lets run creation have the server to itself; a trial's end, which frees a slot, also
        lets the next trial's run be created first (for at most ``_SUBMISSION_GRACE_S``)."""
        after = self._creator.completed if after_next_submission else None

        def logged() -> None:
            self._creator.wait_until_idle(after, _CALL_TIMEOUT_S if after is None else _SUBMISSION_GRACE_S)
            if self._broken.is_set():
                return
            try:
                call(*args)
            except Exception as exc:  # noqa: BLE001
                if _is_refusal(exc):
                    self._refuse(exc)
                else:
                    self._disable(exc)

        self._logger.submit(logged)

    def _flush(self) -> None:
        """Wait for the queued logging, as long as MLflow keeps answering."""
        done = self._logger.submit(lambda: None)
        progress = self._logger.completed
        while True:
            try:
                done.result(timeout=_CALL_TIMEOUT_S)
                return
            except concurrent.futures.TimeoutError:
                if self._logger.completed == progress:
                    self._disable(TimeoutError(f"MLflow did not answer within {_CALL_TIMEOUT_S:g} s"))
                    return
                progress = self._logger.completed

    def _refuse(self, exc: BaseException) -> None:
        """The server answered, but refused one write (say, the objective logged a param of
        the same name with another value): warn once, go on with the rest."""
        log = logger.debug if self._refused else logger.warning
        self._refused = True
        log("MLflow refused part of this fmin's tracking; the rest goes on: %s", last_line(str(exc))[:500])

    def _disable(self, exc: BaseException) -> None:
        with self._broken_lock:
            if self._broken.is_set():
                return
            self._broken.set()
        logger.warning(
            "MLflow tracking is off for the rest of this fmin (tracking URI %s): %s: %s. "
            "The trials run on; runs already created may stay RUNNING.",
            _redacted_uri(self._tracking_uri) or "<unresolved>",
            type(exc).__name__,
            last_line(str(exc))[:500],
        )


class _CallThread:
    """One daemon thread running calls in order. A daemon, because a call stuck in MLflow's
    retries must not keep the interpreter from exiting."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self._pending = 0  # calls queued or running
        self._released = False
        self.completed = 0

    def submit(self, call: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._pending += 1
        self._queue.put((future, call, args))
        return future

    def wait_until_idle(self, after: int | None, timeout: float) -> None:
        """Wait until no call is queued or running and, with ``after``, more than ``after``
        calls have completed; or until :meth:`release`, or ``timeout``."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._released or (self._pending == 0 and (after is None or self.completed > after)),
                timeout,
            )

    def release(self) -> None:
        """Let every :meth:`wait_until_idle` return at once from now on."""
        with self._changed:
            self._released = True
            self._changed.notify_all()

    def close(self) -> None:
        self.release()
        if self._thread is not None:
            self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, call, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                    future.set_exception(exc)
            with self._changed:
                self.completed += 1
                self._pending -= 1
                self._changed.notify_all()


class _Hyperparameters:
    """A search space's labels, and which of them are choices (``hp.choice``, ``hp.pchoice``:
    a ``switch`` whose index is a ``hyperopt_param``)."""

    def __init__(self, nodes: dict[str, Any], options: dict[str, list[Any]]) -> None:
        self._nodes = nodes  # label -> its hyperopt_param node
        self._options = options  # label -> the switch's options, for choices

    @classmethod
    def of(cls, space: Any) -> _Hyperparameters:
        from hyperopt import pyll

        nodes: dict[str, Any] = {}
        options: dict[str, list[Any]] = {}
        try:
            for node in pyll.dfs(pyll.as_apply(space)):
                if node.name == "hyperopt_param":
                    nodes[node.arg["label"].obj] = node
                elif node.name == "switch" and node.pos_args and node.pos_args[0].name == "hyperopt_param":
                    options[node.pos_args[0].arg["label"].obj] = list(node.pos_args[1:])
        except Exception as exc:  # noqa: BLE001 - then params are the raw values
            logger.debug("could not read the search space's choices: %s", exc)
        return cls(nodes, options)

    def params(self, vals: dict[str, list[Any]]) -> dict[str, str]:
        """MLflow params for a trial's ``misc["vals"]`` (inactive labels have no value)."""
        from hyperopt import pyll

        active = {label: values[0] for label, values in vals.items() if values}
        memo = {self._nodes[label]: value for label, value in active.items() if label in self._nodes}
        params: dict[str, str] = {}
        for label, value in active.items():
            key = _param_key(label)
            if label in self._options:
                try:
                    index = int(value)
                    chosen = pyll.rec_eval(self._options[label][index], memo=memo, print_node_on_error=False)
                except Exception:  # noqa: BLE001 - keep the index rather than nothing
                    params.setdefault(key, _param_value(value))
                    continue
                params.setdefault(key, _param_value(chosen))
                if f"{label}_index" not in vals:
                    params.setdefault(_param_key(f"{label}_index"), str(index))
            else:
                params.setdefault(key, _param_value(value))
        return params


# -- names and values ---------------------------------------------------------------------------
def _algo_name(algo: Any) -> str:
    """``tpe.suggest`` for hyperopt's algorithms, ``module.name`` for others."""
    func = getattr(algo, "func", algo)  # functools.partial
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is None:
        return str(algo)
    module = getattr(func, "__module__", "") or ""
    module = module.removeprefix("hyperopt.")
    return f"{module}.{name}" if module else name


def _space_text(space: Any) -> str:
    """The space as hyperopt prints it (a dict of expressions would print object addresses)."""
    try:
        from hyperopt import pyll

        return str(pyll.as_apply(space))
    except Exception:  # noqa: BLE001
        return str(space)


def _param_key(label: str) -> str:
    """A hyperopt label as an MLflow name: alphanumerics, ``_ - . /`` and spaces only."""
    key = re.sub(r"[^\w.\- ]", "_", str(label))[:_MAX_KEY_CHARS] or "_"
    return "_" + key[1:] if key.startswith(".") else key


def _absolute_tracking_uri(uri: str) -> str:
    """The URI with local paths made absolute: workers run in another directory."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if parsed.scheme == "" and uri and uri != "databricks":
        return Path(uri).absolute().as_uri()
    if parsed.scheme == "file" and not parsed.netloc and not parsed.path.startswith("/"):
        return Path(parsed.path).absolute().as_uri()
    return uri


def _redacted_uri(uri: str) -> str:
    """The URI without a password, for messages."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.password is None:
        return uri
    host = parsed.netloc.rsplit("@", 1)[1]
    return parsed._replace(netloc=f"{parsed.username}:***@{host}").geturl()


def _probe(uri: str) -> None:
    """Raise at once if an HTTP tracking server does not accept connections."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConnectionError(f"cannot connect to the tracking server: {exc}") from None


# MLflow error codes that mean "this request was wrong", as opposed to "MLflow is unwell".
_REFUSALS = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_STATE",
        "BAD_REQUEST",
    }
)


def _is_refusal(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in _REFUSALS


def _param_value(value: Any) -> str:
    return str(value)[:_MAX_PARAM_CHARS]


def _truncated(text: str) -> str:
    if len(text) <= _MAX_TAG_CHARS:
        return text
    marker = f"\n... [truncated: {len(text)} characters]"
    return text[: _MAX_TAG_CHARS - len(marker)] + marker
