"""The shared cluster: a standalone master, 2 workers and a Connect server (fixture ``cluster``),
whose workers cannot see this checkout nor the suite's temporary folder."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hyperopt import base, fmin, hp, rand

from connect_trials import ConnectTrials

ROOT = Path(__file__).resolve().parent.parent


def test_trials_on_the_cluster_need_nothing_from_the_clients_disk(cluster_spark, tmp_path):
    secret = tmp_path / "client-only.txt"
    secret.write_text("the client's")
    readme = str(ROOT / "README.md")

    def objective(x):
        import os

        return {"loss": x, "status": "ok", "sees": [os.path.exists(str(secret)), os.path.exists(readme)]}

    trials = ConnectTrials(parallelism=2, spark_session=cluster_spark)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 4, trials=trials, show_progressbar=False)
    assert trials.count_successful_trials() == 4
    assert all(t["result"]["sees"] == [False, False] for t in trials.trials)


def test_parallelism_none_takes_the_clusters_task_slots(cluster_spark):
    assert ConnectTrials(parallelism=None, spark_session=cluster_spark).parallelism == 4  # 2 workers x 2


def test_a_module_of_the_users_project_imported_by_the_objective_travels(
    cluster_spark, tmp_path, monkeypatch
):
    package = tmp_path / "my_project"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "features.py").write_text("def build(x):\n    return 2 * x\n")
    (package / "train.py").write_text(
        "from my_project.features import build\n\ndef objective(x):\n    return build(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    train = importlib.import_module("my_project.train")
    try:
        trials = ConnectTrials(parallelism=2, spark_session=cluster_spark)
        fmin(train.objective, hp.uniform("x", 0, 1), rand.suggest, 3, trials=trials, show_progressbar=False)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "my_project"]:
            del sys.modules[name]
    errors = [t["misc"].get("error") for t in trials._dynamic_trials if t["state"] != base.JOB_STATE_DONE]
    assert trials.count_successful_trials() == 3, errors
    assert all(t["result"]["loss"] == 2 * t["misc"]["vals"]["x"][0] for t in trials.trials)


def _executor_of(pid: int) -> int:
    """The executor JVM above a Python worker process."""
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"CoarseGrainedExecutorBackend" in f.read():
                return pid
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().split(") ", 1)[1].split()[1])
    raise AssertionError("no executor JVM above the Python worker")


def test_a_trial_whose_executor_is_killed_runs_again_and_ends_done(cluster_spark, capsys):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(120)
    port = listener.getsockname()[1]

    def objective(x):
        import os
        import socket

        from pyspark import TaskContext

        if TaskContext.get().attemptNumber() == 0:  # the first attempt waits to be killed
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(str(os.getpid()).encode())
                s.recv(1)
        return x

    trials = ConnectTrials(parallelism=1, spark_session=cluster_spark)
    killed_at: list[float] = []

    def kill_the_executor() -> None:
        held, _ = listener.accept()
        executor = _executor_of(int(held.recv(32)))
        os.kill(executor, signal.SIGKILL)
        killed_at.append(time.monotonic())
        held.close()

    import threading

    killer = threading.Thread(target=kill_the_executor)
    killer.start()
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 1, trials=trials, show_progressbar=False)
    finished = time.monotonic()
    killer.join()
    listener.close()
    [trial] = trials._dynamic_trials
    assert trial["state"] == base.JOB_STATE_DONE, trial["misc"].get("error")
    assert trial["misc"]["connect_trials"]["attempt"] == 1
    with capsys.disabled():
        print(
            f"\n[measured] SIGKILL of the executor to the re-run trial done: {finished - killed_at[0]:.1f} s"
        )


def test_an_objective_that_kills_its_python_worker_runs_twice_and_ends_error_saying_so(cluster_spark):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(120)
    port = listener.getsockname()[1]

    def objective(x):
        import os
        import socket

        socket.create_connection(("127.0.0.1", port)).close()  # counts the runs
        os._exit(3)

    trials = ConnectTrials(parallelism=1, spark_session=cluster_spark, mlflow_tracking=False)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 1, trials=trials, show_progressbar=False,
         return_argmin=False)  # fmt: skip
    listener.settimeout(0)
    runs = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            listener.accept()[0].close()
            runs += 1
    listener.close()
    [trial] = trials._dynamic_trials
    assert trial["state"] == base.JOB_STATE_ERROR
    assert "Python worker died" in trial["misc"]["error"][1]
    assert runs == 2  # Spark's later attempts (spark.task.maxFailures = 4) are refused


CLIENT_THAT_HOLDS_A_TRIAL = """
    import os
    from hyperopt import fmin, hp, rand
    from pyspark.sql import SparkSession
    from connect_trials import ConnectTrials

    spark = SparkSession.builder.remote(os.environ["CONNECT_URL"]).create()
    port = int(os.environ["SIGNAL_PORT"])

    n = int(os.environ.get("N_TRIALS", "1"))

    def objective(x):
        import socket
        with socket.create_connection(("127.0.0.1", port)) as s:
            if s.recv(1) != b"g":  # the test lets go, or this worker was killed
                raise RuntimeError("the trial's connection was closed")
        return x

    trials = ConnectTrials(parallelism=n, spark_session=spark, mlflow_tracking=False)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, n, show_progressbar=False, trials=trials)
    print("states", sorted(t["state"] for t in trials._dynamic_trials))
