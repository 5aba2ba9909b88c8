"""When a search stops early: ``loss_threshold`` and ``early_stop_fn``, hyperopt's rules.

``early_stop_fn`` sees the finished trials in the order they finished, as in a serial fmin:
hyperopt's ``no_progress_loss`` reads the last trial's loss, which in the trials object would
be a running trial's. It is called after each successful trial, as upstream, on one view of
the finished trials that grows by one document per trial (O(1) of ours per trial; what the
function itself reads is its own cost)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from hyperopt import base

from connect_trials.trial_end import ok_loss

logger = logging.getLogger("connect_trials")


class StopRules:
    """The best loss so far, and whether the search should stop after a trial."""

    def __init__(self, finished: list[dict[str, Any]], loss_threshold: float | None,
                 early_stop_fn: Callable[..., Any] | None) -> None:  # fmt: skip
        self._loss_threshold = loss_threshold
        self._early_stop_fn = early_stop_fn
        self._early_stop_args: list[Any] = []
        self.best_loss = min((ok_loss(t) for t in finished), default=math.inf)
        # What early_stop_fn sees: the DONE trials in the order they finished. Kept up to date
        # by appending, never rebuilt (Trials.refresh is a scan of every document).
        self._view = base.Trials()
        self._view._dynamic_trials = list(finished)
        self._view.refresh()

    def trial_done(self, trial: dict[str, Any]) -> None:
        self.best_loss = min(self.best_loss, ok_loss(trial))
        view = self._view
        view._dynamic_trials.append(trial)
        view._trials.append(trial)  # a DONE trial is one of refresh()'s valid states
        view._ids.add(trial["tid"])

    def stop_after(self, trial: dict[str, Any]) -> bool:
        """Whether the search stops now that ``trial`` has ended."""
        threshold = self._loss_threshold
        if threshold is not None and self.best_loss < threshold:
            logger.info("fmin reached the loss threshold (%s < %s).", self.best_loss, threshold)
            return True
        succeeded = trial["state"] == base.JOB_STATE_DONE and trial["result"].get("status") == base.STATUS_OK
        if self._early_stop_fn is None or not succeeded:
            return False
        stop, args = self._early_stop_fn(self._view, *self._early_stop_args)
        self._early_stop_args = list(args)
        return bool(stop)
