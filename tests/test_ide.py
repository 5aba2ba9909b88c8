"""From a laptop and an IDE: debug mode, replay, resuming after the client died."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hyperopt import base, fmin, hp, rand

from connect_trials import ConnectTrials, resume
from tests.conftest import captured_log

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "CONNECT_TRIALS_DEBUG"):
        env.pop(name, None)
    env.update(extra)
    return env


# -- debug mode --------------------------------------------------------------------------------
DEBUG_SCRIPT = """
    import threading
    from hyperopt import fmin, hp, rand
    from connect_trials import ConnectTrials

    def objective(x):
        # In fmin's own thread, where an IDE's breakpoint stops.
        return {"loss": x, "status": "ok", "main": threading.current_thread() is threading.main_thread()}

    trials = ConnectTrials(DEBUG_ARG)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 3, trials=trials, show_progressbar=False)
    print("RESULT", trials.count_successful_trials(), all(t["result"]["main"] for t in trials.trials),
          trials._spark)
"""


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_debug_mode_runs_trials_in_this_process_without_any_spark_server(how):
    source = DEBUG_SCRIPT.replace("DEBUG_ARG", "debug=True" if how == "argument" else "")
    env = clean_env(**({"CONNECT_TRIALS_DEBUG": "1"} if how == "environment" else {}))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESULT 3 True None" in result.stdout
    assert result.stderr.count("debug mode is on") == 1


def test_in_debug_mode_an_objective_that_cannot_travel_fails_as_on_the_cluster():
    lock = threading.Lock()

    def objective(x):
        with lock:
            return x

    trials = ConnectTrials(debug=True, mlflow_tracking=False)
    with pytest.raises(ValueError, match="cannot be shipped to the Spark workers"):
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 2, trials=trials, show_progressbar=False)


def test_in_debug_mode_a_failing_objective_is_an_error_trial_with_its_traceback():
    def objective(x):
        raise ZeroDivisionError("from the objective")

    trials = ConnectTrials(debug=True, mlflow_tracking=False)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 2, trials=trials, show_progressbar=False,
         return_argmin=False)  # fmt: skip
    errors = [t["misc"]["error"] for t in trials._dynamic_trials]
    assert len(errors) == 2 and all("ZeroDivisionError: from the objective" in text for _, text in errors)


def test_debug_mode_is_tracked_as_on_the_cluster(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns: not in the checkout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    with mlflow.start_run() as parent:
        fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 2,
             trials=ConnectTrials(debug=True), show_progressbar=False)  # fmt: skip
    children = MlflowClient(uri).search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}


def test_a_debug_mode_fmin_inside_the_users_run_leaves_that_run_active(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns: not in the checkout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)

    def logs(x):
        import mlflow

        mlflow.log_metric("from_the_objective", x)
        return x

    with mlflow.start_run() as users_run:
        fmin(logs, hp.uniform("x", 0, 1), rand.suggest, 2, trials=ConnectTrials(debug=True),
             show_progressbar=False)  # fmt: skip
        active = mlflow.active_run()
        assert active is not None and active.info.run_id == users_run.info.run_id
        mlflow.log_param("after_fmin", "yes")
    client = MlflowClient(uri)
    users = client.get_run(users_run.info.run_id)
    assert users.data.params.get("after_fmin") == "yes" and "from_the_objective" not in users.data.metrics
    children = client.search_runs(
        [users_run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{users_run.info.run_id}'"
    )
    assert len(children) == 2 and all("from_the_objective" in r.data.metrics for r in children)


# -- replay ------------------------------------------------------------------------------------
def objective_failing_above_half(x: float) -> float:
    if x > 0.5:
        raise ArithmeticError(f"x={x} is above one half")
    return x


def test_ctrl_c_during_a_debug_mode_trial_raises_keyboard_interrupt_and_ends_the_search(ctrl_c):
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def objective(x: float) -> float:
        import socket
        import time

        socket.create_connection(("127.0.0.1", port)).close()  # "I am running"
        time.sleep(60)  # the IDE's stop button comes during this
        return x

    pressed: list[float] = []

    def press_stop_once_the_trial_runs() -> None:
        listener.accept()[0].close()
        pressed.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_stop_once_the_trial_runs, daemon=True).start()
    trials = ConnectTrials(debug=True, mlflow_tracking=False)
    with pytest.raises(KeyboardInterrupt):
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 5, trials=trials, show_progressbar=False)
    listener.close()
    assert time.monotonic() - pressed[0] < 5  # not the trial's 60 s, nor the next trials'
    assert [t["state"] for t in trials._dynamic_trials] == [base.JOB_STATE_CANCEL]
    assert trials.fmin_cancelled_reason == "fmin run cancelled by user"


def test_replay_reruns_a_remote_trial_here_with_the_argument_it_got(spark):
    trials = ConnectTrials(parallelism=2, spark_session=spark, mlflow_tracking=False)
    fmin(objective_failing_above_half, hp.uniform("x", 0, 1), rand.suggest, 8, trials=trials,
         show_progressbar=False, return_argmin=False)  # fmt: skip
    failed = [t for t in trials._dynamic_trials if t["state"] == base.JOB_STATE_ERROR]
    done = [t for t in trials._dynamic_trials if t["state"] == base.JOB_STATE_DONE]
    assert failed and done, "the seedless search should have had both kinds"
    x = failed[0]["misc"]["vals"]["x"][0]
    with pytest.raises(ArithmeticError, match=f"x={x} is above one half"):
        trials.replay(failed[0]["tid"])
    assert trials.replay(done[0]["tid"]) == done[0]["result"]["loss"]
    with pytest.raises(KeyError, match="no trial with tid 999"):
        trials.replay(999)


def test_replay_without_an_fmin_says_what_is_missing():
    with pytest.raises(ValueError, match="run fmin"):
        ConnectTrials(debug=True).replay(0)


# -- resume after the client died ----------------------------------------------------------------
# A client whose fourth trial tells the test it runs, then holds until the test lets go (after
# it killed the client); the three before it leave marks so that the resumed client knows.
SEARCH_CLIENT = """
    import os, socket
    from hyperopt import fmin, hp, rand, tpe
    from pyspark.sql import SparkSession
    from connect_trials import ConnectTrials

    spark = SparkSession.builder.remote(os.environ["CONNECT_URL"]).getOrCreate()
    marks, signal_port = os.environ["MARKS"], int(os.environ.get("SIGNAL_PORT", "0"))

    def objective(x):
        import os, socket
        if signal_port and len(os.listdir(marks)) >= 3:
            with socket.create_connection(("127.0.0.1", signal_port)) as s:
                s.recv(1)
            return (x - 0.3) ** 2
        open(os.path.join(marks, repr(x)), "w").close()
        return (x - 0.3) ** 2
