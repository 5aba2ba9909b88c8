"""The Spark session we were given: what kind it is, what its errors mean, whether its server lives.

The Connect client's retry policy is shared by every thread and every fmin that uses the
session, so fmin never changes it while the server may still answer. Instead each fmin runs
a :class:`ServerWatchdog` that opens a TCP connection to the server every second: a busy or
briefly paused server still accepts connections (the kernel does, for a stopped process), a
dead one refuses them. Only after ``SERVER_GONE_AFTER_S`` of refusals is the server declared
gone; then fmin fails with ``ClusterUnavailableError`` and the dead session, which nobody can
use any more, gets a retry policy that gives up in seconds so that the process can exit.
Retry loops already asleep in a back-off (up to a minute each by default) are woken too: the
watchdog makes the session's back-offs wait on an event that the server's death sets.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from connect_trials.errors import ClusterUnavailableError

logger = logging.getLogger("connect_trials")

CONNECT = "connect"
CLASSIC = "classic"

# How long the server may refuse connections before fmin gives up on it: longer than a load
# balancer's blip or a server's pause, far shorter than the client's ~10 minutes of retries.
SERVER_GONE_AFTER_S = 20.0
_PROBE_EVERY_S = 1.0
_PROBE_TIMEOUT_S = 2.0

# The policy of a session whose server is gone: 5 retries, 0.1 s doubling to at most 1 s
# (about 2.5 s in all, none where the back-offs are woken), so that what still talks to it
# (the release of the session at exit) gives up at once instead of hanging the process.
_RETRIES, _INITIAL_BACKOFF_MS, _MAX_BACKOFF_MS = 5, 100, 1000

# Error conditions of the Connect client that say the session or its server is gone.
_SESSION_GONE_CONDITIONS = frozenset(
    {"NO_ACTIVE_SESSION", "INVALID_HANDLE.SESSION_CLOSED", "RETRIES_EXCEEDED"}
)
OPERATION_CANCELED = "OPERATION_CANCELED"


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


# -- what an error means ----------------------------------------------------------------------------
def error_condition(exc: BaseException) -> str | None:
    """The Spark error condition of ``exc`` (e.g. ``OPERATION_CANCELED``), if it has one."""
    get = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    try:
        return get() if get is not None else None
    except Exception:  # noqa: BLE001
        return None


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the Spark Connect server is gone (not that a job failed)."""
    if isinstance(exc, ClusterUnavailableError):
        return True
    if error_condition(exc) in _SESSION_GONE_CONDITIONS:
        return True
    try:
        import grpc
    except ImportError:  # pragma: no cover - classic session without grpc
        return False
    gone_codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, grpc.RpcError):
            code = getattr(current, "code", lambda: None)()
            if code in gone_codes:
                return True
        grpc_code = getattr(current, "getGrpcStatusCode", None)
        if grpc_code is not None:
            try:
                if grpc_code() in gone_codes:
                    return True
            except Exception:  # noqa: BLE001
                pass
        current = current.__cause__ or current.__context__
    return "UNAVAILABLE" in str(exc) and "grpc" in str(exc).lower()


def is_python_worker_crash(text: str | None) -> bool:
    """Whether a failed job's error says its Python worker died (os._exit, a segfault, a kill)."""
    return "Python worker exited unexpectedly" in (text or "")


# -- is the server there? ------------------------------------------------------------------------
def server_address(spark: Any) -> tuple[str, int] | None:
    """Host and port of a Connect session's server, or None (classic session, custom channel)."""
    if session_kind(spark) != CONNECT:
        return None
    try:
        host, _, port = str(spark.client._builder.endpoint).rpartition(":")
        return host.strip("[]"), int(port)
    except Exception:  # noqa: BLE001 - a channel builder without an endpoint
        return None


class ServerWatchdog:
    """Declares a server gone after it refused TCP connections for ``gone_after`` seconds.

    Runs in a thread of its own for one fmin; ``on_gone`` is called once, from that thread.
    Nothing it does touches the session, so other users of the session see no change."""

    def __init__(
        self,
        address: tuple[str, int],
        on_gone: Callable[[str], None],
        gone_after: float = SERVER_GONE_AFTER_S,
        probe_every: float = _PROBE_EVERY_S,
    ) -> None:
        self.address = address
        self._on_gone = on_gone
        self._gone_after = gone_after
        self._probe_every = probe_every
        self._stopped = threading.Event()
        self.gone = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="connect-trials-watchdog", daemon=True)

    def __enter__(self) -> ServerWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        refused_since: float | None = None
        while not self._stopped.wait(self._probe_every):
            error = _refusal(self.address)
            if error is None:
                refused_since = None
                continue
            now = time.monotonic()
            if refused_since is None:
                refused_since = now
                logger.warning(
                    "the Spark Connect server at %s:%s does not accept connections (%s); "
                    "fmin gives up on it after %.0f s",
                    *self.address,
                    error,
                    self._gone_after,
                )
            if now - refused_since >= self._gone_after:
                self.gone.set()
                self._on_gone(
                    f"the Spark Connect server at {self.address[0]}:{self.address[1]} refused "
                    f"connections for {now - refused_since:.0f} s ({error})"
                )
                return


