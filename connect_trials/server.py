"""The embedded default: a Spark Connect server from the pyspark wheel, on loopback.

One place starts and stops servers. :class:`LocalConnectServer` runs the wheel's
``sbin/start-connect-server.sh --wait`` in a session of its own (so a ``timeout`` or a
Ctrl-C around the caller does not take it down), on a free loopback port, with logs, pid
file and Spark's scratch space under a state folder. It is stopped through its own
process group, never by name.

    with LocalConnectServer(master="local[2]") as server:
        spark = SparkSession.builder.remote(server.url).getOrCreate()
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

DEFAULT_STATE_DIR = Path(os.environ.get("CONNECT_TRIALS_HOME", "~/.connect-trials")).expanduser()
_LOOPBACK = "127.0.0.1"
_STARTUP_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 20.0


class ServerError(RuntimeError):
    """The local Spark Connect server could not be started or reached."""


@dataclass(frozen=True)
class ServerInfo:
    """What a running server left in its state folder."""

    pid: int
    port: int
    master: str

    @property
    def url(self) -> str:
        return f"sc://{_LOOPBACK}:{self.port}"


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
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


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
    standalone cluster. ``conf`` adds Spark settings. The server binds to 127.0.0.1 only.
    """

    def __init__(
        self,
        port: int | None = None,
        master: str = "local[*]",
        state_dir: str | os.PathLike[str] | None = None,
        conf: dict[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.master = master
        self.state_dir = Path(state_dir) if state_dir else DEFAULT_STATE_DIR / "server"
        self.conf = dict(conf or {})
        # The workers must run the interpreter that has pyarrow and pandas (design.md).
        self.python = python or sys.executable
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"sc://{_LOOPBACK}:{self.port}"

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
            "spark.local.dir": str(self.state_dir / "scratch"),
            "spark.sql.warehouse.dir": str(self.state_dir / "warehouse"),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={self.state_dir / 'derby'}",
            "spark.pyspark.python": self.python,
            **self.conf,
        }
        script = spark_home() / "sbin" / "start-connect-server.sh"
        cmd = ["bash", str(script), "--wait", "--master", self.master]
        for key, value in conf.items():
            cmd += ["--conf", f"{key}={value}"]
        return cmd

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SPARK_REMOTE", None)
        env.pop("SPARK_CONNECT_MODE_ENABLED", None)
        env.update(
            SPARK_HOME=str(spark_home()),
            SPARK_LOG_DIR=str(self.state_dir / "logs"),
            SPARK_PID_DIR=str(self.state_dir / "pids"),
            PYSPARK_PYTHON=self.python,
            PYSPARK_DRIVER_PYTHON=self.python,
        )
        return env

    def start(self, timeout: float = _STARTUP_TIMEOUT_S) -> LocalConnectServer:
        """Start the server and return once its gRPC port accepts connections."""
        running = read_server_info(self.state_dir)
        if running is not None:
            raise ServerError(
                f"a server started from {self.state_dir} is already running at {running.url} "
                f"(pid {running.pid}); stop it first or use another state folder"
            )
        if _port_open(self.port):
            raise ServerError(f"port {self.port} is already in use; pick another with port=")
        for sub in ("logs", "pids", "scratch"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                start_new_session=True,
            )
        finally:
            log.close()
        self._info_path.write_text(
            json.dumps({"pid": self._proc.pid, "port": self.port, "master": self.master})
        )
        deadline = time.monotonic() + timeout
        # The JVM gives no readiness signal but its open port: look at it until it answers.
        while not _port_open(self.port):
            if self._proc.poll() is not None:
                self._forget()
                raise ServerError(
                    f"the Spark Connect server exited with code {self._proc.returncode} "
                    f"before opening port {self.port}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"the Spark Connect server did not open port {self.port} within "
                    f"{timeout:.0f} s; see {self.log_path}"
                )
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        """Stop the server started from this state folder, if it runs."""
        info = read_server_info(self.state_dir)
        pid = self._proc.pid if self._proc is not None else info.pid if info else None
        if pid is not None:
            _terminate_group(pid)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
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
    return any(_alive(pid) for pid in _group_members(pgid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().split(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def read_server_info(state_dir: str | os.PathLike[str] | None = None) -> ServerInfo | None:
    """The server recorded in ``state_dir`` if its process still runs, else None."""
    path = Path(state_dir or DEFAULT_STATE_DIR / "server") / "server.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    info = ServerInfo(pid=int(data["pid"]), port=int(data["port"]), master=str(data["master"]))
    if not _alive(info.pid):
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
                self.stop()
                raise ServerError(f"mlflow server did not start; see {self.log_path}")
            time.sleep(0.2)  # a process coming up: nothing to be notified by
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
        _terminate_group(self._proc.pid)
        self._proc.wait()
        self._proc = None
