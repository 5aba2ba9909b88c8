"""The Spark session we were given: what kind it is, what its errors mean, whether its server lives.

The Connect client's retry policy is shared by every thread and every fmin that uses the
session, so fmin never changes it while the server may still answer. Instead each fmin runs
inside :func:`watched`: a :class:`ServerWatchdog` asks the server one cheap question every
second, over a channel made by the session's own channel builder, so through the same proxy
and with the same credentials as the session's calls (a client behind a proxy may have no
direct route to the server at all). A dead server's host refuses the connection, or the
proxy in between cannot open its tunnel; only that counts: a timeout (a busy or paused
server), a failed name lookup, an unreachable network or proxy says nothing about the
server. The first refusal is reported at once (fmin stops submitting and waits), an answer
again is reported too (fmin looks at whether its session survived, see ``reconnect.py``),
and after ``gone_after`` seconds of refusals in a row
the server is declared gone: fmin fails with ``ClusterUnavailableError``, and the session's
retry loops still under way give up at once: their back-offs (up to a minute each by
default) wait on a condition that the server's death, or its return, wakes. When fmin
returns, the session is as it was found.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from connect_trials.errors import ClusterUnavailableError

logger = logging.getLogger("connect_trials")

CONNECT = "connect"
CLASSIC = "classic"

# How long the server may refuse connections before fmin gives up on it, unless the fmin says
# otherwise (``ConnectTrials(reconnect_timeout=)``: 120 s): longer than a load balancer's blip
# or a server's pause, far shorter than the client's ~10 minutes of retries.
SERVER_GONE_AFTER_S = 20.0
_PROBE_EVERY_S = 1.0
_PROBE_TIMEOUT_S = 2.0

# The policy of a session whose server is gone: 5 retries, 0.1 s doubling to at most 1 s
# (about 2.5 s in all), so that what still talks to it (its release by spark.stop(), at
# exit) gives up in seconds instead of hanging the process for the default ~10 minutes.
_RETRIES, _INITIAL_BACKOFF_MS, _MAX_BACKOFF_MS = 5, 100, 1000

# Error conditions that say the session is gone on its server (a restarted driver), or the
# client is closed for it.
_SESSION_GONE_CONDITIONS = frozenset(
    {
        "NO_ACTIVE_SESSION",
        "INVALID_HANDLE.SESSION_CLOSED",
        "INVALID_HANDLE.SESSION_CHANGED",
        "INVALID_HANDLE.SESSION_NOT_FOUND",
    }
)
# ... and those that say an operation was lost with its server, its session, or a client that
# went silent (a laptop's lid): its job did not fail, it is gone.
_LOST_CONDITIONS = _SESSION_GONE_CONDITIONS | {"RETRIES_EXCEEDED"}
# How a reattaching execution reports the same (RESPONSE_ALREADY_RECEIVED names it in its text).
_LOST_HANDLES = (
    "INVALID_HANDLE.SESSION_NOT_FOUND",
    "INVALID_HANDLE.SESSION_CHANGED",
    "INVALID_HANDLE.OPERATION_NOT_FOUND",
    "INVALID_HANDLE.OPERATION_ABANDONED",
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


def is_session_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the session no longer exists on its server (or its client closed)."""
    return error_condition(exc) in _SESSION_GONE_CONDITIONS


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says a job was lost with its server or session, not that it failed:
    the server cannot be reached, the session is gone on it, or the server dropped the
    operation of a client that went silent."""
    if isinstance(exc, ClusterUnavailableError):
        return True
    if error_condition(exc) in _LOST_CONDITIONS or error_condition(exc) in _LOST_HANDLES:
        return True
    text = str(exc)
    if error_condition(exc) == "RESPONSE_ALREADY_RECEIVED" and any(h in text for h in _LOST_HANDLES):
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
    """What one question to the server over its Connect channel says."""

    ANSWERED = "answered"  # a gRPC status from the other end: the server is there
    REFUSED = "refused"  # nothing listens there: the only evidence that the server is gone
    UNKNOWN = "unknown"  # a timeout, a failed name lookup, no route, the proxy down: no evidence


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    kind: Probe
    detail: str = ""


# gRPC's words (grpc-core, checked on grpcio 1.85) for a connection that the server's host
# refused, and for a tunnel that an HTTP CONNECT proxy could not open: tinyproxy answers 500,
# Squid and Envoy 503, others 502. A proxy's 504 is a timeout, its 403/407 its own policy.
_REFUSED_TEXT = "Connection refused"
_PROXY_STATUS = re.compile(r"HTTP proxy returned response code (\d{3})")
_PROXY_COULD_NOT_CONNECT = frozenset({"500", "502", "503"})
# A refusal names the address that refused, as "ipv4:127.0.0.1:15002: ...": with a proxy
# between, that may be the proxy's, which says nothing about the server behind it.
_REFUSING_PORT = re.compile(r":(\d+): [^;]*" + _REFUSED_TEXT)


def probe_verdict(code: Any, details: str, server_port: int | None) -> ProbeResult:
    """What a failed probe call (its gRPC status ``code`` and ``details``) says about a server
    on ``server_port``. Only UNAVAILABLE of the kind a dead server gives is evidence: its
    host refused the connection, or the HTTP proxy in between could not connect to it."""
    import grpc

    detail = f"{getattr(code, 'name', code)}: {details}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ProbeResult(Probe.UNKNOWN, f"no answer within the probe's deadline ({detail})")
    if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        return ProbeResult(Probe.UNKNOWN, detail)
    if code is not grpc.StatusCode.UNAVAILABLE:
        return ProbeResult(Probe.ANSWERED, detail)  # the server (or what fronts it) spoke gRPC
    proxy = _PROXY_STATUS.search(details)
    if proxy is not None:
        if proxy.group(1) in _PROXY_COULD_NOT_CONNECT:
            return ProbeResult(Probe.REFUSED, f"the HTTP proxy could not connect to it ({details})")
        return ProbeResult(Probe.UNKNOWN, detail)
    if _REFUSED_TEXT in details:
        ports = {int(port) for port in _REFUSING_PORT.findall(details)}
        if server_port is None or not ports or server_port in ports:
            return ProbeResult(Probe.REFUSED, details)
    return ProbeResult(Probe.UNKNOWN, detail)


class ServerProbe:
    """Asks a Spark Connect server one cheap question over a channel of its own, made by the
    session's own channel builder: the same URL, proxy (gRPC honours ``grpc_proxy``,
    ``https_proxy``, ``no_proxy``), TLS, token, headers and interceptors as the session's calls,
    so that whatever reaches the server for the session reaches it for the probe.

    The question is ReleaseSession of a session id that no client uses: the server answers it
    without creating, touching or logging a session (checked on 4.3; ``FetchErrorDetails`` and
    ``Interrupt`` would create one). The channel is the probe's own (a local subchannel pool):
    gRPC otherwise shares one connection, and its reconnect back-off of up to 2 minutes, among
    channels of equal settings, so that a probe would repeat the session's last failure long
    after the server is back. After any failure the next question goes over a new channel,
    for the same reason. Thread-safe; :meth:`close` closes the channel."""

    def __init__(
        self, builder: Any, timeout: float = _PROBE_TIMEOUT_S, server_port: int | None = None
    ) -> None:
        self._builder = builder
        self._timeout = timeout
        self._server_port = server_port
        self._session_id = str(uuid.uuid4())
        self._lock = threading.Lock()
        self._channel: Any = None

    def __call__(self) -> ProbeResult:
        import grpc
        from pyspark.sql.connect.proto import base_pb2, base_pb2_grpc

        with self._lock:
            try:
                if self._channel is None:
                    self._channel = _own_channel(self._builder)
                stub = base_pb2_grpc.SparkConnectServiceStub(self._channel)
                stub.ReleaseSession(
                    base_pb2.ReleaseSessionRequest(session_id=self._session_id),
                    metadata=list(self._builder.metadata()),
                    timeout=self._timeout,
                )
                return ProbeResult(Probe.ANSWERED)
            except grpc.RpcError as exc:
                self._close()
                code = exc.code() if isinstance(exc, grpc.Call) else None
                details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
                return probe_verdict(code, details, self._server_port)
            except Exception as exc:  # noqa: BLE001 - no channel, a closed one: no evidence
                self._close()
                return ProbeResult(Probe.UNKNOWN, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - a channel we are done with
                pass


def _own_channel(builder: Any) -> Any:
    """A new channel from ``builder`` that shares no connection with the channels it made
    before. pyspark's ``ChannelBuilder`` keeps its options in ``_channel_options`` (4.0-4.3):
    the copy gets its own list, so that the session's builder stays as it was."""
    own = copy.copy(builder)
    options = getattr(builder, "_channel_options", None)
    if isinstance(options, list):
        own._channel_options = list(options)
        own.setChannelOption("grpc.use_local_subchannel_pool", 1)
    return own.toChannel()


