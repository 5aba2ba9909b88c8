"""Errors that connect_trials raises to its callers, and how their texts are shown in one line."""


class ClusterUnavailableError(RuntimeError):
    """The Spark Connect server stopped answering during fmin.

    Every trial that had finished is kept in the trials object; trials that were running
    are marked cancelled.
    """


def last_line(text: str | None) -> str:
    """The last non-blank line of an error text (a traceback's own message), for one-line logs."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def one_line(exc: BaseException) -> str:
    """An exception as ``Type: first line of its message``, for warnings."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
