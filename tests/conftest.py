"""Real servers for the suite: one Spark Connect server (local[2]) for the whole session."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from io import StringIO

import pytest

from connect_trials.server import LocalConnectServer


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalConnectServer]:
    server = LocalConnectServer(master="local[2]", state_dir=tmp_path_factory.mktemp("connect-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def spark(connect_server: LocalConnectServer):  # type: ignore[no-untyped-def]
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(connect_server.url).getOrCreate()
    # The first Python job of a session starts its Python workers (5-8 s): pay it once here.
    session.range(0, 1, 1, 1).mapInPandas(lambda it: it, "id long").collect()
    try:
        yield session
    finally:
        session.stop()


@contextlib.contextmanager
def captured_log(name: str = "connect_trials", level: int = logging.DEBUG) -> Iterator[StringIO]:
    """Capture what a logger (and its children) write, like upstream's patch_logger."""
    out = StringIO()
    log = logging.getLogger(name)
    handler = logging.StreamHandler(out)
    handler.setLevel(level)
    saved_level = log.level
    log.setLevel(level)
    log.addHandler(handler)
    try:
        yield out
    finally:
        log.removeHandler(handler)
        log.setLevel(saved_level)


# -- MLflow ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _mlflow_default_tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ConnectTrials tracks every fmin by default: keep the suite's runs and artifacts out of
    the checkout (a sqlite store puts artifacts in ./mlruns unless its experiment says
    otherwise)."""
    import os

    from mlflow import MlflowClient

    if "MLFLOW_TRACKING_URI" in os.environ:
        yield
        return
    root = tmp_path_factory.mktemp("mlflow-default")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment_id = MlflowClient(uri).create_experiment(
        "connect-trials-tests", artifact_location=(root / "artifacts").as_uri()
    )
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend, local artifacts) on a free loopback port; its
    URL. Stopped through its own process group."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", str(root / "artifacts"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    # The job runner (huey consumers) doubles the start-up time and is not needed here.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)  # waiting for a process to come up: nothing to be notified by
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
        # The leader is gone; its group may still hold the uvicorn worker for a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(server.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
