"""The code that runs inside one trial's ``mapInPandas`` task, on a Spark worker.

The cluster has neither connect_trials nor hyperopt installed, so this module travels by
value inside every trial job (``job.py`` registers it with pyspark's cloudpickle) and
imports nothing but the standard library at module level. It imports nothing from the
client-side scheduler.

What happens in the task:
1. The MLflow shim sets the environment for the trial's child run: the fmin's variables
   (tracking URI, experiment id, credentials), which travel once per fmin inside the
   objective's payload and never inside a Spark plan, then the trial's own (its run id).
2. The objective is called with its argument, already resolved on the client.
3. Whatever the objective does (return, raise, return a value that does not pickle), the
   task itself succeeds and yields one row, so Spark retries a trial's task only when its
   Python worker or executor died under it. Such a retry runs the objective again, up to
   ``MAX_OBJECTIVE_ATTEMPTS`` attempts in all; a later one is refused, so an objective that
   kills its own worker cannot run forever.
4. What the objective printed is captured (see :class:`_CapturedOutput`), and so are the
   warnings it raised and the log records at WARNING or above, so that the client can show
   them: on a cluster, the executor's log is out of the user's reach.
5. The environment is restored (by difference: other threads of the worker may read it)
   and any MLflow run the objective left open is ended, because Python workers are reused
   across tasks.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Column order of the one row a trial task yields; ``job.py`` decodes it.
RESULT_SCHEMA = (
    "status string, value binary, error_type string, error_text string, "
    "started_at double, finished_at double, attempt int, output string, warnings array<string>, "
    "relayed binary"
)
STATUS_RETURNED = "returned"
STATUS_RAISED = "raised"
STATUS_REFUSED = "refused"
STATUS_MISMATCH = "mismatch"  # the client's Python or pyspark cannot pickle for this worker

# What a trial keeps of its output: the last 64 KiB, as ``trial["misc"]["output"]``.
OUTPUT_TAIL_BYTES = 64 * 1024
# Distinct warnings a trial reports to the client, each cut to this many characters.
MAX_WARNINGS = 20
_MAX_WARNING_CHARS = 2000

# Attempts of one trial's task that may run the objective: the first, and one more (after its
# Python worker or executor died, or a speculative copy). Later ones are refused.
MAX_OBJECTIVE_ATTEMPTS = 2


class TrialRetriedError(RuntimeError):
    """A task attempt that may not run the objective any more. It fails the attempt rather
    than answering with a row: a failed attempt is only counted by Spark, so another attempt
    still running (a speculative copy's original, say) can end the trial DONE, while an
    answer would have been taken as the trial's result."""


def trial_task(
    objective: bytes | str,
    argument_blob: bytes,
    environ: dict[str, str],
    client_versions: tuple[str, str] | None = None,
) -> Callable[[Iterable[Any]], Iterator[Any]]:
    """The ``mapInPandas`` function of one trial: runs the objective, yields one row.

    ``objective`` is the fmin's payload (see :func:`objective_payload`) itself, or the name
    of the session artifact that holds it (shipped once per fmin, see
    ``job.ship_objective``). ``environ`` holds the trial's own, non-secret variables.
    ``client_versions``: the client's Python and pyspark versions, checked before the
    objective is unpickled (see :func:`run_trial`)."""

    def run(batches: Iterable[Any]) -> Iterator[Any]:
        for _ in batches:  # one empty-ish input row; consume it so Spark sees the input done
            pass
        row = run_trial(objective, argument_blob, environ, client_versions=client_versions)
        if row["status"] == STATUS_REFUSED:
            raise TrialRetriedError(row["error_text"])
        yield _result_frame(**row)

    return run


def objective_payload(objective_blob: bytes, fmin_environ: dict[str, str]) -> bytes:
    """What one fmin ships to the workers once: the pickled objective and the fmin's
    environment for it (plain pickle of bytes and strings, readable with the stdlib)."""
    return pickle.dumps({"objective": objective_blob, "environ": dict(fmin_environ)})


def run_trial(
    objective_ref: bytes | str,
    argument_blob: bytes,
    environ: dict[str, str],
    *,
    in_client: bool = False,
    client_versions: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Call the objective and describe what happened, never raising.

    ``in_client``: the trial runs in the user's own process (debug mode), whose terminal and
    debugger must keep seeing what the objective prints. ``client_versions`` (Python,
    pyspark): a worker whose Python major.minor or pyspark major differs does not unpickle
    the objective, and answers ``STATUS_MISMATCH`` with its own versions in ``error_text``.
    The check rides in every trial's job, so no job of its own is needed."""
    started_at = time.time()
    attempt = _task_attempt()
    row: dict[str, Any] = {
        "status": STATUS_RETURNED,
        "value": None,
        "error_type": None,
        "error_text": None,
        "attempt": attempt,
        "output": "",
        "warnings": [],
        "relayed": None,
    }
    mine = _versions()
    if client_versions is not None and _incompatible(client_versions, mine):
        row.update(status=STATUS_MISMATCH, error_text=" ".join(mine))
    elif attempt >= MAX_OBJECTIVE_ATTEMPTS:
        row.update(
            status=STATUS_REFUSED,
            error_type=str(TrialRetriedError),
            error_text=(
                f"Spark started this trial's task once more (attempt {attempt}, counting from 0) "
                f"after {attempt} attempts that ran the objective, whose Python worker or executor "
                "died before the trial ended (os._exit, a segfault, an OOM kill, a lost executor), "
                f"or that still run (speculative copies). The objective is run at most "
                f"{MAX_OBJECTIVE_ATTEMPTS} times."
            ),
        )
    else:
        saved_environ = dict(os.environ)
        saved_mlflow_state = _mlflow_process_state()
        output = _CapturedOutput(tee=in_client)
        reported = _ReportedWarnings()
        relay = _MlflowRelay()
        try:
            output.start()
            reported.start()
            objective, fmin_environ = _load_objective(objective_ref)
            os.environ.update(fmin_environ)
            os.environ.update(environ)
            _place_client_files()
            relay.start(reported)
            argument = pickle.loads(argument_blob)
            value = objective(argument)
            row["value"] = _dumps(value)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the trial's error
            row.update(
                status=STATUS_RAISED,
                value=None,
                error_type=str(type(exc)),
                error_text=traceback.format_exc(),
            )
        finally:
            _end_mlflow_runs(failed=row["status"] == STATUS_RAISED)
            row["relayed"] = relay.collect(reported)
            reported.stop()
            row["output"] = output.stop()
            row["warnings"] = reported.messages
            _restore_mlflow_process_state(saved_mlflow_state)
            _restore_environ(saved_environ)
    row["started_at"] = started_at
    row["finished_at"] = time.time()
    return row


class _CapturedOutput:
    """What the objective writes to stdout and stderr, interleaved as a terminal shows it.

    On a worker, file descriptors 1 and 2 and ``sys.stdout``/``sys.stderr`` all point at one
    unlinked temporary file for the trial, so prints, logging, C extensions and
    subprocesses the objective starts are all captured in the order they were written.
    Afterwards the whole output is copied to the worker's own stderr, so the executor's log
    still has it (at the trial's end rather than as it was written). In the user's process
    (debug mode), only ``sys.stdout``/``sys.stderr`` are captured, and still written through
    to the terminal or IDE: the debugger talks through them."""

    def __init__(self, tee: bool) -> None:
        self._tee = tee
        self._file: Any = None
        self._saved_fds: tuple[int, int] | None = None
        self._saved_streams: tuple[Any, Any] | None = None

    def start(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        self._file = tempfile.TemporaryFile()
        fd = self._file.fileno()
        if not self._tee:
            self._saved_fds = (os.dup(1), os.dup(2))
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        raw = io.FileIO(fd, "wb", closefd=False)
        captured = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True)
        self._saved_streams = (sys.stdout, sys.stderr)
        if self._tee:
            sys.stdout, sys.stderr = _Tee(captured, sys.stdout), _Tee(captured, sys.stderr)
        else:
            sys.stdout = sys.stderr = captured

    def stop(self) -> str:
        """Restore the streams; the last ``OUTPUT_TAIL_BYTES`` of the output."""
        if self._file is None:
            return ""
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        if self._saved_streams is not None:
            sys.stdout, sys.stderr = self._saved_streams
        if self._saved_fds is not None:
            for target, saved in zip((1, 2), self._saved_fds, strict=True):
                os.dup2(saved, target)
                os.close(saved)
        try:
            size = os.fstat(self._file.fileno()).st_size
            self._file.seek(max(0, size - OUTPUT_TAIL_BYTES))
            tail = self._file.read()
            if self._saved_fds is not None and size:
                self._file.seek(0)
                _copy_to_fd(self._file, 2)
            if size > OUTPUT_TAIL_BYTES:  # start at a line, not inside one
                tail = tail[tail.find(b"\n") + 1 :] if b"\n" in tail else tail
            return tail.decode("utf-8", errors="replace")
        finally:
            self._file.close()


class _Tee:
    """A text stream writing to the capture and to the stream it stands in for."""

    def __init__(self, captured: Any, shown: Any) -> None:
        self._captured = captured
        self._shown = shown

    def write(self, text: str) -> int:
        self._captured.write(text)
        return self._shown.write(text)

    def flush(self) -> None:
        _flush(self._shown)

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ...: the shown stream's
        return getattr(self._shown, name)


def _flush(stream: Any) -> None:
    try:
        stream.flush()
    except Exception:  # noqa: BLE001 - a closed or odd stream is not the trial's failure
        pass


def _copy_to_fd(source: Any, fd: int) -> None:
    try:
        while chunk := source.read(1 << 20):
            os.write(fd, chunk)
    except OSError:
        pass


class _ReportedWarnings:
    """The distinct warnings the objective raised and the log records at WARNING or above it
    emitted (MLflow's own, for instance), while the trial ran.

    Log records are seen where they are made (``logging.setLogRecordFactory``), because
    MLflow replaces its loggers' handlers when it is imported, which is often inside the
    objective. Python warnings are seen by ``warnings.showwarning``, after the filters: an
    ignored warning is not reported, and it is still printed (into the captured output)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._seen: set[str] = set()
        self._thread = threading.get_ident()  # the trial's: in debug mode, others are fmin's own
        self._saved: tuple[Any, Any] | None = None

    def start(self) -> None:
        previous_factory = logging.getLogRecordFactory()
        previous_showwarning = warnings.showwarning

        def record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous_factory(*args, **kwargs)
            if record.levelno >= logging.WARNING and record.thread == self._thread:
                self.add(f"{record.levelname} {record.name}: {_message_of(record)}")
            return record

        def showwarning(message: Any, category: type[Warning], filename: str, lineno: int, *args: Any,
                        **kwargs: Any) -> None:  # fmt: skip
            if threading.get_ident() == self._thread:
                self.add(f"{category.__name__}: {message} ({os.path.basename(filename)}:{lineno})")
            previous_showwarning(message, category, filename, lineno, *args, **kwargs)

        self._saved = (previous_factory, previous_showwarning)
        logging.setLogRecordFactory(record_factory)
        warnings.showwarning = showwarning

    def stop(self) -> None:
        if self._saved is not None:
            logging.setLogRecordFactory(self._saved[0])
            warnings.showwarning = self._saved[1]
            self._saved = None

    def add(self, message: str) -> None:
        message = message[:_MAX_WARNING_CHARS]
        if message not in self._seen and len(self.messages) < MAX_WARNINGS:
            self._seen.add(message)
            self.messages.append(message)


def _message_of(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is the logger's problem, not ours
        return str(record.msg)


# ``SHIPPED_FILE_PREFIX + NAME`` in the fmin's environment holds the content (base64) of the
# client file that the variable NAME points to, such as a CA bundle for the tracking server.
SHIPPED_FILE_PREFIX = "CONNECT_TRIALS_FILE_"


def _place_client_files() -> None:
    """Point each variable that names a client file at a copy of it on this worker, when the
    client's path is not there. Copies are named by content, written once per worker."""
    import base64
    import hashlib

    for key in [k for k in os.environ if k.startswith(SHIPPED_FILE_PREFIX)]:
        content = base64.b64decode(os.environ.pop(key))
        name = key.removeprefix(SHIPPED_FILE_PREFIX)
        path = os.environ.get(name, "")
        if not path or os.path.exists(path):
            continue
        folder = os.path.join(tempfile.gettempdir(), "connect-trials-client-files")
        os.makedirs(folder, exist_ok=True)
        copy = os.path.join(folder, hashlib.sha256(content).hexdigest()[:32] + "-" + os.path.basename(path))
        if not os.path.exists(copy):
            with tempfile.NamedTemporaryFile(dir=folder, delete=False) as f:
                f.write(content)
            os.replace(f.name, copy)  # whole or not at all, for concurrent tasks
        os.environ[name] = copy


# The relay carries at most this many bytes of the objective's artifacts back, in all.
MAX_RELAYED_ARTIFACT_BYTES = 16 * 1024 * 1024
RELAY_SCHEME = "file://"
# How long the worker waits for a TCP connection to the tracking server when it checks it.
_REACH_TIMEOUT_S = 2.0


class _MlflowRelay:
    """MLflow logging from inside the objective when this worker cannot reach the client's
    tracking store (a ``sqlite:``/``file:`` store on the laptop, a server on its loopback).

    Whether the store is reachable is decided once per worker process and store (a path that
    exists here, a TCP connection to the server). When it is, nothing changes: the objective
    logs straight to its child run, live. When it is not, the trial's MLflow environment
    points at a run in a file store local to the task; what the objective logged there
    (params, tags, every metric value with its step and timestamp, artifacts up to
    ``MAX_RELAYED_ARTIFACT_BYTES``) travels back in the trial's row, and the client replays
    it into the child run. Nested runs the objective starts, models registered from the
    worker and traces are not carried."""

    def __init__(self) -> None:
        self._folder: str | None = None
        self._uri = ""
        self._run_id: str | None = None

    def start(self, reported: _ReportedWarnings) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not os.environ.get("MLFLOW_RUN_ID") or not uri or _store_reachable(uri):
            return
        try:
            from mlflow import MlflowClient
        except ImportError:  # the objective cannot log either
            return
        folder = tempfile.mkdtemp(prefix="connect-trials-relay-")
        local_uri = RELAY_SCHEME + os.path.join(folder, "mlruns")  # a new store makes experiment 0
        try:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses file stores otherwise
            run_id = MlflowClient(local_uri).create_run("0").info.run_id
        except Exception as exc:  # noqa: BLE001 - the objective still runs, its logging may fail
            reported.add(
                f"MLflow relay: could not open a store on the worker, the objective logs to {uri}: {exc!r}"
            )
            return
        self._folder, self._uri, self._run_id = folder, local_uri, run_id
        os.environ.update(MLFLOW_TRACKING_URI=local_uri, MLFLOW_RUN_ID=run_id, MLFLOW_EXPERIMENT_ID="0")
        os.environ.pop("MLFLOW_REGISTRY_URI", None)

    def collect(self, reported: _ReportedWarnings) -> bytes | None:
        """What the objective logged, pickled with plain types only; None if not relayed."""
        if self._folder is None or self._run_id is None:
            return None
        import shutil

        try:
            from mlflow import MlflowClient

            client = MlflowClient(self._uri)
            run = client.get_run(self._run_id)
            metrics = [
                (m.key, m.value, m.timestamp, m.step)
                for key in run.data.metrics
                for m in client.get_metric_history(self._run_id, key)
            ]
            artifacts, skipped = _read_artifacts(run.info.artifact_uri.removeprefix(RELAY_SCHEME))
            if skipped:
                reported.add(
                    f"MLflow relay: artifacts over its {MAX_RELAYED_ARTIFACT_BYTES // 2**20} MB cap were not "
                    "carried to the child run: "
                    + ", ".join(f"{path} ({size} bytes)" for path, size in skipped)
                )
            records = {
                "params": dict(run.data.params),
                "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
                "metrics": metrics,
                "artifacts": artifacts,
            }
            return pickle.dumps(records)
        except Exception as exc:  # noqa: BLE001 - the trial's result matters more
            reported.add(f"MLflow relay: could not read what the objective logged: {exc!r}")
            return None
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


def _read_artifacts(root: str) -> tuple[dict[str, bytes], list[tuple[str, int]]]:
    """The files under ``root`` by relative path, smallest first, up to the relay's cap."""
    sizes = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            sizes.append((os.path.getsize(path), os.path.relpath(path, root)))
    carried: dict[str, bytes] = {}
    skipped: list[tuple[str, int]] = []
    budget = MAX_RELAYED_ARTIFACT_BYTES
    for size, relative in sorted(sizes):
        if size > budget:
            skipped.append((relative, size))
            continue
        with open(os.path.join(root, relative), "rb") as f:
            carried[relative] = f.read()
        budget -= size
    return carried, skipped


def _store_reachable(uri: str) -> bool:
    """Whether this worker process can use the tracking store, decided once per store."""
    cache = _process_cache().setdefault("reachable", {})
    if uri not in cache:
        cache[uri] = _probe_store(uri)
    return bool(cache[uri])


def _probe_store(uri: str) -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "localhost", port), timeout=_REACH_TIMEOUT_S).close()
        except OSError:
            return False
        return True
    if parsed.scheme == "file":
        return os.path.isdir(parsed.path)
    if parsed.scheme.startswith("sqlite"):
        return os.path.exists(uri.split(":///", 1)[-1]) if ":///" in uri else False
    return True  # databricks, other plugins: the worker is where they are meant to be used


