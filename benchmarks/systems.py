"""The systems under comparison: one small runner per system, all with one signature.

    run(workload, seed, env) -> RunResult

``RUNNERS`` maps the names of ``workloads.py`` to runners. The Spark Connect ones share the
suite's servers, each through a session of its own (``BenchEnv.session``). hyperopt's
``SparkTrials`` needs a classic JVM session and Ray a cluster of its own, which do not mix
with a Connect session in one process: their runners here hand the run to a child process
(``isolated.py``), which calls the ``*_here`` runner of the same system with an environment
of its own.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import objectives
from benchmarks import workloads as wl
from benchmarks.measure import (
    Probe,
    RequestBytes,
    RunResult,
    SaveProbe,
    SuggestTimer,
    WireBytes,
    fill_from_hyperopt,
)
from benchmarks.workloads import Workload

# Driver memory of every Spark the suite starts (the Connect server and SparkTrials' classic
# session). Not Spark's default 1 GB: two jobs in flight whose plans each carry a 50 MB closure
# ran a 1 GB Connect driver out of heap here (OutOfMemoryError, then a stopped SparkContext).
DRIVER_MEMORY = "4g"


class SystemUnavailableError(RuntimeError):
    """The system cannot run on this machine (not installed, refuses to start, ...)."""


@dataclass
class BenchEnv:
    """What runners share: the scratch folder, Spark sessions, the byte counters.

    With a ``session_factory``, each Connect system gets a warm session of its own on each
    server (``Workload.server``), so it gets its own Python workers: what one system leaves in
    reused workers cannot slow another (after MlflowSparkStudy ran, later jobs in the same
    session took about twice as long here). Payload runs get sessions of their own behind a
    ``WireBytes`` relay; first-trial runs a fresh, cold session each. Without a factory (the
    test suite's fixture) every system uses ``spark``.
    """

    work_dir: Path
    spark: Any = None
    # (server, wire, warm) -> (session, its relay or None); the factory's owner stops them
    session_factory: Callable[[str, bool, bool], tuple[Any, WireBytes | None]] | None = None
    request_bytes: RequestBytes | None = None
    command_bytes: Any = None  # classic sessions: the size of the pickled task commands
    server_log: Path | None = None
    mlflow_server_uri: str | None = None  # connect-trials+mlflow tracks here (HTTP) when set
    children: dict[str, Any] = field(default_factory=dict)
    sessions: dict[tuple[str, str, bool], tuple[Any, WireBytes | None]] = field(default_factory=dict)
    drop_session: Callable[[Any], None] = lambda _session: None

    @contextlib.contextmanager
    def session(self, system: str, workload: Workload) -> Iterator[tuple[Any, WireBytes | None]]:
        """The session ``system`` runs ``workload`` on, and the relay it sends through (if any)."""
        if self.session_factory is None:
            yield self.spark, None
            return
        if workload.name == "first-trial":
            fresh = self.session_factory(workload.server, False, False)
            try:
                yield fresh
            finally:
                self.drop_session(fresh[0])
            return
        key = (system, workload.server, workload.name == "payload")
        if key not in self.sessions:
            self.sessions[key] = self.session_factory(workload.server, key[2], True)
        yield self.sessions[key]

    def drop_sessions_on(self, server: str) -> None:
        """Stop the sessions on ``server`` (before it stops)."""
        for key in [k for k in self.sessions if k[1] == server]:
            self.drop_session(self.sessions.pop(key)[0])

    @property
    def tracking_uri(self) -> str:
        """A sqlite MLflow store under the scratch folder (mlflow 3.17 refuses ``file:``)."""
        return f"sqlite:///{self.work_dir / 'mlflow.db'}"

    def child(self, system: str, master: str = "local[2]") -> Any:
        """The child process that runs ``system`` on ``master`` (started on first use, kept
        until released)."""
        key = f"{system}@{master}"
        if key not in self.children:
            from benchmarks.isolated import IsolatedSystem

            self.children[key] = IsolatedSystem(system, self.work_dir, master)
        return self.children[key]

    def release_children_except(self, keys: set[str]) -> None:
        """Stop the child processes not in ``keys`` (``system@master``)."""
        for key in [k for k in self.children if k not in keys]:
            self.children.pop(key).close()

    def close(self) -> None:
        self.release_children_except(set())


def classic_master(workload: Workload) -> str:
    """Where SparkTrials runs ``workload``: a classic session cannot attach to the Connect
    server's cluster (its application holds every core), so wide runs get local[p]."""
    return "local[2]" if workload.server == "main" else f"local[{workload.parallelism}]"


@contextlib.contextmanager
def active_session(spark: Any) -> Iterator[None]:
    """Make ``spark`` the session ``SparkSession.active()`` returns (MlflowSparkStudy looks it
    up there), and restore the previous one after."""
    from pyspark.sql.connect.session import SparkSession

    before_default = SparkSession._default_session
    before_active = getattr(SparkSession._active_session, "session", None)
    SparkSession._default_session = spark
    SparkSession._active_session.session = spark
    try:
        yield
    finally:
        SparkSession._default_session = before_default
        SparkSession._active_session.session = before_active


Runner = Callable[[Workload, int, BenchEnv], RunResult]


# -- floor: raw single-task jobs, and hyperopt without distribution ---------------------------
def run_floor_raw(workload: Workload, seed: int, env: BenchEnv) -> RunResult:
    """Each trial as a bare ``spark.range(0, 1, 1, 1).mapInPandas(...)`` job, ``parallelism``
    threads submitting: no search algorithm, no bookkeeping. The fastest any system can be
    on this server."""
    task = objectives.raw_job_task(workload.objective(), workload.default_point())
    with env.session(wl.FLOOR_RAW, workload) as (spark, wire):
        return _floor_raw(workload, seed, env, task, spark, wire)


def _floor_raw(
    workload: Workload, seed: int, env: BenchEnv, task: Any, spark: Any, wire: WireBytes | None
) -> RunResult:
    result = RunResult(wl.FLOOR_RAW, workload.key, seed, 0.0, bytes_note="gRPC request bytes")
    completed: list[float] = []
    latencies: list[float] = []
    with Probe(env.request_bytes, wire) as probe:

        def one_job(_: int) -> float:
            start = time.time()
            rows = spark.range(0, 1, 1, 1).mapInPandas(task, "loss double").collect()
            end = time.time()
            completed.append(end - probe.t0)
            latencies.append(end - start)
            return float(rows[0]["loss"])

        with ThreadPoolExecutor(workload.parallelism, thread_name_prefix="bench-raw") as pool:
            losses = list(pool.map(one_job, range(workload.n_trials)))
    probe.fill(result)
    result.n_trials = result.n_ok = len(losses)
    result.best_loss = min(losses)
    result.completed_at_s = sorted(completed)
    result.trial_latency_s = latencies
    return result


def sequential_job_latency(spark: Any, n_jobs: int) -> list[float]:
    """Latency of a trivial single-task Python job, one at a time: the floor of a trial."""
    task = objectives.raw_job_task(objectives.quadratic, {"x": 0.0})
    latencies = []
    for _ in range(n_jobs):
        start = time.time()
        spark.range(0, 1, 1, 1).mapInPandas(task, "loss double").collect()
        latencies.append(time.time() - start)
    return latencies


def run_in_process(workload: Workload, seed: int, env: BenchEnv) -> RunResult:
    """Plain ``hyperopt.Trials``: every trial in this process, one after another (no
    ``trials_save_file``: hyperopt's own pickles every trial after each one). On the scale
    workload, hyperopt's own bookkeeping cost per trial: the anchor of the CPU target."""
    from hyperopt import Trials

    objective = workload.objective()
    timer = SuggestTimer(workload.suggest())
    trials = Trials()
    result = RunResult(
        wl.IN_PROCESS, workload.key, seed, 0.0, bytes_sent=0, bytes_note="nothing leaves the process"
    )
    with Probe(None) as probe:
        _hyperopt_fmin(workload, seed, objective, timer, trials)
    probe.fill(result)
    result.suggest_spans_s = timer.spans_from(probe.t0)
    return fill_from_hyperopt(result, trials, probe.t0)


def _hyperopt_fmin(
    workload: Workload, seed: int, objective: Any, timer: SuggestTimer, trials: Any, save_file: str = ""
) -> None:
    """hyperopt's fmin as every hyperopt-based system runs a workload: the workload's
    algorithm (TPE unless it says otherwise; timed), seeded."""
    from hyperopt import fmin

    fmin(
        objective,
        workload.hyperopt_space(),
        algo=timer.algo,
        max_evals=workload.n_trials,
        trials=trials,
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
        trials_save_file=save_file,
    )


# -- connect-trials ---------------------------------------------------------------------------
def run_connect_trials(workload: Workload, seed: int, env: BenchEnv) -> RunResult:
    return _connect_trials(workload, seed, env, tracking=False)


def run_connect_trials_tracked(workload: Workload, seed: int, env: BenchEnv) -> RunResult:
    return _connect_trials(workload, seed, env, tracking=True)


def _connect_trials(workload: Workload, seed: int, env: BenchEnv, tracking: bool) -> RunResult:
    from connect_trials import ConnectTrials

    system = wl.CONNECT_TRIALS_TRACKED if tracking else wl.CONNECT_TRIALS
    objective = workload.objective()
    timer = SuggestTimer(workload.suggest())
    result = RunResult(system, workload.key, seed, 0.0, bytes_note="gRPC request bytes")
    save_file = env.work_dir / f"trials-{system}-{workload.name}-{seed}-{uuid.uuid4().hex[:8]}.pkl"
    with contextlib.ExitStack() as stack:
        spark, wire = stack.enter_context(env.session(system, workload))
        experiment_id = stack.enter_context(_tracking_server(env))[1] if tracking else None
        saves = stack.enter_context(SaveProbe()) if workload.save_file else None
        with Probe(env.request_bytes, wire) as probe:
            trials = ConnectTrials(
                parallelism=workload.parallelism, spark_session=spark, mlflow_tracking=tracking
            )
            _hyperopt_fmin(workload, seed, objective, timer, trials, str(save_file) if saves else "")
        if experiment_id is not None and workload.name == "scale":
            result.extras["mlflow"] = _tracked_search_record(experiment_id, probe.t0, spark)
    probe.fill(result)
    if saves is not None:
        result.extras["save"] = _save_record(saves, save_file)
    if tracking:
        result.extras["tracking_store"] = "mlflow server (HTTP)" if env.mlflow_server_uri else "sqlite"
    result.suggest_spans_s = timer.spans_from(probe.t0)
    return fill_from_hyperopt(result, trials, probe.t0)


def _tracked_search_record(experiment_id: str, t0: float, spark: Any) -> dict[str, Any]:
    """What a tracked search left in MLflow: its parent run's status, its child runs counted by
    status (every one must have ended), and how long ``ConnectTrials.from_mlflow`` on the
    parent takes to restore them (a resume's cost at this many trials)."""
    from mlflow import MlflowClient

    from connect_trials import ConnectTrials
    from connect_trials.tracking.resume_runs import child_runs

    client = MlflowClient()
    # The parent starts before any of its children: the first run of ours since t0.
    first = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.runSource = 'hyperoptAutoTracking' and attributes.start_time >= {int(t0 * 1000)}"
        ),
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if not first:
        return {"parent_run_id": None}
    parent = first[0]
    # Every child, not only the trials' (a stray one would show), counted before from_mlflow
    # runs: it ends children a dead client left RUNNING, which would hide them.
    statuses = collections.Counter(
        r.info.status for r in child_runs(client, experiment_id, parent.info.run_id)
    )
    started = time.perf_counter()
    restored = ConnectTrials.from_mlflow(parent.info.run_id, spark_session=spark)
    return {
        "parent_run_id": parent.info.run_id,
        "parent_status": parent.info.status,
        "children": sum(statuses.values()),
        "children_by_status": dict(statuses),
        "from_mlflow_s": time.perf_counter() - started,
        "from_mlflow_restored": len(restored),
    }


