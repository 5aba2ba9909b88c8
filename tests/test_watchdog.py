"""The watchdog declares a server gone on refused connections only, judged over the session's
own channel builder (real gRPC servers and sockets on loopback; the texts of gRPC's errors
where the question is pure logic: DNS, routes, proxies, the count of refusals)."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from connect_trials.session import (
    Probe,
    ProbeResult,
    ServerProbe,
    ServerWatchdog,
    probe_server,
    probe_verdict,
)
from tests.conftest import captured_log


@pytest.fixture
def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return listener.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A listener that never accepts, its backlog full: a connect to it times out (its SYNs
    are dropped), as behind a firewall that drops packets or a proxy-only network."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    queued = socket.create_connection(address, timeout=5)  # fills the backlog of 0 (+1)
    try:
        yield address[1]
    finally:
        queued.close()
        listener.close()


def _probe_of(port: int, timeout: float = 2.0) -> ServerProbe:
    """The probe of a Connect session to 127.0.0.1:``port`` (no call is made until asked)."""
    from pyspark.sql.connect.client.core import DefaultChannelBuilder

    return ServerProbe(DefaultChannelBuilder(f"sc://127.0.0.1:{port}"), timeout, server_port=port)


def _grpc_server(port: int = 0) -> tuple[grpc.Server, int]:
    """A real gRPC server without services: it answers every call (UNIMPLEMENTED)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


def test_a_probe_tells_an_answering_server_a_refusing_one_and_one_that_does_not_answer(
    spark, closed_port, silent_server
):
    assert probe_server(spark).kind is Probe.ANSWERED  # the suite's Spark Connect server
    refused = _probe_of(closed_port)
    silent = _probe_of(silent_server, timeout=0.2)
    try:
        assert refused().kind is Probe.REFUSED
        result = silent()
        assert result.kind is Probe.UNKNOWN and "deadline" in result.detail
    finally:
        refused.close()
        silent.close()


# What grpc-core (1.85) says when a call cannot reach its server, as seen on this machine or
# read in its sources, and a proxy's answers to CONNECT.
_LAST_ERROR = "failed to connect to all addresses; last error: UNKNOWN: "
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "code, details, verdict",
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", Probe.UNKNOWN),
        (_UNAVAILABLE, _LAST_ERROR + "ipv4:10.0.0.1:15002: connect: Network is unreachable", Probe.UNKNOWN),
        (_UNAVAILABLE, _LAST_ERROR + "ipv4:10.0.0.1:15002: connect: No route to host", Probe.UNKNOWN),
        (_UNAVAILABLE, "DNS resolution failed for connect.example:15002: C-ares status is not "
                       "ARES_SUCCESS qtype=A name=connect.example: Domain name not found", Probe.UNKNOWN),
        (_UNAVAILABLE, "Socket closed", Probe.UNKNOWN),  # a connection lost mid-call
        (grpc.StatusCode.CANCELLED, "Channel closed!", Probe.UNKNOWN),
        (_UNAVAILABLE, _LAST_ERROR + "ipv4:10.0.0.1:15002: Failed to connect to remote host: "
                       "Connection refused", Probe.REFUSED),
        (_UNAVAILABLE, _LAST_ERROR + "ipv6:[::1]:15002: Failed to connect to remote host: "
                       "Connection refused", Probe.REFUSED),
        # grpc_proxy names a proxy that is down: it refuses, the server behind says nothing
        (_UNAVAILABLE, _LAST_ERROR + "ipv4:127.0.0.1:3128: Failed to connect to remote host: "
                       "Connection refused", Probe.UNKNOWN),
        # the proxy could not open the tunnel (tinyproxy 500, Squid 503, others 502) ...
        (_UNAVAILABLE, _LAST_ERROR + "ipv4:127.0.0.1:3128: HTTP proxy returned response code 500",
         Probe.REFUSED),
        (_UNAVAILABLE, _LAST_ERROR + "ipv4:127.0.0.1:3128: HTTP proxy returned response code 503",
         Probe.REFUSED),
        # ... timed out, or would not (its policy, its credentials)
        (_UNAVAILABLE, _LAST_ERROR + "ipv4:127.0.0.1:3128: HTTP proxy returned response code 504",
         Probe.UNKNOWN),
        (_UNAVAILABLE, _LAST_ERROR + "ipv4:127.0.0.1:3128: HTTP proxy returned response code 407",
         Probe.UNKNOWN),
        # anything that speaks gRPC is there, whatever it thinks of the question
        (grpc.StatusCode.UNAUTHENTICATED, "No authentication token provided", Probe.ANSWERED),
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found", Probe.ANSWERED),
    ],
)  # fmt: skip
def test_only_refused_connections_are_evidence_of_a_dead_server(code, details, verdict):
    assert probe_verdict(code, details, server_port=15002).kind is verdict


