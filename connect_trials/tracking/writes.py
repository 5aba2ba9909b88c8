"""The tracker's writes: one thread that runs them in order, and what MLflow trouble does.

A write the server refuses (a bad value, say) is one warning and the rest goes on; any other
failure turns tracking off for the rest of the fmin, with one warning. What we log of an
error never carries credentials: URLs in it lose their userinfo and query."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from connect_trials.errors import last_line
from connect_trials.tracking.call_thread import CallThread, wait_while_progress
from connect_trials.tracking.mlflow_runs import is_refusal
from connect_trials.tracking.uris import redacted_text, redacted_uri

logger = logging.getLogger("connect_trials")

# The longest fmin waits for MLflow without seeing progress (MLflow itself retries an
# unreachable server for minutes).
CALL_TIMEOUT_S = 10.0


class TrackingWrites:
    """Queued MLflow writes of one fmin, and whether tracking is still on."""

    def __init__(self) -> None:
        self.tracking_uri = ""
        self.thread = CallThread("connect-trials-mlflow-write")
        self.broken = threading.Event()
        self._lock = threading.Lock()
        self._refusal_reported = False

    def later(self, call: Callable[..., Any], *args: Any) -> None:
        """Queue a write; it is skipped if tracking is off by the time its turn comes."""
        self.thread.submit(lambda: None if self.broken.is_set() else self.quietly(call, *args))

    def quietly(self, call: Callable[..., Any], *args: Any) -> None:
        """Make a write now; a failure is reported, never raised."""
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        (self.refused if is_refusal(exc) else self.disable)(exc)

    def drain(self) -> None:
        """Wait for the writes queued so far, while they make progress; tracking turns off
        when they stop moving."""
        try:
            wait_while_progress(self.thread, self.thread.submit(lambda: None), CALL_TIMEOUT_S)
        except TimeoutError as exc:
            self.disable(exc)

    def refused(self, exc: BaseException) -> None:
        """The server answered but refused one write: warn once, go on with the rest."""
        log = logger.debug if self._refusal_reported else logger.warning
        self._refusal_reported = True
        log("MLflow refused part of this fmin's tracking; the rest goes on: %s", _said(exc))

    def disable(self, exc: BaseException) -> None:
        with self._lock:
            if self.broken.is_set():
                return
            self.broken.set()
        logger.warning(
            "MLflow tracking is off for the rest of this fmin (tracking URI %s): %s: %s. The trials run on; "
            "fmin ends the runs it created when it finishes.",
            redacted_uri(self.tracking_uri) or "<unresolved>", type(exc).__name__, _said(exc),
        )  # fmt: skip

    def close(self) -> None:
        self.thread.close()


def _said(exc: BaseException) -> str:
    return redacted_text(last_line(str(exc)))[:500]
