"""How much of what objectives printed the client keeps in memory.

Each trial's ``misc["output"]`` holds the last 64 KiB of its stdout and stderr. Over a long,
noisy search that would grow without bound (10,000 trials: 640 MiB), so the trials hold at most
``OUTPUT_BUDGET_BYTES`` of it: the most recently finished trials keep theirs, and an older
trial's output leaves memory once newer ones fill the budget. It is not lost where the fmin
keeps it elsewhere: in the ``output.txt`` of the trial's MLflow child run, and in the
``trials_save_file`` (each trial's record there carries its output). ``misc["output_moved_to"]``
then says where.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

logger = logging.getLogger("connect_trials")

OUTPUT_BUDGET_BYTES = 32 * 1024 * 1024


class OutputBudget:
    """The trials holding an output, oldest first, and their total size (characters)."""

    def __init__(self, trials: Any, kept_in: str, limit: int | None = None) -> None:
        self.kept_in = kept_in  # where an output that leaves memory can still be read ("": nowhere)
        self.limit = OUTPUT_BUDGET_BYTES if limit is None else limit
        self.moved = 0  # outputs that left memory during this fmin
        self._held: collections.deque[tuple[dict[str, Any], int]] = collections.deque()
        self._size = 0
        # Once per fmin: the outputs earlier fmins left in these trials count too.
        for trial in trials._dynamic_trials:
            self.hold(trial)

    def hold(self, trial: dict[str, Any]) -> None:
        """``trial`` ended with its output in its document: count it, and move the oldest
        outputs out of memory while the budget is exceeded."""
        output = trial["misc"].get("output")
        if not output:
            return
        self._held.append((trial, len(output)))
        self._size += len(output)
        while self._size > self.limit and len(self._held) > 1:
            old, size = self._held.popleft()
            self._size -= size
            if old["misc"].pop("output", None) is None:
                continue
            old["misc"]["output_moved_to"] = self.kept_in or "nowhere (not tracked, no trials_save_file)"
            if self.moved == 0:
                logger.info(
                    "The trials keep the last %.0f MiB of what objectives printed in memory: trial %s's "
                    "output and older ones leave misc['output']; they are kept in %s.",
                    self.limit / (1024 * 1024), old["tid"],
                    self.kept_in or "no other place (track the search or pass trials_save_file to keep them)",
                )  # fmt: skip
            self.moved += 1