def _process_cache() -> dict[str, Any]:
    """State kept for the worker process's life, in a module of its own in sys.modules
    (this module arrives by value with every job, so its own globals are new each time)."""
    module = sys.modules.get(_CACHE_MODULE)
    if module is None:
        import types

        module = sys.modules.setdefault(_CACHE_MODULE, types.ModuleType(_CACHE_MODULE))
    return module.__dict__


# Objectives shipped as artifacts, unpickled once per Python worker process. The cache
# lives in a module of its own in sys.modules because this module arrives by value with
# every job, so its own globals are new each time.
_CACHE_MODULE = "_connect_trials_objective_cache"
_CACHE_SIZE = 4


def _restore_environ(saved: dict[str, str]) -> None:
    """Undo what the task changed in ``os.environ``, key by key: clearing it, even for a
    moment, would hide every variable from the worker's other threads."""
    for key in [k for k in os.environ if k not in saved]:
        os.environ.pop(key, None)
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _load_objective(ref: bytes | str) -> tuple[Any, dict[str, str]]:
    """The objective and the fmin's environment, from the payload inline or in an artifact."""
    if isinstance(ref, bytes):
        return _unpack(ref)
    cache: dict[str, Any] = _process_cache().setdefault("objectives", {})
    if ref not in cache:
        with open(_artifact_path(ref), "rb") as f:
            loaded = _unpack(f.read())
        while len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[ref] = loaded
    objective, fmin_environ = cache[ref]
    return objective, fmin_environ


