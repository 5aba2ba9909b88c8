"""The progress bar of an fmin: hyperopt's tqdm bar, with what a parallel search adds.

hyperopt's own bar shows finished trials and the best loss. With trials running in parallel
on a cluster, a user also wants to see how many are running and how many failed, so the
bar's postfix reads ``best loss: 0.0245, running: 4, failed: 1``.

On a terminal the bar redraws in place. When stdout is not a terminal (CI logs, a file, a
job's driver log) every redraw would be a new line, so the bar then writes at most one line
every ``_NON_TTY_INTERVAL_S`` seconds, plus the last one. A ``show_progressbar`` context
manager of the user's own (hyperopt's protocol: ``update(n)``) is used as it is.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

from hyperopt import progress as hyperopt_progress

_NON_TTY_INTERVAL_S = 30.0


class TrialProgress:
    """What the scheduler reports to; forwards to the bar (or to a user's callback)."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def trial_finished(self, best_loss: float, running: int, failed: int) -> None:
        """One more trial is DONE or ERROR (cancelled trials are not progress)."""
        set_postfix = getattr(self._bar, "set_postfix_str", None)
        if set_postfix is not None:
            best = f"{best_loss:.6g}" if math.isfinite(best_loss) else "?"
            set_postfix(f"best loss: {best}, running: {running}, failed: {failed}", refresh=False)
        self._bar.update(1)

    def note(self, text: str) -> None:
        """A line of its own under the bar (the search reconnected, say); a user's own
        progress callback without ``write`` does not show it (the log has it)."""
        write = getattr(self._bar, "write", None)
        if callable(write):
            write(text)


def progress_callback_for(show_progressbar: Any, verbose: bool) -> Callable[..., Any]:
    """hyperopt's rule: no bar unless both are true; ``True`` means our tqdm bar."""
    if not show_progressbar or not verbose:
        return hyperopt_progress.no_progress_callback
    if show_progressbar is True:
        return tqdm_progress
    return show_progressbar  # type: ignore[no-any-return]


@contextlib.contextmanager
def tqdm_progress(initial: int, total: int | None) -> Iterator[Any]:
    from hyperopt.std_out_err_redirect_tqdm import std_out_err_redirect_tqdm
    from tqdm import tqdm

    interactive = bool(getattr(sys.stdout, "isatty", lambda: False)())
    with (
        std_out_err_redirect_tqdm() as stdout,
        tqdm(
            total=total,
            file=stdout,
            postfix="best loss: ?",
            dynamic_ncols=interactive,
            unit="trial",
            initial=initial,
            mininterval=0.1 if interactive else _NON_TTY_INTERVAL_S,
            maxinterval=10.0 if interactive else _NON_TTY_INTERVAL_S,
        ) as bar,
    ):
        yield bar


@contextlib.contextmanager
def trial_progress(callback: Callable[..., Any], initial: int, total: int | None) -> Iterator[TrialProgress]:
    with callback(initial=initial, total=total) as bar:
        yield TrialProgress(bar)
