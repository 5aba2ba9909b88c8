"""The child runs of one fmin, keyed by tid: the one place that creates, takes and ends them.

A trial's child run is created when the trial starts, in the trial's own thread (never the
scheduler's), already named ``trial-<tid>`` and tagged with its tid and hyperopt's values: no
run exists that is not a trial's, and none is ever deleted. Its life::

    PENDING ──created──► TAKEN ──trial ended──► ENDING ──end written──► ENDED
       └──────trial ended before the run came──────┘ (ended when it lands)

Ending is idempotent: a trial's outcome, metrics and artifacts are written once, whoever asks
(the trial's way out, fmin's end, the clean-up after MLflow broke). A trial that ended without
ever starting (cancelled before its job, or a point that could not be resolved) gets its run
created and ended in one go, so every trial of the fmin has exactly one child run.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Any

from connect_trials.tracking.call_thread import CallThread, wait_while_progress
from connect_trials.tracking.hyperparameters import SearchSpace, raw_params
from connect_trials.tracking.outcome import child_outcome
from connect_trials.tracking.parent_run import ParentRun
from connect_trials.tracking.resume_tags import resume_tags
from connect_trials.tracking.writes import CALL_TIMEOUT_S, TrackingWrites


class ChildState(enum.Enum):
    PENDING = "pending"  # its creation is on its way
    TAKEN = "taken"  # created; its trial runs with it
    ENDING = "ending"  # its trial ended; the end is queued, or waits for the run to land
    ENDED = "ended"  # its end is written (or MLflow failed to create it)


_NO_ARGUMENT = object()  # the trial never got as far as resolving its point


@dataclass
class ChildRun:
    trial: dict[str, Any]  # the trial document, updated in place by the scheduler
    argument: Any = _NO_ARGUMENT  # what the objective received: the run's hyperparameter params
    state: ChildState = ChildState.PENDING
    run_id: str | None = None
    relayed: list[bytes] = field(default_factory=list)  # the objective's logging, to replay
    writing_end: bool = False  # ENDING, and the one write that ends it is under way


class ChildRunLedger:
    """Every child run of one fmin. Creations run on ``creation`` (in order, one at a time),
    outcome writes on ``writes``."""

    def __init__(self, parent: ParentRun, space: SearchSpace, writes: TrackingWrites) -> None:
        self._parent = parent
        self._space = space
        self._writes = writes
        self.creation = CallThread("connect-trials-mlflow-create")
        self._lock = threading.Lock()
        self._children: dict[int, ChildRun] = {}
        self._closed = False
        # A creation overdue: later trials do not wait for theirs (MLflow is slow, not each run).
        self._stalled = False

    def start(self, trial: dict[str, Any], argument: Any) -> str | None:
        """Create the trial's run and return its id; None when the trial must run without one
        (tracking is off, or MLflow is slow: the run is then ended when it lands, with what the
        objective logged relayed into it)."""
        child = ChildRun(trial, argument)
        with self._lock:
            if self._closed or self._writes.broken.is_set():
                return None
            known = self._children.get(trial["tid"])
            if known is not None:
                # A trial that runs again (its job was lost with its server) keeps its run; one
                # that ended before its thread came here has its run already.
                return known.run_id if known.state is ChildState.TAKEN else None
            self._children[trial["tid"]] = child
            stalled = self._stalled
        created = self.creation.submit(self._create, child)
        if not stalled:
            try:
                wait_while_progress(self.creation, created, CALL_TIMEOUT_S)
            except TimeoutError:
                with self._lock:
                    self._stalled = True
        with self._lock:
            return child.run_id if child.state is ChildState.TAKEN else None

    def relayed(self, tid: int, payload: bytes) -> None:
        """What the trial's objective logged on a worker that kept it local."""
        with self._lock:
            child = self._children.get(tid)
            if child is not None and child.state is not ChildState.ENDED:
                child.relayed.append(payload)

    def end(self, trial: dict[str, Any]) -> None:
        """The trial ended (DONE, ERROR or CANCEL): write its outcome once and end its run."""
        with self._lock:
            child = self._children.get(trial["tid"])
            if child is None:
                if self._writes.broken.is_set():
                    return
                child = self._children[trial["tid"]] = ChildRun(trial, state=ChildState.ENDING)
                unstarted = True
            elif child.state in (ChildState.ENDING, ChildState.ENDED):
                return
            else:
                unstarted = False
                waits_for_run = child.state is ChildState.PENDING
                child.state = ChildState.ENDING
                if waits_for_run:
                    return  # _create ends it when it lands
            carried = sum(len(payload) for payload in child.relayed)
        self._writes.later(self._create_and_end if unstarted else self.write_end, child, size=carried)

    def end_unfinished(self) -> None:
        """fmin is over: end every run whose trial did not say it ended, as its document says."""
        with self._lock:
            self._closed = True
            open_states = (ChildState.PENDING, ChildState.TAKEN)
            unfinished = [c.trial for c in self._children.values() if c.state in open_states]
        for trial in unfinished:
            self.end(trial)

    def wait_for_creations(self) -> None:
        """Let the creations under way land (each ends its run if its trial ended), while
        MLflow makes progress."""
        landed = self.creation.submit(lambda: None)
        self.creation.close()
        try:
            wait_while_progress(self.creation, landed, CALL_TIMEOUT_S)
        except TimeoutError:
            pass  # what is still on its way is named by the tracker's last warning

    def runs_to_end(self) -> list[ChildRun]:
        """Runs that exist and have not ended (after tracking broke: what must still end)."""
        with self._lock:
            return [
                c for c in self._children.values() if c.run_id is not None and c.state is not ChildState.ENDED
            ]

    @property
    def creations_in_flight(self) -> int:
        with self._lock:
            return sum(c.run_id is None and c.state is not ChildState.ENDED for c in self._children.values())

    # -- on the tracker's threads ------------------------------------------------------------
    def _create(self, child: ChildRun) -> None:
        try:
            run_id = self._parent.create_child(child.trial["tid"], resume_tags(child.trial))
        except Exception as exc:  # noqa: BLE001 - reported once; the trial runs untracked
            with self._lock:
                child.state = ChildState.ENDED
            self._writes.failed(exc)
            return
        with self._lock:
            child.run_id = run_id
            self._stalled = False
            ending = child.state is ChildState.ENDING
            if child.state is ChildState.PENDING:
                child.state = ChildState.TAKEN
        if ending:  # its trial ended before the run came: end it now, after whatever it relayed
            self._writes.quietly(self.write_end, child)

    def _create_and_end(self, child: ChildRun) -> None:
        child.run_id = self._parent.create_child(child.trial["tid"], resume_tags(child.trial))
        self.write_end(child)

    def write_end(self, child: ChildRun) -> None:
        """Replay what the objective relayed, write the outcome and params, end the run."""
        runs = self._parent.runs
        with self._lock:
            if child.writing_end or child.run_id is None:
                return
            child.writing_end = True
            relayed = list(child.relayed)
        try:
            for payload in relayed:
                try:
                    runs.replay(child.run_id, payload, self._writes.refused)
                except Exception as exc:  # noqa: BLE001 - the trial's own outcome matters more
                    self._writes.refused(exc)
            with self._lock:
                del child.relayed[: len(relayed)]  # replayed once, even if the end is tried again
            trial = child.trial
            vals = trial["misc"]["vals"]
            argument = child.argument
            params = raw_params(vals) if argument is _NO_ARGUMENT else self._space.params(argument, vals)
            runs.end_child(child.run_id, params, child_outcome(trial), self._writes.refused)
        except BaseException:
            with self._lock:
                child.writing_end = False  # not ended: the clean-up after a failure tries again
            raise
        with self._lock:
            child.state = ChildState.ENDED