"""

RESUMABLE_SEARCH = (
    SEARCH_CLIENT
    + """
    trials = ConnectTrials(parallelism=1, mlflow_tracking=False)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 6, trials=trials,
         show_progressbar=False, trials_save_file=os.environ["SAVE_FILE"])
    print("TOTAL", len(trials.trials))
    spark.stop()
"""
)

TRACKED_SEARCH = (
    SEARCH_CLIENT
    + """
    if os.environ.get("PARENT_RUN_ID"):
        trials = ConnectTrials.from_mlflow(os.environ["PARENT_RUN_ID"], parallelism=1)
        print("RESTORED", len(trials.trials))
    else:
        trials = ConnectTrials(parallelism=1)
    fmin(objective, hp.uniform("x", 0, 1), tpe.suggest, 6, trials=trials, show_progressbar=False)
    print("TOTAL", len(trials.trials))
    spark.stop()
"""
)


def kill_during_the_fourth_trial(script: str, env: dict[str, str]) -> None:
    """Run ``script`` as a client and SIGKILL it while its fourth trial runs."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(180)
    client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                              env={**env, "SIGNAL_PORT": str(listener.getsockname()[1])},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        held, _ = listener.accept()  # three trials ended, the fourth runs
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    held.close()  # the orphaned trial ends; its result has no client to go to
    listener.close()


