"""MLflow logging from inside the objective that cannot, or must not, go to the store directly.

The objective's MLflow calls go to a run in a file store local to the task when:
- this worker cannot reach the client's tracking store (a ``sqlite:``/``file:`` store on the
  laptop, a server on its loopback), or
- the fmin is tracked but this trial has no child run (tracking broke during the fmin, or
  the run was not ready): the objective must not reach the real store, where its first
  ``log_metric`` would start a stray top-level run.

What the objective logged there (params, tags, every metric value with its step and
timestamp, artifacts up to ``MAX_RELAYED_ARTIFACT_BYTES``) travels back in the trial's row;
the client replays it into the child run, or drops it when there is none. Nested runs the
objective starts, models registered from the worker and traces are not carried.

Whether the store is reachable is decided once per worker process and store (a path that
exists here, a TCP connection to the server). When it is and the trial has its child run,
nothing changes: the objective logs straight to its child run, live.
"""

from __future__ import annotations

import os
import pickle
import tempfile

from connect_trials.worker.objective import process_cache
from connect_trials.worker.redaction import redacted_uri
from connect_trials.worker.reported import ReportedWarnings

# The relay carries at most this many bytes of the objective's artifacts back, in all.
MAX_RELAYED_ARTIFACT_BYTES = 16 * 1024 * 1024
RELAY_SCHEME = "file://"
# How long the worker waits for a TCP connection to the tracking server when it checks it.
_REACH_TIMEOUT_S = 2.0
# Where the objective's MLflow calls go when a trial without a child run could not get a local
# store either: no store answers to this scheme, so they fail instead of creating a run.
NO_STORE_URI = "connect-trials-no-store:/"


class MlflowRelay:
    """The task-local store of one trial, when its MLflow calls are relayed."""

    def __init__(self) -> None:
        self._folder: str | None = None
        self._uri = ""
        self._run_id: str | None = None

    def start(self, reported: ReportedWarnings, tracking_uri: str, child_run_id: str) -> str | None:
        """Point the trial's environment at a local store if its calls must not go to
        ``tracking_uri`` (the fmin's store, "" when the fmin is not tracked); the URI the
        objective's calls then go to, or None when they go where the environment says."""
        if not tracking_uri or (child_run_id and store_reachable(tracking_uri)):
            return None
        try:
            from mlflow import MlflowClient
        except ImportError:  # the objective cannot log either
            return None
        folder = ""
        try:
            folder = tempfile.mkdtemp(prefix="connect-trials-relay-")
            local_uri = RELAY_SCHEME + os.path.join(folder, "mlruns")  # a new store makes experiment 0
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses file stores otherwise
            run_id = MlflowClient(local_uri).create_run("0").info.run_id
        except Exception as exc:  # noqa: BLE001 - the objective still runs, its logging may fail
            import shutil

            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            if child_run_id:
                reported.add(
                    "MLflow relay: could not open a store on the worker, the objective logs to "
                    f"{redacted_uri(tracking_uri)}: {exc!r}"
                )
                return None
            reported.add(
                "MLflow relay: could not open a store on the worker and this trial has no child "
                f"run, so the objective's MLflow calls fail rather than start a run elsewhere: {exc!r}"
            )
            os.environ.update(MLFLOW_TRACKING_URI=NO_STORE_URI)
            os.environ.pop("MLFLOW_RUN_ID", None)
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
            return NO_STORE_URI
        self._folder, self._uri, self._run_id = folder, local_uri, run_id
        os.environ.update(MLFLOW_TRACKING_URI=local_uri, MLFLOW_RUN_ID=run_id, MLFLOW_EXPERIMENT_ID="0")
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
        return local_uri

    def collect(self, reported: ReportedWarnings) -> bytes | None:
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


def store_reachable(uri: str) -> bool:
    """Whether this worker process can use the tracking store, decided once per store."""
    cache = process_cache().setdefault("reachable", {})
    if uri not in cache:
        cache[uri] = probe_store(uri)
    return bool(cache[uri])


def probe_store(uri: str) -> bool:
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
