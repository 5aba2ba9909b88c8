"""Runs a plan: every workload, every repeat, every system, in an order that spreads noise.

``run_suite`` either starts its own Spark Connect server (``LocalConnectServer`` on a free
loopback port, state under the scratch folder, stopped by its own pid at the end) and a
session whose gRPC channel counts request bytes, or uses a session it is given (the test
suite's fixtures). Either way the session runs a Python job before anything is timed, and
each system gets an untimed warm-up run (its first job, its worker-side imports).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import objectives
from benchmarks import workloads as wl
from benchmarks.measure import RequestBytes, RunResult
from benchmarks.systems import (
    DRIVER_MEMORY,
    RUNNERS,
    BenchEnv,
    SystemUnavailableError,
    sequential_job_latency,
)
from benchmarks.workloads import Workload
from connect_trials.session import bounded_retries

# Trivial jobs timed one at a time for the floor latency.
FLOOR_LATENCY_JOBS = 20
CONNECT_SYSTEMS = (wl.FLOOR_RAW, wl.MLFLOW_OPTUNA, wl.CONNECT_TRIALS, wl.CONNECT_TRIALS_TRACKED)


@dataclass
class SuiteResult:
    """Everything a report needs."""

    plan: list[Workload]
    runs: list[RunResult] = field(default_factory=list)
    floor_latency_s: list[float] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # system -> why it did not run
    failures: list[dict[str, str]] = field(default_factory=list)  # one failed run each
    notes: list[str] = field(default_factory=list)
    cut: dict[str, int] = field(default_factory=dict)  # workload key -> repeats run, when cut
    meta: dict[str, Any] = field(default_factory=dict)


def run_suite(
    plan: list[Workload],
    spark: Any = None,
    work_dir: Path | None = None,
    budget_s: float | None = None,
    request_bytes: RequestBytes | None = None,
    floor_jobs: int = FLOOR_LATENCY_JOBS,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> SuiteResult:
    """Run ``plan``. Repeats that would end past ``budget_s`` seconds are dropped (and said so).
    With a given ``spark``, request bytes are counted only if its channel carries
    ``request_bytes``."""
    started = time.time()
    suite = SuiteResult(plan=plan, meta=_machine(started))
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="connect-trials-bench-")))
        env = BenchEnv(work_dir, spark=spark, request_bytes=request_bytes)
        # Nothing this suite tracks may land in ./mlflow.db (MLflow's default store).
        stack.enter_context(_environment(MLFLOW_TRACKING_URI=env.tracking_uri))
        if spark is None:
            log("starting a Spark Connect server (local[2]) on loopback ...")
            server = stack.enter_context(_local_server(work_dir))
            suite.meta.update(connect_url=server.url, driver_memory=DRIVER_MEMORY)
            env.server_log = server.log_path
            log(f"server up at {server.url} after {time.time() - started:.0f} s")
            env.request_bytes = RequestBytes()
            env.spark = stack.enter_context(_counted_session(server.url, env.request_bytes, default=True))

            def session_factory() -> Any:
                return stack.enter_context(_counted_session(server.url, env.request_bytes, default=False))

            env.session_factory = session_factory
        stack.callback(env.close)
        objectives.ship_by_value()
        _warm_session(env.spark)
        if env.session_factory is None:
            # A server that dies mid-suite fails the runs in seconds, not after ~10 minutes of retries.
            stack.enter_context(bounded_retries(env.spark))
        suite.floor_latency_s = sequential_job_latency(env.spark_for(wl.FLOOR_RAW), floor_jobs)
        log(
            f"floor: trivial single-task job latency, median of {floor_jobs}: "
            f"{statistics.median(suite.floor_latency_s):.3f} s"
        )
        _run_plan(plan, env, suite, started, budget_s, log)
    suite.meta["duration_s"] = round(time.time() - started, 1)
    return suite


def _run_plan(
    plan: list[Workload],
    env: BenchEnv,
    suite: SuiteResult,
    started: float,
    budget_s: float | None,
    log: Callable[[str], None],
) -> None:
    """Round r runs repeat r of every workload that has one, so a budget cut drops whole late
    rounds (fewer repeats) and never a workload."""
    warmed: set[tuple[str, bool]] = set()
    seconds: dict[tuple[str, str], float] = {}  # (workload key, system) -> its last run, warm-up included
    schedule = [(r, w) for r in range(max(w.repeats for w in plan)) for w in plan if r < w.repeats]
    for step, (repeat, workload) in enumerate(schedule):
        # A child process (a JVM, a Ray cluster) idles on the same 2 cores: end it once no
        # later run needs it.
        env.release_children_except(
            {s for r, w in schedule[step:] for s in w.systems if r == 0 or s not in w.once}
        )
        if workload.key in suite.cut:
            continue
        coming = [s for s in workload.systems if s not in suite.unavailable and s not in workload.once]
        projected = time.time() - started + sum(seconds.get((workload.key, s), 0.0) for s in coming)
        if repeat > 0 and budget_s is not None and projected > budget_s:
            suite.cut[workload.key] = repeat
            suite.notes.append(
                f"{workload.key}: {repeat} of {workload.repeats} repeats run; the rest were cut "
                f"to stay within the {budget_s / 60:.0f}-minute budget"
            )
            continue
        _run_repeat(workload, repeat, env, suite, warmed, started, log, seconds)


def _run_repeat(
    workload: Workload,
    repeat: int,
    env: BenchEnv,
    suite: SuiteResult,
    warmed: set[tuple[str, bool]],
    started: float,
    log: Callable[[str], None],
    seconds: dict[tuple[str, str], float],
) -> None:
    seed = 1000 + repeat
    # Rotate the order each repeat so no system always runs right after the same one.
    shift = repeat % len(workload.systems)
    for system in workload.systems[shift:] + workload.systems[:shift]:
        if system in suite.unavailable or (repeat > 0 and system in workload.once):
            continue
        began = time.time()
        warm_key = (system, workload.name == "model")
        if warm_key not in warmed:
            try:
                RUNNERS[system](_warm_up_copy(workload), seed, env)
            except Exception as exc:  # noqa: BLE001 - cannot run here: say why, go on
                suite.unavailable[system] = f"its warm-up run failed: {_last_line(exc)}"
                log(f"{system}: unavailable: {suite.unavailable[system]}")
                log(traceback.format_exc())
                continue
            warmed.add(warm_key)
        try:
            result = RUNNERS[system](workload, seed, env)
        except SystemUnavailableError as exc:
            suite.unavailable[system] = str(exc)
            log(f"{system}: unavailable: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - one failed run must not end the suite
            failure = {
                "system": system,
                "workload": workload.key,
                "seed": str(seed),
                "error": _last_line(exc),
            }
            suite.failures.append(failure)
            log(f"{system} on {workload.key} failed: {_last_line(exc)}")
            log(traceback.format_exc())
            if system in CONNECT_SYSTEMS and not _server_answers(env.spark_for(system)):
                why = f"the Spark Connect server stopped during {system} on {workload.key}"
                why += _server_log_cause(env)
                for connect_system in CONNECT_SYSTEMS:
                    suite.unavailable.setdefault(connect_system, why)
                log(why)
            continue
        suite.runs.append(result)
        seconds[(workload.key, system)] = time.time() - began
        log(
            f"[{time.time() - started:6.0f} s] {workload.key:<14} seed {seed} {system:<24} "
            f"wall {result.wall_s:7.2f} s, {result.n_ok}/{workload.n_trials} ok"
        )


def _server_answers(spark: Any) -> bool:
    try:
        spark.range(0, 1, 1, 1).collect()
    except Exception:  # noqa: BLE001 - any failure means it does not
        return False
    return True


def _server_log_cause(env: BenchEnv) -> str:
    """The server log's first OutOfMemoryError or fatal line, if there is one."""
    if env.server_log is None or not env.server_log.exists():
        return ""
    for line in env.server_log.read_text(errors="replace").splitlines():
        if "OutOfMemoryError" in line or "SparkUncaughtExceptionHandler" in line:
            return f" (server log: {line.strip()[:200]})"
    return ""


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _warm_up_copy(workload: Workload) -> Workload:
    """A few trials of the same shape: pays a system's first-job and import costs untimed."""
    return replace(
        workload,
        n_trials=workload.parallelism,
        repeats=1,
        sleep_s=0.0,
        payload_bytes=min(workload.payload_bytes, wl.PAYLOAD_SMALL_BYTES),
    )


