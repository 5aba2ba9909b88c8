"""The worker package travels by value: a trial's task runs where connect_trials is not
installed (the cluster tests check the same through hidden Spark workers)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

from pyspark import cloudpickle

from connect_trials import job, worker  # job registers the worker package by value

WITHOUT_CONNECT_TRIALS = """
    import importlib.abc, pickle, sys

    class NoConnectTrials(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "connect_trials":
                raise ImportError(f"{name} is not installed on this worker")
            return None

    sys.meta_path.insert(0, NoConnectTrials())
    task = pickle.loads(sys.stdin.buffer.read())
    [frame] = list(task(iter([])))
    assert not [m for m in sys.modules if m.startswith("connect_trials")]
    print("ROW", frame["status"][0], pickle.loads(frame["value"][0]), repr(frame["output"][0]))
"""


def test_a_trial_task_runs_where_connect_trials_cannot_be_imported() -> None:
    assert job.__name__ and "connect_trials.worker" in cloudpickle.list_registry_pickle_by_value()
    objective = lambda x: print("on the worker") or 2 * x  # noqa: E731 - by value: no module to import
    payload = worker.objective_payload(cloudpickle.dumps(objective), {})
    task = worker.trial_task(payload, pickle.dumps(21), {"MLFLOW_RUN_ID": "r"})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WITHOUT_CONNECT_TRIALS)],
        input=cloudpickle.dumps(task), env=env, capture_output=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert b"ROW returned 42 'on the worker\\n'" in result.stdout, result.stdout


BOOTED_TWICE = WITHOUT_CONNECT_TRIALS.replace(
    """    task = pickle.loads(sys.stdin.buffer.read())
    [frame] = list(task(iter([])))""",
    """    import pickle as plain
    first, second = plain.loads(sys.stdin.buffer.read())
    loads, unpickled = plain.loads, []
    plain.loads = lambda data, *a, **k: (unpickled.append(len(data)), loads(data, *a, **k))[1]
    [frame] = list(loads(first)(iter([])))  # as pyspark's worker loads a job's function
    [frame] = list(loads(second)(iter([])))
    print("UNPICKLED", sum(n > 10_000 for n in unpickled))""",
)


def test_a_job_carries_the_worker_code_pickled_once_and_its_worker_unpacks_it_once() -> None:
    payload = worker.objective_payload(cloudpickle.dumps(lambda x: 2 * x), {})
    request = job.TrialRequest(0, pickle.dumps(21), {})
    # What two jobs' plans carry: the same code bytes, pickled once on this client.
    tasks = [job.worker_boot.booted_task(*job.worker_code(), (payload, request.argument_blob, {}))
             for _ in range(2)]  # fmt: skip
    assert job.worker_code() is job.worker_code()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BOOTED_TWICE)],
        input=pickle.dumps([cloudpickle.dumps(t) for t in tasks]), env=env, capture_output=True, timeout=120,
        cwd="/",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert b"ROW returned 42" in result.stdout and b"UNPICKLED 1" in result.stdout, result.stdout
