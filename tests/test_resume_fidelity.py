"""A resumed search is the search that was saved: the result each objective returned, the same
progress, the same save file and the same MLflow parent, and nothing it kept is lost on the way
(issue 25, items 5 and 12). Tracking against a real ``mlflow server``; hyperopt's own serial
``Trials`` is the reference where hyperopt has one."""

from __future__ import annotations

import contextlib
import pickle
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, STATUS_FAIL, STATUS_OK, Trials, fmin, hp, rand
from mlflow.entities import Metric
from pyspark import cloudpickle

from connect_trials import ConnectTrials, outputs, resume
from connect_trials.tracking import RUN_SOURCE
from tests.test_tracking import Tracking, tracking_server  # noqa: F401 - the fixture

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPACE = hp.uniform("x", 0, 1)


def search(trials: Any, fn: Any, max_evals: int, **kwargs: Any) -> None:
    fmin(fn, SPACE, algo=rand.suggest, max_evals=max_evals, trials=trials, rstate=np.random.default_rng(0),
         **{"show_progressbar": False, **kwargs})  # fmt: skip


def results_by_tid(trials: Any) -> dict[int, tuple[int, dict[str, Any]]]:
    return {t["tid"]: (t["state"], t["result"]) for t in trials._dynamic_trials}


# -- item 5: the loss that comes back is the one the objective returned -----------------------
def logs_its_own_loss_per_epoch(x: float) -> float:
    import mlflow

    for epoch in range(3):  # as Keras autolog logs the training loss
        mlflow.log_metric("loss", 100.0 + epoch, step=epoch)
    return x / 10 + 1e-9 / 3  # a float with all its digits: it must come back exactly


def test_from_mlflow_restores_the_loss_the_objective_returned_not_the_loss_it_logged_per_epoch(
    tracking_server: Tracking,  # noqa: F811
) -> None:
    trials = ConnectTrials(debug=True)
    search(trials, logs_its_own_loss_per_epoch, 4)
    parent, children = tracking_server.parent_and_children()
    assert sorted(c.data.metrics["loss"] for c in children) == [102.0] * 4  # the latest step's

    resumed = ConnectTrials.from_mlflow(parent.info.run_id, debug=True)
    assert results_by_tid(resumed) == results_by_tid(trials)
    assert resumed.best_trial["misc"]["vals"] == trials.best_trial["misc"]["vals"]


