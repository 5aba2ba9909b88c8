"""Child runs created ahead of the trials that take them, so a trial never waits for MLflow."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from connect_trials.tracking.call_thread import CallThread


class ChildRunPool:
    """Keeps ``ahead`` child runs ready on ``thread``. A run that lands after :meth:`close`
    is handed to ``discard``; a creation that fails stops the pool and goes to ``failed``."""

    def __init__(self, thread: CallThread, create: Callable[[], str], discard: Callable[[str], None],
                 failed: Callable[[BaseException], None], ahead: int) -> None:  # fmt: skip
        self._thread = thread
        self._create = create
        self._discard = discard
        self._failed = failed
        self._ahead = ahead
        self._changed = threading.Condition()
        self._ready_run_ids: collections.deque[str] = collections.deque()
        self._creations_in_flight = 0
        self._stopped = False

    @property
    def creations_in_flight(self) -> int:
        return self._creations_in_flight

    def fill(self, count: int) -> None:
        """Start creating runs until ``count`` are ready or on their way."""
        with self._changed:
            self._request(count - len(self._ready_run_ids) - self._creations_in_flight)

    def take(self, timeout: float) -> str | None:
        """A ready run id, waiting up to ``timeout`` for one if none is ready; None if none
        came (the pool stopped, or MLflow is slow)."""
        with self._changed:
            if not self._ready_run_ids and not self._creations_in_flight:
                self._request(1)
            self._changed.wait_for(
                lambda: self._ready_run_ids or self._stopped or not self._creations_in_flight, timeout
            )
            if not self._ready_run_ids:
                return None
            run_id = self._ready_run_ids.popleft()
            self._request(self._ahead - len(self._ready_run_ids) - self._creations_in_flight)
            return run_id

    def close(self) -> list[str]:
        """Stop creating runs; returns the ready runs no trial took."""
        with self._changed:
            self._stopped = True
            unused = list(self._ready_run_ids)
            self._ready_run_ids.clear()
            self._changed.notify_all()
            return unused

    def _request(self, count: int) -> None:
        for _ in range(count if not self._stopped else 0):
            self._creations_in_flight += 1
            if self._thread.submit(self._create_one).cancelled():  # the thread is closed
                self._creations_in_flight -= 1

    def _create_one(self) -> None:
        with self._changed:
            if self._stopped:
                self._creations_in_flight -= 1
                self._changed.notify_all()
                return
        try:
            run_id = self._create()
        except Exception as exc:  # noqa: BLE001 - reported through `failed`
            with self._changed:
                self._creations_in_flight -= 1
                self._stopped = True
                self._changed.notify_all()
            self._failed(exc)
            return
        with self._changed:
            self._creations_in_flight -= 1
            self._changed.notify_all()
            if not self._stopped:
                self._ready_run_ids.append(run_id)
                return
        self._discard(run_id)
