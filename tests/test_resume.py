"""Resuming a search: what a saved file or a tracked parent run gives back (pure logic here;
the end-to-end resumes after a killed client are in test_ide.py)."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
from hyperopt import Trials, base, fmin, hp, rand, tpe

from connect_trials import resume
from connect_trials.outputs import OutputBudget


def finished_search(n: int) -> Trials:
    trials = Trials()
    fmin(lambda x: x**2, hp.uniform("x", -1, 1), rand.suggest, n, trials=trials,
         show_progressbar=False, rstate=np.random.default_rng(0))  # fmt: skip
    return trials


def test_adopting_a_saved_search_keeps_finished_trials_and_new_ids_do_not_collide():
    saved = finished_search(5)
    saved._dynamic_trials[2]["state"] = base.JOB_STATE_CANCEL
    saved.refresh()
    trials = Trials()
    resume.adopt(trials, saved)
    assert [t["tid"] for t in trials.trials] == [0, 1, 3, 4]
    assert trials.new_trial_ids(2) == [5, 6]


def child_run(tid: int, vals: dict, status: str, loss: float | None = None) -> SimpleNamespace:
    tags = {"trial_tid": str(tid), "hyperopt_vals": json.dumps(vals), "trial_status": status}
    if status == "failure":
        tags.update(error_type="<class 'ValueError'>", error_message="ValueError: bad")
    metrics = {} if loss is None else {"loss": loss}
    data = SimpleNamespace(tags=tags, metrics=metrics)
    return SimpleNamespace(info=SimpleNamespace(run_id=f"run-{tid}"), data=data)


def test_child_runs_become_done_and_error_trials_and_cancelled_ones_are_left_out():
    runs = [
        child_run(3, {"x": [0.5]}, "success", 0.25),
        child_run(0, {"x": [-0.1]}, "success", 0.01),
        child_run(1, {"x": [2.0]}, "failure"),
        child_run(2, {"x": [0.7]}, "cancelled"),
        SimpleNamespace(info=SimpleNamespace(run_id="other"), data=SimpleNamespace(tags={}, metrics={})),
    ]
    trials = Trials()
    resume.insert_finished(trials, resume.trial_docs_from_runs(trials, runs, client=None))
    assert [(t["tid"], t["state"]) for t in trials._dynamic_trials] == [
        (0, base.JOB_STATE_DONE), (1, base.JOB_STATE_ERROR), (3, base.JOB_STATE_DONE)]  # fmt: skip
    assert trials.best_trial["tid"] == 0 and trials.best_trial["misc"]["vals"] == {"x": [-0.1]}
    assert trials._dynamic_trials[1]["misc"]["error"] == ("<class 'ValueError'>", "ValueError: bad")
    assert trials.new_trial_ids(1) == [4]


def test_tpe_continues_from_rebuilt_trials():
    runs = [child_run(i, {"x": [float(x)]}, "success", float(x) ** 2)
            for i, x in enumerate(np.linspace(-1, 1, 21))]  # fmt: skip
    trials = Trials()
    resume.insert_finished(trials, resume.trial_docs_from_runs(trials, runs, client=None))
    fmin(lambda x: x**2, hp.uniform("x", -1, 1), tpe.suggest, 26, trials=trials,
         show_progressbar=False, rstate=np.random.default_rng(1))  # fmt: skip
    assert len(trials.trials) == 26
    assert sorted(t["tid"] for t in trials.trials)[-5:] == [21, 22, 23, 24, 25]


# -- the save journal: one snapshot, then one appended record per finished trial -------------
def journal_of(trials: Trials, path, n_snapshot: int) -> resume.SaveJournal:
    """A journal whose snapshot holds the first ``n_snapshot`` trials and whose records hold
    the rest, written as an fmin writes it (the snapshot at the first trial's end)."""
    all_docs = list(trials._dynamic_trials)
    trials._dynamic_trials = all_docs[:n_snapshot]
    trials.refresh()
    journal = resume.SaveJournal(str(path))
    journal.trial_ended(trials, all_docs[n_snapshot - 1])
    for doc in all_docs[n_snapshot:]:
        trials._dynamic_trials.append(doc)
        journal.trial_ended(trials, doc)
    trials.refresh()
    return journal


def test_the_journal_appends_a_record_per_trial_and_leaves_the_snapshot_as_written(tmp_path):
    trials, path = finished_search(6), tmp_path / "search.pkl"
    journal = journal_of(trials, path, n_snapshot=2)
    snapshot = pickle.dumps(pickle.loads(path.read_bytes()))  # what pickle.load of the file gives
    assert len(pickle.loads(path.read_bytes())._dynamic_trials) == 2
    size = path.stat().st_size
    journal.trial_ended(trials, trials._dynamic_trials[-1])  # the same trial again: one more record
    assert path.stat().st_size > size and pickle.dumps(pickle.loads(path.read_bytes())) == snapshot
    loaded = resume.load_trials(str(path))
    assert [t["tid"] for t in loaded._dynamic_trials] == [0, 1, 2, 3, 4, 5]  # the record replaced its tid
    assert [t["misc"]["vals"] for t in loaded.trials] == [t["misc"]["vals"] for t in trials.trials]
    assert journal.records == 6
    journal.close(trials)  # compacted: one pickle, as hyperopt writes it
    assert [t["tid"] for t in pickle.loads(path.read_bytes()).trials] == [0, 1, 2, 3, 4, 5]


def test_a_partial_last_record_is_ignored_and_the_trials_before_it_load(tmp_path, caplog):
    trials, path = finished_search(5), tmp_path / "search.pkl"
    journal_of(trials, path, n_snapshot=1)
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # a crash in the middle of the last record
    loaded, ends_cleanly = resume.load_journal(str(path))
    assert [t["tid"] for t in loaded.trials] == [0, 1, 2, 3] and not ends_cleanly
    assert "partial record" in caplog.text
    damaged = bytearray(whole)
    damaged[-3] ^= 0xFF  # a damaged payload fails its checksum
    path.write_bytes(bytes(damaged))
    assert [t["tid"] for t in resume.load_trials(str(path)).trials] == [0, 1, 2, 3]
    path.write_bytes(whole)
    assert resume.load_journal(str(path))[1]


def test_a_single_pickle_file_as_hyperopt_writes_it_still_loads(tmp_path):
    path = tmp_path / "hyperopt.pkl"
    path.write_bytes(pickle.dumps(finished_search(3)))
    loaded, ends_cleanly = resume.load_journal(str(path))
    assert len(loaded.trials) == 3 and ends_cleanly


def test_a_resumed_journal_is_appended_to_not_rewritten(tmp_path):
    trials, path = finished_search(4), tmp_path / "search.pkl"
    journal_of(trials, path, n_snapshot=1)
    before = path.read_bytes()
    extra = finished_search(5)._dynamic_trials[-1]
    appended = resume.SaveJournal(str(path), append=True)
    appended.trial_ended(trials, extra)
    appended.close(trials, compact=False)
    after = path.read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    assert [t["tid"] for t in resume.load_trials(str(path)).trials] == [0, 1, 2, 3, 4]


# -- the output budget ---------------------------------------------------------------------
def test_outputs_beyond_the_budget_leave_memory_oldest_first_and_say_where_they_are(caplog):
    trials = finished_search(6)
    for doc in trials._dynamic_trials[:2]:
        doc["misc"]["output"] = "x" * 40  # an earlier fmin's outputs count too
    budget = OutputBudget(trials, kept_in="the trials_save_file s.pkl", limit=100)
    for doc in trials._dynamic_trials[2:]:
        doc["misc"]["output"] = "y" * 40
        budget.hold(doc)
    held = [t["tid"] for t in trials._dynamic_trials if "output" in t["misc"]]
    assert held == [4, 5] and budget.moved == 4
    assert trials._dynamic_trials[0]["misc"]["output_moved_to"] == "the trials_save_file s.pkl"
    assert caplog.text.count("leave misc['output']") == 1
    big = finished_search(7)._dynamic_trials[-1]
    big["misc"]["output"] = "z" * 500  # one output over the budget stays: it is the newest
    budget.hold(big)
    assert big["misc"]["output"] and "output" not in trials._dynamic_trials[5]["misc"]


def test_a_noisy_search_keeps_its_newest_outputs_in_memory_and_every_output_in_its_save_file(
    tmp_path, monkeypatch
):
    from connect_trials import ConnectTrials, outputs

    monkeypatch.setattr(outputs, "OUTPUT_BUDGET_BYTES", 3 * 1000)

    def noisy(x):
        print("o" * 999)  # a line of 1,000 characters with its newline
        return x

    path = tmp_path / "search.pkl"
    trials = ConnectTrials(debug=True, mlflow_tracking=False)  # the same worker code, in this process
    fmin(noisy, hp.uniform("x", 0, 1), rand.suggest, 8, trials=trials, show_progressbar=False,
         trials_save_file=str(path))  # fmt: skip
    in_memory = [t["tid"] for t in trials._dynamic_trials if t["misc"].get("output")]
    assert in_memory == [5, 6, 7]  # the budget's worth, newest first out last
    moved = trials._dynamic_trials[0]["misc"]["output_moved_to"]
    assert str(path) in moved
    # The save file was not compacted (its records hold what memory no longer does).
    saved = resume.load_trials(str(path))
    assert all(t["misc"]["output"] == "o" * 999 + "\n" for t in saved._dynamic_trials)
    assert len(pickle.loads(path.read_bytes())._dynamic_trials) == 1  # the snapshot, then records
