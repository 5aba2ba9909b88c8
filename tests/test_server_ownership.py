"""Our servers' processes are ours alone: a Ctrl-C during a start leaves none of them running,
and a pid read back from a state folder is signalled only while it is still the one we spawned."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connect_trials import server

REPO = Path(__file__).resolve().parents[1]


def _group(pgid: int) -> dict[int, list[str]]:
    """The live (not zombie) processes of process group ``pgid``, with their command lines."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(stat[2]) == pgid and stat[0] != "Z":
            members[int(entry)] = cmdline.split("\0")
    return members


def _kill_group(pgid: int | None) -> None:
    """What an old start left behind goes too, whatever the test found: it is this test's."""
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _connect_server_jvm_runs(pgid: int) -> bool:
    # spark-class first runs a short launcher JVM to build the command, then execs the real one.
    commands = _group(pgid).values()
    return any(cmd[0].endswith("java") and "org.apache.spark.launcher.Main" not in cmd for cmd in commands)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_ctrl_c_while_a_connect_server_starts_leaves_no_process_and_no_record(tmp_path, monkeypatch):
    state = tmp_path / "srv"
    srv = server.LocalConnectServer(master="local[1]", state_dir=state)
    spawned: dict[str, int] = {}
    port_open = server._port_open

    def ctrl_c_once_the_jvm_runs(port: int) -> bool:
        # The readiness wait looks at the port between spawn and ready: the Ctrl-C lands there,
        # once the server's JVM (the one that stayed up) is running.
        if srv._proc is not None and port == srv.port:
            spawned["pgid"] = srv._proc.pid
            if _connect_server_jvm_runs(srv._proc.pid):
                raise KeyboardInterrupt
        return port_open(port)

    monkeypatch.setattr(server, "_port_open", ctrl_c_once_the_jvm_runs)
    try:
        with pytest.raises(KeyboardInterrupt):
            with srv:
                pytest.fail("the with block ran although the start was interrupted")
        assert _group(spawned["pgid"]) == {}, "the server's processes outlived the Ctrl-C"
        assert not (state / "server.json").exists()
        assert server.read_server_info(state) is None
    finally:
        _kill_group(spawned.get("pgid"))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_ctrl_c_while_an_mlflow_server_starts_leaves_no_process(tmp_path, monkeypatch):
    spawned: dict[str, int] = {}

    def ctrl_c_once_it_serves(self: server.LocalMlflowServer) -> bool:
        # `mlflow server` starts uvicorn as a child of its own: interrupt once both run.
        spawned["pgid"] = self._proc.pid
        if len(_group(self._proc.pid)) >= 2:
            raise KeyboardInterrupt
        return False

    monkeypatch.setattr(server.LocalMlflowServer, "_healthy", ctrl_c_once_it_serves)
    try:
        with pytest.raises(KeyboardInterrupt):
            with server.LocalMlflowServer(state_dir=tmp_path / "mlflow"):
                pytest.fail("the with block ran although the start was interrupted")
        assert _group(spawned["pgid"]) == {}, "the mlflow server outlived the Ctrl-C"
    finally:
        _kill_group(spawned.get("pgid"))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_ctrl_c_while_a_cluster_starts_leaves_no_process_and_no_record(tmp_path, monkeypatch):
    state = tmp_path / "cluster"
    cluster = server.LocalCluster(workers=1, cores=1, memory="1g", state_dir=state)
    spawned: list[int] = []
    port_open = server._port_open

    def ctrl_c_once_the_master_runs(port: int) -> bool:
        spawned[:] = [p.pid for p in cluster._procs]
        if port == cluster.port and port_open(port):
            raise KeyboardInterrupt  # the master listens: its JVM is up
        return port_open(port)

    monkeypatch.setattr(server, "_port_open", ctrl_c_once_the_master_runs)
    try:
        with pytest.raises(KeyboardInterrupt):
            cluster.start()
        assert spawned, "the master was never spawned"
        assert all(_group(pgid) == {} for pgid in spawned), "the cluster outlived the Ctrl-C"
        assert server.read_cluster_info(state) is None and not (state / "cluster.json").exists()
    finally:
        for pgid in spawned:
            _kill_group(pgid)


