"""Picking up a search where it stopped: from a ``trials_save_file``, or from MLflow.

``trials_save_file`` is hyperopt's own mechanism: the trials object is pickled after every
finished trial, and an fmin that finds the file at its start continues from it. A
``ConnectTrials`` pickles without its Spark session (sessions do not pickle, and the one that
made the file is usually gone with its process) and takes the active one when it is used
again.

``ConnectTrials.from_mlflow(parent_run_id)`` rebuilds the finished trials of a tracked search
from its child runs: each child run carries the trial's id (tag ``trial_tid``) and hyperopt's
own values for its hyperparameters (tag ``hyperopt_vals``, JSON), besides the ``loss`` metric
and the ``trial_status`` tag. What it restores: every trial that ended, with its
hyperparameters, its status and, for successful ones, its loss. What it does not: the rest of
a trial's result dictionary, and trials that were cancelled or still running (the next fmin
suggests new ones in their place). The child runs it reads are one fmin's
(``tracking.resume_runs``).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Iterable
from typing import Any

from hyperopt import base

from connect_trials.tracking.resume_tags import TID_TAG, VALS_TAG


def save_trials(trials: Any, path: str) -> None:
    """Write ``trials`` to ``path`` atomically: a crash mid-write leaves the last good file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".connect-trials-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(trials, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_trials(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def adopt(trials: Any, saved: Any) -> None:
    """Give ``trials`` the finished trials of ``saved`` (unfinished ones are dropped: their
    jobs died with the process that ran them)."""
    finished = [t for t in saved._dynamic_trials if t["state"] in (base.JOB_STATE_DONE, base.JOB_STATE_ERROR)]
    insert_finished(trials, finished)


def insert_finished(trials: Any, docs: Iterable[dict[str, Any]]) -> None:
    """Insert finished trial documents, keeping their tids: new trials get higher ones."""
    docs = list(docs)
    if docs:
        trials.insert_trial_docs(docs)
    trials.refresh()
    # hyperopt hands out new ids from len(_ids): cover every tid up to the highest.
    top = max((int(d["tid"]) for d in trials._dynamic_trials), default=-1)
    trials._ids = set(range(top + 1))


def trial_docs_from_runs(trials: Any, runs: Iterable[Any]) -> list[dict[str, Any]]:
    """Trial documents for the child runs of a tracked search that ended DONE or ERROR."""
    docs = []
    for run in runs:
        tags = run.data.tags
        if TID_TAG not in tags or VALS_TAG not in tags:
            continue
        status = tags.get("trial_status")
        if status not in ("success", "failure"):
            continue  # cancelled, or still RUNNING when its client died
        tid = int(tags[TID_TAG])
        vals = {label: list(values) for label, values in json.loads(tags[VALS_TAG]).items()}
        idxs = {label: [tid] if values else [] for label, values in vals.items()}
        misc = {"tid": tid, "cmd": ("domain_attachment", "FMinIter_Domain"), "workdir": None,
                "idxs": idxs, "vals": vals, "from_mlflow_run": run.info.run_id}  # fmt: skip
        if status == "success" and "loss" in run.data.metrics:
            result = {"status": base.STATUS_OK, "loss": float(run.data.metrics["loss"])}
            state = base.JOB_STATE_DONE
        else:
            result = {"status": base.STATUS_FAIL}
            state = base.JOB_STATE_ERROR
            misc["error"] = (tags.get("error_type", ""), tags.get("error_message", ""))
        [doc] = trials.new_trial_docs([tid], [None], [result], [misc])
        doc["state"] = state
        docs.append(doc)
    return sorted(docs, key=lambda d: d["tid"])
