"""One trial as one Spark job: encode it, run it under tags, decode its row.

A trial job is ``spark.range(0, 1, 1, 1).mapInPandas(task, RESULT_SCHEMA)``: one partition,
one task, no shuffle. The job carries the pickled objective, the trial's argument (already
resolved on the client) and the worker-side code, which travels by value so that the
cluster needs nothing of ours.

:class:`TrialExecutor` is the one interface the scheduler talks to; the Spark Connect
executor below is one implementation, ``inline.InlineExecutor`` (debug mode) the other.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import io
import logging
import pickle
import sys
import threading
import time
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyspark import cloudpickle

from connect_trials import compat, local_code, worker, worker_boot
from connect_trials.errors import one_line
from connect_trials.session import (
    CONNECT,
    OPERATION_CANCELED,
    add_content_artifact,
    error_condition,
    is_python_worker_crash,
    is_unavailable,
    session_kind,
)

logger = logging.getLogger(__name__)

# The worker package is not installed on the cluster: ship its code (every module of it)
# inside each job, pickled once per process (``worker_code``), with the small function that
# unpacks it on the worker (``worker_boot``).
cloudpickle.register_pickle_by_value(worker)
cloudpickle.register_pickle_by_value(worker_boot)

TAG_PREFIX = "connect-trials"

# Above this size the pickled objective is never sent inside every job's plan: a failed
# artifact upload then fails the fmin instead (each job would carry it; 50 MB took ~9 s per
# job and 120 MB ran a local server out of heap).
MAX_INLINE_OBJECTIVE_BYTES = 8 * 1024 * 1024

# After a cancellation, how often and how long jobs whose collect() was already on its way
# are interrupted again: one that reached the server just after interruptTag would run on.
_REINTERRUPT_EVERY_S = 1.0
_REINTERRUPT_FOR_S = 30.0


class OutcomeKind(enum.Enum):
    """How a trial job ended, from the client's point of view."""

    RETURNED = "returned"  # the objective returned a value (not yet validated)
    RAISED = "raised"  # the objective raised; error_text holds the remote traceback
    CANCELLED = "cancelled"  # the job was interrupted through its tag, or never submitted
    FAILED = "failed"  # the job failed around the objective (worker died, bad pickle, ...)
    MISMATCH = "mismatch"  # the worker cannot run this client's pickles; error_text says why
    # The job was lost with its server or session (unreachable, restarted, or it dropped a
    # silent client's operation): the objective did not fail, the trial may run again.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class TrialRequest:
    """Everything one trial job needs: plain values, no hyperopt objects."""

    tid: int
    argument_blob: bytes
    environ: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialOutcome:
    """What came back from one trial job."""

    tid: int
    kind: OutcomeKind
    value: Any = None
    error_type: str | None = None
    error_text: str | None = None
    # Wall-clock times on the executor, for the record only: they are never compared with
    # the client's clock.
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int | None = None  # the task attempt that produced the row (0 = the first)
    output: str | None = None  # the tail of what the objective printed (None: no row came back)
    warnings: tuple[str, ...] = ()  # distinct warnings and WARNING+ log records of the objective
    relayed: bytes | None = None  # the objective's MLflow logging, when the worker relayed it
    # time.monotonic() on the client when run_trial returned; set by the scheduler.
    received_at: float | None = None


class TrialExecutor(Protocol):
    """Runs trials; ``run_trial`` blocks in the trial's own thread.

    After ``cancel_all``, ``run_trial`` must not start a trial any more (it returns a
    CANCELLED outcome at once), and a trial that was being started concurrently must still
    end up interrupted.

    ``runs_in_caller``: run each trial in fmin's own thread, one at a time (debug mode),
    instead of in a thread of its own."""

    runs_in_caller: bool

    def run_trial(self, request: TrialRequest) -> TrialOutcome: ...

    def cancel_all(self) -> None: ...


def fmin_tag(fmin_id: str) -> str:
    return f"{TAG_PREFIX}-{fmin_id}"


def trial_tag(fmin_id: str, tid: int) -> str:
    return f"{TAG_PREFIX}-{fmin_id}-trial-{tid}"


