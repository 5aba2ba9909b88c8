"""The Spark session we were given: what kind it is, what its errors mean, whether its server lives.

The Connect client's retry policy is shared by every thread and every fmin that uses the
session, so fmin never changes it while the server may still answer. Instead each fmin runs
inside :func:`watched`: a :class:`ServerWatchdog` opens a TCP connection to the server every
second. A busy or briefly paused server still accepts connections (the kernel does, for a
stopped process), a dead one refuses them. Only a refusal counts: a timeout, a failed name
lookup or an unreachable network says nothing about the server (a client behind a proxy may
have no direct route to it at all). After ``SERVER_GONE_AFTER_S`` of refusals in a row the
server is declared gone; fmin fails with ``ClusterUnavailableError``, and the session's retry
loops still under way give up at once: their back-offs (up to a minute each by default) wait
on an event that the server's death sets. When fmin returns, the session is as it was found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
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
# (about 2.5 s in all), so that what still talks to it (its release by spark.stop(), at
# exit) gives up in seconds instead of hanging the process for the default ~10 minutes.
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


class Probe(enum.Enum):
    """What one TCP connect to the server says."""

    ACCEPTED = "accepted"
    REFUSED = "refused"  # nothing listens there: the only evidence that the server is gone
    UNKNOWN = "unknown"  # a timeout, a failed name lookup, no route: no evidence either way


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    kind: Probe
    detail: str = ""


# Errors of an address that this host cannot use at all (an IPv6 address without IPv6): they
# do not make a refusal by the host's other addresses less certain.
_UNUSABLE_ADDRESS_ERRNOS = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


def probe_server(address: tuple[str, int], timeout: float = _PROBE_TIMEOUT_S) -> ProbeResult:
    """One TCP connect to each address of ``address`` (as ``socket.create_connection``)."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror: DNS, not the server
        return ProbeResult(Probe.UNKNOWN, f"cannot resolve {host}: {exc}")
    refused: list[OSError] = []
    other: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
            return ProbeResult(Probe.ACCEPTED)
        except ConnectionRefusedError as exc:
            refused.append(exc)
        except OSError as exc:  # TimeoutError, ENETUNREACH, EHOSTUNREACH, ...
            other.append(exc)
    detail = "; ".join(str(exc) or type(exc).__name__ for exc in refused + other)
    if refused and all(exc.errno in _UNUSABLE_ADDRESS_ERRNOS for exc in other):
        return ProbeResult(Probe.REFUSED, detail)
    return ProbeResult(Probe.UNKNOWN, detail or "no address")


class ServerWatchdog:
    """Declares a server gone after it refused TCP connections for ``gone_after`` seconds.

    Runs in a thread of its own; ``on_gone`` is called once, from that thread. Only refusals
    count (see :func:`probe_server`). A probe that cannot tell (a timeout, a failed lookup, an
    unreachable network) is logged at DEBUG and starts the count again, as an accepted
    connection does: the verdict needs ``gone_after`` seconds of refusals in a row, because a
    wrong verdict kills a healthy fmin while a late one only delays the failure that the
    trials' own calls report anyway. Nothing it does touches a session, so it serves any
    caller that wants to know whether a server is there (fmin, a reconnect)."""

    def __init__(
        self,
        address: tuple[str, int],
        on_gone: Callable[[str], None],
        gone_after: float = SERVER_GONE_AFTER_S,
        probe_every: float = _PROBE_EVERY_S,
        probe: Callable[[tuple[str, int]], ProbeResult] = probe_server,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self._on_gone = on_gone
        self._gone_after = gone_after
        self._probe_every = probe_every
        self._probe = probe
        self._clock = clock
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="connect-trials-watchdog", daemon=True)

    def __enter__(self) -> ServerWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        where = f"{self.address[0]}:{self.address[1]}"
        refused_since: float | None = None
        warned = False  # once per outage: from the first refusal after an accepted connection
        last: Probe | None = None
        while not self._stopped.wait(self._probe_every):
            result = self._probe(self.address)
            if result.kind is not Probe.REFUSED:
                if result.kind is Probe.UNKNOWN and last is not Probe.UNKNOWN:
                    logger.debug(
                        "cannot tell whether the Spark Connect server at %s is there (%s); "
                        "not counted as a refusal",
                        where,
                        result.detail,
                    )
                warned = warned and result.kind is not Probe.ACCEPTED
                refused_since, last = None, result.kind
                continue
            last = Probe.REFUSED
            now = self._clock()
            if refused_since is None:
                refused_since = now
                if not warned:
                    warned = True
                    logger.warning(
                        "the Spark Connect server at %s refuses connections (%s); fmin gives "
                        "up on it after %.0f s of refusals",
                        where,
                        result.detail,
                        self._gone_after,
                    )
            if now - refused_since >= self._gone_after and not self._stopped.is_set():
                self._on_gone(
                    f"the Spark Connect server at {where} refused connections for "
                    f"{now - refused_since:.0f} s ({result.detail})"
                )
                return


