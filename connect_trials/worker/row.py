"""The one row a trial task answers with: its columns and statuses (``job.py`` decodes it)."""

from __future__ import annotations

from typing import Any

# Column order of the row.
RESULT_SCHEMA = (
    "status string, value binary, error_type string, error_text string, "
    "started_at double, finished_at double, attempt int, output string, warnings array<string>, "
    "relayed binary"
)
STATUS_RETURNED = "returned"
STATUS_RAISED = "raised"
# This task attempt came after MAX_OBJECTIVE_ATTEMPTS that ran the objective: it does not run
# it again (and answers with no row, see TrialRetriedError).
STATUS_ATTEMPTS_EXHAUSTED = "attempts_exhausted"
STATUS_MISMATCH = "mismatch"  # the client's Python or pyspark cannot pickle for this worker

# Attempts of one trial's task that may run the objective: the first, and one more (after its
# Python worker or executor died, or a speculative copy).
MAX_OBJECTIVE_ATTEMPTS = 2


class TrialRetriedError(RuntimeError):
    """A task attempt that may not run the objective any more. It fails the attempt rather
    than answering with a row: a failed attempt is only counted by Spark, so another attempt
    still running (a speculative copy's original, say) can end the trial DONE, while an
    answer would have been taken as the trial's result."""


def new_row(attempt: int) -> dict[str, Any]:
    """A row for a trial that returned nothing yet; its times are set when it ends."""
    return {
        "status": STATUS_RETURNED,
        "value": None,
        "error_type": None,
        "error_text": None,
        "attempt": attempt,
        "output": "",
        "warnings": [],
        "relayed": None,
    }


def result_frame(row: dict[str, Any]) -> Any:
    """The row as the one-row pandas DataFrame ``mapInPandas`` yields."""
    import pandas as pd

    columns = [c.split()[0] for c in RESULT_SCHEMA.split(", ")]
    return pd.DataFrame({c: [row[c]] for c in columns})
