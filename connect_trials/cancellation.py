"""Whether one fmin is cancelled, why, and since when: the one owner of that state.

Timeout, ``early_stop_fn`` and Ctrl-C cancel a search with a reason (SparkTrials' texts, which
scripts read in ``trials.fmin_cancelled_reason``); a search that fails (its server gone, the
algorithm raised) interrupts its jobs without one. Either way the running jobs are interrupted
through the fmin's tag, once, and no job is submitted after. Whether a result that comes back
afterwards counts is decided on the client's clock only: it counts when it reached the client
before the first interruption was issued.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from connect_trials.errors import one_line
from connect_trials.job import OutcomeKind, TrialOutcome

logger = logging.getLogger("connect_trials")

FMIN_CANCELLED_REASON_EARLY_STOPPING = "early stopping condition"
FMIN_CANCELLED_REASON_TIMEOUT = "fmin run timeout"
FMIN_CANCELLED_REASON_USER = "fmin run cancelled by user"

# After a cancellation, how long the loop waits for interrupted jobs to report back
# (interruptTag makes a blocked collect() raise within about 0.2 s).
_CANCEL_GRACE_S = 5.0
# How long a cancellation waits on a server that does not answer its interruption.
_INTERRUPT_WAIT_S = 2.0


class FminCancellation:
    """One fmin's cancellation. ``on_cancelled(reason)`` records the reason where the front
    end keeps it (``trials._fmin_cancelled_reason``); :meth:`bind` gives it the executor's
    ``cancel_all`` once there is one."""

    def __init__(self, on_cancelled: Callable[[str], None] = lambda reason: None) -> None:
        self._on_cancelled = on_cancelled
        self._interrupt_jobs: Callable[[], None] = lambda: None
        self.reason: str | None = None
        self.interrupted_at = math.inf  # time.monotonic() of the first interruption
        self.grace_s = _CANCEL_GRACE_S  # how long interrupted jobs get to report back

    def bind(self, interrupt_jobs: Callable[[], None]) -> None:
        """What interrupts the search's jobs (the executor's ``cancel_all``)."""
        self._interrupt_jobs = interrupt_jobs

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str) -> None:
        """Cancel the search (the first reason stands) and interrupt its jobs."""
        if self.reason is not None:
            return
        self.reason = reason
        self._on_cancelled(reason)
        logger.warning("fmin cancelled because of %s", reason)
        self.interrupt()
        logger.warning("fmin is cancelled, so new trials will not be launched.")

    def interrupt(self) -> None:
        """Interrupt the running jobs (they end when the loop settles), without a reason: also
        when none runs, since a trial thread may be about to submit its job."""
        self.interrupted_at = min(self.interrupted_at, time.monotonic())
        logger.debug("Cancelling all running jobs of this fmin")
        _call_bounded(self._interrupt_jobs, _INTERRUPT_WAIT_S)

    def server_gone(self) -> None:
        """A server declared gone reports nothing more: settle with what has arrived."""
        self.grace_s = 0.0

    def settle_deadline(self) -> float:
        return time.monotonic() + self.grace_s

    def counts(self, outcome: TrialOutcome) -> bool:
        """Whether an outcome that came back after the interruption still ends its trial as
        it says: the objective returned or raised, and its result reached the client first."""
        in_time = outcome.received_at is not None and outcome.received_at <= self.interrupted_at
        return in_time and outcome.kind in (OutcomeKind.RETURNED, OutcomeKind.RAISED)


def _call_bounded(fn: Callable[[], Any], seconds: float) -> None:
    """Call ``fn`` in a helper thread and give up waiting after ``seconds``: a dead server
    must not hold up the cancellation of an fmin."""

    def call() -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            logger.warning("cancelling the fmin's Spark jobs failed: %s", one_line(exc))

    helper = threading.Thread(target=call, name="connect-trials-cancel", daemon=True)
    helper.start()
    helper.join(seconds)