def _save_record(saves: SaveProbe, path: Path) -> dict[str, Any]:
    """What writing the ``trials_save_file`` cost: every timed call, the end-of-fmin
    compaction, and the file's size at the end (the file is then removed)."""
    size = path.stat().st_size if path.exists() else None
    path.unlink(missing_ok=True)
    return {
        "probe": f"connect_trials.resume.{saves.name}" if saves.name else None,
        "per_trial_s": saves.per_trial_s,
        "at_end": f"connect_trials.resume.{saves.at_end_name}" if saves.at_end_name else None,
        "at_end_s": sum(saves.at_end_s) if saves.at_end_s else None,
        "file_bytes": size,
    }


@contextlib.contextmanager
def _tracking_server(env: BenchEnv, experiment: str = "connect-trials-bench") -> Iterator[tuple[str, str]]:
    """Track into ``experiment`` on the suite's ``mlflow server`` (HTTP) when it has one, as a
    real deployment does, else in its sqlite store; yields the tracking URI and the
    experiment's id. The sqlite store is the default again after."""
    import mlflow

    uri = env.mlflow_server_uri or env.tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield uri, str(mlflow.set_experiment(experiment).experiment_id)
    finally:
        mlflow.set_tracking_uri(env.tracking_uri)


# -- MLflow's MlflowSparkStudy (Optuna over Spark Connect) ------------------------------------
def run_mlflow_optuna(workload: Workload, seed: int, env: BenchEnv) -> RunResult:
    """``MlflowSparkStudy.optimize``: one Spark job of ``parallelism`` tasks; each task loads the
    study from MLflow and runs its share of the trials one after another, sampling on the
    executor. Its storage is an MLflow experiment on the suite's mlflow server (HTTP)."""
    try:
        import optuna
        from mlflow.optuna.storage import MlflowStorage
        from mlflow.pyspark.optuna.study import MlflowSparkStudy
    except ImportError as exc:
        raise SystemUnavailableError(f"MlflowSparkStudy cannot be imported: {exc}") from exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = f"{workload.key}-{seed}-{uuid.uuid4().hex[:8]}"
    objective = workload.optuna_objective()
    result = RunResult(
        wl.MLFLOW_OPTUNA,
        workload.key,
        seed,
        0.0,
        bytes_note="gRPC request bytes; one job runs every trial, so its plan is sent once per search",
    )
    with contextlib.ExitStack() as stack:
        spark, wire = stack.enter_context(env.session(wl.MLFLOW_OPTUNA, workload))
        stack.enter_context(active_session(spark))
        # Its storage on the suite's mlflow server when there is one: 16 executors opening one
        # sqlite file took minutes here.
        uri, experiment_id = stack.enter_context(_tracking_server(env, experiment=f"optuna-{name}"))
        limit = stack.enter_context(_interrupted_after(spark, wl.PEER_TIME_LIMIT_S))
        with Probe(env.request_bytes, wire) as probe:
            study = MlflowSparkStudy(
                name,
                MlflowStorage(experiment_id=experiment_id),
                sampler=optuna.samplers.TPESampler(seed=seed),
                mlflow_tracking_uri=uri,
            )
            try:
                study.optimize(objective, n_trials=workload.n_trials, n_jobs=workload.parallelism)
            except Exception as exc:
                if limit.is_set():
                    raise RuntimeError(
                        f"interrupted after the {wl.PEER_TIME_LIMIT_S:.0f}-s limit of a run"
                    ) from exc
                raise
        trials = study.trials  # read from its store, while that is still the tracking URI
    probe.fill(result)
    return _fill_from_optuna(result, trials, probe.t0)