class ServerWatch:
    """The context of one fmin on a session: its server watched, the session as found after.

    Use it through :func:`watched`. Within the block, the Connect client's retry loops sleep
    their back-offs on an event (they sleep as long as before), and a
    :class:`ServerWatchdog` probes the server. When the server is declared gone (by the
    watchdog, by :meth:`give_up`, or by a ``ClusterUnavailableError`` leaving the block),
    every retry loop started within the block ends at its next attempt, asleep or not, and
    so do the loops that the block's calls start later (pyspark's release of an interrupted
    execution runs in a thread pool that the interpreter joins at exit: a CI run hung there
    for a minute-long back-off). Then ``on_gone(reason)`` is called, once, if the watchdog
    was the one to tell.

    After the block, the client's ``_retrying`` is what it was, and the user's retry policy
    objects were never modified (their ``max_retries`` included), so a session whose server
    was not declared gone is exactly as found. One whose server was declared gone keeps a
    policy that gives up in seconds: whatever still talks to it afterwards (``spark.stop()``
    releasing the session, pyspark's exit hooks) would otherwise retry for ~10 minutes
    against a server that refused connections for ``SERVER_GONE_AFTER_S``. The user's own
    policies are kept in :attr:`found_policies`, for a caller that sees the server back
    (``client.set_retry_policies(watch.found_policies)``).

    Several fmins may watch one session at once (threads): they share the wakeable retry
    loops, and the last to leave puts ``_retrying`` back. Classic sessions, and Connect
    sessions without an endpoint, are not watched."""

    def __init__(
        self,
        spark: Any,
        on_gone: Callable[[str], None],
        gone_after: float = SERVER_GONE_AFTER_S,
        probe_every: float = _PROBE_EVERY_S,
    ) -> None:
        self._spark = spark
        self._on_gone = on_gone
        self.address = server_address(spark)
        self._watchdog = (
            ServerWatchdog(self.address, self._declared_gone, gone_after, probe_every)
            if self.address is not None
            else None
        )
        self._retries: _WakeableRetries | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.gone_reason: str | None = None  # why the server was declared gone, if it was
        self.found_policies: list[Any] = []

    def __enter__(self) -> ServerWatch:
        if self._watchdog is None:
            return self
        client = self._spark.client
        self.found_policies = list(client.get_retry_policies())
        self._retries = _WakeableRetries.join(client)
        self._watchdog.__enter__()
        return self

    def give_up(self, reason: str) -> bool:
        """Declare the server gone (fmin's own evidence); False if it was, or the block ended."""
        with self._lock:
            if self._closed or self.gone_reason is not None or self._watchdog is None:
                return False
            self.gone_reason = reason
            if self._retries is not None:
                self._retries.give_up()
            else:  # a client without the internals: at least its new calls give up quickly
                self._spark.client.set_retry_policies([_bounded_policy(_default_policy_class())])
        logger.debug("the Spark Connect server is declared gone: %s", reason)
        return True

    def _declared_gone(self, reason: str) -> None:
        if self.give_up(reason):
            self._on_gone(reason)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, ClusterUnavailableError):
            self.give_up(str(exc))
        with self._lock:
            self._closed = True
        if self._watchdog is not None:
            self._watchdog.__exit__()
        if self._retries is not None:
            self._retries.leave()