def test_a_run_written_before_the_result_tag_gives_back_the_loss_our_tracker_logged_at_step_0(
    tracking_server: Tracking,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = tracking_server.client
    exp = tracking_server.experiment_id
    parent = client.create_run(exp, tags={"runSource": RUN_SOURCE}).info.run_id
    now = int(time.time() * 1000)

    def old_child(tid: int, objective_losses: list[float], ours: float) -> None:
        tags = {"mlflow.parentRunId": parent, "runSource": RUN_SOURCE, "fmin_uuid": "old0",
                "trial_tid": str(tid), "hyperopt_vals": f'{{"x": [{tid / 10}]}}'}  # fmt: skip
        run_id = client.create_run(exp, tags=tags, run_name=f"trial-{tid}").info.run_id
        logged = [Metric("loss", v, now + step, step) for step, v in enumerate(objective_losses)]
        # As our tracker wrote it before: once, at step 0, at the run's end.
        client.log_batch(run_id, metrics=[*logged, Metric("loss", ours, now + 1000, 0)])
        client.set_tag(run_id, "trial_status", "success")
        client.set_terminated(run_id, "FINISHED")

    old_child(0, [100.0, 101.0, 102.0], ours=0.0123)  # the objective logged loss per epoch
    old_child(1, [7.0], ours=0.5)  # ... once, at step 0 as well
    old_child(2, [], ours=0.25)  # not at all: the common case
    histories = []
    read_history = type(client).get_metric_history

    def counted(self: Any, run_id: str, key: str) -> Any:
        histories.append(run_id)
        return read_history(self, run_id, key)

    monkeypatch.setattr(type(client), "get_metric_history", counted)
    resumed = ConnectTrials.from_mlflow(parent, debug=True)
    assert {t["tid"]: t["result"]["loss"] for t in resumed.trials} == {0: 0.0123, 1: 0.5, 2: 0.25}
    assert len(histories) == 1  # only the run whose latest loss is at a later step costs a request


# -- item 12b: a DONE trial with status "fail" comes back as hyperopt keeps it -----------------
def fails_below_half(x: float) -> Any:
    return {"status": STATUS_FAIL} if x < 0.5 else {"status": STATUS_OK, "loss": x}


def raises_or_fails(x: float) -> Any:
    if x < 0.2:
        raise ValueError("too small")
    return fails_below_half(x)


def test_a_done_trial_whose_objective_returned_status_fail_comes_back_from_mlflow_done(
    tracking_server: Tracking,  # noqa: F811
) -> None:
    serial = Trials()  # hyperopt's own: the reference (an ERROR trial is kept, as here)
    search(serial, raises_or_fails, 8, catch_eval_exceptions=True)
    trials = ConnectTrials(debug=True, parallelism=1)
    search(trials, raises_or_fails, 8)
    vals = [t["misc"]["vals"] for t in serial._dynamic_trials]
    assert [t["misc"]["vals"] for t in trials._dynamic_trials] == vals
    kinds = {(t["state"], t["result"]["status"]) for t in serial._dynamic_trials}
    assert kinds == {(JOB_STATE_ERROR, "new"), (JOB_STATE_DONE, STATUS_FAIL), (JOB_STATE_DONE, STATUS_OK)}
    assert results_by_tid(trials) == results_by_tid(serial)

    parent, _ = tracking_server.parent_and_children()
    resumed = ConnectTrials.from_mlflow(parent.info.run_id, debug=True)
    assert results_by_tid(resumed) == results_by_tid(serial)
    assert resumed.count_successful_trials() == serial.count_by_state_unsynced(JOB_STATE_DONE)


# -- item 12a: delete_all starts a new search -------------------------------------------------
def square(x: float) -> float:
    return x * x


def test_after_delete_all_the_next_fmin_makes_its_own_parent_run_and_leaves_the_resumed_one_alone(
    tracking_server: Tracking,  # noqa: F811
) -> None:
    search(ConnectTrials(debug=True), square, 2)
    old_parent, old_children = tracking_server.parent_and_children()
    resumed = ConnectTrials.from_mlflow(old_parent.info.run_id, debug=True)
    resumed.delete_all()
    search(resumed, square, 3)

    runs = tracking_server.runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2
    under_old = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == old_parent.info.run_id]
    assert sorted(r.info.run_id for r in under_old) == sorted(r.info.run_id for r in old_children)
    new_parent = next(p for p in parents if p.info.run_id != old_parent.info.run_id)
    assert new_parent.data.metrics["total_trials_count"] == 3


# -- item 12c: the progress bar starts where hyperopt's does ----------------------------------
class ProgressRecord:
    """A ``show_progressbar`` callback (hyperopt's protocol) that records how each bar began."""

    def __init__(self) -> None:
        self.bars: list[tuple[int, int | None]] = []

    @contextlib.contextmanager
    def __call__(self, initial: int, total: int | None) -> Iterator[Any]:
        self.bars.append((initial, total))

        class Bar:
            postfix = ""

            def update(self, n: int) -> None:
                pass

        yield Bar()


def test_a_continued_or_resumed_search_s_progress_bar_starts_at_its_done_trials_as_hyperopt_s(
    tmp_path: Any,
) -> None:
    reference, ours = ProgressRecord(), ProgressRecord()
    serial = Trials()
    search(serial, fails_below_half, 3, show_progressbar=reference)
    search(serial, fails_below_half, 5, show_progressbar=reference)
    saved = _saved(serial, tmp_path / "hyperopt.pkl")  # hyperopt's own resume: trials=None
    fmin(fails_below_half, SPACE, rand.suggest, 7, show_progressbar=reference,
         rstate=np.random.default_rng(0), trials_save_file=saved)  # fmt: skip

    trials = ConnectTrials(debug=True, mlflow_tracking=False)
    search(trials, fails_below_half, 3, show_progressbar=ours)
    search(trials, fails_below_half, 5, show_progressbar=ours, trials_save_file=str(tmp_path / "ours.pkl"))
    search(ConnectTrials(debug=True, mlflow_tracking=False), fails_below_half, 7, show_progressbar=ours,
           trials_save_file=str(tmp_path / "ours.pkl"))  # fmt: skip
    assert reference.bars == [(0, 3), (3, 5), (5, 7)]
    assert ours.bars == reference.bars


def _saved(trials: Trials, path: Any) -> str:
    path.write_bytes(pickle.dumps(trials))
    return str(path)


