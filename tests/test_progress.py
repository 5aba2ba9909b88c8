"""The fmin progress bar: best loss, running and failed counts; quiet when not on a terminal."""

from __future__ import annotations

import contextlib
import io
import math

from connect_trials.progress import TrialProgress, progress_callback_for, tqdm_progress, trial_progress


class RecordingBar:
    def __init__(self) -> None:
        self.postfixes: list[str] = []
        self.n = 0

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfixes.append(text)

    def update(self, n: int) -> None:
        self.n += n


def test_the_postfix_shows_best_loss_running_and_failed_counts():
    bar = RecordingBar()
    progress = TrialProgress(bar)
    progress.trial_finished(math.inf, running=4, failed=1)
    progress.trial_finished(0.25, running=3, failed=1)
    assert bar.postfixes == ["best loss: ?, running: 4, failed: 1", "best loss: 0.25, running: 3, failed: 1"]
    assert bar.n == 2


def test_a_users_progress_callback_with_only_update_still_works():
    seen = []

    @contextlib.contextmanager
    def callback(initial, total):
        class Counter:
            def update(self, n):
                seen.append(n)

        yield Counter()

    with trial_progress(progress_callback_for(callback, True), initial=0, total=3) as progress:
        for _ in range(3):
            progress.trial_finished(1.0, running=0, failed=0)
    assert seen == [1, 1, 1]


def test_no_bar_unless_verbose_and_show_progressbar():
    from hyperopt.progress import no_progress_callback

    assert progress_callback_for(True, False) is no_progress_callback
    assert progress_callback_for(False, True) is no_progress_callback
    assert progress_callback_for(True, True) is tqdm_progress


def test_off_a_terminal_the_bar_does_not_write_a_line_per_trial(monkeypatch):
    out = io.StringIO()  # isatty() is False, as for a CI log or a file
    monkeypatch.setattr("sys.stdout", out)
    with trial_progress(tqdm_progress, initial=0, total=200) as progress:
        for i in range(200):
            progress.trial_finished(1.0 / (i + 1), running=2, failed=0)
    redraws = [chunk for chunk in out.getvalue().replace("\r", "\n").split("\n") if chunk.strip()]
    assert 1 <= len(redraws) <= 3, redraws
    assert "200/200" in redraws[-1] and "running: 2" in redraws[-1]