"""


def test_one_clients_timeout_cancels_only_its_own_trials_not_another_clients(cluster, cluster_spark):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(180)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONNECT_URL": cluster.url, "N_TRIALS": "2",
           "SIGNAL_PORT": str(listener.getsockname()[1])}  # fmt: skip
    other = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CLIENT_THAT_HOLDS_A_TRIAL)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    others_trials, own_trials = [], []
    try:
        others_trials = [listener.accept()[0] for _ in range(2)]  # the other client's 2 trials run
        port = listener.getsockname()[1]

        def held_until_cancelled(x):
            import socket

            with socket.create_connection(("127.0.0.1", port)) as s:
                s.recv(1)
            return x

        trials = ConnectTrials(parallelism=2, spark_session=cluster_spark, mlflow_tracking=False)
        fmin_thread = threading.Thread(
            target=fmin, args=(held_until_cancelled, hp.uniform("x", 0, 1), rand.suggest, 2),
            kwargs={"trials": trials, "timeout": 10, "show_progressbar": False, "return_argmin": False},
        )  # fmt: skip
        fmin_thread.start()
        own_trials = [listener.accept()[0] for _ in range(2)]  # this fmin's 2 trials run too
        fmin_thread.join(120)
        assert not fmin_thread.is_alive()
        assert sorted(t["state"] for t in trials._dynamic_trials) == [base.JOB_STATE_CANCEL] * 2
        for held in own_trials:  # the timeout killed this client's Python workers...
            held.settimeout(120)
            try:
                assert held.recv(1) == b""
            except ConnectionResetError:
                pass
        for held in others_trials:  # ...and not the other client's, which finish when let go
            held.sendall(b"g")
        out, err = other.communicate(timeout=120)
        assert other.returncode == 0, err[-3000:]
        assert f"states {[base.JOB_STATE_DONE] * 2}" in out, err[-3000:]
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        for held in [*others_trials, *own_trials]:
            held.close()
        listener.close()


def test_a_sigkilled_clients_trial_stops_on_the_cluster_within_a_minute(cluster, capsys):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(180)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONNECT_URL": cluster.url,
           "SIGNAL_PORT": str(listener.getsockname()[1])}  # fmt: skip
    client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CLIENT_THAT_HOLDS_A_TRIAL)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        held, _ = listener.accept()
    except TimeoutError:
        raise AssertionError(
            client.stderr.read().decode()[-3000:] if client.poll() is not None else "hung"
        ) from None
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    killed = time.monotonic()
    held.settimeout(120)
    try:
        assert held.recv(1) == b""  # the trial's Python worker was killed with its job
    except ConnectionResetError:
        pass
    stopped = time.monotonic() - killed
    held.close()
    listener.close()
    assert stopped < 60
    with capsys.disabled():
        print(f"\n[measured] SIGKILL of a client to its trial stopping on the cluster: {stopped:.1f} s")


def test_without_the_token_the_cluster_refuses_the_connection(cluster):
    from pyspark.sql import SparkSession

    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        SparkSession.builder.remote(f"sc://localhost:{cluster.server.port}").create().range(1).collect()


def test_the_model_search_scenario_registers_the_best_model(cluster, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_REMOTE": cluster.url}  # the token stays off argv
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    result = subprocess.run(
        [sys.executable, "-m", "integration.model_search", "--max-evals", "6",
         "--parallelism", "2", "--tracking-uri", uri, "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,  # its ./mlruns goes there
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["registered_model"] == "connect-trials-model-search" and report["version"] >= 1
    assert report["trials"] == 6 and 0 <= report["best_loss"] < 0.2

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(report["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    families = {r.data.params.get("family") for r in children}
    assert len(children) == 6 and families <= {
        "logistic_regression",
        "random_forest",
        "gradient_boosting",
        "svm",
    }