def channel_builder(spark: Any) -> Any | None:
    """The channel builder of a Connect session (None for a classic session)."""
    if session_kind(spark) != CONNECT:
        return None
    return getattr(getattr(spark, "client", None), "_builder", None)


def _where(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def probe_server(spark: Any, timeout: float = _PROBE_TIMEOUT_S) -> ProbeResult:
    """One question to the server of ``spark`` (a Connect session) over a channel of its own,
    as the session's calls reach it (see :class:`ServerProbe`)."""
    builder = channel_builder(spark)
    if builder is None:
        return ProbeResult(Probe.UNKNOWN, "not a Spark Connect session")
    address = server_address(spark)
    probe = ServerProbe(builder, timeout, server_port=address[1] if address else None)
    try:
        return probe()
    finally:
        probe.close()


class ServerWatchdog:
    """Declares a server gone after it refused connections for ``gone_after`` seconds.

    ``probe()`` asks the server (a :class:`ServerProbe` on the session's channel builder);
    ``where`` names it in messages. Runs in a thread of its own, which closes the probe at
    the end; its callbacks are called from that thread. Only refusals count (see
    :func:`probe_verdict`). A probe that cannot tell (a timeout, a failed lookup, an
    unreachable network or proxy) is logged at DEBUG and starts the count again, as an
    answer does: the verdict needs ``gone_after`` seconds of refusals in a row, because a
    wrong verdict kills a healthy fmin while a late one only delays the failure that the
    trials' own calls report anyway. ``on_refused(detail)`` is called at the first refusal of
    an outage (by default it logs a warning), ``on_answered()`` when the server answers
    again after one, and ``on_gone(reason)`` once, at the verdict. Nothing it does touches a
    session, so it serves any caller that wants to know whether a server is there."""

    def __init__(
        self,
        probe: Callable[[], ProbeResult],
        on_gone: Callable[[str], None],
        gone_after: float = SERVER_GONE_AFTER_S,
        probe_every: float = _PROBE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[str], None] | None = None,
        on_answered: Callable[[], None] | None = None,
        where: str = "its URL",
    ) -> None:
        self.where = where
        self._probe = probe
        self._on_gone = on_gone
        self._on_refused = on_refused or self._warn_refused
        self._on_answered = on_answered or (lambda: None)
        self._gone_after = gone_after
        self._probe_every = probe_every
        self._clock = clock
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connect-trials-watchdog", daemon=True)

    def __enter__(self) -> ServerWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()

    def _warn_refused(self, detail: str) -> None:
        logger.warning(
            "the Spark Connect server at %s refuses connections (%s); fmin gives up on it after "
            "%.0f s of refusals",
            self.where,
            detail,
            self._gone_after,
        )

    def _run(self) -> None:
        try:
            self._watch()
        finally:
            close = getattr(self._probe, "close", None)
            if close is not None:
                close()  # here, not in the caller's thread: a channel's close may take its time

    def _watch(self) -> None:
        refused_since: float | None = None
        outage = False  # from the first refusal after an answer to the next answer
        last: Probe | None = None
        while not self._stopped.wait(self._probe_every):
            result = self._probe()
            if result.kind is not Probe.REFUSED:
                if result.kind is Probe.UNKNOWN and last is not Probe.UNKNOWN:
                    logger.debug(
                        "cannot tell whether the Spark Connect server at %s is there (%s); "
                        "not counted as a refusal",
                        self.where,
                        result.detail,
                    )
                if result.kind is Probe.ANSWERED and outage:
                    outage = False
                    self._on_answered()
                refused_since, last = None, result.kind
                continue
            last = Probe.REFUSED
            now = self._clock()
            if refused_since is None:
                refused_since = now
                if not outage:
                    outage = True
                    self._on_refused(result.detail)
            if now - refused_since >= self._gone_after and not self._stopped.is_set():
                self._on_gone(
                    f"the Spark Connect server at {self.where} refused connections for "
                    f"{now - refused_since:.0f} s ({result.detail})"
                )
                return