def _refusal(address: tuple[str, int]) -> str | None:
    """None when the server accepts a TCP connection, else why not."""
    try:
        with socket.create_connection(address, timeout=_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


# The event, on a Connect client, that ends the back-offs of its retry loops.
_BACKOFF_ENDS = "_connect_trials_backoff_ends"


def wakeable_backoffs(spark: Any) -> None:
    """Let :func:`give_up_quickly` wake the session's retry loops from their back-off.

    pyspark sleeps between attempts with ``time.sleep``, up to a minute per attempt: a call that
    went to sleep before the server was declared gone would sleep on, and pyspark's release of
    an interrupted execution runs in a thread that the interpreter joins at exit. Here each of
    the client's retry loops sleeps on an event instead, which times out like the sleep until
    the server is declared gone. Nothing else changes for other users of the session.
    Idempotent; a client without these internals is left as it is."""
    if session_kind(spark) != CONNECT:
        return
    client = spark.client
    if getattr(client, _BACKOFF_ENDS, None) is not None:
        return
    make_retrying = getattr(client, "_retrying", None)
    if make_retrying is None or not hasattr(make_retrying(), "_sleep"):
        return
    ends = threading.Event()

    def retrying() -> Any:
        loop = make_retrying()
        loop._sleep = ends.wait  # wait(seconds) sleeps as long as time.sleep(seconds), unless set
        return loop

    client._retrying = retrying  # read per call, and by the reattaching iterators it makes
    setattr(client, _BACKOFF_ENDS, ends)


def give_up_quickly(spark: Any) -> None:
    """Bound the retries of a session whose server is gone: nobody can use it any more, and
    what still talks to it (a call already retrying, pyspark's release of the session at
    exit) must not hang. Calls already in their retry loop stop at their next attempt, which
    comes at once where :func:`wakeable_backoffs` was called."""
    if session_kind(spark) != CONNECT:
        return
    from pyspark.sql.connect.client.retries import DefaultPolicy

    client = spark.client
    for policy in client.get_retry_policies():
        policy.max_retries = 0  # read by in-flight retry loops at their next attempt
    client.set_retry_policies([_bounded_policy(DefaultPolicy)])
    ends = getattr(client, _BACKOFF_ENDS, None)
    if ends is not None:
        ends.set()


def _bounded_policy(policy_class: Any) -> Any:
    return policy_class(
        max_retries=_RETRIES,
        initial_backoff=_INITIAL_BACKOFF_MS,
        backoff_multiplier=2.0,
        max_backoff=_MAX_BACKOFF_MS,
        jitter=0,
    )


@contextlib.contextmanager
def bounded_retries(spark: Any) -> Iterator[None]:
    """For the owner of a session (benchmarks, scripts): within the block, the Connect client
    gives up on an unreachable server in seconds. fmin does not use it: it would change the
    policy for every other user of the session.

    The client's own policies come back when the block ends, unless it ends because the
    server is gone."""
    if session_kind(spark) != CONNECT:
        yield
        return
    from pyspark.sql.connect.client.retries import DefaultPolicy

    client = spark.client
    saved = client.get_retry_policies()
    client.set_retry_policies([_bounded_policy(DefaultPolicy)])
    server_gone = False
    try:
        yield
    except ClusterUnavailableError:
        server_gone = True
        raise
    finally:
        if not server_gone:
            client.set_retry_policies(saved)


def add_content_artifact(spark: Any, data: bytes, stem: str, suffix: str, **kind: bool) -> str:
    """Add ``data`` to the Connect session as an artifact named by its content hash; its name.

    The server refuses a name it holds already (ARTIFACT_ALREADY_EXISTS): with the name made
    from the content, that means the same bytes are there, so it is no error. Any other
    refusal raises. ``kind`` is ``addArtifacts``' own (``file=True``, ``pyfile=True``)."""
    name = f"{stem}{hashlib.sha256(data).hexdigest()[:40]}{suffix}"
    with tempfile.TemporaryDirectory(prefix="connect-trials-") as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        try:
            spark.addArtifacts(path, **kind)
        except Exception as exc:
            if "ARTIFACT_ALREADY_EXISTS" not in str(exc):
                raise
    return name
