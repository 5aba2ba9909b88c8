"""One trial as one Spark job: encode it, run it under tags, decode its row.

A trial job is ``spark.range(0, 1, 1, 1).mapInPandas(task, RESULT_SCHEMA)``: one partition,
one task, no shuffle. The job carries the pickled objective, the trial's argument (already
resolved on the client) and the worker-side code, which travels by value so that the
cluster needs nothing of ours.

:class:`TrialExecutor` is the one interface the scheduler talks to; the Spark Connect
executor below is one implementation (an in-process one for debugging comes later).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import sys
import sysconfig
import tempfile
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyspark import cloudpickle

from connect_trials import worker
from connect_trials.errors import ClusterUnavailableError
from connect_trials.session import CONNECT, session_kind

logger = logging.getLogger(__name__)

# The worker module is not installed on the cluster: ship its code inside each job.
cloudpickle.register_pickle_by_value(worker)

TAG_PREFIX = "connect-trials"

# Outcome kinds, from the client's point of view.
RETURNED = "returned"  # the objective returned a value (not yet validated)
RAISED = "raised"  # the objective raised; error_text holds the remote traceback
CANCELLED = "cancelled"  # the job was interrupted through its tag
FAILED = "failed"  # the job failed around the objective (executor lost, bad pickle, ...)
UNAVAILABLE = "unavailable"  # the Spark Connect server cannot be reached


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
    kind: str
    value: Any = None
    error_type: str | None = None
    error_text: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


class TrialExecutor(Protocol):
    """Runs trials; ``run_trial`` blocks in the trial's own thread."""

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
    path = getattr(module, "__file__", None)
    if module is None or path is None or module.__name__ == "__main__":
        return None
    installed = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    resolved = os.path.realpath(path)
    if any(resolved.startswith(os.path.realpath(root) + os.sep) for root in installed):
        return None
    return module


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


def ship_objective(spark: Any, objective_blob: bytes) -> bytes | str:
    """Send the pickled objective to the cluster once; what each trial job then refers to.

    On Spark Connect the objective becomes a session file artifact named by its content hash
    (re-adding a name with other content is refused, the same content is a no-op), so each
    job's plan carries a short name instead of the objective and whatever it captures. A
    classic session, or a server that refuses artifacts, gets the bytes inline in every job.
    """
    if session_kind(spark) != CONNECT:
        return objective_blob
    name = f"connect-trials-objective-{hashlib.sha256(objective_blob).hexdigest()[:40]}.pkl"
    with tempfile.TemporaryDirectory(prefix="connect-trials-") as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(objective_blob)
        try:
            spark.addArtifacts(path, file=True)
        except Exception as exc:  # noqa: BLE001
            if "ARTIFACT_ALREADY_EXISTS" not in str(exc):
                logger.warning(
                    "could not ship the objective as an artifact (%s); sending it in every job", exc
                )
                return objective_blob
    return name


def build_trial_job(
    spark: Any, objective: bytes | str, request: TrialRequest, resource_profile: Any = None
) -> Any:
    """The DataFrame whose collection runs one trial."""
    task = worker.trial_task(objective, request.argument_blob, request.environ)
    source = spark.range(0, 1, 1, 1)  # exactly one partition (spark.range(1) may give two)
    if resource_profile is not None:
        return source.mapInPandas(task, worker.RESULT_SCHEMA, profile=resource_profile)
    return source.mapInPandas(task, worker.RESULT_SCHEMA)


def decode_row(tid: int, row: Any) -> TrialOutcome:
    status = row["status"]
    if status == worker.STATUS_RETURNED:
        try:
            value = cloudpickle.loads(row["value"])
        except Exception as exc:  # noqa: BLE001 - a class only the worker knows, say
            return TrialOutcome(
                tid,
                FAILED,
                error_type=str(type(exc)),
                error_text=f"the objective's return value could not be unpickled on the client: {exc}",
                started_at=row["started_at"],
                finished_at=row["finished_at"],
            )
        return TrialOutcome(
            tid, RETURNED, value=value, started_at=row["started_at"], finished_at=row["finished_at"]
        )
    kind = RAISED if status == worker.STATUS_RAISED else FAILED
    return TrialOutcome(
        tid,
        kind,
        error_type=row["error_type"],
        error_text=row["error_text"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


class SparkJobExecutor:
    """Runs each trial as one tagged Spark job on a Connect (or classic) session."""

    def __init__(self, spark: Any, fmin_id: str, objective_blob: bytes, resource_profile: Any = None) -> None:
        self._spark = spark
        self._fmin_id = fmin_id
        self._objective = ship_objective(spark, objective_blob)
        self._resource_profile = resource_profile
        self._cancelled = threading.Event()

    @property
    def tag(self) -> str:
        return fmin_tag(self._fmin_id)

    def run_trial(self, request: TrialRequest) -> TrialOutcome:
        tags = (self.tag, trial_tag(self._fmin_id, request.tid))
        try:
            job = build_trial_job(self._spark, self._objective, request, self._resource_profile)
            for tag in tags:  # tags are thread-local: add them in the submitting thread
                self._spark.addTag(tag)
            try:
                rows = job.collect()
            finally:
                for tag in tags:
                    self._spark.removeTag(tag)
        except BaseException as exc:  # noqa: BLE001 - becomes the trial's outcome
            return self._outcome_of_exception(request.tid, exc)
        return decode_row(request.tid, rows[0])

    def cancel_all(self) -> None:
        self._cancelled.set()
        logger.debug("Cancelling all running jobs with tag %s", self.tag)
        self._spark.interruptTag(self.tag)

    def _outcome_of_exception(self, tid: int, exc: BaseException) -> TrialOutcome:
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if self._cancelled.is_set() or _condition(exc) == "OPERATION_CANCELED":
            kind = CANCELLED
        elif is_unavailable(exc):
            kind = UNAVAILABLE
        else:
            kind = FAILED
        return TrialOutcome(tid, kind, error_type=str(type(exc)), error_text=text)


def _condition(exc: BaseException) -> str | None:
    get = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    try:
        return get() if get is not None else None
    except Exception:  # noqa: BLE001
        return None


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the Spark Connect server is gone (not that a job failed)."""
    if isinstance(exc, ClusterUnavailableError):
        return True
    if _condition(exc) in {"NO_ACTIVE_SESSION", "INVALID_HANDLE.SESSION_CLOSED", "RETRIES_EXCEEDED"}:
        return True
    try:
        import grpc
    except ImportError:  # pragma: no cover - classic session without grpc
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, grpc.RpcError):
            code = getattr(current, "code", lambda: None)()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return True
        grpc_code = getattr(current, "getGrpcStatusCode", None)
        if grpc_code is not None:
            try:
                if grpc_code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return True
            except Exception:  # noqa: BLE001
                pass
        current = current.__cause__ or current.__context__
    return "UNAVAILABLE" in str(exc) and "grpc" in str(exc).lower()
