"""Daemon threads that run calls in order: how the tracker keeps MLflow off fmin's path."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
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
