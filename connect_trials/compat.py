"""Client and cluster must agree on Python and pyspark before any trial runs.

Objectives travel by value (cloudpickle), and a pickle made by one Python minor version
fails on another in confusing ways: an unrelated ``TypeError`` in the middle of the first
trial's traceback, or pyspark's own PYTHON_VERSION_MISMATCH. So before the first trial of a
session, one tiny job reads the workers' versions, and a mismatch raises
:class:`ClusterMismatchError` naming both sides and the fix.

The probe runs once per session (cached by session id). It is a job of its own, but not an
extra one: the first Python job of a Spark Connect session starts the session's Python
workers (5-8 s here), which the first trial would otherwise pay.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("connect_trials")


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


_checked: dict[str, Versions] = {}
_lock = threading.Lock()


def check_cluster(spark: Any) -> Versions | None:
    """The workers' versions, checked against this client's (once per session).

    Raises :class:`ClusterMismatchError` on a mismatch. Returns None, with a debug line, when
    the probe fails for another reason: the first trial will then show the real error."""
    key = _session_key(spark)
    with _lock:
        if key in _checked:
            return _checked[key]
    client = client_versions()
    try:
        worker = _probe(spark)
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        if "PYTHON_VERSION_MISMATCH" in text or "different minor versions" in text:
            raise ClusterMismatchError(
                f"the Spark workers cannot run this client's Python {client.python} objectives: "
                f"{_first_line(text)}. Use the same Python major.minor on both sides (the "
                "client's interpreter, and the cluster's PYSPARK_PYTHON)."
            ) from None
        logger.debug("could not read the workers' versions: %s", exc)
        return None
    reason = mismatch(client, worker)
    if reason is not None:
        raise ClusterMismatchError(reason)
    with _lock:
        _checked[key] = worker
    return worker


def _probe(spark: Any) -> Versions:
    def versions(batches: Any) -> Any:
        import sys

        import pandas as pd
        import pyspark

        for _ in batches:
            pass
        yield pd.DataFrame(
            {"python": [".".join(map(str, sys.version_info[:3]))], "pyspark": [pyspark.__version__]}
        )

    row = spark.range(0, 1, 1, 1).mapInPandas(versions, "python string, pyspark string").collect()[0]
    return Versions(python=row["python"], pyspark=row["pyspark"])


def _session_key(spark: Any) -> str:
    return str(getattr(spark, "session_id", None) or id(spark))


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:500]
    return ""
