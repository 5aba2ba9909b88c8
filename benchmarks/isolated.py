"""Systems that need a process of their own: a classic JVM session (hyperopt's SparkTrials)
and a Ray instance do not mix with a Spark Connect session in one interpreter.

The parent keeps one child per such system for the whole suite, so its startup (a JVM, a Ray
cluster) is paid once and runs can interleave with the other systems. They talk in JSON
lines: the child writes ``{"ready": ...}`` once set up and warm, then answers each
``{"workload": ..., "seed": ...}`` with ``{"result": ...}`` or ``{"error": ...}``. The child
keeps the protocol on a private copy of its stdout and points fd 1 at stderr, so whatever
the JVM or Ray print cannot corrupt it.

    python -m benchmarks.isolated SYSTEM WORK_DIR MASTER   # the child side
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

from benchmarks.measure import RunResult
from benchmarks.workloads import Workload

_READY_TIMEOUT_S = 300.0
_RUN_TIMEOUT_S = 1800.0
_STOP_TIMEOUT_S = 60.0  # a Ray instance of 32 CPUs on 2 cores takes a while to stop
_REPO_ROOT = Path(__file__).resolve().parent.parent


class IsolatedSystem:
    """The parent's handle on one child process."""

    def __init__(self, system: str, work_dir: Path, master: str = "local[2]") -> None:
        from benchmarks.systems import SystemUnavailableError

        self.system = system
        self.log_path = work_dir / f"{system}-{_slug(master)}.log"
        env = dict(os.environ)
        for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
            env.pop(name, None)
        env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.isolated", system, str(work_dir), master],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=_REPO_ROOT,
                text=True,
                bufsize=1,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"bench-{system}-reader", daemon=True).start()
        ready = self._receive(_READY_TIMEOUT_S)
        if "error" in ready:
            self.close()
            raise SystemUnavailableError(ready["error"])

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return {"error": f"{self.system}: no answer within {timeout:.0f} s; see {self.log_path}"}
        if line is None:
            return {"error": f"{self.system}: the child process exited; see {self.log_path}"}
        return dict(json.loads(line))

    def run(self, workload: Workload, seed: int) -> RunResult:
        if self._proc.poll() is not None or self._proc.stdin is None:
            raise RuntimeError(f"{self.system}: the child process is gone; see {self.log_path}")
        self._proc.stdin.write(json.dumps({"workload": workload.to_json(), "seed": seed}) + "\n")
        self._proc.stdin.flush()
        answer = self._receive(_RUN_TIMEOUT_S)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return RunResult.from_json(answer["result"])

    def close(self) -> None:
        """Ask the child to stop; if it does not, stop it by its own pid."""
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"stop": True}) + "\n")
                self._proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                self._proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _slug(master: str) -> str:
    """``local[16]`` -> ``local16``: a file name part."""
    return "".join(c for c in master if c.isalnum())


def _send(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def main(argv: list[str]) -> int:
    """The child: set the system up, then serve runs until told to stop."""
    system, work_dir, master = argv[0], Path(argv[1]), argv[2]
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else written to stdout (the JVM, Ray) goes to the log
    from benchmarks.systems import ISOLATED

    setup, runner = ISOLATED[system]
    try:
        env = setup(work_dir, master)
    except Exception as exc:  # noqa: BLE001 - the parent records why the system is missing
        traceback.print_exc()
        _send(channel, {"error": f"{system} could not start: {type(exc).__name__}: {exc}"})
        return 1
    _send(channel, {"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("stop"):
            break
        try:
            result = runner(Workload.from_json(request["workload"]), int(request["seed"]), env)
        except Exception as exc:  # noqa: BLE001 - one failed run is reported, the child goes on
            traceback.print_exc()
            _send(channel, {"error": f"{system}: {type(exc).__name__}: {exc}"})
        else:
            _send(channel, {"result": result.to_json()})
    if env.spark is not None:
        env.spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