class _ObjectivePickler(cloudpickle.CloudPickler):
    """Refuses what pickles here but cannot work on a worker: sessions and DataFrames."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _DRIVER_ONLY_TYPES):
            raise TypeError(
                f"it captures a {type(obj).__module__}.{type(obj).__name__}, which exists only on the client"
            )
        return super().reducer_override(obj)


def _driver_only_types() -> tuple[type, ...]:
    from pyspark.sql import DataFrame, SparkSession

    types: list[type] = [SparkSession, DataFrame]
    try:
        from pyspark.sql.connect.dataframe import DataFrame as ConnectDataFrame
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        types += [ConnectSession, ConnectDataFrame]
    except ImportError:  # pragma: no cover - pyspark without the connect extra
        pass
    return tuple(types)


_DRIVER_ONLY_TYPES = _driver_only_types()


def _local_module(fn: Any) -> types.ModuleType | None:
    """The objective's module if it lives in the user's project rather than in an installed
    package: the cluster cannot import it, so its code must travel by value."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    return module if local_code.is_local(module) else None


def pickle_objective(fn: Any) -> bytes:
    """The objective as bytes for the workers, or a clear error before any job runs."""
    buffer = io.BytesIO()
    module = _local_module(fn)
    registered = module is not None and module.__name__ not in cloudpickle.list_registry_pickle_by_value()
    if registered:
        cloudpickle.register_pickle_by_value(module)
    try:
        _ObjectivePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(fn)
    except Exception as exc:
        raise ValueError(
            f"fn (the objective) cannot be shipped to the Spark workers: {exc}. An objective must "
            "not capture what lives only in this process, such as a lock, an open connection, "
            "a SparkSession or a DataFrame; create such objects inside the objective instead."
        ) from exc
    finally:
        if registered:
            cloudpickle.unregister_pickle_by_value(module)
    return buffer.getvalue()


def ship_objective(spark: Any, objective_blob: bytes, fmin_environ: dict[str, str]) -> worker.ObjectiveRef:
    """Send the objective and the fmin's worker environment to the cluster once; what each
    trial job then refers to. Credentials in the environment never ride inside a Spark plan.

    On Spark Connect they become a session file artifact named by its content hash
    (re-adding a name with other content is refused, the same content is a no-op), so each
    job's plan carries a short name instead of the objective, what it captures and the
    credentials in the environment. If the server refuses the artifact, a small objective
    falls back to riding inline (without the fmin's environment), with a warning; a large
    one fails the fmin with an error that says what to do.

    A classic session has no artifacts: the payload becomes a broadcast variable, which the
    executors fetch from the driver's block manager; each job's task carries its id and the
    payload's content name.
    """
    payload = worker.objective_payload(objective_blob, fmin_environ)
    if session_kind(spark) != CONNECT:
        name = "connect-trials-objective-" + hashlib.sha256(payload).hexdigest()[:40]
        try:
            return (name, spark.sparkContext.broadcast(payload))
        except Exception as exc:  # noqa: BLE001
            return _inline_fallback(objective_blob, fmin_environ, exc, "a broadcast variable")
    try:
        return add_content_artifact(spark, payload, "connect-trials-objective-", ".pkl", file=True)
    except Exception as exc:  # noqa: BLE001
        return _inline_fallback(objective_blob, fmin_environ, exc, "a session artifact")


def _inline_fallback(
    objective_blob: bytes, fmin_environ: dict[str, str], exc: BaseException, shipped_as: str
) -> bytes:
    size_mb = len(objective_blob) / 1e6
    if len(objective_blob) > MAX_INLINE_OBJECTIVE_BYTES:
        raise RuntimeError(
            f"the objective pickles to {size_mb:.1f} MB and the Spark session refused it "
            f"as {shipped_as} ({one_line(exc)}). Sending it inside every trial's job is "
            f"refused above {MAX_INLINE_OBJECTIVE_BYTES // (1024 * 1024)} MB. Make the objective "
            "small: load large data inside it from storage the workers can read, instead of "
            "capturing it, or let the server accept artifacts."
        ) from exc
    dropped = f"; MLflow variables ({', '.join(sorted(fmin_environ))}) are not sent" if fmin_environ else ""
    logger.warning(
        "could not ship the objective as %s (%s); sending it (%.1f MB) inside every trial's job instead%s",
        shipped_as,
        one_line(exc),
        size_mb,
        dropped,
    )
    return worker.objective_payload(objective_blob, {})


def trial_source(spark: Any) -> Any:
    """The one-row, one-partition DataFrame every trial job of an fmin maps over, with its
    schema learned now: ``mapInPandas`` reads the columns of its input, which is a server
    round trip per job on an uncached DataFrame."""
    source = spark.range(0, 1, 1, 1)  # exactly one partition (spark.range(1) may give two)
    source.schema  # noqa: B018 - cached on the DataFrame
    return source


