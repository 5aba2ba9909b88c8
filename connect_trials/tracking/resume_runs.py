"""The child runs a resume reads back: one fmin's under a parent run, and the ending of those
its dead client left RUNNING.

A parent run may hold several fmins (two calls in one active run); each child run carries its
fmin's ``fmin_uuid`` and ``runSource``, and a resume takes one fmin's runs only: the last one
to start a trial under that parent, or the one named. Runs that are not a trial's of that fmin
(the user's own nested runs, another fmin's) are never touched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from connect_trials.tracking.mlflow_runs import RUN_SOURCE
from connect_trials.tracking.resume_tags import TID_TAG

_STATUS_OF_OUTCOME = {"success": "FINISHED", "failure": "FAILED"}


def child_runs(client: Any, experiment_id: str, parent_run_id: str, filter_string: str = "") -> Iterator[Any]:
    """Every run of ``experiment_id`` whose parent is ``parent_run_id`` (and that matches
    ``filter_string``, an MLflow search filter), all pages."""
    where = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (
        f" and {filter_string}" if filter_string else ""
    )
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=where, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def fmin_child_runs(
    client: Any, parent_run_id: str, fmin_uuid: str | None = None
) -> tuple[str | None, list[Any]]:
    """The ``fmin_uuid`` chosen and its trials' child runs under ``parent_run_id`` (all
    pages), one per tid, cancelled ones included (their tids are taken). ``ValueError``
    names the fmins there when ``fmin_uuid`` is not one."""
    parent = client.get_run(parent_run_id)
    runs = [
        r
        for r in child_runs(
            client, parent.info.experiment_id, parent_run_id, f"tags.runSource = '{RUN_SOURCE}'"
        )
        if TID_TAG in r.data.tags and "fmin_uuid" in r.data.tags
    ]
    if not runs:
        return fmin_uuid, []
    fmins = {r.data.tags["fmin_uuid"] for r in runs}
    if fmin_uuid is None:
        fmin_uuid = max(runs, key=lambda r: r.info.start_time or 0).data.tags["fmin_uuid"]
    elif fmin_uuid not in fmins:
        raise ValueError(
            f"fmin_uuid={fmin_uuid!r}: parent run {parent_run_id} holds no trials of that fmin; its fmins "
            f"are {sorted(fmins)} (the fmin_uuid tags of its child runs). Pass one of them, or None "
            "for the last."
        )
    by_tid: dict[int, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        if run.data.tags["fmin_uuid"] == fmin_uuid:
            by_tid[int(run.data.tags[TID_TAG])] = run  # the latest run of a tid wins
    return fmin_uuid, [by_tid[tid] for tid in sorted(by_tid)]


def end_orphaned_runs(client: Any, runs: list[Any]) -> list[Any]:
    """End the runs of ``runs`` still RUNNING because their client died, as their trial ended:
    one that already carries its outcome (the client died between writing it and ending the
    run) ends FINISHED or FAILED and is restored as such; any other ends KILLED, tagged
    cancelled. Returns ``runs`` as they are now."""
    current = []
    for run in runs:
        if run.info.status != "RUNNING":
            current.append(run)
            continue
        status = _STATUS_OF_OUTCOME.get(run.data.tags.get("trial_status", ""))
        if status is None:
            client.set_tag(run.info.run_id, "trial_status", "cancelled")
            status = "KILLED"
        # update_run, not set_terminated: that prints a "View run" line with the store's URL.
        client.update_run(run.info.run_id, status=status)
        current.append(client.get_run(run.info.run_id))
    return current


def tracker_loss(run: Any, client: Any) -> float | None:
    """The ``loss`` our tracker logged on a child run written before ``RESULT_TAG`` existed: once,
    at step 0, at the run's end. The run's latest ``loss`` (``run.data.metrics``) is the
    objective's own when it logged ``loss`` at later steps (Keras autolog, per epoch): only then
    is the metric's history read (one request), and of its step-0 values the last written is
    ours (it follows the objective's by the time the trial took to end; a worker clock ahead
    of the client's by more than that would still mislead). None: no ``loss`` at step 0."""
    metrics = getattr(run.data, "_metric_objs", None)  # private (mlflow 2.x-3.18): with steps
    latest = None if metrics is None else next((m for m in metrics if m.key == "loss"), None)
    if latest is None or latest.step == 0:
        value = run.data.metrics.get("loss")
        return None if value is None else float(value)
    at_zero = [m for m in client.get_metric_history(run.info.run_id, "loss") if m.step == 0]
    return float(max(at_zero, key=lambda m: m.timestamp).value) if at_zero else None