def test_a_server_whose_connections_time_out_is_never_declared_gone(silent_server):
    """Probes spanning well over gone_after, all timeouts: no verdict, a DEBUG line."""
    results: list[ProbeResult] = []
    probed_enough = threading.Event()
    declared = threading.Event()
    probe = _probe_of(silent_server, timeout=0.1)

    def counted_probe() -> ProbeResult:
        results.append(probe())
        if len(results) == 6:  # 6 x 0.1 s of timeouts, twice gone_after
            probed_enough.set()
        return results[-1]

    def on_gone(reason: str) -> None:  # a verdict ends the probes: the wait ends too
        declared.set()
        probed_enough.set()

    with captured_log() as log:
        with ServerWatchdog(counted_probe, on_gone, gone_after=0.3, probe_every=0.01):
            assert probed_enough.wait(30)
        assert not declared.is_set()
    assert {result.kind for result in results} == {Probe.UNKNOWN}
    assert "not counted as a refusal" in log.getvalue()
    assert "refuses connections" not in log.getvalue()  # no warning either


def test_a_proxy_that_is_down_is_no_evidence_of_a_dead_server(monkeypatch, closed_port):
    """grpc_proxy names a port where nothing listens: the calls fail as refused, at the
    proxy's address; the server behind it may well be there."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        proxy_port = other.getsockname()[1]
    monkeypatch.setenv("grpc_proxy", f"http://127.0.0.1:{proxy_port}")
    for name in ("no_grpc_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    results: list[ProbeResult] = []
    probed_enough = threading.Event()
    declared = threading.Event()
    probe = _probe_of(closed_port)

    def counted_probe() -> ProbeResult:
        results.append(probe())
        if len(results) == 10:
            probed_enough.set()
        return results[-1]

    def on_gone(reason: str) -> None:
        declared.set()
        probed_enough.set()

    with ServerWatchdog(counted_probe, on_gone, gone_after=0.2, probe_every=0.05):
        assert probed_enough.wait(30)
    assert not declared.is_set(), results[-1]
    assert {result.kind for result in results} == {Probe.UNKNOWN}, results[-1]
    assert f":{proxy_port}: " in results[-1].detail and "Connection refused" in results[-1].detail


def test_a_server_back_is_heard_at_once_though_the_sessions_own_channel_waits_out_its_back_off(closed_port):
    """gRPC shares one connection, and its reconnect back-off, among channels of equal
    settings: a probe on such a channel would repeat the session's refusals for seconds (up
    to 2 minutes) after the server is back, and a watchdog would count them. Here the
    session's back-off is 30 s from its first failure."""
    from pyspark.sql.connect.client.core import DefaultChannelBuilder

    backs_off = [("grpc.initial_reconnect_backoff_ms", 30_000), ("grpc.max_reconnect_backoff_ms", 30_000)]
    builder = DefaultChannelBuilder(f"sc://127.0.0.1:{closed_port}", channelOptions=backs_off)
    sessions_channel = builder.toChannel()  # as the session's: the builder's settings
    call = sessions_channel.unary_unary("/spark.connect.SparkConnectService/Config")
    probe = ServerProbe(builder, server_port=closed_port)
    server = None
    try:
        with pytest.raises(grpc.RpcError):
            call(b"", timeout=2)  # the session meets a dead server
        assert probe().kind is Probe.REFUSED
        server, _ = _grpc_server(closed_port)
        with pytest.raises(grpc.RpcError) as stale:  # the session's channel, backing off
            call(b"", timeout=2)
        assert stale.value.code() is grpc.StatusCode.UNAVAILABLE
        assert probe().kind is Probe.ANSWERED
    finally:
        probe.close()
        sessions_channel.close()
        if server is not None:
            server.stop(None)