def watched(
    spark: Any,
    on_gone: Callable[[str], None],
    gone_after: float = SERVER_GONE_AFTER_S,
    probe_every: float = _PROBE_EVERY_S,
) -> ServerWatch:
    """The context one fmin runs in: ``with watched(spark, on_gone): ...`` (see :class:`ServerWatch`)."""
    return ServerWatch(spark, on_gone, gone_after, probe_every)


# The _WakeableRetries of a Connect client, while some fmin watches it.
_WATCHED_RETRIES = "_connect_trials_watched_retries"
_JOIN_LOCK = threading.Lock()
_ABSENT = object()


class _WakeableRetries:
    """A Connect client's retry loops, sleeping on an event while fmins watch the client.

    pyspark makes each loop with ``client._retrying()`` (read per call; the reattaching
    iterators keep the callable they were made with) and sleeps between attempts with
    ``loop._sleep``; each loop reads its ``_policies`` at every attempt. Here ``_retrying``
    makes the client's loops as before, except that they sleep on ``_backoff_ends`` (a wait
    that times out as the sleep would) and are remembered, weakly, so that :meth:`give_up`
    can end them without touching the user's policy objects."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._found = client.__dict__.get("_retrying", _ABSENT)
        self._make_loop = client._retrying
        self._backoff_ends = threading.Event()
        self._lock = threading.Lock()
        self._loops: weakref.WeakSet[Any] = weakref.WeakSet()
        self._server_gone = False
        self._watches = 0

    @classmethod
    def join(cls, client: Any) -> _WakeableRetries | None:
        """The client's wakeable loops, installed by the first watch; None without pyspark's internals."""
        with _JOIN_LOCK:
            retries = getattr(client, _WATCHED_RETRIES, None)
            if retries is None:
                make_loop = getattr(client, "_retrying", None)
                sample = make_loop() if make_loop is not None else None
                if not (hasattr(sample, "_sleep") and isinstance(getattr(sample, "_policies", None), list)):
                    return None
                retries = cls(client)
                client._retrying = retries._retrying
                setattr(client, _WATCHED_RETRIES, retries)
            retries._watches += 1
            return retries

    def leave(self) -> None:
        """One watch ends; the last gives the client its own ``_retrying`` back."""
        with _JOIN_LOCK:
            self._watches -= 1
            if self._watches > 0:
                return
            delattr(self._client, _WATCHED_RETRIES)
            if self._found is _ABSENT:
                self._client.__dict__.pop("_retrying", None)  # the class's own method again
            else:
                self._client._retrying = self._found

    def _retrying(self) -> Any:
        loop = self._make_loop()
        loop._sleep = self._backoff_ends.wait  # wait(s) lasts as long as time.sleep(s), unless set
        with self._lock:
            if self._server_gone:
                loop._policies = []  # no policy retries anything: the call fails at once
            else:
                self._loops.add(loop)
        return loop

    def give_up(self) -> None:
        """End every loop made here: no more retries, no more back-off. New calls on the
        client get a policy that gives up in seconds."""
        with self._lock:
            if self._server_gone:
                return
            self._server_gone = True
            loops = list(self._loops)
        for loop in loops:
            loop._policies = []  # read at the loop's next attempt
        self._client.set_retry_policies([_bounded_policy(_default_policy_class())])
        self._backoff_ends.set()


def _default_policy_class() -> Any:
    from pyspark.sql.connect.client.retries import DefaultPolicy

    return DefaultPolicy



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
