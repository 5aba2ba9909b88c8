"""A Spark Connect server's driver restarts during fmin.

A script of its own (``integration/driver_restart_exit.py``) on a real server restarted on its
port: the search ends well, and so does the process, promptly. The process is the thing under
test: a session left behind by a restart used to hang the interpreter at exit, in the last
garbage collection (see ``reconnect._close_at_exit``).

And a server that comes back but refuses to go on with the search (a token rotated with the
restart, an artifact refused): the cause is said once, at WARNING, and the error that ends
the wait names it. ``SessionRecovery``'s own logic, with fakes for the session and the server.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hyperopt import base

from connect_trials import reconnect, session
from connect_trials.errors import ClusterUnavailableError
from connect_trials.outage import Outages
from connect_trials.server import LocalConnectServer
from tests.conftest import captured_log

REPO = Path(__file__).resolve().parents[1]
# The whole scenario: a server start, 6 trials of 2 s, a restart of ~15 s, generously.
_SCENARIO_TIMEOUT_S = 240.0
# From the script's last line to its exit: well under a second here when it ends as it
# should (no restart: the same); forever when it hangs.
_EXIT_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def restarting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalConnectServer]:
    with LocalConnectServer(master="local[2]", state_dir=tmp_path_factory.mktemp("restarting")) as server:
        yield server


def restart_after_the_third_run(
    listener: socket.socket, server: LocalConnectServer, runs: list[str] | None = None
) -> threading.Event:
    """Each run of a trial connects to ``listener`` as it starts (counted in ``runs``); after
    the third, the server is killed and started again 5 s later at the same URL, as a
    restarted driver."""
    restarted = threading.Event()
    runs = [] if runs is None else runs

    def count_runs() -> None:
        while True:
            try:
                connection = listener.accept()[0]
            except OSError:
                return
            connection.close()
            runs.append("run")
            if len(runs) == 3:
                os.killpg(server._proc.pid, signal.SIGKILL)
                server._proc.wait()
                time.sleep(5)  # the outage itself: the driver restarting
                server.start(keep_token=True)
                restarted.set()

    threading.Thread(target=count_runs, daemon=True).start()
    return restarted


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[tuple[float, str | None]]:
    """The process's stdout lines as they come, each with when it came; None at its end."""
    lines: queue.Queue[tuple[float, str | None]] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put((time.monotonic(), line.strip()))
        lines.put((time.monotonic(), None))

    threading.Thread(target=read, daemon=True).start()
    return lines


# The second also makes a finalizer before its session (a TemporaryDirectory): the order of the
# exit hooks that hung even after a first fix.
@pytest.mark.parametrize("stop_dead_session", [True, False], ids=["dead-session-stopped", "nothing-stopped"])
def test_a_script_whose_server_restarted_during_fmin_runs_every_trial_and_exits_promptly(
    restarting_server: LocalConnectServer, stop_dead_session: bool
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(_SCENARIO_TIMEOUT_S)
    restarted = restart_after_the_third_run(listener, restarting_server)
    argv = [sys.executable, "-m", "integration.driver_restart_exit", str(listener.getsockname()[1])]
    proc = subprocess.Popen(
        argv + (["--stop-dead-session"] if stop_dead_session else ["--finalizer-first"]),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # The URL holds the token: in the environment, not on argv.
        env={**os.environ, "PYTHONPATH": str(REPO), "SPARK_REMOTE": restarting_server.url},
    )
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True).start()
    lines = lines_of(proc)
    said: list[str] = []
    expected = 2 if stop_dead_session else 1  # the report, then how long the stop took
    try:
        deadline = time.monotonic() + _SCENARIO_TIMEOUT_S
        last_line_at = time.monotonic()
        while len(said) < expected:
            try:
                at, line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                pytest.fail(f"the script did not end its work in {_SCENARIO_TIMEOUT_S:.0f} s; said {said}")
            if line is None:
                break
            if line.startswith("{"):
                said.append(line)
                last_line_at = at
        try:
            proc.wait(timeout=_EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the script said all it had to say ({said}) but did not exit within "
                f"{_EXIT_WITHIN_S:.0f} s: it hangs at exit"
            )
        print(f"exited {time.monotonic() - last_line_at:.1f} s after its last line")
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(stderr)[-3000:]
    assert restarted.is_set()
    report = json.loads(said[0])
    assert report["states"] == [base.JOB_STATE_DONE] * 6
    assert report["renewed"] and report["new_session_counts"] == 3
    if stop_dead_session:
        assert json.loads(said[1])["stopped_in_s"] < 10, said  # the dead session's stop() returns