@contextlib.contextmanager
def _local_server(work_dir: Path) -> Iterator[Any]:
    """A local[2] Spark Connect server of the suite's own, stopped by its own pid at the end."""
    from connect_trials.server import LocalConnectServer

    os.environ["PYSPARK_PYTHON"] = sys.executable
    server = LocalConnectServer(
        master="local[2]", state_dir=work_dir / "connect-server", conf={"spark.driver.memory": DRIVER_MEMORY}
    )
    with server:
        yield server


@contextlib.contextmanager
def _counted_session(url: str, request_bytes: RequestBytes, default: bool) -> Iterator[Any]:
    """A warm Connect session whose channel counts request bytes and gives up on a dead server
    in seconds. ``default``: the one ``SparkSession.active()`` returns."""
    from pyspark.sql.connect.client import DefaultChannelBuilder
    from pyspark.sql.connect.session import SparkSession

    channel = DefaultChannelBuilder(url)
    channel.add_interceptor(request_bytes)
    if default:
        # What SparkSession.builder.remote() sets; MlflowSparkStudy reads it to pick Connect.
        os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
        session = SparkSession.builder.channelBuilder(channel).getOrCreate()
    else:
        session = SparkSession(connection=channel)
    try:
        _warm_session(session)
        with bounded_retries(session):
            yield session
    finally:
        session.stop()


def _warm_session(spark: Any) -> None:
    """The first Python job of a session starts its Python workers (5-8 s): pay it untimed."""
    spark.range(0, 2, 1, 2).mapInPandas(lambda batches: batches, "id long").collect()


def _machine(started: float) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for package in ("pyspark", "hyperopt", "mlflow", "optuna", "scikit-learn", "numpy", "pandas", "ray"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "versions": versions,
        "engine": _engine_revision(),
    }


def _engine_revision() -> str:
    """The commit of the connect_trials being measured, and whether its files differ from it."""
    import subprocess

    import connect_trials

    package = Path(connect_trials.__file__).parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(package), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        # A copy exported with `git archive` (to measure a commit while its tree is being
        # edited) can say which commit it is.
        exported = os.environ.get("BENCH_ENGINE_REVISION")
        return f"{exported} (exported copy)" if exported else f"{package} (not in a git work tree)"
    return f"{commit}{' with uncommitted changes to connect_trials/' if dirty else ''}"


def _memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"
