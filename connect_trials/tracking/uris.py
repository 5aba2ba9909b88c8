"""Tracking URIs: made usable from the workers, safe to print, and checked before use."""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path

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


def redacted_uri(uri: str) -> str:
    """The URI without a password, for messages."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.password is None:
        return uri
    host = parsed.netloc.rsplit("@", 1)[1]
    return parsed._replace(netloc=f"{parsed.username}:***@{host}").geturl()


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
