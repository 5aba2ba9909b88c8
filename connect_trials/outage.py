"""Whether one fmin's server answers, as its loop sees it: the one owner of outages.

An outage begins with the watchdog's first refused connection, or with a trial's job lost
with its server or session. While it lasts the loop submits nothing; every ``_RECOVER_EVERY_S``
it asks :meth:`Outages.over`, which asks ``SessionRecovery`` whether the server answers again
(and whether the session survived or a new one took its place). An outage that lasts
``reconnect_timeout`` ends the fmin with ``ClusterUnavailableError``. The warnings say once
when it began and how it ended; a survived session after a silent loss (a laptop's lid, a
blip) needs no word."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from connect_trials.errors import ClusterUnavailableError, last_line
from connect_trials.reconnect import SessionRecovery
from connect_trials.tracking.uris import redacted_text

logger = logging.getLogger("connect_trials")

# During an outage, how often the loop asks whether the server is back.
_RECOVER_EVERY_S = 1.0
# The longest one question to the server may hold up the loop (a Ctrl-C must get through).
_ASK_FOR_S = 0.5


@dataclasses.dataclass
class _Outage:
    reason: str
    since: float = dataclasses.field(default_factory=time.monotonic)
    since_wall: float = dataclasses.field(default_factory=time.time)
    warned: bool = False


class Outages:
    """The outages of one fmin on a Connect session that can be recovered (``recovery``)."""

    def __init__(self, recovery: SessionRecovery, reconnect_timeout: float,
                 note: Callable[[str], None] = lambda text: None) -> None:  # fmt: skip
        self.recovery = recovery
        self.reconnect_timeout = reconnect_timeout
        self._note = note  # shows what happened under the progress bar
        self._outage: _Outage | None = None
        self._next_ask_at = 0.0
        self._generation_of: dict[int, int] = {}  # tid -> the session generation its job runs on

    @property
    def active(self) -> bool:
        return self._outage is not None

    @property
    def where(self) -> str:
        address = self.recovery.address
        return "its URL" if address is None else f"{address[0]}:{address[1]}"

    def submitting(self, tid: int) -> None:
        """A trial's job is about to go out on the current session."""
        self._generation_of[tid] = self.recovery.generation

    def refused(self, detail: str, in_flight: int) -> None:
        """The watchdog's first refused connection of an outage."""
        self._begin(f"it refuses connections ({detail})")
        self._warn(in_flight)

    def answered(self) -> None:
        """The watchdog saw an accepted connection again: ask the server now."""
        self._next_ask_at = 0.0

    def job_lost(self, tid: int, error_text: str | None, in_flight: int) -> None:
        """A trial's job was lost with its server or session."""
        if self._generation_of.get(tid, 0) < self.recovery.generation:
            return  # it ran on the session we left: the outage it saw is over
        if self._outage is None:
            self._begin(f"a trial's job was lost ({last_line(error_text)})")
            if not self.over(lost_again=0, in_flight=in_flight):
                self._warn(in_flight)

    def over(self, lost_again: int, in_flight: int) -> bool:
        """Whether the search may go on (asked at most every ``_RECOVER_EVERY_S``). Raises
        ``ClusterUnavailableError`` once the outage has lasted ``reconnect_timeout``.
        ``lost_again``: trials lost in it that wait to run again; ``in_flight``: trials whose
        jobs are still out (after a restart, they come back lost)."""
        outage = self._outage
        if outage is None:
            return True
        now = time.monotonic()
        left = outage.since + self.reconnect_timeout - now
        if left <= 0:
            cause = self.recovery.last_failure  # the server answered, and refused to go on
            what = (
                f"answered again within {self.reconnect_timeout:.0f} s (reconnect_timeout) after "
                f"{outage.reason}, but the search could not go on there: {cause}"
                if cause
                else f"did not come back within {self.reconnect_timeout:.0f} s (reconnect_timeout) after "
                f"{outage.reason}"
            )
            raise ClusterUnavailableError(
                f"the Spark Connect server at {self.where} {redacted_text(what)}; fmin stopped. Every "
                "finished trial is kept in the trials object; the ones that were running are cancelled."
            )
        if now < self._next_ask_at:
            return False
        self._next_ask_at = now + _RECOVER_EVERY_S
        recovered = self.recovery.recover(timeout=min(left, _ASK_FOR_S))
        if recovered is None:
            return False
        self._outage = None
        waited = time.monotonic() - outage.since
        if recovered.renewed:
            text = (
                f"reconnected to the Spark Connect server at {self.where} after waiting {waited:.1f} s: "
                "it restarted, so the session fmin was given is gone on it; the search goes on in a "
                f"new session (trials.spark_session). {lost_again + in_flight} trial(s) run again."
            )
            logger.warning(text)
        else:
            text = (
                f"the Spark Connect server at {self.where} answers again after {waited:.1f} s; "
                "the session survived."
            )
            (logger.warning if outage.warned else logger.debug)(text)
        if outage.warned or recovered.renewed:
            self._note(text)
        return True

    def _begin(self, reason: str) -> None:
        if self._outage is None:
            self._outage = _Outage(reason)
            self._next_ask_at = 0.0

    def _warn(self, in_flight: int) -> None:
        outage = self._outage
        if outage is None or outage.warned:
            return
        outage.warned = True
        logger.warning(
            "the Spark Connect server at %s stopped answering at %s: %s. fmin submits no trial and "
            "waits up to %.0f s for it to come back, then gives up (reconnect_timeout); Ctrl-C stops "
            "the search now. %d trial(s) in flight run again if their jobs are lost.",
            self.where, time.strftime("%H:%M:%S", time.localtime(outage.since_wall)),
            redacted_text(outage.reason), self.reconnect_timeout, in_flight,
        )  # fmt: skip
