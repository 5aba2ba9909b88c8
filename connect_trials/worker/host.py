"""Where the worker code runs, which decides what it may do to the process around it."""

from __future__ import annotations

import enum


class Host(enum.Enum):
    """The process a trial runs in.

    ``EXECUTOR``: a Spark Python worker, reused from task to task. The trial may own the
    process while it runs: file descriptors 1 and 2, the log-record factory, MLflow's tracer
    provider, and a Ctrl-C there is the executor's, to be reported as the trial's error.

    ``CLIENT``: the user's own process (debug mode). The user's MLflow runs, streams,
    signals and process-wide settings are left as they were: only what the trial itself
    started is ended, ``KeyboardInterrupt`` and ``SystemExit`` stop the user's fmin, and
    output is captured at the Python level, still shown where the user sees it."""

    EXECUTOR = "executor"
    CLIENT = "client"
