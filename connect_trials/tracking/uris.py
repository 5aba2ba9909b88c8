"""Where the tracking server is: its URI made usable from the workers, safe to print and
checked before use, and the environment the workers need to reach it."""

from __future__ import annotations

import base64
import os
import socket
import urllib.parse
from pathlib import Path

from connect_trials.worker.redaction import redacted_text, redacted_uri

# How long the client waits for a TCP connection to an HTTP tracking server.
PROBE_TIMEOUT_S = 2.0


def absolute_tracking_uri(uri: str) -> str:
    """The URI with local paths made absolute: workers run in another directory."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if parsed.scheme == "" and uri and uri != "databricks":
        return Path(uri).absolute().as_uri()
    if parsed.scheme == "file" and not parsed.netloc and not parsed.path.startswith("/"):
        return Path(parsed.path).absolute().as_uri()
    return uri


def probe(uri: str) -> None:
    """Raise ``ConnectionError`` at once if an HTTP tracking server refuses connections
    (MLflow itself would retry for minutes)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConnectionError(f"cannot connect to the tracking server: {exc}") from None


# The client's values of these reach the workers: credentials, TLS and retry settings of
# the tracking server, and where a file store may be used. Never logged.
FORWARDED_ENV = (
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


# Forwarded variables that name a client file: its content travels too, for workers that do
# not see the client's disk (see ``worker.client_files.place_client_files``).
FILE_ENV = ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH")
_MAX_SHIPPED_FILE_BYTES = 1024 * 1024


def worker_environ(tracking_uri: str, experiment_id: str) -> dict[str, str]:
    """The environment a worker needs to write into this experiment (holds credentials)."""
    from connect_trials.worker import SHIPPED_FILE_PREFIX

    environ = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_EXPERIMENT_ID": experiment_id,
        **{name: os.environ[name] for name in FORWARDED_ENV if name in os.environ},
    }
    for name in FILE_ENV:
        path = environ.get(name, "")
        if os.path.isfile(path) and os.path.getsize(path) <= _MAX_SHIPPED_FILE_BYTES:
            with open(path, "rb") as f:
                environ[SHIPPED_FILE_PREFIX + name] = base64.b64encode(f.read()).decode("ascii")
    return environ


__all__ = [
    "FORWARDED_ENV", "absolute_tracking_uri", "probe", "redacted_text", "redacted_uri", "worker_environ",
]  # fmt: skip
