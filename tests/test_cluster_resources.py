"""Per-trial resources and task slots on the shared cluster (fixture ``cluster``: 2 workers x 2
cores, hidden from the client's folders)."""

from __future__ import annotations

import os
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from hyperopt import base, fmin, hp, rand

from connect_trials import ConnectTrials, server

ROOT = Path(__file__).resolve().parent.parent


def _task_cpus(cpus: int):  # type: ignore[no-untyped-def]
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(cpus)).build


def _errors(trials: ConnectTrials) -> list[object]:
    return [t["misc"].get("error") for t in trials._dynamic_trials if t["state"] != base.JOB_STATE_DONE]


def test_a_two_cpu_profile_runs_one_trial_per_two_core_worker_whatever_parallelism_says(cluster_spark):
    def objective(x):
        import os
        import time

        from pyspark import TaskContext

        executor = os.getpid()
        while executor > 1:  # the executor JVM above this Python worker
            with open(f"/proc/{executor}/cmdline", "rb") as f:
                if b"CoarseGrainedExecutorBackend" in f.read():
                    break
            with open(f"/proc/{executor}/stat") as f:
                executor = int(f.read().split(") ", 1)[1].split()[1])
        started = time.time()
        time.sleep(2)  # holds the slot, so that trials that could overlap do
        return {"loss": x, "status": "ok", "executor": executor, "cpus": TaskContext.get().cpus(),
                "span": (started, time.time())}  # fmt: skip

    # The session was made with .create(): trial threads have no active session, which is
    # what once failed every trial with "SparkSession should be initialized before
    # ResourceProfile creation".
    trials = ConnectTrials(parallelism=4, spark_session=cluster_spark, resource_profile=_task_cpus(2))
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 4, trials=trials, show_progressbar=False)

    assert trials.count_successful_trials() == 4, _errors(trials)
    results = [t["result"] for t in trials.trials]
    assert {r["cpus"] for r in results} == {2}
    spans_by_executor = defaultdict(list)
    for r in results:
        spans_by_executor[r["executor"]].append(tuple(r["span"]))
    assert len(spans_by_executor) == 2, spans_by_executor  # both workers took trials
    for spans in spans_by_executor.values():  # without the profile, 2 would overlap on each
        spans.sort()
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans


def test_the_profile_gets_its_id_without_leaving_the_session_active_in_the_thread(cluster_spark):
    from pyspark.sql.connect.session import SparkSession

    seen: dict[str, object] = {}

    def construct() -> None:  # a thread of its own: no active session there
        profile = _task_cpus(1)
        ConnectTrials(parallelism=2, spark_session=cluster_spark, resource_profile=profile)
        seen.update(active=SparkSession.getActiveSession(), id=profile.id)

    thread = threading.Thread(target=construct)
    thread.start()
    thread.join()
    assert seen["active"] is None and isinstance(seen["id"], int)


def test_a_profile_asking_more_cpus_than_an_executor_has_is_refused_before_any_job(cluster_spark):
    with pytest.raises(ValueError, match=r"resource_profile asks for 4 cpus per task .* 2 cores"):
        ConnectTrials(parallelism=2, spark_session=cluster_spark, resource_profile=_task_cpus(4))


def test_parallelism_none_with_a_two_cpu_profile_counts_two_slots_per_trial(cluster_spark):
    trials = ConnectTrials(parallelism=None, spark_session=cluster_spark, resource_profile=_task_cpus(2))
    assert trials.parallelism == 2


def _jvms_of(leader: int) -> list[int]:
    """The JVMs in a process group (the launch scripts' short-lived helpers left out)."""
    jvms = []
    for pid in server._group_members(leader):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[0].endswith(b"/java"):
                    jvms.append(pid)
        except OSError:
            continue
    return jvms


def test_the_clusters_workers_executors_and_driver_cannot_see_the_clients_folders(cluster_spark, cluster):
    """Seen from each of their JVMs (``/proc/PID/root`` is a process's view of the
    filesystem): the checkout is empty, the interpreter they run is there."""
    workers = [p.pid for p in cluster._procs[1:]]
    jvms = [pid for leader in [*workers, cluster.server._proc.pid] for pid in _jvms_of(leader)]
    # 2 workers, the server, and the executors (one per worker, unless one is being relaunched)
    executors = [pid for pid in jvms if b"Executor" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(jvms) >= 4 and executors, jvms
    for pid in jvms:
        view = f"/proc/{pid}/root"
        assert not os.path.exists(view + str(ROOT / "README.md")), pid
        assert os.path.exists(view + os.path.realpath(sys.executable)), pid
