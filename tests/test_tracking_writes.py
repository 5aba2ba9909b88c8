"""The tracker's write queue is bounded: a lagging MLflow holds up the search (and says so
once) instead of letting relayed payloads pile up in the client; a queue that stops moving
turns tracking off instead of holding the search for ever. Gated fake writes, no server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from connect_trials.tracking import writes
from connect_trials.tracking.writes import TrackingWrites
from tests.conftest import captured_log


@pytest.fixture
def small_queue(monkeypatch):
    monkeypatch.setattr(writes, "MAX_QUEUED_WRITES", 2)
    monkeypatch.setattr(writes, "MAX_QUEUED_BYTES", 1000)


class WarnedFull(logging.Handler):
    """Set once the queue says it is full: the writer is then waiting for room."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "MLflow is behind this fmin" in record.getMessage():
            self.count += 1
            self.event.set()


@pytest.fixture
def warned_full() -> Iterator[WarnedFull]:
    handler, log = WarnedFull(), logging.getLogger("connect_trials")
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def queue_in_thread(tracking: TrackingWrites, done: list[str], name: str, size: int = 0) -> threading.Thread:
    def write() -> None:
        tracking.later(done.append, name, size=size)
        done.append("+" + name)  # queued

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_full_queue_makes_the_next_write_wait_for_room_and_says_so_once(small_queue, warned_full):
    tracking, gate, done = TrackingWrites(), threading.Event(), []
    tracking.later(gate.wait)  # MLflow lags: the first write blocks
    tracking.later(done.append, "second")
    third = queue_in_thread(tracking, done, "third")
    assert warned_full.event.wait(10)
    assert "+third" not in done  # no room: it waits (the gate is still shut)
    gate.set()
    third.join(10)
    assert not third.is_alive() and "+third" in done
    fourth = queue_in_thread(tracking, done, "fourth")
    fourth.join(10)
    tracking.drain()
    assert done.count("third") == 1 and "fourth" in done and not tracking.broken.is_set()
    assert warned_full.count == 1
    tracking.close()


def test_the_bytes_queued_are_bounded_too(small_queue, warned_full):
    tracking, gate, done = TrackingWrites(), threading.Event(), []
    tracking.later(gate.wait, size=600)  # carries 600 bytes of relayed logging
    big = queue_in_thread(tracking, done, "big", size=600)
    assert warned_full.event.wait(10)  # 1,200 bytes would be over the 1,000 allowed
    assert done == []
    gate.set()
    big.join(10)
    tracking.drain()
    assert done == ["+big", "big"] or done == ["big", "+big"]
    tracking.close()


def test_a_queue_that_stops_moving_turns_tracking_off_and_the_search_goes_on(small_queue, monkeypatch):
    monkeypatch.setattr(writes, "CALL_TIMEOUT_S", 0.3)
    tracking, gate, done = TrackingWrites(), threading.Event(), []
    tracking.later(gate.wait)
    tracking.later(done.append, "second")
    with captured_log() as log:
        stuck = queue_in_thread(tracking, done, "third")
        stuck.join(10)  # gives up after 0.3 s without progress
    assert not stuck.is_alive() and tracking.broken.is_set()
    assert "MLflow tracking is off for the rest of this fmin" in log.getvalue()
    gate.set()
    tracking.drain()
    assert "second" not in done and "third" not in done  # skipped once tracking is off
    tracking.close()
