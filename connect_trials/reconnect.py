"""One fmin's Spark Connect session across a restart of its server.

A driver restarts (an out-of-memory kill, an admin, a managed cluster restarting itself) and
comes back at the same URL, with the same credentials, but without the sessions it had: the
session fmin was given is gone on it, and so are its artifacts (the objective, the local
code). :class:`SessionRecovery` is the fmin's trial executor across such a restart. While
the scheduler waits out an outage it calls :meth:`SessionRecovery.recover`, which tells a
server that answers again from one that does not, and a session that survived (a network
blip, a paused server, a laptop's lid) from one that did not. For the latter it opens a new
session with the old one's channel builder, ships the objective and the local code again
(a new ``SparkJobExecutor``), and the watch follows it. The trials that were in flight are
the scheduler's to run again.

The user's own session object stays as it is (dead on the server); ``trials.spark_session``
is the new one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from connect_trials import job
from connect_trials.errors import one_line
from connect_trials.session import Probe, ServerWatch, probe_server, reopen_session, session_alive

logger = logging.getLogger("connect_trials")

# One call that asks the server whether the session lives: a server that answers TCP but not
# this in a few seconds is not back yet.
_SESSION_CHECK_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Recovered:
    """The server answers again; ``renewed``: on a new session (the old one was gone)."""

    renewed: bool


class SessionRecovery:
    """The trial executor of one fmin on a Spark Connect session, across server restarts.

    ``make_executor(spark)`` builds the executor of a session (it ships the objective and the
    local code). Trials run on the newest executor; :attr:`generation` counts the sessions,
    so that the scheduler can tell an outcome of the old session from one of the new."""

    runs_in_caller = False

    def __init__(
        self,
        trials: Any,
        spark: Any,
        watch: ServerWatch,
        make_executor: Callable[[Any], job.SparkJobExecutor],
    ) -> None:
        self._trials = trials
        self._spark = spark
        self._watch = watch
        self._make_executor = make_executor
        self._lock = threading.Lock()
        self._executor = make_executor(spark)
        self._cancelled = False
        self._closed = False
        self.generation = 0
        self._attempt: threading.Thread | None = None
        self._result: Recovered | None = None

    @property
    def spark(self) -> Any:
        return self._spark

    @property
    def address(self) -> tuple[str, int] | None:
        """The server's host and port, when the session's channel has them."""
        return self._watch.address

    # -- the executor ---------------------------------------------------------------------
    def run_trial(self, request: job.TrialRequest) -> job.TrialOutcome:
        with self._lock:
            executor = self._executor
        return executor.run_trial(request)

    def cancel_all(self) -> None:
        with self._lock:
            self._cancelled = True
            executor = self._executor
        executor.cancel_all()

    # -- after an outage ------------------------------------------------------------------
    def recover(self, timeout: float) -> Recovered | None:
        """Whether the fmin can go on: None while the server does not answer (or cannot say
        yet whether the session lives), else how. Waits at most ``timeout`` seconds; an
        attempt that takes longer goes on in its thread, and a later call takes its result."""
        with self._lock:
            if self._attempt is None:
                if self._closed or self._cancelled:
                    return None
                self._result = None
                self._attempt = threading.Thread(
                    target=self._try_once, name="connect-trials-reconnect", daemon=True
                )
                self._attempt.start()
            attempt = self._attempt
        attempt.join(max(timeout, 0.0))
        with self._lock:
            if attempt.is_alive():
                return None
            self._attempt = None
            return self._result

    def close(self) -> None:
        """The fmin is over: a session that an attempt still under way opens is stopped."""
        with self._lock:
            self._closed = True

    def _try_once(self) -> None:
        address = self._watch.address
        if address is not None and probe_server(address).kind is not Probe.ACCEPTED:
            return
        self._watch.nudge()  # reattaches asleep in a back-off learn now what the server says
        alive = session_alive(self._spark, _SESSION_CHECK_TIMEOUT_S)
        if alive is None:
            return
        if alive:
            self._result = Recovered(renewed=False)
            return
        try:
            spark = reopen_session(self._spark, self._watch.found_policies)
        except Exception as exc:  # noqa: BLE001 - not back yet: the next attempt tries again
            logger.debug("could not open a new Spark Connect session yet: %s", one_line(exc))
            return
        try:
            executor = self._make_executor(spark)
        except Exception as exc:  # noqa: BLE001
            logger.debug("could not ship the objective to the new session yet: %s", one_line(exc))
            _stop_quietly(spark)
            return
        with self._lock:
            if self._closed or self._cancelled:
                stop = True
            else:
                stop = False
                old, self._executor, self._spark = self._executor, executor, spark
                self.generation += 1
                self._trials._spark = spark
        if stop:
            _stop_quietly(spark)
            return
        old.abandon()
        self._watch.move_to(spark)  # the old session's retry loops give up: it is gone
        self._result = Recovered(renewed=True)


def _stop_quietly(spark: Any) -> None:
    try:
        spark.stop()
    except Exception:  # noqa: BLE001 - a session we gave up on
        pass
