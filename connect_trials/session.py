"""What kind of Spark session we were given, and how long it may wait for a dead server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from connect_trials.errors import ClusterUnavailableError

CONNECT = "connect"
CLASSIC = "classic"

# A server that stops answering fails the fmin within seconds instead of the ~10 minutes
# of the default policy: 5 retries, 0.1 s doubling to at most 1 s (about 2.5 s in all).
_RETRIES, _INITIAL_BACKOFF_MS, _MAX_BACKOFF_MS = 5, 100, 1000


def session_kind(spark: Any) -> str | None:
    """``"connect"``, ``"classic"``, or None for anything that is not a SparkSession."""
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        if isinstance(spark, ConnectSession):
            return CONNECT
    except ImportError:  # pragma: no cover - pyspark without the connect extra
        pass
    from pyspark.sql import SparkSession as ClassicSession

    if isinstance(spark, ClassicSession):
        return CLASSIC
    return None


@contextlib.contextmanager
def bounded_retries(spark: Any) -> Iterator[None]:
    """Within the block, the Connect client gives up on an unreachable server in seconds.

    The client's own policies come back when the block ends, unless it ends because the
    server is gone."""
    if session_kind(spark) != CONNECT:
        yield
        return
    from pyspark.sql.connect.client.retries import DefaultPolicy

    client = spark.client
    saved = client.get_retry_policies()
    client.set_retry_policies(
        [
            DefaultPolicy(
                max_retries=_RETRIES,
                initial_backoff=_INITIAL_BACKOFF_MS,
                backoff_multiplier=2.0,
                max_backoff=_MAX_BACKOFF_MS,
                jitter=0,
            )
        ]
    )
    server_gone = False
    try:
        yield
    except ClusterUnavailableError:
        # The server is gone and this session with it (a restarted server answers
        # NO_ACTIVE_SESSION). Keep the bounded policy so that what still talks to the dead
        # server, such as pyspark's release of the session at exit, gives up in seconds
        # instead of hanging the process for ten minutes.
        server_gone = True
        raise
    finally:
        if not server_gone:
            client.set_retry_policies(saved)