# -- item 12d: outputs that left memory for a save file survive its rewriting -----------------
def noisy(x: float) -> float:
    print("o" * 999)  # a line of 1,000 characters with its newline
    return x


def saved_outputs(path: Any) -> dict[int, str | None]:
    return {t["tid"]: t["misc"].get("output") for t in resume.load_trials(str(path))._dynamic_trials}


def test_outputs_kept_only_in_a_save_file_survive_when_a_later_fmin_rewrites_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "OUTPUT_BUDGET_BYTES", 3 * 1000)
    first, other = tmp_path / "first.pkl", tmp_path / "other.pkl"
    trials = ConnectTrials(debug=True, mlflow_tracking=False)
    search(trials, noisy, 8, trials_save_file=str(first))
    assert str(first) in trials._dynamic_trials[0]["misc"]["output_moved_to"]
    search(trials, noisy, 9, trials_save_file=str(other))
    search(trials, noisy, 10, trials_save_file=str(first))  # a fresh snapshot replaces it
    assert saved_outputs(first) == {tid: "o" * 999 + "\n" for tid in range(10)}
    assert sum(bool(t["misc"].get("output")) for t in trials._dynamic_trials) == 3  # memory: the budget


def test_outputs_moved_out_of_memory_on_a_resume_from_a_damaged_save_file_survive_its_rewriting(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "OUTPUT_BUDGET_BYTES", 3 * 1000)
    path = tmp_path / "search.pkl"
    search(ConnectTrials(debug=True, mlflow_tracking=False), noisy, 8, trials_save_file=str(path))
    with open(path, "ab") as f:
        f.write(b"CTJREC01\x00")  # the process died while it appended a record
    resumed = ConnectTrials(debug=True, mlflow_tracking=False)
    search(resumed, noisy, 10, trials_save_file=str(path))
    assert saved_outputs(path) == {tid: "o" * 999 + "\n" for tid in range(10)}


# -- item 12e: an fmin appends only to the file it left as it is ------------------------------
# The objectives print more than the budget keeps in memory, so the save file is left as the
# journal wrote it (not compacted at fmin's end): what a crash mid-fmin would leave.
def test_a_later_fmin_does_not_append_to_its_save_file_once_another_writer_rewrote_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "OUTPUT_BUDGET_BYTES", 1000)
    path = tmp_path / "search.pkl"
    trials = ConnectTrials(debug=True, mlflow_tracking=False)
    search(trials, noisy, 3, trials_save_file=str(path))
    hyperopt_trials = Trials()  # hyperopt's own fmin saves another search to the same file
    fmin(square, hp.uniform("x", 5, 6), rand.suggest, 2, trials=hyperopt_trials, show_progressbar=False,
         trials_save_file=str(path))  # fmt: skip
    search(trials, noisy, 5, trials_save_file=str(path))
    assert results_by_tid(resume.load_trials(str(path))) == results_by_tid(trials)


def test_a_save_file_this_object_found_but_never_wrote_is_rewritten_not_appended_to(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "OUTPUT_BUDGET_BYTES", 1000)
    mine, theirs = tmp_path / "mine.pkl", tmp_path / "theirs.pkl"
    trials = ConnectTrials(debug=True, mlflow_tracking=False)
    search(trials, noisy, 3, trials_save_file=str(mine))
    fmin(square, hp.uniform("x", 5, 6), rand.suggest, 2, trials=Trials(), show_progressbar=False,
         trials_save_file=str(theirs))  # fmt: skip
    search(trials, noisy, 3, trials_save_file=str(theirs))  # nothing to run: nothing written
    search(trials, noisy, 5, trials_save_file=str(theirs))
    assert results_by_tid(resume.load_trials(str(theirs))) == results_by_tid(trials)


def test_a_relative_save_file_path_names_another_file_after_a_chdir(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "OUTPUT_BUDGET_BYTES", 1000)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    trials = ConnectTrials(debug=True, mlflow_tracking=False)
    search(trials, noisy, 3, trials_save_file="search.pkl")
    monkeypatch.chdir(tmp_path / "b")
    fmin(square, hp.uniform("x", 5, 6), rand.suggest, 2, trials=Trials(), show_progressbar=False,
         trials_save_file="search.pkl")  # fmt: skip
    search(trials, noisy, 5, trials_save_file="search.pkl")
    assert results_by_tid(resume.load_trials("search.pkl")) == results_by_tid(trials)
