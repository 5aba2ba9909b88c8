"""Daemon threads that run calls in order, or after a delay: how the tracker keeps MLflow off
fmin's path."""

from __future__ import annotations

import concurrent.futures
import heapq
import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class CallThread:
    """Runs submitted calls one at a time, in order, on its own daemon thread (a call stuck in
    MLflow's retries must not keep the interpreter from exiting). The thread starts with the
    first call and exits once :meth:`close` is called and the calls queued before it ran."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.completed = 0  # calls that ran, for callers that wait while progress is made
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def submit(self, call: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                future.cancel()
                return future
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._queue.put((future, call, args))
        return future

    def close(self) -> None:
        """Take no more calls; the thread ends after those already queued."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, call, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                    future.set_exception(exc)
            self.completed += 1


def wait_while_progress(thread: CallThread, future: concurrent.futures.Future[Any], patience: float) -> Any:
    """``future``'s result, waiting as long as ``thread`` completes a call every ``patience``
    seconds (the queue ahead of it may be long); TimeoutError once the thread stops moving.
    None if the call was cancelled (its thread had closed)."""
    progress = thread.completed
    while True:
        try:
            return future.result(timeout=patience)
        except concurrent.futures.CancelledError:
            return None
        except concurrent.futures.TimeoutError:
            if thread.completed == progress:
                raise TimeoutError(f"MLflow did not answer within {patience:g} s") from None
            progress = thread.completed


class Timers:
    """Calls made after a delay, on one daemon thread (started with the first call). Calls still
    waiting when :meth:`close` is called are dropped."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._due: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._count = 0  # orders calls due at the same time

    def call_later(self, delay: float, call: Callable[..., Any], *args: Any) -> None:
        with self._changed:
            if self._closed:
                return
            self._count += 1
            heapq.heappush(self._due, (time.monotonic() + delay, self._count, call, args))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._due.clear()
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._closed:
                    return
                _, _, call, args = heapq.heappop(self._due)
            call(*args)