@functools.lru_cache(maxsize=1)
def result_struct() -> Any:
    """``worker.RESULT_SCHEMA`` as a StructType, built here: a DDL string would be sent to the
    server to be parsed, once per job."""
    from pyspark.sql import types as T

    simple = {
        "string": T.StringType(),
        "binary": T.BinaryType(),
        "double": T.DoubleType(),
        "int": T.IntegerType(),
    }
    fields = []
    for column in worker.RESULT_SCHEMA.split(", "):
        name, kind = column.split(" ", 1)
        data_type = T.ArrayType(T.StringType()) if kind == "array<string>" else simple[kind]
        fields.append(T.StructField(name, data_type, True))
    return T.StructType(fields)


def build_trial_job(
    source: Any, objective: worker.ObjectiveRef, request: TrialRequest, resource_profile: Any = None
) -> Any:
    """The DataFrame whose collection runs one trial, over :func:`trial_source`'s DataFrame."""
    mine = compat.client_versions()
    versions = (mine.python, mine.pyspark)
    args = (objective, request.argument_blob, request.environ, versions)
    task = worker_boot.booted_task(*worker_code(), args)
    if resource_profile is not None:
        return source.mapInPandas(task, result_struct(), profile=resource_profile)
    return source.mapInPandas(task, result_struct())


@functools.lru_cache(maxsize=1)
def worker_code() -> tuple[str, bytes]:
    """``worker.trial_task`` pickled by value, once per process, and its content key."""
    code = cloudpickle.dumps(worker.trial_task, protocol=pickle.HIGHEST_PROTOCOL)
    return hashlib.sha256(code).hexdigest()[:32], code


def decode_row(tid: int, row: Any) -> TrialOutcome:
    stamps = {
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "attempt": row["attempt"],
        "output": row["output"] or "",
        "warnings": tuple(row["warnings"] if row["warnings"] is not None else ()),
        "relayed": row["relayed"],
    }
    status = row["status"]
    if status == worker.STATUS_MISMATCH:
        python, pyspark = row["error_text"].split()
        reason = compat.mismatch(compat.client_versions(), compat.Versions(python, pyspark))
        reason = reason or f"the Spark workers run Python {python} with pyspark {pyspark}"
        return TrialOutcome(tid, OutcomeKind.MISMATCH, error_text=reason, **stamps)
    if status == worker.STATUS_RETURNED:
        try:
            value = cloudpickle.loads(row["value"])
        except Exception as exc:  # noqa: BLE001 - a class only the worker knows, say
            return TrialOutcome(
                tid,
                OutcomeKind.FAILED,
                error_type=str(type(exc)),
                error_text=f"the objective's return value could not be unpickled on the client: {exc}",
                **stamps,
            )
        return TrialOutcome(tid, OutcomeKind.RETURNED, value=value, **stamps)
    kind = OutcomeKind.RAISED if status == worker.STATUS_RAISED else OutcomeKind.FAILED
    return TrialOutcome(tid, kind, error_type=row["error_type"], error_text=row["error_text"], **stamps)


