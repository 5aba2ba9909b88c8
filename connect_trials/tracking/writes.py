"""The tracker's writes: one thread that runs them in order, and what MLflow trouble does.

A write the server refuses (a bad value, say) is one warning and the rest goes on; any other
failure turns tracking off for the rest of the fmin, with one warning. What we log of an
error never carries credentials: URLs in it lose their userinfo and query.

The queue is bounded (``MAX_QUEUED_WRITES`` writes, ``MAX_QUEUED_BYTES`` of relayed logging
they carry): when MLflow falls that far behind, the next write waits for room, which holds up
the search, and says so once. A queue that stops moving turns tracking off, as a stuck drain
does, so the wait is bounded."""

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
MAX_QUEUED_WRITES = 64
MAX_QUEUED_BYTES = 64 * 1024 * 1024


class TrackingWrites:
    """Queued MLflow writes of one fmin, and whether tracking is still on."""

    def __init__(self) -> None:
        self.tracking_uri = ""
        self.thread = CallThread("connect-trials-mlflow-write")
        self.broken = threading.Event()
        self._lock = threading.Lock()
        self._refusal_reported = False
        self._room = threading.Condition()
        self._queued = 0  # writes queued, not yet run
        self._queued_bytes = 0  # what they carry (relayed logging)
        self._full_reported = False

    def later(self, call: Callable[..., Any], *args: Any, size: int = 0) -> None:
        """Queue a write carrying ``size`` bytes; it is skipped if tracking is off by the time
        its turn comes. Waits while the queue is full (see the module's text)."""
        self._wait_for_room(size)

        def write() -> None:
            try:
                if not self.broken.is_set():
                    self.quietly(call, *args)
            finally:
                self._left_queue(size)

        if self.thread.submit(write).cancelled():  # closed: it never runs
            self._left_queue(size)

    def _wait_for_room(self, size: int) -> None:
        with self._room:
            progress = self.thread.completed
            while not self.broken.is_set() and self._full(size):
                if not self._full_reported:
                    self._full_reported = True
                    logger.warning(
                        "MLflow is behind this fmin: %d writes (%.1f MiB of relayed logging) wait to be "
                        "written, so the search waits for room before the next one (tracking URI %s).",
                        self._queued, self._queued_bytes / (1024 * 1024), redacted_uri(self.tracking_uri),
                    )  # fmt: skip
                if not self._room.wait_for(lambda: not self._full(size), CALL_TIMEOUT_S):
                    if self.thread.completed == progress:
                        break  # not moving: tracking goes off below, and the write is skipped
                    progress = self.thread.completed
            else:
                self._queued += 1
                self._queued_bytes += size
                return
        self.disable(TimeoutError(f"MLflow wrote nothing within {CALL_TIMEOUT_S:g} s with its queue full"))
        with self._room:
            self._queued += 1
            self._queued_bytes += size

    def _full(self, size: int) -> bool:
        """No room for one more write of ``size`` (an empty queue always has room)."""
        return self._queued > 0 and (
            self._queued >= MAX_QUEUED_WRITES or self._queued_bytes + size > MAX_QUEUED_BYTES
        )

    def _left_queue(self, size: int) -> None:
        with self._room:
            self._queued -= 1
            self._queued_bytes -= size
            self._room.notify_all()

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
