"""Runs a plan: every workload, every repeat, every system, in an order that spreads noise.

``run_suite`` either starts its own servers on loopback (a local[2] Spark Connect server, an
``mlflow server`` with a sqlite backend, and for the wide workloads a ``LocalCluster`` or a
local[p] server; state under the scratch folder, each stopped by its own pid) and sessions
whose gRPC channels count request bytes, or uses a session it is given (the test suite's
fixtures). Each system gets an untimed warm-up run (its first job, its worker-side imports)
on each server before anything of it is timed.
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
from benchmarks.measure import RequestBytes, RunResult, WireBytes
from benchmarks.systems import (
    DRIVER_MEMORY,
    ISOLATED,
    RUNNERS,
    BenchEnv,
    SystemUnavailableError,
    classic_master,
    sequential_job_latency,
)
from benchmarks.workloads import Workload
from connect_trials.session import bounded_retries

# Trivial jobs timed one at a time for the floor latency.
FLOOR_LATENCY_JOBS = 20
SCALE_WARM_UP_TRIALS = 100
CONNECT_SYSTEMS = (wl.FLOOR_RAW, wl.MLFLOW_OPTUNA, wl.CONNECT_TRIALS, wl.CONNECT_TRIALS_TRACKED)


@dataclass
class SuiteResult:
    """Everything a report needs."""

    plan: list[Workload]
    runs: list[RunResult] = field(default_factory=list)
    floor_latency_s: list[float] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # system -> why it did not run
    # "system@server" -> why it did not run on that server only (it may run on the others)
    unavailable_on: dict[str, str] = field(default_factory=dict)
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
    With a given ``spark``, every workload runs on it (whatever its ``server``), tracking goes
    to the sqlite store, and request bytes are counted only if its channel carries
    ``request_bytes``."""
    started = time.time()
    suite = SuiteResult(plan=plan, meta=_machine(started))
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="connect-trials-bench-")))
        env = BenchEnv(work_dir, spark=spark, request_bytes=request_bytes)
        # Nothing this suite tracks may land in ./mlflow.db (MLflow's default store), nor leave
        # loopback. (MLflow's telemetry also raced on os.environ in MlflowSparkStudy's executor
        # threads on the standalone cluster: KeyError '_MLFLOW_TELEMETRY_SESSION_ID'.) Set
        # before any server starts, so that their executors inherit it.
        stack.enter_context(
            _environment(MLFLOW_TRACKING_URI=env.tracking_uri, MLFLOW_DISABLE_TELEMETRY="true")
        )
        servers: _Servers | None = None
        if spark is None:
            log("starting a Spark Connect server (local[2]) and an mlflow server on loopback ...")
            servers = stack.enter_context(_Servers(work_dir, plan, log))
            suite.meta.update(
                connect_url=servers.main.public_url, driver_memory=DRIVER_MEMORY, servers=servers.shapes
            )
            env.server_log = servers.main.log_path
            env.mlflow_server_uri = servers.mlflow.url
            log(f"servers up after {time.time() - started:.0f} s")
            env.request_bytes = RequestBytes()
            env.spark = stack.enter_context(
                _counted_session(servers.url("main"), env.request_bytes, default=True)
            )
            sessions = _Sessions(servers, env.request_bytes)
            stack.callback(sessions.close_all)
            env.session_factory = sessions.open
            env.drop_session = sessions.close
        stack.callback(env.close)
        objectives.ship_by_value()
        _warm_session(env.spark)
        if env.session_factory is None:
            # A server that dies mid-suite fails the runs in seconds, not after ~10 minutes of retries.
            stack.enter_context(bounded_retries(env.spark))
        suite.floor_latency_s = sequential_job_latency(env.spark, floor_jobs)
        log(
            f"floor: trivial single-task job latency, median of {floor_jobs}: "
            f"{statistics.median(suite.floor_latency_s):.3f} s"
        )
        _run_plan(plan, env, suite, started, budget_s, log, servers)
    suite.meta["duration_s"] = round(time.time() - started, 1)
    return suite