# -- a server that answers again, and refuses -----------------------------------------------------
class FakeWatch:
    address = ("127.0.0.1", 15002)
    found_policies: list[object] = []

    def __init__(self) -> None:
        self.moved_to: object | None = None

    def nudge(self) -> None:
        pass

    def move_to(self, spark: object) -> None:
        self.moved_to = spark


class FakeClient:
    is_closed = False

    def close(self) -> None:
        pass


class FakeSession:
    def __init__(self) -> None:
        self.client = FakeClient()
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


class FakeExecutor:
    def abandon(self) -> None:
        pass


class FakeTrials:
    _spark: object = None


class UnavailableError(Exception):
    """What a server that is not back yet makes a call raise."""

    def getGrpcStatusCode(self) -> object:  # noqa: N802 - pyspark's name
        import grpc

        return grpc.StatusCode.UNAVAILABLE


def token_refused() -> Exception:
    """What pyspark raises when the server refuses the session's token (4.3: the call's repr)."""
    import grpc
    from pyspark.errors.exceptions.connect import SparkConnectGrpcException

    call = (
        "<_InactiveRpcError of RPC that terminated with:\n\tstatus = StatusCode.UNAUTHENTICATED\n"
        '\tdetails = "Invalid authentication token"\n\tdebug_error_string = "UNAUTHENTICATED"\n>'
    )
    return SparkConnectGrpcException(message=call, grpc_status_code=grpc.StatusCode.UNAUTHENTICATED)


TOKEN_REFUSED = token_refused()