def test_trials_save_file_resumes_a_search_whose_client_was_killed(connect_server, tmp_path):
    save_file, marks = tmp_path / "search.pkl", tmp_path / "marks"
    marks.mkdir()
    env = clean_env(CONNECT_URL=connect_server.url, MARKS=str(marks), SAVE_FILE=str(save_file))
    kill_during_the_fourth_trial(RESUMABLE_SEARCH, env)
    # A killed search leaves a journal: the first trial's snapshot and a record per later trial.
    assert len(pickle.loads(save_file.read_bytes()).trials) == 1
    saved = resume.load_trials(str(save_file))
    first_three = [t["misc"]["vals"] for t in saved.trials]
    assert len(first_three) == 3 and all(t["state"] == base.JOB_STATE_DONE for t in saved.trials)

    resumed = subprocess.run([sys.executable, "-c", textwrap.dedent(RESUMABLE_SEARCH)], env=env,
                             capture_output=True, text=True, timeout=240)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "TOTAL 6" in resumed.stdout
    assert "Resuming from" in resumed.stderr
    with open(save_file, "rb") as f:
        final = pickle.load(f)
    assert [t["misc"]["vals"] for t in final.trials][:3] == first_three
    assert [t["tid"] for t in final.trials] == [0, 1, 2, 3, 4, 5]


def test_saved_trials_pickle_without_their_session_and_take_the_active_one(spark, tmp_path):
    trials = ConnectTrials(parallelism=1, spark_session=spark, mlflow_tracking=False)
    path = tmp_path / "t.pkl"
    fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 2, trials=trials, show_progressbar=False,
         trials_save_file=str(path))  # fmt: skip
    loaded = pickle.loads(path.read_bytes())
    assert loaded._spark is None and len(loaded.trials) == 2
    with captured_log():
        fmin(lambda x: x, hp.uniform("x", 0, 1), rand.suggest, 3, trials=loaded, show_progressbar=False)
    assert loaded._spark is spark and len(loaded.trials) == 3


def test_from_mlflow_resumes_a_tracked_search_whose_client_was_killed(
    connect_server, mlflow_server, tmp_path
):
    from mlflow import MlflowClient

    marks = tmp_path / "marks"
    marks.mkdir()
    env = clean_env(CONNECT_URL=connect_server.url, MARKS=str(marks), MLFLOW_TRACKING_URI=mlflow_server)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    kill_during_the_fourth_trial(TRACKED_SEARCH, env)
    mlflow = MlflowClient(mlflow_server)
    [parent] = mlflow.search_runs(["0"], filter_string="tags.runSource = 'hyperoptAutoTracking' and "
                                  "attributes.run_name = 'fmin-objective'")  # fmt: skip

    resumed = subprocess.run([sys.executable, "-c", textwrap.dedent(TRACKED_SEARCH)],
                             env={**env, "PARENT_RUN_ID": parent.info.run_id},
                             capture_output=True, text=True, timeout=240)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "RESTORED 3" in resumed.stdout and "TOTAL 6" in resumed.stdout
    children = mlflow.search_runs(["0"], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    ended = [r for r in children if r.data.tags.get("trial_status") == "success"]
    statuses = sorted((r.info.run_name, r.info.status, r.data.tags.get("trial_status")) for r in children)
    assert len(ended) == 6, (statuses, resumed.stderr[-3000:])  # three before the kill, three after
    assert mlflow.get_run(parent.info.run_id).info.status == "FINISHED"
    # The trial that was running when its client died: ended KILLED by the resume (or deleted
    # as unused, when the client died before its run was tagged with the trial). None is left
    # RUNNING.
    assert all(r.info.status != "RUNNING" for r in children)
    orphans = [r for r in children if r.data.tags.get("trial_status") == "cancelled"]
    assert [r.info.status for r in orphans] in ([], ["KILLED"])