def _unpack(payload: bytes) -> tuple[Any, dict[str, str]]:
    parts = pickle.loads(payload)
    return pickle.loads(parts["objective"]), dict(parts["environ"])


def _artifact_path(name: str) -> str:
    """Where a session file artifact is on this worker: Spark Connect runs Python workers in
    the session's artifact folder; SparkFiles knows it otherwise."""
    if os.path.exists(name):
        return name
    try:
        from pyspark import SparkFiles

        candidate = os.path.join(SparkFiles.getRootDirectory(), name)
        if os.path.exists(candidate):
            return candidate
    except Exception:  # noqa: BLE001
        pass
    raise FileNotFoundError(
        f"the objective's artifact {name} is not in this worker's session folder ({os.getcwd()})"
    )


def _dumps(value: Any) -> bytes:
    try:
        from pyspark import cloudpickle
    except ImportError:  # pragma: no cover - a worker always has pyspark
        import pickle as cloudpickle  # type: ignore[no-redef]
    try:
        return cloudpickle.dumps(value)
    except Exception as exc:
        raise TypeError(
            f"the objective returned a value of type {type(value).__name__} that cannot be "
            f"pickled to send it back to the client: {exc}"
        ) from exc


def _versions() -> tuple[str, str]:
    """This Python's major.minor.micro and pyspark's version."""
    import pyspark

    return ".".join(map(str, sys.version_info[:3])), pyspark.__version__