@contextlib.contextmanager
def _interrupted_after(spark: Any, seconds: float) -> Iterator[threading.Event]:
    """Interrupt every job of ``spark`` (a Connect session) after ``seconds``; the event says
    whether that happened."""
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        spark.interruptAll()

    timer = threading.Timer(seconds, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def _fill_from_optuna(result: RunResult, trials: list[Any], t0: float) -> RunResult:
    from optuna.trial import TrialState

    finished = [t for t in trials if t.datetime_complete is not None]
    ok = [t for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
    result.n_trials = len(trials)
    result.n_ok = len(ok)
    # Naive local times stamped on the executors (same machine, same clock).
    result.completed_at_s = sorted(t.datetime_complete.timestamp() - t0 for t in finished)
    result.trial_latency_s = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in sorted(finished, key=lambda t: t.number)
        if t.datetime_start is not None
    ]
    result.best_loss = min(t.value for t in ok) if ok else None
    result.extras["suggestion"] = "sampled on the executors; not separable from the client"
    return result


# -- hyperopt's SparkTrials on a classic local session (in a child process) ------------------
def run_spark_trials(workload: Workload, seed: int, env: BenchEnv) -> RunResult:
    return env.child(wl.SPARK_TRIALS, classic_master(workload)).run(workload, seed)


def classic_env(work_dir: Path, master: str) -> BenchEnv:
    """A classic session on ``master`` (local[2]: the same cores as the Connect server) on
    loopback, warm, with the size of every shipped task command counted."""
    objectives.ship_by_value()
    return BenchEnv(work_dir, spark=_classic_session(work_dir, master), command_bytes=_CommandBytes())


def _classic_session(work_dir: Path, master: str) -> Any:
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        os.environ.pop(name, None)
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    from pyspark.sql import SparkSession

    scratch = work_dir / f"classic-scratch-{''.join(c for c in master if c.isalnum())}"
    scratch.mkdir(parents=True, exist_ok=True)
    spark = (
        SparkSession.builder.master(master)
        .appName("bench-SparkTrials")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", DRIVER_MEMORY)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.local.dir", str(scratch))
        .config("spark.sql.warehouse.dir", str(work_dir / "classic-warehouse"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    # Start the Python workers before anything is timed.
    spark.sparkContext.parallelize([0, 1], 2).map(lambda x: x).collect()
    return spark


class _CommandBytes:
    """Sums the size of the pickled commands (closures) PySpark ships with each classic job:
    a classic session has no gRPC request to measure."""

    def __init__(self) -> None:
        from pyspark.core import rdd
        from pyspark.serializers import CloudPickleSerializer

        counter = self
        self.total = 0

        class CountingSerializer(CloudPickleSerializer):
            def dumps(self, obj: Any) -> bytes:
                data = super().dumps(obj)
                counter.total += len(data)
                return data

        rdd.CloudPickleSerializer = CountingSerializer  # type: ignore[misc]


def run_spark_trials_here(workload: Workload, seed: int, env: BenchEnv) -> RunResult:
    """hyperopt 0.3.0 ``SparkTrials`` on ``env.spark``, a classic session in this process."""
    from hyperopt import SparkTrials

    command_bytes = env.command_bytes
    objective = workload.objective()
    timer = SuggestTimer(workload.suggest())
    result = RunResult(
        wl.SPARK_TRIALS, workload.key, seed, 0.0, bytes_note="pickled task commands (classic Spark: no gRPC)"
    )
    before = command_bytes.total
    with Probe(None) as probe:
        trials = SparkTrials(parallelism=workload.parallelism, spark_session=env.spark)
        _hyperopt_fmin(workload, seed, objective, timer, trials)
    probe.fill(result)
    result.bytes_sent = command_bytes.total - before
    result.suggest_spans_s = timer.spans_from(probe.t0)
    return fill_from_hyperopt(result, trials, probe.t0)


# -- Ray Tune (in a child process) -------------------------------------------------------------
def run_ray_tune(workload: Workload, seed: int, env: BenchEnv) -> RunResult:
    """One child per Ray instance: local[2] for the main server's workloads, local[p] for a
    wide one (``ray_env`` gives the instance p logical CPUs)."""
    return env.child(wl.RAY_TUNE, classic_master(workload)).run(workload, seed)


def ray_env(work_dir: Path, master: str) -> BenchEnv:
    _start_ray(work_dir, ray_cpus(master))
    return BenchEnv(work_dir)


def ray_cpus(master: str) -> int:
    """Ray's logical CPUs for the child of ``master`` (``local[p]``): p, so that p trials can
    run at once. Like Spark's logical cores, they are slots: sleeping trials need no real core."""
    digits = "".join(c for c in master if c.isdigit())
    return int(digits) if digits else 2


def _start_ray(work_dir: Path, num_cpus: int) -> None:
    """A local Ray instance on loopback with ``num_cpus`` logical CPUs, no dashboard, no usage
    reporting."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        import ray
        from ray import tune  # noqa: F401
        from ray.tune.search.hyperopt import HyperOptSearch  # noqa: F401
    except ImportError as exc:
        raise SystemUnavailableError(f"Ray Tune is not installed ({exc}); pip install 'ray[tune]'") from exc
    # Stopped explicitly at the child's exit: once here, a Ray child that outlived its stop
    # timeout left its dashboard and runtime-env agents running.
    atexit.register(ray.shutdown)
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(work_dir / "ray"),
        log_to_driver=False,
        configure_logging=False,
    )


def run_ray_tune_here(workload: Workload, seed: int, env: BenchEnv) -> RunResult:
    """Ray Tune with hyperopt's TPE (``HyperOptSearch``), at most ``parallelism`` trials at once
    (``ConcurrencyLimiter``); each trial is a function trainable calling the workload's
    objective (the same 1-s sleep on wide) and reporting its loss once. ``reuse_actors``: a
    trial runs in an actor a finished one leaves, not a fresh process each (Tune's own advice
    for many short trials; without it a trial cost ~5 s here). Tune's defaults otherwise (its
    result loggers included), as a user gets them."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    objective = workload.objective()
    started: dict[str, float] = {}
    completed: list[float] = []
    latencies: list[float] = []

    class TrialTimes(tune.Callback):
        def on_trial_start(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            started[trial.trial_id] = time.time()

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            now = time.time()
            completed.append(now)
            if trial.trial_id in started:
                latencies.append(now - started[trial.trial_id])

    def trainable(config: dict[str, Any]) -> dict[str, float]:
        return {"loss": objective(config)}

    searcher = HyperOptSearch(workload.hyperopt_space(), metric="loss", mode="min", random_state_seed=seed)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=workload.parallelism),
            num_samples=workload.n_trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            storage_path=str(env.work_dir / "ray-results"), verbose=0, callbacks=[TrialTimes()]
        ),
    )
    result = RunResult(wl.RAY_TUNE, workload.key, seed, 0.0, bytes_note="not measured (Ray object store)")
    with Probe(None) as probe:
        grid = tuner.fit()
    probe.fill(result)
    losses = [r.metrics["loss"] for r in grid if r.metrics and "loss" in r.metrics]
    result.n_trials = len(grid)
    result.n_ok = len(losses)
    result.best_loss = min(losses) if losses else None
    result.completed_at_s = sorted(t - probe.t0 for t in completed)
    result.trial_latency_s = latencies  # trial started (its actor running) -> completed, by completion
    import ray

    result.extras["ray_cpus"] = int(ray.cluster_resources().get("CPU", 0))
    return result


RUNNERS: dict[str, Runner] = {
    wl.FLOOR_RAW: run_floor_raw,
    wl.IN_PROCESS: run_in_process,
    wl.SPARK_TRIALS: run_spark_trials,
    wl.MLFLOW_OPTUNA: run_mlflow_optuna,
    wl.CONNECT_TRIALS: run_connect_trials,
    wl.CONNECT_TRIALS_TRACKED: run_connect_trials_tracked,
    wl.RAY_TUNE: run_ray_tune,
}

# Systems that run in a child process: how the child sets up, and its runner there.
ISOLATED: dict[str, tuple[Callable[[Path, str], BenchEnv], Runner]] = {
    wl.SPARK_TRIALS: (classic_env, run_spark_trials_here),
    wl.RAY_TUNE: (ray_env, run_ray_tune_here),
}