@pytest.fixture
def server_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server answers again, and the session fmin was given is gone on it."""
    monkeypatch.setattr(reconnect, "probe_server", lambda spark: session.ProbeResult(session.Probe.ANSWERED))
    monkeypatch.setattr(reconnect, "session_alive", lambda spark, timeout: False)


def recovery_of(make_executor: object) -> reconnect.SessionRecovery:
    made = iter([FakeExecutor()])

    def executor_on(spark: object) -> object:
        first = next(made, None)
        return first if first is not None else make_executor(spark)  # type: ignore[operator]

    return reconnect.SessionRecovery(FakeTrials(), FakeSession(), FakeWatch(), executor_on)  # type: ignore[arg-type]


def wait_out(recovery: reconnect.SessionRecovery, attempts: int) -> None:
    """An outage in which ``attempts`` attempts to go on fail, each to its end; then the wait
    ends in vain (the fmin's loop asks ``Outages.over``)."""
    outages = Outages(recovery, reconnect_timeout=0)
    outages.refused("Connection refused", in_flight=0)
    for _ in range(attempts):
        assert recovery.recover(timeout=30) is None
    outages.over(lost_again=0, in_flight=0)  # the wait is over: raises


def said_by_recovery(log: str) -> list[str]:
    return [line for line in log.splitlines() if "cannot go on there" in line]


def test_a_new_session_refused_for_good_is_said_once_at_warning_and_named_by_the_final_error(
    server_answers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(spark: object, policies: object) -> object:
        raise TOKEN_REFUSED

    monkeypatch.setattr(reconnect, "reopen_session", refuse)
    recovery = recovery_of(lambda spark: FakeExecutor())
    with captured_log(level=logging.WARNING) as log, pytest.raises(ClusterUnavailableError) as raised:
        wait_out(recovery, attempts=3)
    warnings = said_by_recovery(log.getvalue())
    assert len(warnings) == 1, warnings
    assert "opening a new Spark Connect session failed" in warnings[0]
    assert "UNAUTHENTICATED: Invalid authentication token" in warnings[0] and "127.0.0.1:15002" in warnings[0]
    assert "opening a new Spark Connect session failed" in str(raised.value)
    assert "UNAUTHENTICATED: Invalid authentication token" in str(raised.value)


def test_an_objective_refused_by_the_new_session_is_said_once_and_named_and_that_session_stopped(
    server_answers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[FakeSession] = []

    def reopen(spark: object, policies: object) -> FakeSession:
        opened.append(FakeSession())
        return opened[-1]

    def refuse(spark: object) -> object:
        raise RuntimeError("ARTIFACT_REFUSED: the objective's artifact is too large")

    monkeypatch.setattr(reconnect, "reopen_session", reopen)
    recovery = recovery_of(refuse)
    with captured_log(level=logging.WARNING) as log, pytest.raises(ClusterUnavailableError) as raised:
        wait_out(recovery, attempts=2)
    warnings = said_by_recovery(log.getvalue())
    assert len(warnings) == 1 and "shipping the objective to the new session failed" in warnings[0]
    assert "ARTIFACT_REFUSED" in str(raised.value)
    assert len(opened) == 2 and all(s.stopped for s in opened)  # nothing opened is left open


def test_a_server_not_back_yet_stays_quiet_and_the_final_error_claims_no_cause(
    server_answers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_yet(spark: object, policies: object) -> object:
        raise UnavailableError("failed to connect to all addresses")

    monkeypatch.setattr(reconnect, "reopen_session", not_yet)
    recovery = recovery_of(lambda spark: FakeExecutor())
    with captured_log(level=logging.WARNING) as log, pytest.raises(ClusterUnavailableError) as raised:
        wait_out(recovery, attempts=2)
    assert said_by_recovery(log.getvalue()) == []
    assert recovery.last_failure is None and "could not go on" not in str(raised.value)
    assert "did not come back" in str(raised.value)


def test_a_refusal_then_a_new_session_clears_the_cause_and_the_next_outage_may_warn_again(
    server_answers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers: list[object] = [TOKEN_REFUSED, FakeSession(), TOKEN_REFUSED]

    def reopen(spark: object, policies: object) -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(reconnect, "reopen_session", reopen)
    recovery = recovery_of(lambda spark: FakeExecutor())
    with captured_log(level=logging.WARNING) as log:
        assert recovery.recover(timeout=30) is None
        assert recovery.last_failure is not None
        assert recovery.recover(timeout=30) == reconnect.Recovered(renewed=True)
        assert recovery.last_failure is None and recovery.generation == 1
        assert recovery.recover(timeout=30) is None
    assert len(said_by_recovery(log.getvalue())) == 2


class FakeConf:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, key: str) -> str:
        if self.error is not None:
            raise self.error
        return "app"


class AskedSession:
    def __init__(self, error: Exception | None) -> None:
        self.client = FakeClient()
        self.conf = FakeConf(error)


class SessionGoneError(Exception):
    def getCondition(self) -> str:  # noqa: N802 - pyspark's name
        return "INVALID_HANDLE.SESSION_NOT_FOUND"


def test_whether_a_session_lives_is_yes_no_cannot_tell_or_the_servers_refusal() -> None:
    assert session.session_alive(AskedSession(None), timeout=10) is True
    assert session.session_alive(AskedSession(SessionGoneError("gone")), timeout=10) is False
    assert session.session_alive(AskedSession(UnavailableError("no answer")), timeout=10) is None
    with pytest.raises(type(TOKEN_REFUSED), match="Invalid authentication token"):
        session.session_alive(AskedSession(TOKEN_REFUSED), timeout=10)