def _incompatible(client: tuple[str, str], worker: tuple[str, str]) -> bool:
    """Objectives pickled under ``client`` cannot load under ``worker``: another Python
    major.minor or pyspark major (``compat.mismatch`` says why, on the client)."""
    return (
        client[0].split(".")[:2] != worker[0].split(".")[:2]
        or client[1].split(".")[0] != worker[1].split(".")[0]
    )


def _task_attempt() -> int:
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover
        return 0
    context = TaskContext.get()
    return int(context.attemptNumber()) if context is not None else 0


def _end_mlflow_runs(failed: bool) -> None:
    """End the runs the objective left active (the child run, resumed through MLFLOW_RUN_ID,
    and any it started itself): the next task on this worker must start clean. The client
    sets the child run's final status afterwards; here MLflow gets one quick try, so a
    tracking server that went away cannot hold up the trial."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    os.environ.update(_MLFLOW_QUICK_CALLS)
    try:
        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED" if failed else "FINISHED")
    except Exception:  # noqa: BLE001 - MLflow trouble never fails a trial
        pass


# What MLflow keeps per process besides os.environ: the URIs set by set_tracking_uri and
# set_registry_uri, and the experiment set by set_experiment. They are private names, read
# defensively: with another MLflow version the worst case is that they are not reset.
_MLFLOW_PROCESS_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
    ("mlflow.tracking.fluent", "_active_experiment_id"),
)
_MLFLOW_QUICK_CALLS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def _mlflow_process_state() -> dict[tuple[str, str], Any]:
    """MLflow's per-process settings before the task (None, their default, if not imported)."""
    state: dict[tuple[str, str], Any] = {}
    for module_name, attribute in _MLFLOW_PROCESS_GLOBALS:
        module = sys.modules.get(module_name)
        state[(module_name, attribute)] = getattr(module, attribute, None)
    return state


def _restore_mlflow_process_state(state: dict[tuple[str, str], Any]) -> None:
    """Put MLflow's per-process settings back, and drop the tracer provider, which keeps the
    tracking URI it was first used with."""
    try:
        for (module_name, attribute), value in state.items():
            module = sys.modules.get(module_name)
            if module is not None and hasattr(module, attribute):
                setattr(module, attribute, value)
        provider = sys.modules.get("mlflow.tracing.provider")
        if provider is not None:
            provider.reset()
    except Exception:  # noqa: BLE001
        pass


def _result_frame(**row: Any) -> Any:
    import pandas as pd

    columns = [c.split()[0] for c in RESULT_SCHEMA.split(", ")]
    return pd.DataFrame({c: [row[c]] for c in columns})
