"""Real servers for the suite: one Spark Connect server (local[2]) for the whole session."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest

from connect_trials.server import LocalCluster, LocalConnectServer

# MLflow 3 sends usage telemetry to its own servers: the suite's traffic stays on loopback, in
# this process and in the servers and clients it starts (they inherit the environment).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalConnectServer]:
    with LocalConnectServer(master="local[2]", state_dir=tmp_path_factory.mktemp("connect-server")) as server:
        yield server


@pytest.fixture(scope="session")
def spark(connect_server: LocalConnectServer):  # type: ignore[no-untyped-def]
    yield from warm_session(connect_server.url)


def warm_session(url: str):  # type: ignore[no-untyped-def]
    """A new session on ``url``, warmed up, stopped after the suite."""
    from pyspark.sql import SparkSession

    # create(), not getOrCreate(): the latter returns whatever session is active in this
    # thread, such as the cluster's when a cluster test ran first.
    session = SparkSession.builder.remote(url).create()
    warm_up(session)
    try:
        yield session
    finally:
        session.stop()


def warm_up(session) -> None:  # type: ignore[no-untyped-def]
    """Start the session's Python workers once, here, rather than in a test with a timeout:
    the first Python job of a session starts them (5-8 s), and so does the first job after a
    new pyfile artifact, which the first fmin adds (the suite's own modules, see
    local_code.py). All test modules are imported by now, so that artifact stays the same."""
    from connect_trials import local_code

    def first_python_job(batches):  # type: ignore[no-untyped-def]
        yield from batches  # nested, so pickled by value: hidden workers cannot import this module

    local_code.ship_local_code(session)
    session.range(0, 1, 1, 1).mapInPandas(first_python_job, "id long").collect()


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


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt during the test, as at a terminal: a suite started in
    the background by a non-interactive shell inherits SIGINT ignored, and Python then
    installs no handler for it."""
    import signal

    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


# -- MLflow ----------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with MLflow's process-wide tracking URI unset, as a new process does:
    a test's ``mlflow.set_tracking_uri`` would otherwise win over a later test's
    MLFLOW_TRACKING_URI, so that tests passed or failed by their order."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", None)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_default_tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ConnectTrials tracks every fmin by default: keep the suite's runs and artifacts out of
    the checkout (a sqlite store puts artifacts in ./mlruns unless its experiment says
    otherwise)."""

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
    """A real ``mlflow server`` (sqlite backend, local artifacts) on a free loopback port; its URL."""
    from connect_trials.server import LocalMlflowServer

    with LocalMlflowServer(state_dir=tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server.url


# -- the shared cluster ----------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A standalone cluster of 2 workers x 2 cores (so that a 2-cpu resource profile fits one
    trial per worker) whose workers and Connect server cannot see this checkout nor the
    suite's temporary folder (where the client's tracking store lives). Token on."""
    base = tmp_path_factory.getbasetemp()
    hidden = [str(ROOT), str(base)]
    with LocalCluster(workers=2, cores=2, memory="1g", state_dir=base / "cluster", hide=hidden) as c:
        yield c


@pytest.fixture(scope="session")
def cluster_spark(cluster: LocalCluster):  # type: ignore[no-untyped-def]
    yield from warm_session(cluster.url)
