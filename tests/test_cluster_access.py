"""Who can reach our servers, and what they show: only an application with the secret joins
the shared cluster (fixture ``cluster``), no secret is on a command line, and every port of the
cluster and of a Connect server is on loopback, with no kill links behind it."""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connect_trials.server import LocalCluster, LocalConnectServer, free_port

# A classic application (the Spark driver in this script's JVM) that tries to join the master.
CLASSIC_APPLICATION = """
    import os, sys
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(os.environ["MASTER_URL"]).appName(os.environ["APP_NAME"])
             .config("spark.ui.enabled", "false").getOrCreate())
    print("registered as", spark.sparkContext.applicationId, flush=True)
    sys.stdin.read()  # stays registered until the test is done with it
"""
REFUSED = "Failed to connect to master"  # StandaloneAppClient's warning, at each attempt
REGISTERED = "registered as app-"


def _first_answer(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line of ``proc``'s output saying whether the master took it, or what the
    process said before it ended."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        if line is None:
            return "ended: " + "".join(seen[-30:])
        if REFUSED in line or REGISTERED in line:
            return line
        seen.append(line)


def _try_to_register(cluster: LocalCluster, name: str, submit_args: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    env.update(
        MASTER_URL=cluster.master_url, APP_NAME=name, PYSPARK_SUBMIT_ARGS=f"{submit_args} pyspark-shell"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CLASSIC_APPLICATION)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its JVM too is stopped below, by this group
    )
    try:
        return _first_answer(proc, timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _master_status(cluster: LocalCluster) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.webui_port}/json/", timeout=10) as response:
        status: dict[str, Any] = json.loads(response.read())
    return status


def _app_names(status: dict[str, Any]) -> list[str]:
    return [app["name"] for app in status["activeapps"] + status["completedapps"]]


def test_an_application_without_the_clusters_secret_cannot_register_with_its_master(cluster):
    answer = _try_to_register(cluster, "without-the-secret")
    assert REFUSED in answer, answer
    status = _master_status(cluster)
    assert "without-the-secret" not in _app_names(status)
    assert [app["name"] for app in status["activeapps"]] == ["Spark Connect server"]
    # The same application joins with the cluster's properties file: the secret is what it lacked.
    answer = _try_to_register(cluster, "with-the-secret", f"--properties-file {cluster.secret_conf_path}")
    assert REGISTERED in answer, answer
    assert "with-the-secret" in _app_names(_master_status(cluster))


def _processes_of(cluster: LocalCluster) -> list[int]:
    """The cluster's processes: master, workers, Connect server, and all they started
    (executors, Python workers)."""
    assert cluster.server._proc is not None
    return _descendants({p.pid for p in cluster._procs} | {cluster.server._proc.pid})


def _descendants(roots: set[int]) -> list[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            children.setdefault(_parent(int(entry)), []).append(int(entry))
    found, todo = [], sorted(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().split(") ", 1)[1].split()[1])
    except OSError:
        return 0


def _read_private(path: Path) -> str:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    return path.read_text()


def test_the_clusters_secret_and_token_are_in_0600_files_and_on_no_command_line_nor_log(cluster):
    conf = _read_private(cluster.secret_conf_path)
    [secret] = [
        line.split()[1] for line in conf.splitlines() if line.startswith("spark.authenticate.secret ")
    ]
    token = _read_private(cluster.server.state_dir / "token").strip()
    assert len(secret) >= 32 and len(token) >= 32
    for pid in _processes_of(cluster):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        assert secret not in command and token not in command, command.replace("\0", " ")
    # The daemons' and the server's logs, state files, and the executors' stdout and stderr.
    for path in cluster.state_dir.rglob("*"):
        if path.suffix in (".out", ".json") or path.name in ("stdout", "stderr"):
            text = path.read_text(errors="replace")
            assert secret not in text and token not in text, path
    assert secret not in json.dumps(_master_status(cluster))


def _listening_sockets() -> dict[str, tuple[str, int]]:
    """Every listening TCP socket on this machine: its inode, and the address it is bound to."""
    sockets = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                address, port = fields[1].split(":")
                # Each 32-bit word of the address is in the host's (little-endian) order.
                raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, width, 8))
                sockets[fields[9]] = (str(ipaddress.ip_address(raw)), int(port, 16))
    return sockets


def _listening_ports_of(pids: list[int]) -> Iterator[tuple[int, str, int]]:
    sockets = _listening_sockets()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            inode = target[len("socket:[") : -1] if target.startswith("socket:[") else ""
            if inode in sockets:
                yield (pid, *sockets[inode])


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def test_every_port_the_cluster_listens_on_is_bound_to_loopback(cluster, cluster_spark):
    cluster_spark.range(0, 1, 1, 1).collect()  # executors up, so that their ports count too
    ports = list(_listening_ports_of(_processes_of(cluster)))
    assert {port for _, _, port in ports} >= {cluster.port, cluster.webui_port, cluster.server.port}
    assert [p for p in ports if not _is_loopback(p[1])] == []
    # The master's: its RPC port and its web UI, and no REST gateway (which checks no secret).
    master = cluster._procs[0].pid
    master_jvm = [pid for pid in _processes_of(cluster) if pid == master or _parent(pid) == master]
    assert {port for pid, _, port in ports if pid in master_jvm} == {cluster.port, cluster.webui_port}


@pytest.mark.parametrize(
    "action", ["app/kill/?id=app-none&terminate=true", "driver/kill/?id=driver-none&terminate=true"]
)
def test_the_masters_web_ui_refuses_to_kill_applications_or_drivers(cluster, action):
    request = urllib.request.Request(f"http://127.0.0.1:{cluster.webui_port}/{action}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405


def test_a_connect_server_whose_spark_ui_is_turned_on_serves_it_on_loopback_without_kill_links(tmp_path):
    from pyspark.sql import SparkSession

    ui_port = free_port()
    conf = {"spark.ui.enabled": "true", "spark.ui.port": str(ui_port)}
    with LocalConnectServer(master="local[1]", state_dir=tmp_path, conf=conf) as server:
        assert server._proc is not None
        ports = list(_listening_ports_of(_descendants({server._proc.pid})))
        assert {port for _, _, port in ports} >= {server.port, ui_port}
        assert [p for p in ports if not _is_loopback(p[1])] == []

        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(120)
        port = listener.getsockname()[1]

        def held(batches):  # type: ignore[no-untyped-def]
            import socket

            with socket.create_connection(("127.0.0.1", port)) as s:
                s.recv(1)
            yield from batches

        spark = SparkSession.builder.remote(server.url).create()
        job = threading.Thread(target=spark.range(0, 1, 1, 1).mapInPandas(held, "id long").collect)
        job.start()
        trial, _ = listener.accept()
        try:  # a job runs: the pages that would offer to kill it
            pages = {page: _get(f"http://127.0.0.1:{ui_port}/{page}/") for page in ("jobs", "stages")}
        finally:
            trial.sendall(b"g")
            job.join(120)
            trial.close()
            listener.close()
            spark.stop()
    assert "Active Jobs (1)" in pages["jobs"] and "Active Stages (1)" in pages["stages"]
    assert [page for page, html in pages.items() if "kill-link" in html] == []


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())
