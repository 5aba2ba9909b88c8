"""The warnings a trial reports to the client: on a cluster, the executor's log is out of the
user's reach."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

from connect_trials.worker.host import Host

# Distinct warnings a trial reports to the client, each cut to this many characters.
MAX_WARNINGS = 20
_MAX_WARNING_CHARS = 2000


class ReportedWarnings:
    """The distinct warnings the objective raised and, on an executor, the log records at
    WARNING or above it emitted (MLflow's own, for instance), while the trial ran.

    Python warnings are seen by ``warnings.showwarning``, after the filters: an ignored
    warning is not reported, and it is still printed (into the captured output). On an
    executor, log records are seen where they are made (``logging.setLogRecordFactory``),
    because MLflow replaces its loggers' handlers when it is imported, which is often inside
    the objective. In the user's process no record factory is installed: it is process-wide,
    and the user sees those records on their own console anyway.

    Only the trial's own thread is reported (in debug mode, fmin's other threads run
    alongside). At ``stop`` each hook is put back if it is still the one installed; if code
    wrapped it meanwhile, it stays in that chain, passing everything through."""

    def __init__(self, host: Host) -> None:
        self.messages: list[str] = []
        self._host = host
        self._seen: set[str] = set()
        self._thread = threading.get_ident()
        self._active = False
        # (our hook, the one before it, how to read and how to set the current one)
        self._installed: list[tuple[Any, Any, Callable[[], Any], Callable[[Any], None]]] = []

    def start(self) -> None:
        self._active = True
        previous_showwarning = warnings.showwarning

        def showwarning(message: Any, category: type[Warning], filename: str, lineno: int, *args: Any,
                        **kwargs: Any) -> None:  # fmt: skip
            if self._active and threading.get_ident() == self._thread:
                self.add(f"{category.__name__}: {message} ({os.path.basename(filename)}:{lineno})")
            previous_showwarning(message, category, filename, lineno, *args, **kwargs)

        warnings.showwarning = showwarning
        self._installed.append((showwarning, previous_showwarning, _get_showwarning, _set_showwarning))
        if self._host is not Host.EXECUTOR:
            return
        previous_factory = logging.getLogRecordFactory()

        def record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous_factory(*args, **kwargs)
            if self._active and record.levelno >= logging.WARNING and record.thread == self._thread:
                self.add(f"{record.levelname} {record.name}: {_message_of(record)}")
            return record

        logging.setLogRecordFactory(record_factory)
        self._installed.append(
            (record_factory, previous_factory, logging.getLogRecordFactory, logging.setLogRecordFactory)
        )

    def stop(self) -> None:
        self._active = False
        for hook, previous, current, install in reversed(self._installed):
            if current() is hook:
                install(previous)
        self._installed.clear()

    def add(self, message: str) -> None:
        message = message[:_MAX_WARNING_CHARS]
        if message not in self._seen and len(self.messages) < MAX_WARNINGS:
            self._seen.add(message)
            self.messages.append(message)


def _get_showwarning() -> Any:
    return warnings.showwarning


def _set_showwarning(hook: Any) -> None:
    warnings.showwarning = hook


def _message_of(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is the logger's problem, not ours
        return str(record.msg)