# -- a pid in a state folder that is a stranger's now ---------------------------------------------
@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not a server of ours, leading a process group of its own as a reused
    pid often does (a login shell, a daemon): what `kill -- -PID` would reach."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _started(pid: int) -> str:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot}:{Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()[19]}"


def _records(pid: int) -> dict[str, dict[str, object]]:
    """How a record may name ``pid``: from an older version (no start time), or from a process
    started at another moment, which is gone now (the pid was reused, e.g. after a reboot)."""
    real = _started(pid)
    boot, ticks = real.rsplit(":", 1)
    return {"without a start time": {}, "of another process": {"started": f"{boot}:{int(ticks) - 1}"}}


RECORDS = ["without a start time", "of another process"]


def _write_server_record(state: Path, pid: int, record: str) -> None:
    state.mkdir(parents=True, exist_ok=True)
    data = {"pid": pid, "port": server.free_port(), "master": "local[1]", **_records(pid)[record]}
    (state / "server.json").write_text(json.dumps(data))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times come from /proc")
@pytest.mark.parametrize("record", RECORDS)
def test_stop_does_not_signal_a_stranger_whose_pid_a_server_record_names(tmp_path, stranger, record, caplog):
    state = tmp_path / "srv"
    _write_server_record(state, stranger.pid, record)
    with caplog.at_level(logging.WARNING, logger="connect_trials"):
        server.LocalConnectServer(state_dir=state).stop()
    assert stranger.poll() is None, "stop() signalled a process that is not our server"
    assert not (state / "server.json").exists(), "the stale record was kept"
    told = [r.getMessage() for r in caplog.records if str(stranger.pid) in r.getMessage()]
    assert len(told) == 1 and "signalled nothing" in told[0], caplog.text


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times come from /proc")
@pytest.mark.parametrize("record", RECORDS)
def test_cli_server_stop_does_not_signal_a_stranger_and_says_so(tmp_path, stranger, record):
    state = tmp_path / "srv"
    _write_server_record(state, stranger.pid, record)
    stopped = subprocess.run(
        [sys.executable, "-m", "connect_trials", "server", "stop", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert stranger.poll() is None, "`server stop` signalled a process that is not our server"
    assert stopped.returncode == 0, stopped.stderr
    assert f"pid {stranger.pid}" in stopped.stderr and "signalled nothing" in stopped.stderr, stopped.stderr
    assert "stopped" not in stopped.stdout
    assert not (state / "server.json").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times come from /proc")
@pytest.mark.parametrize("record", RECORDS)
def test_cli_cluster_stop_does_not_signal_a_stranger_and_says_so(tmp_path, stranger, record):
    state = tmp_path / "cluster"
    state.mkdir()
    data = {"pids": [stranger.pid], "port": 1, "webui_port": 2, "workers": 1, "cores": 1}
    if "started" in _records(stranger.pid)[record]:
        data["started"] = [_records(stranger.pid)[record]["started"]]
    (state / "cluster.json").write_text(json.dumps(data))
    stopped = subprocess.run(
        [sys.executable, "-m", "connect_trials", "cluster", "stop", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert stranger.poll() is None, "`cluster stop` signalled a process that is not our master"
    assert stopped.returncode == 0, stopped.stderr
    assert f"pid {stranger.pid}" in stopped.stderr and "signalled nothing" in stopped.stderr, stopped.stderr
    assert not (state / "cluster.json").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times come from /proc")
def test_a_record_of_the_process_really_spawned_is_still_trusted(tmp_path, stranger):
    # The check must not refuse the process that was really recorded: here the "stranger" is
    # what the record was written for (test_server.py stops a real server from another process).
    state = tmp_path / "srv"
    state.mkdir()
    data = {"pid": stranger.pid, "started": _started(stranger.pid), "port": 1, "master": "local[1]"}
    (state / "server.json").write_text(json.dumps(data))
    assert server.read_server_info(state) is not None
    server.LocalConnectServer(state_dir=state).stop()
    assert stranger.wait(timeout=30) == -signal.SIGTERM
    assert not (state / "server.json").exists()