class ServerWatch:
    """The context of one fmin on a session: its server watched, the session as found after.

    Use it through :func:`watched`. Within the block, the Connect client's retry loops sleep
    their back-offs on a condition (they sleep as long as before, unless woken), and a
    :class:`ServerWatchdog` probes the server. :meth:`nudge` wakes the sleeping loops for an
    attempt now (the server answers again: no reattach should wait out a minute-long
    back-off). When the server is declared gone (by the watchdog, by :meth:`give_up`, or by a
    ``ClusterUnavailableError`` leaving the block), every retry loop started within the
    block ends at its next attempt, asleep or not, and so do the loops that the block's calls
    start later (pyspark's release of an interrupted execution runs in a thread pool that the
    interpreter joins at exit: a CI run hung there for a minute-long back-off). Then
    ``on_gone(reason)`` is called, once, if the watchdog was the one to tell.
    ``on_refused``/``on_answered`` are the watchdog's (see :class:`ServerWatchdog`).

    After the block, the client's ``_retrying`` is what it was, and the user's retry policy
    objects were never modified (their ``max_retries`` included), so a session whose server
    was not declared gone is exactly as found. One whose server was declared gone keeps a
    policy that gives up in seconds: whatever still talks to it afterwards (``spark.stop()``
    releasing the session, pyspark's exit hooks) would otherwise retry for ~10 minutes
    against a server that refused connections for ``gone_after``. So does one the fmin
    :meth:`moved <move_to>` away from (it is gone on its restarted server). The user's own
    policies are kept in :attr:`found_policies`, for a new session to the same server.

    Several fmins may watch one session at once (threads): they share the wakeable retry
    loops, and the last to leave puts ``_retrying`` back. Classic sessions are not watched.
    The watchdog asks the server over the session's own channel builder (:class:`ServerProbe`),
    which follows the session to a new one (the same builder, see ``reopen_session``)."""

    def __init__(
        self,
        spark: Any,
        on_gone: Callable[[str], None],
        gone_after: float = SERVER_GONE_AFTER_S,
        probe_every: float = _PROBE_EVERY_S,
        on_refused: Callable[[str], None] | None = None,
        on_answered: Callable[[], None] | None = None,
    ) -> None:
        self._spark = spark
        self._on_gone = on_gone
        self.address = server_address(spark)  # for messages; the probe needs only the builder
        builder = channel_builder(spark)
        self._watchdog = (
            ServerWatchdog(
                ServerProbe(builder, server_port=self.address[1] if self.address else None),
                self._declared_gone, gone_after, probe_every, on_refused=on_refused,
                on_answered=on_answered, where="its URL" if self.address is None else _where(self.address),
            )  # fmt: skip
            if builder is not None
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

    def nudge(self) -> None:
        """Wake the session's retry loops asleep in a back-off: they try again now."""
        retries = self._retries
        if retries is not None:
            retries.nudge()

    def move_to(self, spark: Any) -> None:
        """Watch ``spark``, a new session to the same server, instead: the one watched so far
        is gone on the server (a restarted driver), so its retry loops give up now."""
        with self._lock:
            old, self._spark = self._retries, spark
            self._retries = None
            if old is not None:
                old.give_up()
                old.leave()
            if self._watchdog is not None and not self._closed:
                self._retries = _WakeableRetries.join(spark.client)

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
            retries, self._retries = self._retries, None
        if self._watchdog is not None:
            self._watchdog.__exit__()
        if retries is not None:
            retries.leave()


def watched(
    spark: Any,
    on_gone: Callable[[str], None],
    gone_after: float = SERVER_GONE_AFTER_S,
    probe_every: float = _PROBE_EVERY_S,
    on_refused: Callable[[str], None] | None = None,
    on_answered: Callable[[], None] | None = None,
) -> ServerWatch:
    """The context one fmin runs in: ``with watched(spark, on_gone): ...`` (see :class:`ServerWatch`)."""
    return ServerWatch(spark, on_gone, gone_after, probe_every, on_refused, on_answered)


# The _WakeableRetries of a Connect client, while some fmin watches it.
_WATCHED_RETRIES = "_connect_trials_watched_retries"
_JOIN_LOCK = threading.Lock()
_ABSENT = object()


class _WakeableRetries:
    """A Connect client's retry loops, sleeping on an event while fmins watch the client.

    pyspark makes each loop with ``client._retrying()`` (read per call; the reattaching
    iterators keep the callable they were made with) and sleeps between attempts with
    ``loop._sleep``; each loop reads its ``_policies`` at every attempt. Here ``_retrying``
    makes the client's loops as before, except that they sleep on a condition (a wait that
    times out as the sleep would, unless :meth:`nudge` or :meth:`give_up` wakes it) and are
    remembered, weakly, so that :meth:`give_up` can end them without touching the user's
    policy objects."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._found = client.__dict__.get("_retrying", _ABSENT)
        self._make_loop = client._retrying
        self._wake = threading.Condition()
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
        loop._sleep = self._sleep
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
        self.nudge()

    def _sleep(self, seconds: float) -> None:
        """A back-off: as long as ``time.sleep(seconds)``, unless woken first."""
        with self._wake:
            if not self._server_gone:
                self._wake.wait(seconds)

    def nudge(self) -> None:
        """Wake every loop asleep in a back-off: each makes its next attempt now."""
        with self._wake:
            self._wake.notify_all()


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


# -- after an outage ---------------------------------------------------------------------------
def session_alive(spark: Any, timeout: float) -> bool | None:
    """Whether ``spark``'s session still lives on its server, asked with one cheap call: False
    when the server says it has no such session (its driver restarted) or the client closed
    itself for that reason, None when the call cannot tell within ``timeout`` seconds (the
    server does not answer yet). Any other answer is the server's refusal (a token that no
    longer holds, say): it is raised, for the caller to say."""
    if spark.client.is_closed:
        return False
    answer: list[bool | None] = []
    refusal: list[BaseException] = []

    def ask() -> None:
        try:
            spark.conf.get("spark.app.name")
            answer.append(True)
        except Exception as exc:  # noqa: BLE001 - an answer either way
            if is_session_gone(exc) or spark.client.is_closed:
                answer.append(False)
            elif is_unavailable(exc):
                answer.append(None)
            else:
                refusal.append(exc)

    asking = threading.Thread(target=ask, name="connect-trials-session-check", daemon=True)
    asking.start()
    asking.join(timeout)
    if refusal:
        raise refusal[0]
    return answer[0] if answer else None


def reopen_session(spark: Any, retry_policies: list[Any]) -> Any:
    """A new Spark Connect session to ``spark``'s server, with its URL and credentials (its
    channel builder) and ``retry_policies``. The user's default and active sessions stay the
    ones they had: this session belongs to the fmin until the user takes it."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    with ConnectSession._lock:
        default = ConnectSession._default_session
        active = getattr(ConnectSession._active_session, "session", None)
        session = ConnectSession.builder.channelBuilder(spark.client._builder).create()
        ConnectSession._default_session = default
        ConnectSession._active_session.session = active
    if retry_policies:
        session.client.set_retry_policies(retry_policies)
    return session


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
