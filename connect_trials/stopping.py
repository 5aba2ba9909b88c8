"""When a search stops early: ``loss_threshold`` and ``early_stop_fn``, hyperopt's rules.

``early_stop_fn`` sees the finished trials in the order they finished, as in a serial fmin:
hyperopt's ``no_progress_loss`` reads the last trial's loss, which in the trials object would
be a running trial's. It is called after each successful trial, as upstream."""

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
        self._finished = list(finished)  # DONE trials, in the order they finished
        self._loss_threshold = loss_threshold
        self._early_stop_fn = early_stop_fn
        self._early_stop_args: list[Any] = []
        self.best_loss = min((ok_loss(t) for t in self._finished), default=math.inf)

    def trial_done(self, trial: dict[str, Any]) -> None:
        self._finished.append(trial)
        self.best_loss = min(self.best_loss, ok_loss(trial))

    def stop_after(self, trial: dict[str, Any]) -> bool:
        """Whether the search stops now that ``trial`` has ended."""
        threshold = self._loss_threshold
        if threshold is not None and self.best_loss < threshold:
            logger.info("fmin reached the loss threshold (%s < %s).", self.best_loss, threshold)
            return True
        succeeded = trial["state"] == base.JOB_STATE_DONE and trial["result"].get("status") == base.STATUS_OK
        if self._early_stop_fn is None or not succeeded:
            return False
        view = base.Trials()
        view._dynamic_trials = list(self._finished)
        view.refresh()
        stop, args = self._early_stop_fn(view, *self._early_stop_args)
        self._early_stop_args = list(args)
        return bool(stop)
