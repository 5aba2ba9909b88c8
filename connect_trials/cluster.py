"""How many trials the cluster can run at once, learned over Spark Connect.

Spark Connect has no ``sparkContext.defaultParallelism``. What the cluster does expose is
how many partitions it gives an unpartitioned ``spark.range``: Spark sizes that by the
task slots of its executors (``spark.sql.leafNodeDefaultParallelism``, which defaults to
the scheduler's default parallelism). A small probe job counts them.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def task_slots(spark: Any) -> int | None:
    """The cluster's task slots, or None when they cannot be learned."""
    for key in ("spark.default.parallelism", "spark.sql.leafNodeDefaultParallelism"):
        try:
            value = spark.conf.get(key, None)
        except Exception:  # noqa: BLE001 - some servers refuse to show their conf
            value = None
        if value:
            try:
                return int(value)
            except ValueError:
                pass
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
