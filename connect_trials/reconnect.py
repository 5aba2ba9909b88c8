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
is the new one. Both have their channels closed at exit (see ``_close_at_exit``): pyspark's
own exit hook would otherwise leave the process hanging there.

An attempt that fails because the server is not back yet is tried again quietly. One that
fails because the server answers and refuses (a token rotated with the restart, an artifact
refused) is said at WARNING, once per outage, and :attr:`SessionRecovery.last_failure` keeps
its cause for the error that ends the wait.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

from connect_trials import job
from connect_trials.errors import one_line
from connect_trials.session import (
    Probe,
    ServerWatch,
    is_unavailable,
    probe_server,
    reopen_session,
    session_alive,
)
from connect_trials.tracking.uris import redacted_text

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
        self._last_failure: str | None = None
        self._warned = False

    @property
    def spark(self) -> Any:
        return self._spark

    @property
    def last_failure(self) -> str | None:
        """Why the last attempt to go on failed, when the server answered and refused (not
        when it did not answer): for the error that ends a wait in vain."""
        return self._last_failure

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
        probed = probe_server(self._spark)  # as the session's calls reach it
        if probed.kind is Probe.REFUSED:
            self._last_failure = None  # newer news: it is gone again, whatever it said before
        if probed.kind is not Probe.ANSWERED:
            return
        self._watch.nudge()  # reattaches asleep in a back-off learn now what the server says
        try:
            alive = session_alive(self._spark, _SESSION_CHECK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the server answers, with a refusal
            self._failed("asking the server whether the session lives failed", exc)
            return
        if alive is None:
            return
        if alive:
            self._succeeded(Recovered(renewed=False))
            return
        try:
            spark = reopen_session(self._spark, self._watch.found_policies)
        except Exception as exc:  # noqa: BLE001 - not back yet: the next attempt tries again
            self._failed("opening a new Spark Connect session failed", exc)
            return
        _close_at_exit(spark, release=True)
        try:
            executor = self._make_executor(spark)
        except Exception as exc:  # noqa: BLE001
            self._failed("shipping the objective to the new session failed", exc)
            _stop_quietly(spark)
            return
        with self._lock:
            if self._closed or self._cancelled:
                stop = True
            else:
                stop = False
                old, self._executor, left, self._spark = self._executor, executor, self._spark, spark
                self.generation += 1
                self._trials._spark = spark
        if stop:
            _stop_quietly(spark)
            return
        old.abandon()
        self._watch.move_to(spark)  # the old session's retry loops give up: it is gone
        _close_at_exit(left)
        self._succeeded(Recovered(renewed=True))

    def _succeeded(self, result: Recovered) -> None:
        self._last_failure = None
        self._warned = False  # the next outage may have a cause of its own
        self._result = result

    def _failed(self, step: str, exc: BaseException) -> None:
        """An attempt failed: the server is not back yet (DEBUG), or it answers and refuses
        (a token rotated with the restart, an artifact refused): then the cause is said at
        WARNING, once per outage, and kept for the error that ends the wait."""
        cause = redacted_text(f"{step}: {_one_line_cause(exc)}")  # an error may echo a URL
        if is_unavailable(exc):
            logger.debug("could not go on yet: %s", cause)
            return
        self._last_failure = cause
        if not self._warned:
            self._warned = True
            where = "" if self.address is None else f" at {self.address[0]}:{self.address[1]}"
            logger.warning(
                "the Spark Connect server%s answers again, but the search cannot go on there: %s. "
                "fmin tries again until reconnect_timeout.",
                where,
                cause,
            )


# pyspark's error for a gRPC status without Spark's details: the call's repr, first line blank.
_GRPC_STATUS = re.compile(r'status = StatusCode\.(\w+).*?details = "([^"]*)"', re.DOTALL)


def _one_line_cause(exc: BaseException) -> str:
    status = _GRPC_STATUS.search(str(exc))
    if status is None:
        return one_line(exc)
    return f"{type(exc).__name__}: {status.group(1)}: {status.group(2)}"


def _stop_quietly(spark: Any) -> None:
    try:
        spark.stop()
    except Exception:  # noqa: BLE001 - a session we gave up on
        pass


# -- what the search leaves at exit ------------------------------------------------------------
# pyspark (checked on 4.3.0) registers an exit hook per client that is not closed, which sends
# one more request (it empties the session's ML cache). By then the interpreter has shut down
# concurrent.futures, so the request fails half-way and leaves its gRPC call in flight, and
# the channel spin thread that could end it is a daemon: it stops with the interpreter.
# Whichever finalizer then closes that channel (SparkSession.__del__, in the last garbage
# collection) waits for the call forever. A script's one session usually escapes that by the
# order in which the interpreter tears its modules down; a second one, or a session held in a
# reference cycle, does not: the process hangs at exit. So the sessions a search opens, and
# the one it leaves because its server forgot it, have their channels closed before that, at
# exit, while gRPC's threads still run. The hook is registered after the client's own, so it
# runs first (atexit runs last-registered first), whatever else the process registered.
def _close_at_exit(spark: Any, release: bool = False) -> None:
    """``release``: a session this search opened, released on the server first when the user
    asked pyspark to do so at exit (``SPARK_CONNECT_RELEASE_SESSION_ON_EXIT``)."""
    client = getattr(spark, "client", None)
    if client is not None and callable(getattr(client, "close", None)):
        atexit.register(_close_client, weakref.ref(client), release)


def _close_client(client_ref: weakref.ref[Any], release: bool) -> None:
    client = client_ref()
    if client is None or getattr(client, "is_closed", False):
        return
    if release and os.getenv("SPARK_CONNECT_RELEASE_SESSION_ON_EXIT", "false").lower() in ("true", "1"):
        try:
            client.release_session()  # one plain call: no future, nothing left in flight
        except Exception:  # noqa: BLE001 - best effort, as pyspark's own release at exit
            pass
    try:
        client.close()  # sends nothing: it cancels what is in flight and closes the channel
    except Exception:  # noqa: BLE001 - best effort, as pyspark's own close at exit
        pass
