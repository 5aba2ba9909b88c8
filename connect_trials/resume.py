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
from its child runs: each child run carries the trial's id (tag ``trial_tid``), hyperopt's
own values for its hyperparameters (tag ``hyperopt_vals``, JSON) and, for a DONE trial, its
result's status and loss exactly as the objective returned them (tag ``hyperopt_result``,
JSON; not the ``loss`` metric, which the objective may log itself at later steps). What it
restores: every trial that ended, DONE (its result's status "ok" or "fail", and the loss) or
ERROR, with its hyperparameters. What it does not: the rest of a trial's result dictionary,
and trials that were cancelled or still running (the next fmin suggests new ones in their
place). Runs written before ``hyperopt_result`` existed are read by their ``trial_status`` tag
and the ``loss`` our tracker logged at step 0 (a DONE trial with status "fail" comes back
ERROR there). The child runs it reads are one fmin's (``tracking.resume_runs``).
"""

from __future__ import annotations

import copy
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

from connect_trials.tracking.outcome import RESULT_TAG
from connect_trials.tracking.resume_runs import tracker_loss
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
        self._appended = append
        self._file: IO[bytes] | None = open(path, "ab") if append else None  # noqa: SIM115

    @property
    def holds_trials(self) -> bool:
        """The file holds every trial of the trials saved: it was appended to, or written here
        (else it is as this fmin found it, and may be anyone's)."""
        return self._appended or self.records > 0

    def trial_ended(self, trials: Any, trial: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            if self._file is None:
                snapshot = _with_moved_outputs(trials, self.path)
                self._file = _write_atomically(snapshot, self.path, keep_open=True)
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


def file_identity(path: str) -> str | None:
    """What tells the file at ``path``, as it was when this was taken, from any other: another
    file at that path (a relative path after a ``chdir``, a file put in its place), or the same
    file written since by another writer (another trials object, hyperopt's own fmin). None:
    there is no file there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.abspath(path)}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


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


def load_journal(path: str, warn: bool = True) -> tuple[Any, bool]:
    """``load_trials``, and whether the file ends cleanly (records may be appended to it).
    ``warn``: say so when it does not."""
    ends = [True]
    with open(path, "rb") as f:
        trials = pickle.load(f)
        docs = list(_records(f, path, ends, warn))
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


def _records(f: IO[bytes], path: str, ends: list[bool], warn: bool) -> Iterable[dict[str, Any]]:
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
        if warn:
            logger.warning(
                "trials_save_file %s ends in a partial record (a crash while it was written?); "
                "the trials before it are restored, that one is not", path,
            )  # fmt: skip
        return


def _with_moved_outputs(trials: Any, path: str) -> Any:
    """``trials`` as a snapshot that replaces the file at ``path`` must hold them: with the
    outputs that left memory (``outputs.OutputBudget``) and are kept in that file only put back
    from it, on a copy (memory keeps to its budget). Read only when some output left memory,
    once per fmin; a file that holds other trials gives nothing back."""
    moved = {
        t["tid"]: t
        for t in trials._dynamic_trials
        if "output_moved_to" in t["misc"] and not t["misc"].get("output")
    }
    if not moved or not os.path.exists(path):
        return trials
    try:
        saved = load_journal(path, warn=False)[0]
    except Exception:  # noqa: BLE001 - not a save file: it holds no output of these trials
        return trials
    outputs = {}
    for doc in getattr(saved, "_dynamic_trials", ()):
        mine = moved.get(doc.get("tid"))
        output = doc.get("misc", {}).get("output")
        if output and mine is not None and _same_trial(mine, doc):
            outputs[doc["tid"]] = output
    if not outputs:
        return trials
    snapshot = copy.copy(trials)
    snapshot._dynamic_trials = [
        _with_output(t, outputs[t["tid"]]) if t["tid"] in outputs else t for t in trials._dynamic_trials
    ]
    snapshot.refresh()
    return snapshot


def _same_trial(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(
        a["tid"] == b["tid"]
        and a.get("refresh_time") == b.get("refresh_time")
        and a["misc"].get("vals") == b.get("misc", {}).get("vals")
    )


def _with_output(trial: dict[str, Any], output: str) -> dict[str, Any]:
    """A copy of ``trial`` holding ``output`` as it did before the output left memory."""
    misc = {k: v for k, v in trial["misc"].items() if k != "output_moved_to"}
    misc["output"] = output
    return {**trial, "misc": misc}


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


def trial_docs_from_runs(trials: Any, runs: Iterable[Any], client: Any) -> list[dict[str, Any]]:
    """Trial documents for the child runs of a tracked search that ended DONE or ERROR.
    ``client``: the ``MlflowClient`` that read them, for
    the few runs written before ``RESULT_TAG`` whose loss needs its metric's history."""
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
        result = _returned_result(tags.get(RESULT_TAG))  # a DONE trial's, as hyperopt kept it
        if result is None and status == "success":  # written before RESULT_TAG: our step-0 loss
            loss = tracker_loss(run, client)
            result = None if loss is None else {"status": base.STATUS_OK, "loss": loss}
        if result is not None:
            state = base.JOB_STATE_DONE
        else:  # an ERROR trial keeps the result it was created with, in hyperopt as here
            result = {"status": base.STATUS_NEW}
            state = base.JOB_STATE_ERROR
            misc["error"] = (tags.get("error_type", ""), tags.get("error_message", ""))
        [doc] = trials.new_trial_docs([tid], [None], [result], [misc])
        doc["state"] = state
        docs.append(doc)
    return sorted(docs, key=lambda d: d["tid"])


def _returned_result(text: str | None) -> dict[str, Any] | None:
    """The result in a child run's ``RESULT_TAG``; None without one (or with one that is not
    ours: then the run is read as one written before the tag)."""
    if text is None:
        return None
    try:
        result = json.loads(text)
    except ValueError:
        return None
    if not isinstance(result, dict) or result.get("status") not in base.STATUS_STRINGS:
        return None
    return result
