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
