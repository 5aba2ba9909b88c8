"""Client and cluster must agree on Python and pyspark before any trial runs.

Objectives travel by value (cloudpickle), and a pickle made by one Python minor version
fails on another in confusing ways: an unrelated ``TypeError`` in the middle of the first
trial's traceback, or pyspark's own PYTHON_VERSION_MISMATCH. So every trial's job carries the
client's versions, and the worker compares them with its own before it unpickles the
objective (``worker.run_objective``). A mismatch, or pyspark's own refusal of this Python, stops
fmin with :class:`ClusterMismatchError` naming both sides and the fix, and no objective runs.

The check needs no job of its own: a probe job before the first trial cost a fresh session
0.2-0.35 s here (the first trial then ran as a second job).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


class ClusterMismatchError(RuntimeError):
    """The cluster's Python or pyspark cannot run objectives pickled by this client."""


@dataclass(frozen=True)
class Versions:
    python: str  # major.minor.micro
    pyspark: str

    @property
    def python_minor(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    @property
    def pyspark_major(self) -> int:
        return int(self.pyspark.split(".")[0])


def client_versions() -> Versions:
    import pyspark

    return Versions(python=".".join(map(str, sys.version_info[:3])), pyspark=pyspark.__version__)


def mismatch(client: Versions, worker: Versions) -> str | None:
    """Why ``worker`` cannot run what ``client`` pickles, or None when they agree."""
    if client.python_minor != worker.python_minor:
        return (
            f"the Spark workers run Python {worker.python} but this client runs Python "
            f"{client.python}; objectives are pickled here and unpickled there, which needs the "
            "same Python major.minor. Run the client with Python "
            f"{'.'.join(map(str, worker.python_minor))} (e.g. a virtual environment made with it), "
            "or point the cluster's PYSPARK_PYTHON at a Python "
            f"{'.'.join(map(str, client.python_minor))}."
        )
    if client.pyspark_major != worker.pyspark_major:
        return (
            f"the Spark workers have pyspark {worker.pyspark} but this client has pyspark "
            f"{client.pyspark}; objectives are pickled with pyspark's cloudpickle, which needs "
            f"the same major version. Install pyspark=={worker.pyspark} on the client."
        )
    return None


def refused_by_pyspark(text: str) -> str | None:
    """The error to raise when a trial's job failed because pyspark's worker refused this
    client's Python (it checks before any of our code runs), else None."""
    if "PYTHON_VERSION_MISMATCH" not in text and "different minor versions" not in text:
        return None
    return (
        f"the Spark workers cannot run this client's Python {client_versions().python} objectives: "
        f"{_first_line(text)}. Use the same Python major.minor on both sides (the client's "
        "interpreter, and the cluster's PYSPARK_PYTHON)."
    )


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if "PYTHON_VERSION_MISMATCH" in line or "different minor versions" in line:
            return line.strip()[:500]
    return ""