class SparkJobExecutor:
    """Runs each trial as one tagged Spark job on a Connect (or classic) session.

    Every job carries the fmin's tag and its trial's tag. ``cancel_all`` interrupts the fmin's
    tag; a job whose ``collect()`` was already on its way then may reach the server just after
    the interruption, so its trial's tag is interrupted again until its collect returns."""

    runs_in_caller = False

    def __init__(
        self,
        spark: Any,
        fmin_id: str,
        objective_blob: bytes,
        fmin_environ: dict[str, str] | None = None,
        resource_profile: Any = None,
    ) -> None:
        self._spark = spark
        self._fmin_id = fmin_id
        if session_kind(spark) == CONNECT:
            local_code.ship_local_code(spark)  # the project's own modules, for the objective's imports
        self._objective = ship_objective(spark, objective_blob, dict(fmin_environ or {}))
        # Riding inline, the objective left the fmin's MLflow environment behind: a trial's run
        # id alone would point the objective at a run its worker's store does not have.
        self._mlflow_dropped = isinstance(self._objective, bytes) and bool(fmin_environ)
        self._resource_profile = resource_profile
        self._source = trial_source(spark)
        self._cancelled = threading.Event()
        self._abandoned = threading.Event()
        self._lock = threading.Lock()
        self._collect_ended = threading.Condition(self._lock)
        self._collecting: set[int] = set()  # trials whose collect() has been called

    @property
    def tag(self) -> str:
        return fmin_tag(self._fmin_id)

    def run_trial(self, request: TrialRequest) -> TrialOutcome:
        tid = request.tid
        if self._cancelled.is_set():
            return not_submitted(tid)
        if self._abandoned.is_set():
            return _lost(tid, "the Spark Connect session of this job is gone on its server")
        tags = (self.tag, trial_tag(self._fmin_id, tid))
        if self._mlflow_dropped:
            request = dataclasses.replace(request, environ={})
        try:
            job = build_trial_job(self._source, self._objective, request, self._resource_profile)
            for tag in tags:  # tags are thread-local: add them in the submitting thread
                self._spark.addTag(tag)
            try:
                with self._lock:
                    # Looked at under the lock that cancel_all takes: either this job is not
                    # submitted, or cancel_all sees it in _collecting and interrupts it again.
                    if self._cancelled.is_set():
                        return not_submitted(tid)
                    self._collecting.add(tid)
                try:
                    rows = job.collect()
                finally:
                    with self._lock:
                        self._collecting.discard(tid)
                        self._collect_ended.notify_all()
            finally:
                for tag in tags:
                    self._spark.removeTag(tag)
        except BaseException as exc:  # noqa: BLE001 - becomes the trial's outcome
            return self._outcome_of_exception(tid, exc)
        return decode_row(tid, rows[0])

    def cancel_all(self) -> None:
        with self._lock:
            first = not self._cancelled.is_set()
            self._cancelled.set()
            if first and self._collecting:
                threading.Thread(
                    target=self._interrupt_stragglers, name="connect-trials-reinterrupt", daemon=True
                ).start()
        logger.debug("Cancelling all running jobs with tag %s", self.tag)
        self._interrupt(self.tag)

    def abandon(self) -> None:
        """Its session is gone (a restarted server): start nothing more, ask nothing of it;
        what it still runs comes back lost (UNAVAILABLE), to run again elsewhere."""
        self._abandoned.set()

    def _interrupt_stragglers(self) -> None:
        """Interrupt again, by trial tag, the jobs whose collect() has not returned: the first
        interruptTag may have reached the server before them."""
        give_up_at = time.monotonic() + _REINTERRUPT_FOR_S
        with self._lock:
            while self._collecting and time.monotonic() < give_up_at:
                self._collect_ended.wait(_REINTERRUPT_EVERY_S)
                stragglers = sorted(self._collecting)
                self._lock.release()
                try:
                    # One warning is enough: a server that refuses one interruption refuses all.
                    reached = all(self._interrupt(trial_tag(self._fmin_id, tid)) for tid in stragglers)
                finally:
                    self._lock.acquire()
                if not reached:
                    return

    def _interrupt(self, tag: str) -> bool:
        """interruptTag; False (after a warning) when it failed."""
        try:
            self._spark.interruptTag(tag)
        except Exception as exc:  # noqa: BLE001 - a failed interruption is reported, not raised
            logger.warning(
                "could not interrupt the Spark jobs tagged %s (%s); they may run on until they end",
                tag,
                one_line(exc),
            )
            return False
        return True

    def _outcome_of_exception(self, tid: int, exc: BaseException) -> TrialOutcome:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if self._abandoned.is_set():
            kind = OutcomeKind.UNAVAILABLE
        elif self._cancelled.is_set() or error_condition(exc) == OPERATION_CANCELED:
            kind = OutcomeKind.CANCELLED
        elif is_unavailable(exc):
            kind = OutcomeKind.UNAVAILABLE
        elif (refused := compat.refused_by_pyspark(text)) is not None:
            return TrialOutcome(tid, OutcomeKind.MISMATCH, error_type=str(type(exc)), error_text=refused)
        else:
            kind = OutcomeKind.FAILED
            if is_python_worker_crash(text) or worker.TrialRetriedError.__name__ in text:
                text = (
                    "the objective's Python worker died while it ran this trial (os._exit, a "
                    "segfault, an out-of-memory kill or a lost executor); Spark reported:\n" + text
                )
        return TrialOutcome(tid, kind, error_type=str(type(exc)), error_text=text)


def not_submitted(tid: int) -> TrialOutcome:
    return TrialOutcome(
        tid,
        OutcomeKind.CANCELLED,
        error_type="<class 'connect_trials.TrialCancelled'>",
        error_text="the fmin was cancelled before this trial's job was submitted",
    )


def _lost(tid: int, why: str) -> TrialOutcome:
    error_type = "<class 'connect_trials.ClusterUnavailableError'>"
    return TrialOutcome(tid, OutcomeKind.UNAVAILABLE, error_type=error_type, error_text=why)
