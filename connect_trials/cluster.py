"""How many trials the cluster can run at once, learned over Spark Connect.

Spark Connect has no ``sparkContext.defaultParallelism``. The cheap answers come from the
server's conf, read without a job: ``spark.default.parallelism`` when set, ``local[N]``, or
``spark.cores.max`` / ``spark.executor.instances`` x ``spark.executor.cores`` on a cluster.
Only when none of them answers does a small probe job count the partitions Spark gives an
unpartitioned ``spark.range`` (it sizes them by its executors' task slots). The answer is
kept per session: the probe's first Python job costs seconds on a fresh session.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

logger = logging.getLogger(__name__)

_slots_by_session: dict[str, int | None] = {}
_lock = threading.Lock()


def task_slots(spark: Any) -> int | None:
    """The cluster's task slots, or None when they cannot be learned."""
    key = str(getattr(spark, "session_id", None) or id(spark))
    with _lock:
        if key in _slots_by_session:
            return _slots_by_session[key]
    slots = _slots_from_conf(spark)
    if slots is None:
        slots = _slots_from_probe(spark)
    with _lock:
        _slots_by_session[key] = slots
    return slots


def _slots_from_conf(spark: Any) -> int | None:
    def number(key: str) -> int | None:
        value = spark_conf(spark, key)
        return int(value) if value and value.strip().isdigit() and int(value) > 0 else None

    master = spark_conf(spark, "spark.master") or ""
    local = re.fullmatch(r"local\[(\d+)(?:,\s*\d+)?\]", master)
    candidates = [
        number("spark.default.parallelism"),
        int(local.group(1)) if local else (1 if master == "local" else None),
        number("spark.cores.max"),
    ]
    instances, cores = number("spark.executor.instances"), number("spark.executor.cores")
    candidates.append(instances * cores if instances and cores else None)
    return next((c for c in candidates if c is not None), None)


def _slots_from_probe(spark: Any) -> int | None:
    try:
        from pyspark.sql import functions as F

        probe = spark.range(0, 100_000).select(F.spark_partition_id().alias("p")).distinct()
        return int(probe.count())
    except Exception as exc:  # noqa: BLE001 - fall back to the documented default
        logger.debug("could not learn the cluster's task slots: %s", exc)
        return None


def spark_conf(spark: Any, key: str) -> str | None:
    """A Spark conf value read over Connect, or None if unset or unreadable."""
    try:
        value = spark.conf.get(key, None)
    except Exception:  # noqa: BLE001
        return None
    return None if value is None else str(value)
