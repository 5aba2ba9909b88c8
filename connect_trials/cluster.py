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


def task_slots(spark: Any, resource_profile: Any = None) -> int | None:
    """How many trial tasks the cluster runs at once, or None when that cannot be learned.

    With a ``resource_profile``, each trial task takes its task cpus of the slots."""
    slots = _cluster_slots(spark)
    request = resource_profile.taskResources.get("cpus") if resource_profile is not None else None
    if slots is None or request is None or request.amount <= 1:
        return slots
    return max(int(slots // request.amount), 1)


def _cluster_slots(spark: Any) -> int | None:
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


def check_task_cpus(spark: Any, profile: Any) -> None:
    """Refuse a profile whose tasks need more cpus than an executor has: no executor could
    ever run its trials, and fmin would wait on them for ever."""
    request = profile.taskResources.get("cpus")
    executor_cores = spark_conf(spark, "spark.executor.cores")
    if request is None or not executor_cores or not executor_cores.isdigit():
        return
    if request.amount > int(executor_cores):
        raise ValueError(
            f"resource_profile asks for {request.amount:g} cpus per task but the cluster's "
            f"executors have {executor_cores} cores (spark.executor.cores), so no trial could "
            "ever be scheduled; ask for at most that many with "
            f"TaskResourceRequests().cpus({executor_cores})"
        )


def bind_resource_profile(spark: Any, profile: Any) -> None:
    """Give ``profile`` its server-side id now, through ``spark``, in this thread.

    Over Connect a ``ResourceProfile`` is created on the server lazily, by the first plan that
    uses it, through the *active session of the thread building that plan*. Trial threads
    have none (a session made with ``.create()`` is active only in its own thread), so every
    trial would fail with "SparkSession should be initialized before ResourceProfile
    creation". Once it has an id, the profile needs no session again.
    """
    from connect_trials.session import CONNECT, session_kind

    if session_kind(spark) != CONNECT or getattr(profile, "_java_resource_profile", None) is not None:
        return
    from pyspark.sql.connect.resource.profile import ResourceProfile as RemoteProfile
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    active = ConnectSession._active_session
    previous = getattr(active, "session", None)
    active.session = spark
    try:
        with profile._lock:
            if profile._id is None:
                # What ``profile.id`` does when pyspark knows it is remote, which it does not
                # when the session was built with the Connect builder directly.
                profile._id = RemoteProfile(profile.executorResources, profile.taskResources).id
    finally:
        active.session = previous


def spark_conf(spark: Any, key: str) -> str | None:
    """A Spark conf value read over Connect, or None if unset or unreadable."""
    try:
        value = spark.conf.get(key, None)
    except Exception:  # noqa: BLE001
        return None
    return None if value is None else str(value)
