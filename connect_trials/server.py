"""The embedded default: a Spark Connect server from the pyspark wheel, on loopback.

One place starts and stops servers. :class:`LocalConnectServer` runs the wheel's
``sbin/start-connect-server.sh --wait`` in a session of its own (so a ``timeout`` or a
Ctrl-C around the caller does not take it down), on a free loopback port, with logs, pid
file and Spark's scratch space under a state folder. It is stopped through its own
process group, never by name. A start that fails or is interrupted (Ctrl-C included) stops
what it spawned before the error propagates. A pid read back from a state folder is signalled
only if it is still the process that was spawned (its start time, from /proc, is recorded
with it): after a reboot, or once the server is gone, the pid may be a stranger's.

    with LocalConnectServer(master="local[2]") as server:
        spark = SparkSession.builder.remote(server.url).getOrCreate()
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

DEFAULT_STATE_DIR = Path(os.environ.get("CONNECT_TRIALS_HOME", "~/.connect-trials")).expanduser()
_LOOPBACK = "127.0.0.1"
# Without TLS, the Python client sends a token only to the host name "localhost".
_TOKEN_HOST = "localhost"
# A SIGKILLed client's trials stop within about half a minute, not 5+ minutes: the server
# ends each response stream after 10 s (a live client reattaches at once, a dead one never
# does; a stream waiting on a silent trial would not notice its client is gone), an
# operation nobody reattached to for 20 s is interrupted, and the server looks every 5 s.
CLIENT_GONE_CONF = {
    "spark.connect.execute.reattachable.senderMaxStreamDuration": "10s",
    "spark.connect.execute.manager.detachedTimeout": "20s",
    "spark.connect.execute.manager.maintenanceInterval": "5s",
}
# Spark binds its web UIs to SPARK_LOCAL_IP, else to every interface: ours listen on loopback,
# and show no kill links, thread dumps or heap histograms to whoever can reach them.
_UI_CONF = {
    "spark.ui.killEnabled": "false",
    "spark.ui.threadDumpsEnabled": "false",
    "spark.ui.heapHistogramEnabled": "false",
}
# The master's REST submission gateway (on 6066, whatever the master's port) would take drivers
# from anyone: it does not check spark.authenticate.
_MASTER_CONF = {"spark.master.rest.enabled": "false"}
_STARTUP_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 20.0
# Where a process's start time can be read; elsewhere a recorded pid is trusted as it stands.
_PROC = Path("/proc")

logger = logging.getLogger("connect_trials")


class ServerError(RuntimeError):
    """The local Spark Connect server could not be started or reached."""


@dataclass(frozen=True)
class ServerInfo:
    """What a running server left in its state folder."""

    pid: int
    port: int
    master: str
    token: str = ""

    @property
    def url(self) -> str:
        """The URL to connect with, token included: never print it."""
        return connect_url(self.port, self.token)

    @property
    def public_url(self) -> str:
        """The URL without its token, for messages."""
        return connect_url(self.port, "***" if self.token else "")


def connect_url(port: int, token: str) -> str:
    if not token:
        return f"sc://{_LOOPBACK}:{port}"
    return f"sc://{_TOKEN_HOST}:{port}/;token={token}"


def read_token(state_dir: Path) -> str:
    try:
        return (state_dir / "token").read_text().strip()
    except OSError:
        return ""


def new_token(state_dir: Path) -> str:
    """A fresh token in ``state_dir/token``, readable by this user only. Anyone who can reach
    a port on loopback could otherwise run code as you through the server."""
    token = secrets.token_urlsafe(24)
    _write_private(state_dir / "token", token)
    return token


def _write_private(path: Path, text: str) -> None:
    """``text`` in a new file at ``path``, readable by this user only from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _write_properties(path: Path, conf: dict[str, str]) -> Path:
    """A Spark properties file (``--properties-file``) readable by this user only: where
    secrets go, since a command line is readable by every local user in /proc."""
    _write_private(path, "".join(f"{key} {value}\n" for key, value in conf.items()))
    return path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((_LOOPBACK, port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it has exited all the same.
    fields = _stat_fields(pid)
    return fields is None or fields[0] != "Z"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from its third field on (state, ppid, pgrp, ...); None where /proc
    cannot tell (not Linux, or gone). The command name (field 2) may hold spaces and
    parentheses: the fields follow its last ")"."""
    try:
        return (_PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _process_identity(pid: int) -> str | None:
    """Which process ``pid`` is: this boot's id and the process's start time (clock ticks
    since boot, /proc/<pid>/stat field 22). A pid is reused once its process is gone, and
    after a reboot; this pair is not. None where /proc cannot tell (not Linux, or gone)."""
    fields = _stat_fields(pid)
    try:
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None
    return None if fields is None else f"{boot}:{fields[19]}"


def _is_ours(pid: int, identity: str | None) -> bool:
    """Whether ``pid`` is still the process recorded with ``identity`` when it was spawned."""
    if identity is None:
        # Recorded where no start time could be read: trusted only where none can be read now
        # either (not Linux); on Linux it is a record of an older version, which cannot be checked.
        return not _PROC.is_dir()
    return _process_identity(pid) == identity


def _recorded_and_ours(pids: list[int], identities: list[str | None], record: Path) -> list[int]:
    """The pids of ``record`` whose process still runs and is the one that was spawned. Each
    other live pid belongs to a stranger now (or cannot be checked): it is never signalled,
    and the user hears of it."""
    ours = []
    for pid, identity in zip(pids, identities, strict=True):
        if not _alive(pid):
            continue
        if _is_ours(pid, identity):
            ours.append(pid)
            continue
        if identity is None:
            why = "was recorded without a start time (by an older version): it may be a stranger's"
            hint = f"; if it is our server, stop it with: kill -- -{pid}"
        else:
            why = "is not the process started there (that one is gone, its pid reused, e.g. after a reboot)"
            hint = ""
        logger.warning("pid %d in %s %s: forgot the record, signalled nothing%s", pid, record, why, hint)
    return ours


class _OwnedServer:
    """A server process this object starts, and stops on leaving a ``with`` block."""

    def start(self: _S) -> _S:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_S = TypeVar("_S", bound=_OwnedServer)


class LocalConnectServer(_OwnedServer):
    """A Spark Connect server on loopback, owned by this object (or by its state folder).

    ``master`` is any Spark master URL: ``local[2]`` for one machine, ``spark://...`` for a
    standalone cluster. ``conf`` adds Spark settings. The server binds to 127.0.0.1 only and
    requires a token (``spark.connect.authenticate.token``, new at each start, kept in
    ``state_dir/token`` readable by this user only); ``url`` carries it. ``private_conf``
    holds Spark settings that must stay off the command line (a cluster's
    ``spark.authenticate.secret``): they go, with the token, into a properties file only this
    user can read.
    """

    def __init__(
        self,
        port: int | None = None,
        master: str = "local[*]",
        state_dir: str | os.PathLike[str] | None = None,
        conf: dict[str, str] | None = None,
        python: str | None = None,
        hide: list[str] | None = None,
        private_conf: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.master = master
        self.state_dir = Path(state_dir) if state_dir else DEFAULT_STATE_DIR / "server"
        self.conf = dict(conf or {})
        self.private_conf = dict(private_conf or {})
        # Folders the server (the Spark driver) must not see; see LocalCluster.
        self.hide = [os.path.realpath(p) for p in (hide or [])]
        # The workers must run the interpreter that has pyarrow and pandas (design.md).
        self.python = python or sys.executable
        self.token = read_token(self.state_dir) if read_server_info(self.state_dir) else ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL to connect with, token included: never print it (``public_url``)."""
        return connect_url(self.port, self.token)

    @property
    def public_url(self) -> str:
        return connect_url(self.port, "***" if self.token else "")

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / "connect-server.out"

    @property
    def _info_path(self) -> Path:
        return self.state_dir / "server.json"

    def _command(self) -> list[str]:
        conf = {
            "spark.connect.grpc.binding.address": _LOOPBACK,
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.driver.host": _LOOPBACK,
            "spark.driver.bindAddress": _LOOPBACK,
            "spark.ui.enabled": "false",
            **_UI_CONF,
            "spark.local.dir": str(self.state_dir / "scratch"),
            "spark.sql.warehouse.dir": str(self.state_dir / "warehouse"),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={self.state_dir / 'derby'}",
            "spark.pyspark.python": self.python,
            **CLIENT_GONE_CONF,
            **self.conf,
        }
        script = spark_home() / "sbin" / "start-connect-server.sh"
        cmd = [
            "bash",
            str(script),
            "--wait",
            "--master",
            self.master,
            "--properties-file",
            str(self._secret_conf()),
        ]
        for key, value in conf.items():
            cmd += ["--conf", f"{key}={value}"]
        if self.hide:
            cmd = _in_private_mounts(cmd, self.hide, keep=[_venv_root(), str(self.state_dir)])
        return cmd

    def _secret_conf(self) -> Path:
        secret = {"spark.connect.authenticate.token": self.token, **self.private_conf}
        return _write_properties(self.state_dir / "secret.conf", secret)

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SPARK_REMOTE", None)
        env.pop("SPARK_CONNECT_MODE_ENABLED", None)
        env.update(
            SPARK_HOME=str(spark_home()),
            SPARK_LOG_DIR=str(self.state_dir / "logs"),
            SPARK_PID_DIR=str(self.state_dir / "pids"),
            SPARK_LOCAL_IP=_LOOPBACK,  # where Spark binds web UIs
            PYSPARK_PYTHON=self.python,
            PYSPARK_DRIVER_PYTHON=self.python,
        )
        return env

    def start(self, timeout: float = _STARTUP_TIMEOUT_S, keep_token: bool = False) -> LocalConnectServer:
        """Start the server and return once its gRPC port accepts connections.

        ``keep_token``: start with the token of the last start (the same ``url``), as a
        restarted driver of a managed cluster does, so that its clients can reconnect."""
        running = read_server_info(self.state_dir)
        if running is not None:
            raise ServerError(
                f"a server started from {self.state_dir} is already running at {running.public_url} "
                f"(pid {running.pid}); stop it first or use another state folder"
            )
        if _port_open(self.port):
            raise ServerError(f"port {self.port} is already in use; pick another with port=")
        if self.hide and os.geteuid() != 0:
            raise ServerError("hide= needs root (a private mount namespace)")
        for sub in ("logs", "pids", "scratch"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        if not (keep_token and self.token):
            self.token = new_token(self.state_dir)
        self._proc = None  # an earlier start's process has ended (the check above)
        try:
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    self._command(),
                    # A working directory inside a hidden folder would keep it readable.
                    cwd=self.state_dir if self.hide else None,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._environment(),
                    start_new_session=True,
                )
            pid = self._proc.pid
            self._info_path.write_text(json.dumps(
                {"pid": pid, "started": _process_identity(pid), "port": self.port, "master": self.master}
            ))  # fmt: skip
            self._wait_until_ready(self._proc, time.monotonic() + timeout, timeout)
        except BaseException:
            # Ctrl-C during the 10-30 s start included: nothing started here outlives the error,
            # and nothing else is touched (before Popen, nothing was started).
            if self._proc is not None:
                self.stop()
            raise
        return self

    def _wait_until_ready(self, proc: subprocess.Popen[bytes], deadline: float, timeout: float) -> None:
        # The JVM gives no readiness signal but its open port: look at it until it answers.
        while not _port_open(self.port):
            if proc.poll() is not None:
                raise ServerError(
                    f"the Spark Connect server exited with code {proc.returncode} "
                    f"before opening port {self.port}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the Spark Connect server did not open port {self.port} within "
                    f"{timeout:.0f} s; see {self.log_path}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server started from this state folder, if it runs: the one this object
        spawned, or else the one its state folder records, if that pid is still ours."""
        if self._proc is not None:
            # Spawned here, in a group of its own: the group is ours while its leader is not
            # reaped, and while any member lives (a pgid is not reused before that).
            if self._proc.poll() is None or _group_alive(self._proc.pid):
                _terminate_group(self._proc.pid)
            self._proc.wait()
            self._proc = None
        else:
            info = read_server_info(self.state_dir)
            if info is not None:
                _terminate_group(info.pid)
        self._forget()

    def _forget(self) -> None:
        self._info_path.unlink(missing_ok=True)


def _terminate_group(pid: int) -> None:
    """Stop the process group led by ``pid`` (the server's launcher and its JVM)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    if not _PROC.is_dir():
        return True  # no way to tell its zombies from its live members
    return any(_alive(pid) for pid in _group_members(pgid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir(_PROC):
        fields = _stat_fields(int(entry)) if entry.isdigit() else None
        if fields is not None and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def read_server_info(state_dir: str | os.PathLike[str] | None = None) -> ServerInfo | None:
    """The server recorded in ``state_dir`` if its process still runs, else None (and the
    record is forgotten). A recorded pid that is now a stranger's counts as gone (logged)."""
    path = Path(state_dir or DEFAULT_STATE_DIR / "server") / "server.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    info = ServerInfo(
        pid=int(data["pid"]), port=int(data["port"]), master=str(data["master"]),
        token=read_token(Path(state_dir or DEFAULT_STATE_DIR / "server")),
    )  # fmt: skip
    if not _recorded_and_ours([info.pid], [data.get("started")], path):
        path.unlink(missing_ok=True)
        return None
    return info


class LocalMlflowServer(_OwnedServer):
    """A real ``mlflow server`` on loopback: sqlite backend and local artifacts under
    ``state_dir``. For tests, benchmarks and fault injection; stopped through its own
    process group, like the Spark Connect server.

        with LocalMlflowServer(state_dir=tmp) as mlflow_server:
            mlflow.set_tracking_uri(mlflow_server.url)
    """

    def __init__(self, state_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{_LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "mlflow-server.log"

    def start(self, timeout: float = 120.0) -> LocalMlflowServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.state_dir / 'mlflow.db'}",
            "--default-artifact-root", str(self.state_dir / "artifacts"),
            "--host", _LOOPBACK,
            "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        # The job runner (huey consumers) doubles the start-up time and is not needed here.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        if self._proc is not None and self._proc.poll() is None:
            raise ServerError(f"this mlflow server runs already at {self.url}; stop() it first")
        self._proc = None
        try:
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    command,
                    cwd=self.state_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while not self._healthy():
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise ServerError(f"mlflow server did not start; see {self.log_path}")
                time.sleep(0.2)  # a process coming up: nothing to be notified by
        except BaseException:
            # Ctrl-C included: the server (and its workers, in its group) goes with the error.
            self.stop()  # only what this call spawned: _proc was cleared before it
            raise
        return self

    def _healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None or _group_alive(self._proc.pid):  # see LocalConnectServer.stop
            _terminate_group(self._proc.pid)
        self._proc.wait()
        self._proc = None


class LocalCluster(_OwnedServer):
    """A Spark standalone cluster on loopback, from the pyspark wheel: a master, ``workers``
    workers of ``cores`` cores and ``memory`` each, and a Spark Connect server attached to it.

        with LocalCluster(workers=2, cores=2, memory="1g") as cluster:
            spark = SparkSession.builder.remote(cluster.url).getOrCreate()

    ``hide`` lists folders the cluster must not see, as on a real cluster that shares nothing
    with the client: the workers (their executors and Python workers) and the Connect server
    (the Spark driver) each run in a private mount namespace (``unshare -m``, root only) with
    an empty tmpfs over each folder. The client's interpreter, which the cluster runs, and
    the cluster's own state folder are mounted back if they lie inside.

    Only this user joins the cluster: master, workers and the Connect server's application
    share a secret (``spark.authenticate``, new at each start), kept with the master's and
    workers' settings in ``state_dir/secret.conf``, readable by this user only, which a
    classic application passes as ``spark-submit --properties-file``. An application without
    it cannot register with the master. The web UIs listen on loopback, without kill links.
    """

    def __init__(
        self,
        workers: int = 2,
        cores: int = 2,
        memory: str = "1g",
        state_dir: str | os.PathLike[str] | None = None,
        hide: list[str] | None = None,
        conf: dict[str, str] | None = None,
    ) -> None:
        if workers < 1 or cores < 1:
            raise ValueError(f"workers and cores must be at least 1, not {workers} and {cores}")
        self.workers = workers
        self.cores = cores
        self.memory = memory
        self.state_dir = Path(state_dir) if state_dir else DEFAULT_STATE_DIR / "cluster"
        self.hide = [os.path.realpath(p) for p in (hide or [])]
        self.port = free_port()
        self.webui_port = free_port()
        self._procs: list[subprocess.Popen[bytes]] = []
        self.server = LocalConnectServer(
            master=self.master_url,
            state_dir=self.state_dir / "server",
            hide=self.hide,
            conf={
                "spark.executor.memory": _executor_memory(memory),
                "spark.executor.cores": str(cores),
                "spark.cores.max": str(workers * cores),
                **(conf or {}),
            },
        )

    @property
    def master_url(self) -> str:
        return f"spark://{_LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """The Connect server's URL, token included: never print it (``public_url``)."""
        return self.server.url

    @property
    def public_url(self) -> str:
        return self.server.public_url

    @property
    def secret_conf_path(self) -> Path:
        """The cluster's secret and settings, for ``spark-submit --properties-file``."""
        return self.state_dir / "secret.conf"

    @property
    def _info_path(self) -> Path:
        return self.state_dir / "cluster.json"

    def start(self, timeout: float = _STARTUP_TIMEOUT_S) -> LocalCluster:
        """Start master, workers and Connect server; return once the workers are registered
        and the server's port answers."""
        if read_cluster_info(self.state_dir) is not None:
            raise ServerError(f"a cluster started from {self.state_dir} is already running; stop it first")
        if self.hide and os.geteuid() != 0:
            raise ServerError("hide= needs root (a private mount namespace per worker)")
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        auth = {"spark.authenticate": "true", "spark.authenticate.secret": secrets.token_urlsafe(24)}
        self.server.private_conf = auth
        _write_properties(self.secret_conf_path, {**auth, **_UI_CONF, **_MASTER_CONF})
        deadline = time.monotonic() + timeout
        try:
            master = ["org.apache.spark.deploy.master.Master", "--host", _LOOPBACK, "--port", str(self.port)]
            self._spawn("master", [*master, "--webui-port", str(self.webui_port)])
            self._wait(lambda: _port_open(self.port) and _port_open(self.webui_port), deadline, "master")
            for i in range(self.workers):
                work_dir = self.state_dir / f"worker-{i}"
                work_dir.mkdir(parents=True, exist_ok=True)
                self._spawn(
                    f"worker-{i}",
                    ["org.apache.spark.deploy.worker.Worker", self.master_url, "--host", _LOOPBACK,
                     "--cores", str(self.cores), "--memory", self.memory, "--work-dir", str(work_dir),
                     "--webui-port", "0"],
                    hidden=True,
                )  # fmt: skip
            self._wait(lambda: self.alive_workers() >= self.workers, deadline, "workers")
            self.server.start(timeout=max(deadline - time.monotonic(), 1.0))
            pids = [p.pid for p in self._procs]
            record = {
                "pids": pids, "started": [_process_identity(pid) for pid in pids], "port": self.port,
                "webui_port": self.webui_port, "workers": self.workers, "cores": self.cores,
            }  # fmt: skip
            self._info_path.write_text(json.dumps(record))
        except BaseException:
            # Ctrl-C included: master, workers and server go with the error.
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the cluster: the processes this object spawned, or else those its state folder
        records that are still ours."""
        self.server.stop()
        if self._procs:
            for proc in reversed(self._procs):
                _terminate_group(proc.pid)  # not reaped yet: their pids cannot have been reused
            for proc in self._procs:
                proc.wait()
            self._procs.clear()
        else:
            info = read_cluster_info(self.state_dir)
            if info is not None:
                for pid in reversed(_recorded_and_ours(*_recorded_processes(info), self._info_path)):
                    _terminate_group(pid)
        self._info_path.unlink(missing_ok=True)

    def alive_workers(self) -> int:
        """Workers the master lists as ALIVE (its JSON status page)."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{_LOOPBACK}:{self.webui_port}/json/", timeout=2) as response:
                status = json.loads(response.read())
        except (OSError, ValueError):
            return 0
        return sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")

    def _spawn(self, name: str, args: list[str], hidden: bool = False) -> None:
        # The secret goes in a file only this user can read: a command line is in /proc for all.
        secret_conf = ["--properties-file", str(self.secret_conf_path)]
        command = [str(spark_home() / "bin" / "spark-class"), *args, *secret_conf]
        if hidden and self.hide:
            command = _in_private_mounts(command, self.hide, keep=[_venv_root(), str(self.state_dir)])
        env = {**self.server._environment(), "SPARK_NO_DAEMONIZE": "1",
               "SPARK_WORKER_DIR": str(self.state_dir / name)}  # fmt: skip
        with open(self.state_dir / "logs" / f"{name}.out", "ab") as log:
            self._procs.append(
                subprocess.Popen(
                    command,
                    cwd=self.state_dir,  # visible to the workers, unlike the client's folder
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )  # fmt: skip
            )

    def _wait(self, ready: Any, deadline: float, what: str) -> None:
        # A JVM coming up: its port or the master's page are the only signals it gives.
        while not ready():
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                raise ServerError(f"the cluster's {what} exited early; see {self.state_dir / 'logs'}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the cluster's {what} did not come up in time; see {self.state_dir / 'logs'}"
                )
            time.sleep(0.2)


def read_cluster_info(state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """What a running cluster left in ``state_dir``, if its master still runs and is ours
    (else the record is forgotten)."""
    path = Path(state_dir or DEFAULT_STATE_DIR / "cluster") / "cluster.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pids, identities = _recorded_processes(data)
    if not pids or not _recorded_and_ours(pids[:1], identities[:1], path):
        path.unlink(missing_ok=True)
        return None
    return data


def _recorded_processes(data: dict[str, Any]) -> tuple[list[int], list[str | None]]:
    """A cluster record's pids (the master's first) and their start times (None if unknown)."""
    pids = [int(pid) for pid in data.get("pids") or []]
    identities = list(data.get("started") or [])
    return pids, identities + [None] * (len(pids) - len(identities))


def _executor_memory(worker_memory: str) -> str:
    """Most of a worker's memory for its executor (the JVM needs some of its own beside)."""
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
    number, unit = worker_memory[:-1], worker_memory[-1:].lower()
    megabytes = float(number) * units[unit] if unit in units else float(worker_memory) / (1024 * 1024)
    return f"{max(int(megabytes * 0.75), 256)}m"


def _venv_root() -> str:
    return os.path.realpath(sys.prefix)


def _in_private_mounts(command: list[str], hide: list[str], keep: list[str]) -> list[str]:
    """``command`` run in a private mount namespace where each folder of ``hide`` is an empty
    tmpfs, except the folders of ``keep`` inside them, mounted back in place."""
    keep = [os.path.realpath(k) for k in keep if any(_inside(k, h) for h in hide)]
    lines = ["set -e", "mount -t tmpfs none /mnt"]
    for i, path in enumerate(keep):
        lines += [f"mkdir -p /mnt/keep{i}", f"mount --bind {_q(path)} /mnt/keep{i}"]
    lines += [f"mount -t tmpfs none {_q(path)}" for path in hide]
    for i, path in enumerate(keep):
        lines += [f"mkdir -p {_q(path)}", f"mount --move /mnt/keep{i} {_q(path)}"]
    lines.append('exec "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(lines), "sh", *command]


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def _q(path: str) -> str:
    import shlex

    return shlex.quote(path)
