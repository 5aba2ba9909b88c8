"""The embedded server and its CLI, and what fmin does when the server dies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connect_trials import server

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "connect_trials"]


def run_cli(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=240, cwd=REPO
    )


def test_cli_starts_reports_and_stops_a_server(tmp_path):
    state = tmp_path / "srv"
    assert run_cli("server", "status", state_dir=state).returncode == 1

    started = run_cli("server", "start", "--master", "local[1]", state_dir=state)
    assert started.returncode == 0, started.stderr
    shown = next(line for line in started.stdout.splitlines() if line.startswith("sc://"))
    info = server.read_server_info(state / "")
    try:
        assert info is not None and info.public_url == shown
        assert info.token and info.token not in started.stdout  # the token is never printed
        url = run_cli("server", "url", state_dir=state).stdout.strip()
        assert url == info.url and info.token in url
        assert (state / "logs" / "connect-server.out").exists()
        status = run_cli("server", "status", state_dir=state)
        assert status.returncode == 0 and shown in status.stdout and info.token not in status.stdout
        again = run_cli("server", "start", state_dir=state)
        assert "already running" in again.stdout

        from pyspark.sql import SparkSession

        session = SparkSession.builder.remote(url).create()
        assert session.range(5).count() == 5
        session.stop()
    finally:
        stopped = run_cli("server", "stop", state_dir=state)
    assert stopped.returncode == 0
    assert server.read_server_info(state) is None
    assert not server._alive(info.pid)
    assert run_cli("server", "status", state_dir=state).returncode == 1


def test_a_port_in_use_is_refused_with_a_clear_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(server.ServerError, match=f"port {port} is already in use"):
            server.LocalConnectServer(port=port, state_dir=tmp_path).start()


def test_a_server_dying_mid_fmin_fails_fmin_in_tens_of_seconds_and_keeps_finished_trials(tmp_path):
    srv = server.LocalConnectServer(master="local[1]", state_dir=tmp_path / "srv").start()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(180)
    proc = subprocess.Popen(
        [sys.executable, "-m", "integration.server_dies", str(listener.getsockname()[1])],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "SPARK_REMOTE": srv.url},  # the token stays off argv
    )
    try:
        listener.accept()[0].close()  # the fourth trial is running now
        killed_at = time.time()
        srv.stop()
        out, err = proc.communicate(timeout=60)
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
        srv.stop()
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["error"] == "ClusterUnavailableError", report
    # Whichever notices first: the trial's own call, or the watchdog (see session.py).
    said = ("stopped answering", "refused connections", "did not come back")
    assert any(text in report["message"] for text in said)
    assert report["successful"] == 3
    assert report["cancelled"] == 1
    # The watchdog declares a server gone after 20 s of refused connections (session.py).
    assert report["failed_at"] - killed_at < 45, report


def test_a_classic_session_is_accepted_too():
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    proc = subprocess.run(
        [sys.executable, "-m", "integration.classic_session"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["kind"] == "classic"
    assert report["parallelism"] == 2  # learned from the local[2] session
    assert report["successful"] == 8
    assert report["timeout_cancelled"] == 1
