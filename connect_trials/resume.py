"""Picking up a search where it stopped: from a ``trials_save_file``, or from MLflow.

``trials_save_file`` is hyperopt's own mechanism: the trials are saved after every finished
trial, and an fmin that finds the file at its start continues from it. hyperopt pickles the
whole trials object each time, which costs O(n) per trial; here the file is a journal
(:class:`SaveJournal`): one pickle of the trials (what ``pickle.load`` of the file returns),
then one framed record per finished trial, appended. Reading it back applies the records in
order; a partial or damaged last record (a crash mid-write) is ignored. At fmin's end the
journal is compacted into one pickle, as hyperopt writes it. A ``ConnectTrials`` pickles
without its Spark session (sessions do not pickle, and the one that made the file is usually
gone with its process) and takes the active one when it is used again.

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
import logging
import os
import pickle
import struct
import tempfile
import time
import zlib
from collections.abc import Iterable
from typing import IO, Any

from hyperopt import base

from connect_trials.tracking.resume_tags import TID_TAG, VALS_TAG

logger = logging.getLogger("connect_trials")

# A record after the snapshot: magic, payload length, CRC-32 of the payload, then the payload
# (one pickled trial document).
_RECORD_MAGIC = b"CTJREC01"
_RECORD_HEADER = struct.Struct(">8sQI")


class SaveJournal:
    """One fmin's ``trials_save_file``: the first finished trial writes a snapshot of the
    trials (atomically, as hyperopt's save), each later one appends its own document, and
    :meth:`close` compacts the file into one pickle again. Work per trial is O(1).

    ``write_s`` and ``records`` say what the saving cost (the benchmark reports them)."""

    def __init__(self, path: str, append: bool = False) -> None:
        """``append``: the file holds these trials already (they were resumed from it, or
        saved to it by an earlier fmin), so records go after what it has."""
        self.path = path
        self.records = 0
        self.write_s = 0.0
        self._file: IO[bytes] | None = open(path, "ab") if append else None  # noqa: SIM115

    def trial_ended(self, trials: Any, trial: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            if self._file is None:
                self._file = _write_atomically(trials, self.path, keep_open=True)
            else:
                payload = pickle.dumps(trial, protocol=pickle.HIGHEST_PROTOCOL)
                header = _RECORD_HEADER.pack(_RECORD_MAGIC, len(payload), zlib.crc32(payload))
                self._file.write(header + payload)
                self._file.flush()
            self.records += 1
        finally:
            self.write_s += time.perf_counter() - started

    def close(self, trials: Any, compact: bool = True) -> None:
        """End the journal; ``compact``: rewrite it as one pickle of ``trials`` (skipped when
        the trials in memory no longer hold everything the records do)."""
        file, self._file = self._file, None
        if file is None:
            return
        file.close()
        if compact:
            save_trials(trials, self.path)


def save_trials(trials: Any, path: str) -> None:
    """Write ``trials`` to ``path`` atomically: a crash mid-write leaves the last good file."""
    _write_atomically(trials, path, keep_open=False)


def _write_atomically(trials: Any, path: str, keep_open: bool) -> IO[bytes] | None:
    """Pickle ``trials`` into a new file that then replaces ``path``; ``keep_open``: return
    it, open for appending records."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".connect-trials-", dir=folder)
    f = os.fdopen(fd, "wb")
    try:
        pickle.dump(trials, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if keep_open:
        return f
    f.close()
    return None


def load_trials(path: str) -> Any:
    """The trials saved in ``path``: its snapshot with every whole record applied (a file of
    hyperopt's own, one pickle, loads as it is)."""
    return load_journal(path)[0]


def load_journal(path: str) -> tuple[Any, bool]:
    """``load_trials``, and whether the file ends cleanly (records may be appended to it)."""
    ends = [True]
    with open(path, "rb") as f:
        trials = pickle.load(f)
        docs = list(_records(f, path, ends))
    if docs and hasattr(trials, "_dynamic_trials"):
        at = {doc["tid"]: i for i, doc in enumerate(trials._dynamic_trials)}
        for doc in docs:
            if doc["tid"] in at:
                trials._dynamic_trials[at[doc["tid"]]] = doc
            else:
                at[doc["tid"]] = len(trials._dynamic_trials)
                trials._dynamic_trials.append(doc)
        trials.refresh()
    return trials, ends[0]


def _records(f: IO[bytes], path: str, ends: list[bool]) -> Iterable[dict[str, Any]]:
    """The trial documents appended after the snapshot, up to the first partial or damaged
    record (a crash mid-write), which is ignored with the rest."""
    while True:
        header = f.read(_RECORD_HEADER.size)
        if not header:
            return
        if len(header) == _RECORD_HEADER.size:
            magic, size, crc = _RECORD_HEADER.unpack(header)
            payload = f.read(size) if magic == _RECORD_MAGIC else b""
            if magic == _RECORD_MAGIC and len(payload) == size and zlib.crc32(payload) == crc:
                yield pickle.loads(payload)
                continue
        ends[0] = False
        logger.warning(
            "trials_save_file %s ends in a partial record (a crash while it was written?); "
            "the trials before it are restored, that one is not", path,
        )  # fmt: skip
        return


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
