"""The ``connect_trials`` logger, visible by default as hyperopt's ``SparkTrials`` logger is.

Scripts written for ``SparkTrials`` rely on its INFO lines (``Total Trials: N: ... succeeded,
... failed, ... cancelled.``) and on each failure's line reaching the terminal: hyperopt gives
its logger level INFO and, when logging is not configured at all, a stderr handler. The same
here, with one difference: our handler looks at the root logger when a record is emitted, not
at import, so an application that calls ``logging.basicConfig()`` later gets each line once.
"""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "connect_trials"


class _UnconfiguredLoggingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr only while the root logger has no handler of its own."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            self.stream = sys.stderr  # as it is now: pytest and notebooks swap it
            super().emit(record)


def configure_default_logger() -> logging.Logger:
    """Level INFO unless set, and the stderr handler above (once)."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not any(isinstance(h, _UnconfiguredLoggingHandler) for h in logger.handlers):
        logger.addHandler(_UnconfiguredLoggingHandler())
    return logger
