"""A client that reaches the Spark Connect server only through an HTTP CONNECT proxy (gRPC
honours ``grpc_proxy``), its direct connections to the server's port rejected: the watchdog
judges the server as the session's calls reach it, not by a direct TCP connect.

The proxy is Debian's tinyproxy (run here as user nobody, its config and log in the test's
folder, stopped by its pid); an iptables rule rejects new TCP connections from this process's
user to the server's port, so that only the proxy (another user) reaches it. Both need root:
``make setup`` installs tinyproxy and iptables when it runs as root (CI does)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hyperopt import base, fmin, hp, rand

from connect_trials import ConnectTrials
from connect_trials.server import LocalConnectServer, free_port
from connect_trials.session import Probe, ProbeResult, ServerProbe, ServerWatchdog, probe_server, watched
from tests.conftest import captured_log

_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
TINYPROXY = shutil.which("tinyproxy", path=_SBIN)
IPTABLES = shutil.which("iptables", path=_SBIN)
_READY = "Accepting connections"  # tinyproxy's last line once it listens, as user nobody


def _tinyproxy_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: tinyproxy drops to user nobody, and the iptables rule needs root"
    if TINYPROXY is None:
        return "tinyproxy is not installed (make setup installs it as root: apt-get install tinyproxy)"
    return None


def _iptables_missing() -> str | None:
    if IPTABLES is None:
        return "iptables is not installed (make setup installs it as root: apt-get install iptables)"
    listed = subprocess.run([IPTABLES, "-w", "-S", "OUTPUT"], capture_output=True, text=True)
    if listed.returncode != 0:
        return f"iptables cannot read the OUTPUT chain here: {listed.stderr.strip()}"
    return None


class Tinyproxy:
    """Debian's tinyproxy on a free loopback port, in the foreground, as user nobody: only
    this test's server is a destination it accepts connections for (tinyproxy's
    ``ConnectPort``), and its log (one ``CONNECT host:port`` line per tunnel) goes to
    ``folder/tinyproxy.log``."""

    def __init__(self, folder: Path, connect_ports: list[int]) -> None:
        assert TINYPROXY is not None
        self.port = free_port()
        self.log_path = folder / "tinyproxy.log"
        config = folder / "tinyproxy.conf"
        config.write_text(
            "\n".join(
                [
                    "User nobody",
                    "Group nogroup",
                    f"Port {self.port}",
                    "Listen 127.0.0.1",
                    "Allow 127.0.0.1",
                    "Timeout 60",
                    "LogLevel Info",
                    "MaxClients 64",
                    *(f"ConnectPort {port}" for port in connect_ports),
                ]
            )
            + "\n"
        )
        self._proc = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,  # its log, without a LogFile
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run is the test's to handle
        )
        self._ready = threading.Event()
        self._logged = threading.Condition()  # notified at each line the log thread writes
        threading.Thread(target=self._keep_log, name="tinyproxy-log", daemon=True).start()
        if not self._ready.wait(30):
            self.stop()
            raise RuntimeError(f"tinyproxy did not start: {self.log_path.read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _keep_log(self) -> None:
        assert self._proc.stdout is not None
        with open(self.log_path, "ab") as log:
            for line in self._proc.stdout:
                log.write(line)
                log.flush()
                with self._logged:
                    self._logged.notify_all()
                if _READY.encode() in line:
                    self._ready.set()

    def tunnels_to(self, port: int, at_least: int = 0, within: float = 10.0) -> int:
        """How many tunnels to ``port`` the proxy was asked for, once its log shows at least
        ``at_least`` (its log reaches the file through a thread: wait for it, ``within`` s)."""

        def count() -> int:
            text = self.log_path.read_text(errors="replace")
            return sum(1 for line in text.splitlines() if "CONNECT" in line and f":{port} HTTP/" in line)

        with self._logged:
            self._logged.wait_for(lambda: count() >= at_least, timeout=within)
        return count()

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)


@contextlib.contextmanager
def tinyproxy(folder: Path, connect_ports: list[int]) -> Iterator[Tinyproxy]:
    proxy = Tinyproxy(folder, connect_ports)
    try:
        yield proxy
    finally:
        proxy.stop()


@contextlib.contextmanager
def direct_connections_rejected(port: int) -> Iterator[None]:
    """New TCP connections from this process's user to 127.0.0.1:``port`` are rejected (a TCP
    reset, as a firewall that allows only the proxy out); connections open already, such as
    the suite's own session's, and the proxy's (user nobody) are not. The rule goes away
    whatever happens in the block."""
    assert IPTABLES is not None
    rule = [
        "OUTPUT", "-p", "tcp", "-d", "127.0.0.1", "--dport", str(port), "--syn",
        "-m", "owner", "--uid-owner", str(os.geteuid()),
        "-m", "comment", "--comment", f"connect-trials tests/test_proxy.py pid {os.getpid()}",
        "-j", "REJECT", "--reject-with", "tcp-reset",
    ]  # fmt: skip
    _remove_rules_of_dead_runs()
    subprocess.run([IPTABLES, "-w", "-I", *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([IPTABLES, "-w", "-D", *rule], check=True, capture_output=True)


def _remove_rules_of_dead_runs() -> None:
    """Rules that an earlier run of this file left behind when it was killed (its ``finally``
    never ran): the comment names the pid that added each."""
    assert IPTABLES is not None
    listed = subprocess.run([IPTABLES, "-w", "-S", "OUTPUT"], check=True, capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        found = re.search(r"connect-trials tests/test_proxy\.py pid (\d+)", line)
        if found and not Path(f"/proc/{found.group(1)}").exists():
            spec = shlex.split(line)[1:]  # without "-A"
            subprocess.run([IPTABLES, "-w", "-D", *spec], check=True, capture_output=True)


def _use_proxy(monkeypatch: pytest.MonkeyPatch, proxy: Tinyproxy) -> None:
    """gRPC channels made from now on in this process go through ``proxy``: even to loopback."""
    monkeypatch.setenv("grpc_proxy", proxy.url)
    for name in ("no_grpc_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def proxy_only(
    connect_server: LocalConnectServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Tinyproxy]:
    """The suite's Connect server reachable from this process only through tinyproxy; a
    session made in the test goes through it."""
    missing = _tinyproxy_missing() or _iptables_missing()
    if missing:
        pytest.skip(missing)
    socket.create_connection(("127.0.0.1", connect_server.port), timeout=10).close()  # open before
    with tinyproxy(tmp_path, [connect_server.port]) as proxy:
        with direct_connections_rejected(connect_server.port):
            with pytest.raises(ConnectionRefusedError):  # what the old judge, a TCP connect, saw
                socket.create_connection(("127.0.0.1", connect_server.port), timeout=10)
            _use_proxy(monkeypatch, proxy)
            yield proxy


@pytest.fixture
def proxied_spark(connect_server: LocalConnectServer, proxy_only: Tinyproxy) -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(connect_server.url).create()
    try:
        yield session
    finally:
        session.stop()


def test_a_session_through_the_proxy_works_while_direct_connections_are_refused(
    connect_server, proxy_only, proxied_spark
):
    assert proxied_spark.range(5).count() == 5
    assert proxy_only.tunnels_to(connect_server.port, at_least=1) >= 1  # it went through the proxy


def test_the_watchdog_hears_a_server_behind_a_proxy_answer_and_never_reports_a_refusal(
    connect_server, proxy_only, proxied_spark
):
    tunnels_before = proxy_only.tunnels_to(connect_server.port)
    probe = ServerProbe(proxied_spark.client._builder, server_port=connect_server.port)
    answers: list[ProbeResult] = []
    refused: list[str] = []
    gone: list[str] = []
    enough = threading.Event()

    def counted() -> ProbeResult:
        answers.append(probe())
        if len(answers) == 20:  # 20 x 0.02 s: twice gone_after
            enough.set()
        return answers[-1]

    def on_gone(reason: str) -> None:  # a verdict ends the probes: the wait ends too
        gone.append(reason)
        enough.set()

    try:
        with ServerWatchdog(counted, on_gone, gone_after=0.2, probe_every=0.02, on_refused=refused.append):
            assert enough.wait(60)
    finally:
        probe.close()
    assert {answer.kind for answer in answers} == {Probe.ANSWERED}, answers[-1]
    assert refused == [] and gone == []
    # The probe's own channel went through the proxy too.
    assert proxy_only.tunnels_to(connect_server.port, at_least=tunnels_before + 1) > tunnels_before
    assert probe_server(proxied_spark).kind is Probe.ANSWERED


def test_fmin_through_a_proxy_runs_every_trial_without_a_false_outage(connect_server, proxied_spark):
    """The issue's reproduction: with the direct TCP probe, fmin ran 2 of 6 trials, then
    raised "refused connections"."""

    def objective(x: float) -> float:
        import time

        time.sleep(0.5)  # holds its slot while the watchdog probes
        return x

    token = connect_server.token
    trials = ConnectTrials(parallelism=2, spark_session=proxied_spark, reconnect_timeout=10)
    with captured_log(level=logging.DEBUG) as log:
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 6, trials=trials, show_progressbar=False)
    assert [t["state"] for t in trials.trials] == [base.JOB_STATE_DONE] * 6
    text = log.getvalue()
    assert "refuses connections" not in text and "stopped answering" not in text, text[-3000:]
    assert token and token not in text


def test_behind_a_proxy_a_server_that_is_gone_is_declared_gone(tmp_path, monkeypatch):
    """A dead server behind a proxy: the proxy cannot open the tunnel (tinyproxy answers
    500), which is the evidence the client gets instead of a refused connection."""
    from pyspark.sql import SparkSession

    missing = _tinyproxy_missing()
    if missing:
        pytest.skip(missing)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        dead_port = closed.getsockname()[1]
    with tinyproxy(tmp_path, [dead_port]) as proxy:
        _use_proxy(monkeypatch, proxy)
        spark = SparkSession.builder.remote(f"sc://127.0.0.1:{dead_port}").create()
        declared = threading.Event()
        reasons: list[str] = []

        def on_gone(reason: str) -> None:
            reasons.append(reason)
            declared.set()

        try:
            with watched(spark, on_gone, gone_after=0.3, probe_every=0.05, on_refused=lambda detail: None):
                assert declared.wait(30)
            assert proxy.tunnels_to(dead_port, at_least=1) >= 1
        finally:
            spark.client.close()  # first: no release call to a dead server
            spark.stop()  # then no longer this process's default or active session
    assert len(reasons) == 1 and "the HTTP proxy could not connect to it" in reasons[0], reasons
