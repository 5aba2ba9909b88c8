"""The watchdog declares a server gone on refused connections only (real sockets on loopback;
fakes where the question is pure logic: DNS, routes, the count of refusals)."""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import threading
import types
from collections.abc import Iterator

import pytest

from connect_trials import session
from connect_trials.session import Probe, ProbeResult, ServerWatchdog, probe_server
from tests.conftest import captured_log


@pytest.fixture
def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return listener.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A listener that never accepts, its backlog full: a connect to it times out (its SYNs
    are dropped), as behind a firewall that drops packets or a proxy-only network."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    queued = socket.create_connection(address, timeout=5)  # fills the backlog of 0 (+1)
    try:
        yield address
    finally:
        queued.close()
        listener.close()


def test_a_probe_tells_an_accepting_server_a_refusing_one_and_one_that_does_not_answer(
    closed_port, silent_server
):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert probe_server(listener.getsockname()).kind is Probe.ACCEPTED
    assert probe_server(("127.0.0.1", closed_port)).kind is Probe.REFUSED
    silent = probe_server(silent_server, timeout=0.2)
    assert silent.kind is Probe.UNKNOWN and "timed out" in silent.detail


class _FakeSocket:
    """socket.socket whose connect fails as the test says for each address."""

    errors: dict[str, OSError] = {}

    def __init__(self, *args: object) -> None:
        pass

    def __enter__(self) -> _FakeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def settimeout(self, timeout: float) -> None:
        pass

    def connect(self, sockaddr: tuple[str, int]) -> None:
        raise self.errors[sockaddr[0]]


def _network(monkeypatch: pytest.MonkeyPatch, hosts: dict[str, OSError]) -> None:
    """A name with one address per host, each connect failing with its error."""
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, 15002)) for host in hosts]
    fake = types.SimpleNamespace(
        getaddrinfo=lambda *a, **k: infos, socket=type("S", (_FakeSocket,), {"errors": hosts}),
        SOCK_STREAM=socket.SOCK_STREAM,
    )  # fmt: skip
    monkeypatch.setattr(session, "socket", fake)


def _refused() -> OSError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


@pytest.mark.parametrize(
    "errors, verdict",
    [
        ({"h1": TimeoutError("timed out")}, Probe.UNKNOWN),
        ({"h1": OSError(errno.ENETUNREACH, "Network is unreachable")}, Probe.UNKNOWN),
        ({"h1": OSError(errno.EHOSTUNREACH, "No route to host")}, Probe.UNKNOWN),
        ({"h1": _refused(), "h2": TimeoutError("timed out")}, Probe.UNKNOWN),  # one address silent
        ({"h1": OSError(errno.EADDRNOTAVAIL, "no IPv6 here"), "h2": _refused()}, Probe.REFUSED),
        ({"h1": _refused(), "h2": _refused()}, Probe.REFUSED),
    ],
)
def test_only_refused_connections_are_evidence_of_a_dead_server(monkeypatch, errors, verdict):
    _network(monkeypatch, errors)
    assert probe_server(("connect.example", 15002)).kind is verdict


def test_a_name_that_does_not_resolve_is_no_evidence_of_a_dead_server(monkeypatch):
    def no_dns(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(session.socket, "getaddrinfo", no_dns)
    result = probe_server(("connect.example", 15002))
    assert result.kind is Probe.UNKNOWN and "cannot resolve" in result.detail


def test_a_server_whose_connections_time_out_is_never_declared_gone(silent_server):
    """Probes spanning well over gone_after, all timeouts: no verdict, a DEBUG line."""
    results: list[ProbeResult] = []
    probed_enough = threading.Event()
    declared = threading.Event()

    def counted_probe(address: tuple[str, int]) -> ProbeResult:
        results.append(probe_server(address, timeout=0.1))
        if len(results) == 6:  # 6 x 0.1 s of timeouts, twice gone_after
            probed_enough.set()
        return results[-1]

    with captured_log() as log:
        with ServerWatchdog(silent_server, lambda reason: declared.set(), gone_after=0.3, probe_every=0.01,
                            probe=counted_probe):  # fmt: skip
            assert probed_enough.wait(30)
        assert not declared.is_set()
    assert {result.kind for result in results} == {Probe.UNKNOWN}
    assert "not counted as a refusal" in log.getvalue()
    assert "refuses connections" not in log.getvalue()  # no warning either


def _scripted(kinds: str, clock: list[float], done: threading.Event):  # type: ignore[no-untyped-def]
    """A probe that answers R(efused), U(nknown), A(ccepted) in turn, a second apart."""
    answers = iter(kinds)
    by_letter = {"R": Probe.REFUSED, "U": Probe.UNKNOWN, "A": Probe.ACCEPTED}
    calls = itertools.count(1)

    def probe(address: tuple[str, int]) -> ProbeResult:
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
        ("RRARRRR", 7),  # as an accepted connection does
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

    watchdog = ServerWatchdog(("127.0.0.1", 1), on_gone, gone_after=3.0, probe_every=0,
                              probe=_scripted(kinds, clock, done), clock=lambda: clock[0])  # fmt: skip
    with watchdog:
        assert done.wait(10)
    assert declared == ([] if declared_at is None else [float(declared_at)])


def test_a_refusing_server_is_declared_gone_with_a_warning_once_per_outage(closed_port):
    declared = threading.Event()
    reasons: list[str] = []

    def on_gone(reason: str) -> None:
        reasons.append(reason)
        declared.set()

    with captured_log(level=logging.WARNING) as log:
        with ServerWatchdog(("127.0.0.1", closed_port), on_gone, gone_after=0.3, probe_every=0.01):
            assert declared.wait(10)
    assert len(reasons) == 1 and "refused connections" in reasons[0]
    assert log.getvalue().count("refuses connections") == 1
