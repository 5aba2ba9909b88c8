"""Resuming a search: what a saved file or a tracked parent run gives back (pure logic here;
the end-to-end resumes after a killed client are in test_ide.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from hyperopt import Trials, base, fmin, hp, rand, tpe

from connect_trials import resume


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
    resume.insert_finished(trials, resume.trial_docs_from_runs(trials, runs))
    assert [(t["tid"], t["state"]) for t in trials._dynamic_trials] == [
        (0, base.JOB_STATE_DONE), (1, base.JOB_STATE_ERROR), (3, base.JOB_STATE_DONE)]  # fmt: skip
    assert trials.best_trial["tid"] == 0 and trials.best_trial["misc"]["vals"] == {"x": [-0.1]}
    assert trials._dynamic_trials[1]["misc"]["error"] == ("<class 'ValueError'>", "ValueError: bad")
    assert trials.new_trial_ids(1) == [4]


def test_tpe_continues_from_rebuilt_trials():
    runs = [child_run(i, {"x": [float(x)]}, "success", float(x) ** 2)
            for i, x in enumerate(np.linspace(-1, 1, 21))]  # fmt: skip
    trials = Trials()
    resume.insert_finished(trials, resume.trial_docs_from_runs(trials, runs))
    fmin(lambda x: x**2, hp.uniform("x", -1, 1), tpe.suggest, 26, trials=trials,
         show_progressbar=False, rstate=np.random.default_rng(1))  # fmt: skip
    assert len(trials.trials) == 26
    assert sorted(t["tid"] for t in trials.trials)[-5:] == [21, 22, 23, 24, 25]