def _scripted(kinds: str, clock: list[float], done: threading.Event):  # type: ignore[no-untyped-def]
    """A probe that answers R(efused), U(nknown), A(nswered) in turn, a second apart."""
    answers = iter(kinds)
    by_letter = {"R": Probe.REFUSED, "U": Probe.UNKNOWN, "A": Probe.ANSWERED}
    calls = itertools.count(1)

    def probe() -> ProbeResult:
        clock[0] = float(next(calls))
        letter = next(answers, None)
        if letter is None:
            done.set()
            return ProbeResult(Probe.UNKNOWN)
        return ProbeResult(by_letter[letter], letter)

    return probe


@pytest.mark.parametrize(
    "kinds, declared_at",
    [
        ("RRRR", 4),  # refused at 1..4 s: 3 s of refusals
        ("RRURRRR", 7),  # a probe that cannot tell starts the count again (at 4 s)
        ("UUURRRR", 7),  # and does not start it
        ("RRARRRR", 7),  # as an answer does
        ("RURURURURU", None),  # never 3 s of refusals in a row
    ],
)
def test_the_server_is_declared_gone_after_gone_after_seconds_of_refusals_in_a_row(kinds, declared_at):
    clock = [0.0]
    done = threading.Event()
    declared: list[float] = []

    def on_gone(reason: str) -> None:
        declared.append(clock[0])
        done.set()

    watchdog = ServerWatchdog(_scripted(kinds, clock, done), on_gone, gone_after=3.0, probe_every=0,
                              clock=lambda: clock[0])  # fmt: skip
    with watchdog:
        assert done.wait(10)
    assert declared == ([] if declared_at is None else [float(declared_at)])


def test_an_outage_is_reported_at_its_first_refusal_and_its_end_at_the_first_answer():
    clock = [0.0]
    done = threading.Event()
    heard: list[str] = []
    watchdog = ServerWatchdog(
        _scripted("ARRUARRA", clock, done), lambda reason: heard.append("gone"), gone_after=30.0,
        probe_every=0, clock=lambda: clock[0],
        on_refused=lambda detail: heard.append(f"refused {clock[0]:.0f}"),
        on_answered=lambda: heard.append(f"answered {clock[0]:.0f}"),
    )  # fmt: skip
    with watchdog:
        assert done.wait(10)
    assert heard == ["refused 2", "answered 5", "refused 6", "answered 8"]


def test_a_refusing_server_is_declared_gone_with_a_warning_once_per_outage(closed_port):
    declared = threading.Event()
    reasons: list[str] = []

    def on_gone(reason: str) -> None:
        reasons.append(reason)
        declared.set()

    with captured_log(level=logging.WARNING) as log:
        with ServerWatchdog(_probe_of(closed_port), on_gone, gone_after=0.3, probe_every=0.01,
                            where=f"127.0.0.1:{closed_port}"):  # fmt: skip
            assert declared.wait(10)
    assert len(reasons) == 1 and "refused connections" in reasons[0]
    assert f"127.0.0.1:{closed_port}" in reasons[0]
    assert log.getvalue().count("refuses connections") == 1
