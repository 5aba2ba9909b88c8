"""When a search stops early: ``loss_threshold`` and ``early_stop_fn``, hyperopt's rules.

The two rules end a search differently, as they do under hyperopt's ``SparkTrials``:
- ``loss_threshold`` is ``FMinIter``'s: once the lowest loss of a DONE trial is below it (its
  ``trials.losses()``, so a result with status "fail" that carries a loss counts), no new trial is
  suggested, and the trials in flight run to their end (``block_until_done``) and count. The
  search is not cancelled (``fmin_cancelled_reason`` stays ``None``).
- ``early_stop_fn`` is SparkTrials' dispatcher's: it is called each time one more trial has
  succeeded, with its own returned args passed back, and when it says stop the search is
  cancelled ("early stopping condition") and the trials in flight end CANCEL.

``early_stop_fn`` is given a :class:`FinishedTrials`: the whole trials surface
(``count_*_trials()``, ``fmin_cancelled_reason``, ``parallelism``, ...) of the search, whose
documents (``trials``, ``losses()``, ``best_trial``, ``len``) are the successful trials in the
order they finished, as a serial fmin would hold them. hyperopt's ``no_progress_loss`` reads
the last trial's loss, which in the trials object itself would often be a running trial's (a
``KeyError`` under SparkTrials). The view grows by one document per trial: O(1) of ours per
trial; what the function itself reads is its own cost."""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from typing import Any

from hyperopt import base

from connect_trials.trial_end import ok_loss

logger = logging.getLogger("connect_trials")


class Stop(enum.Enum):
    """Why a search stops after a trial."""

    LOSS_THRESHOLD = "loss_threshold"  # suggest no more; the trials in flight finish
    EARLY_STOP_FN = "early_stop_fn"  # cancel the trials in flight


class FinishedTrials(base.Trials):
    """What ``early_stop_fn`` is given: the search's successful trials in the order they
    finished, with every other attribute of the search's trials object (its counts, its
    cancellation, its settings) read from that object."""

    def __init__(self, search: Any, finished: list[dict[str, Any]]) -> None:
        super().__init__()
        self._search = search
        self.attachments = search.attachments  # base.Trials made its own: the search's are these
        self._dynamic_trials = list(finished)
        self.refresh()

    def append(self, trial: dict[str, Any]) -> None:
        """One more successful trial, without a ``refresh`` (a scan of every document)."""
        self._dynamic_trials.append(trial)
        self._trials.append(trial)  # a DONE trial is one of refresh()'s valid states
        self._ids.add(trial["tid"])

    @property
    def asynchronous(self) -> bool:  # type: ignore[override]
        return bool(self._search.asynchronous)

    def trial_attachments(self, trial: Any) -> Any:
        return self._search.trial_attachments(trial)

    def __getattr__(self, name: str) -> Any:
        # Only names that base.Trials does not define: count_successful_trials(),
        # fmin_cancelled_reason, parallelism, timeout, ... are the search's own.
        if name.startswith("__") or name == "_search":
            raise AttributeError(name)
        return getattr(self._search, name)

    # The search's counts, not the view's: failed and cancelled trials are not in the view.
    def count_by_state_unsynced(self, arg: Any) -> int:
        return int(self._search.count_by_state_unsynced(arg))

    def count_by_state_synced(self, arg: Any, trials: Any = None) -> int:
        return int(self._search.count_by_state_synced(arg, trials))


class StopRules:
    """The best loss so far, and whether the search should stop after a trial."""

    def __init__(self, search: Any, finished: list[dict[str, Any]], loss_threshold: float | None,
                 early_stop_fn: Callable[..., Any] | None) -> None:  # fmt: skip
        self._loss_threshold = loss_threshold
        self._early_stop_fn = early_stop_fn
        self._early_stop_args: Any = []  # what it returned last, as hyperopt keeps it
        self._threshold_reached = False
        self.best_loss = min((ok_loss(t) for t in finished), default=math.inf)
        self._lowest_loss = min((_any_loss(t) for t in finished), default=math.inf)
        self._view = FinishedTrials(search, [t for t in finished if _succeeded(t)])

    @property
    def threshold_reached(self) -> bool:
        """Whether the trials held are below ``loss_threshold`` already (a resumed search)."""
        threshold = self._loss_threshold
        return threshold is not None and self._lowest_loss < threshold

    def trial_done(self, trial: dict[str, Any]) -> None:
        self.best_loss = min(self.best_loss, ok_loss(trial))
        self._lowest_loss = min(self._lowest_loss, _any_loss(trial))
        if _succeeded(trial):
            self._view.append(trial)

    def stop_after(self, trial: dict[str, Any]) -> Stop | None:
        """Whether (and how) the search stops now that ``trial`` has ended."""
        threshold = self._loss_threshold
        if threshold is not None and self._lowest_loss < threshold and not self._threshold_reached:
            self._threshold_reached = True
            logger.info(
                "fmin reached the loss threshold (%s < %s): no new trial is started; the trials "
                "in flight finish.", self._lowest_loss, threshold,
            )  # fmt: skip
        if self._early_stop_fn is not None and _succeeded(trial):
            stop, self._early_stop_args = self._early_stop_fn(self._view, *self._early_stop_args)
            if stop:
                return Stop.EARLY_STOP_FN
        return Stop.LOSS_THRESHOLD if self._threshold_reached else None


def _succeeded(trial: dict[str, Any]) -> bool:
    """DONE with status ``ok``: what SparkTrials' dispatcher counts before it asks
    ``early_stop_fn`` again."""
    return trial["state"] == base.JOB_STATE_DONE and trial["result"].get("status") == base.STATUS_OK


def _any_loss(trial: dict[str, Any]) -> float:
    """A DONE trial's loss whatever its status, as FMinIter reads ``trials.losses()`` for
    ``loss_threshold`` (not NaN; inf without one)."""
    loss = trial["result"].get("loss")
    if trial["state"] != base.JOB_STATE_DONE or loss is None or math.isnan(loss):
        return math.inf
    return float(loss)