def _run_plan(
    plan: list[Workload],
    env: BenchEnv,
    suite: SuiteResult,
    started: float,
    budget_s: float | None,
    log: Callable[[str], None],
    servers: _Servers | None,
) -> None:
    """One phase per server, in plan order; in a phase, round r runs repeat r of every
    workload that has one, so a budget cut drops whole late rounds (fewer repeats) and never a
    workload. A server other than the main one is stopped when its phase ends."""
    phases = list(dict.fromkeys(w.server for w in plan))
    warmed: set[tuple[str, str, bool]] = set()
    seconds: dict[tuple[str, str], float] = {}  # (workload key, system) -> its last run, warm-up included
    for phase in phases:
        mine = [w for w in plan if w.server == phase]
        schedule = [(r, w) for r in range(max(w.repeats for w in mine)) for w in mine if r < w.repeats]
        later = [
            (r, w) for ph in phases[phases.index(phase) + 1 :] for w in plan if w.server == ph for r in (0,)
        ]
        if servers is not None and phase != "main":
            log(f"starting the {phase} server for {', '.join(w.key for w in mine)} ...")
            began = time.time()
            try:
                servers.start(phase)
            except Exception as exc:  # noqa: BLE001 - the other phases still run
                for workload in mine:
                    suite.notes.append(
                        f"{workload.key} did not run: its {phase} server failed: {_last_line(exc)}"
                    )
                log(traceback.format_exc())
                continue
            log(f"{phase} server up after {time.time() - began:.0f} s")
        for step, (repeat, workload) in enumerate(schedule):
            # A child process (a JVM, a Ray cluster) idles on the same 2 cores: end it once no
            # later run needs it.
            env.release_children_except(
                {
                    f"{s}@{classic_master(w)}"
                    for r, w in schedule[step:] + later
                    for s in w.systems
                    if r == 0 or s not in w.once
                }
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
            if repeat == 0 and budget_s is not None and time.time() - started > budget_s:
                # Past the budget already: the run must still end in time, so this workload is
                # left out (and the report says so) rather than run late.
                suite.cut[workload.key] = 0
                suite.notes.append(
                    f"{workload.key}: not run; the {budget_s / 60:.0f}-minute budget was spent"
                )
                continue
            _run_repeat(workload, repeat, env, suite, warmed, started, log, seconds)
        if servers is not None and phase != "main":
            env.drop_sessions_on(phase)
            servers.stop(phase)
            log(f"{phase} server stopped")


def _run_repeat(
    workload: Workload,
    repeat: int,
    env: BenchEnv,
    suite: SuiteResult,
    warmed: set[tuple[str, str, bool]],
    started: float,
    log: Callable[[str], None],
    seconds: dict[tuple[str, str], float],
) -> None:
    seed = 1000 + repeat
    # Rotate the order each repeat so no system always runs right after the same one.
    shift = repeat % len(workload.systems)
    for system in workload.systems[shift:] + workload.systems[:shift]:
        where = f"{system}@{workload.server}"
        if (
            system in suite.unavailable
            or where in suite.unavailable_on
            or (repeat > 0 and system in workload.once)
        ):
            continue
        began = time.time()
        # A system in a child process has one child (a JVM, a Ray instance) per master: each warms.
        runs_on = classic_master(workload) if system in ISOLATED else workload.server
        warm_key = (system, runs_on, workload.name == "model")
        if warm_key not in warmed:
            try:
                RUNNERS[system](_warm_up_copy(workload), seed, env)
            except Exception as exc:  # noqa: BLE001 - cannot run here: say why, go on
                why = f"its warm-up run failed: {_last_line(exc)}"
                if workload.server == "main":
                    suite.unavailable[system] = why
                else:  # a failure on one server says nothing of the others
                    suite.unavailable_on[where] = why
                    suite.notes.append(f"{system} did not run on the {workload.server} server: {why}")
                log(f"{system}: unavailable on {workload.server}: {why}")
                log(traceback.format_exc())
                continue
            warmed.add(warm_key)
        try:
            result = RUNNERS[system](workload.for_system(system), seed, env)
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
            if system in CONNECT_SYSTEMS and workload.server == "main" and not _server_answers(env.spark):
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
            f"wall {result.wall_s:7.2f} s, {result.n_ok}/{result.n_trials} ok"
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
    """A few trials of the same shape: pays a system's first-job and import costs untimed.
    Wide ones keep their sleep, so every slot starts its Python worker. Scale ones run
    ``SCALE_WARM_UP_TRIALS`` (at most their own count): a fresh server's JVM is still compiling
    its hot paths over its first hundred jobs, which would slow the first pace window of
    whichever system ran first."""
    return replace(
        workload,
        n_trials=max(
            workload.parallelism,
            min(SCALE_WARM_UP_TRIALS, workload.n_trials) if workload.name == "scale" else 0,
        ),
        repeats=1,
        sleep_s=workload.sleep_s if workload.name == "wide" else 0.0,
        payload_bytes=min(workload.payload_bytes, wl.PAYLOAD_SMALL_BYTES),
    )


class _Servers:
    """The suite's servers, each started by this object and stopped by its own pid: the main
    local[2] Spark Connect server and an ``mlflow server`` (sqlite, HTTP) for the whole suite,
    and a wide one (``LocalCluster``, or local[p]) for the phase that needs it."""

    def __init__(self, work_dir: Path, plan: list[Workload], log: Callable[[str], None]) -> None:
        from connect_trials.server import LocalConnectServer, LocalMlflowServer

        os.environ["PYSPARK_PYTHON"] = sys.executable
        self._work_dir = work_dir
        self._widest = max((w.parallelism for w in plan if w.server != "main"), default=16)
        self._log = log
        self.main = LocalConnectServer(
            master="local[2]",
            state_dir=work_dir / "connect-server",
            conf={"spark.driver.memory": DRIVER_MEMORY},
        )
        self.mlflow = LocalMlflowServer(work_dir / "mlflow-server")
        self._wide: Any = None
        self.shapes: dict[str, str] = {
            "main": "local[2] Spark Connect server",
            "mlflow": "mlflow server, sqlite",
        }

    def __enter__(self) -> _Servers:
        self.main.start()
        try:
            self.mlflow.start()
        except BaseException:
            self.main.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for phase in ("cluster", "local-wide"):
            self.stop(phase)
        self.mlflow.stop()
        self.main.stop()

    def url(self, server: str) -> str:
        return str(self.main.url if server == "main" else self._wide.url)

    def port(self, server: str) -> int:
        return int(self.main.port if server == "main" else self._wide_server().port)

    def _wide_server(self) -> Any:
        return self._wide.server if hasattr(self._wide, "server") else self._wide

    def start(self, server: str) -> None:
        from connect_trials.server import LocalCluster, LocalConnectServer

        conf = {"spark.driver.memory": DRIVER_MEMORY}
        if server == "cluster":
            # Cores are logical task slots here (the machine has 2): 2 workers share the widest
            # parallelism, as a 2-node cluster would.
            cores = -(-self._widest // 2)
            self._wide = LocalCluster(
                workers=2, cores=cores, memory="3g", state_dir=self._work_dir / "cluster", conf=conf
            )
            self.shapes[server] = f"LocalCluster: 2 standalone workers x {cores} logical cores, 2 real cores"
        else:
            self._wide = LocalConnectServer(
                master=f"local[{self._widest}]", state_dir=self._work_dir / "wide-server", conf=conf
            )
            self.shapes[server] = f"local[{self._widest}] Spark Connect server, 2 real cores"
        self._wide.start()

    def stop(self, server: str) -> None:
        if server != "main" and self._wide is not None:
            self._wide.stop()
            self._wide = None


class _Sessions:
    """Makes the sessions ``BenchEnv.session`` hands out and stops them: each warm (or not,
    for first-trial runs), counting its request bytes, and optionally behind a ``WireBytes``
    relay of its own."""

    def __init__(self, servers: _Servers, request_bytes: RequestBytes) -> None:
        self._servers = servers
        self._request_bytes = request_bytes
        self._open: dict[int, tuple[contextlib.ExitStack, WireBytes | None]] = {}

    def open(self, server: str, wire: bool, warm: bool) -> tuple[Any, WireBytes | None]:
        stack = contextlib.ExitStack()
        relay = None
        url = self._servers.url(server)
        if wire:
            relay = WireBytes(self._servers.port(server))
            stack.callback(relay.close)
            url = relay.url_for(url)
        try:
            session = stack.enter_context(
                _counted_session(url, self._request_bytes, default=False, warm=warm)
            )
        except BaseException:
            stack.close()
            raise
        self._open[id(session)] = (stack, relay)
        return session, relay

    def close(self, session: Any) -> None:
        entry = self._open.pop(id(session), None)
        if entry is not None:
            entry[0].close()

    def close_all(self) -> None:
        while self._open:
            self._open.popitem()[1][0].close()


@contextlib.contextmanager
def _counted_session(
    url: str, request_bytes: RequestBytes, default: bool, warm: bool = True
) -> Iterator[Any]:
    """A Connect session (warm unless told not) whose channel counts request bytes and gives
    up on a dead server in seconds. ``default``: the one ``SparkSession.active()`` returns."""
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
        if warm:
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
