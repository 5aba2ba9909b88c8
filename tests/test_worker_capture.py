"""A trial's output capture on an executor and in the user's process, called as the worker
calls it (no Spark): bounded, live, and confined to the trial it belongs to."""

from __future__ import annotations

import json
import logging
import os
import pickle
import select
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pyspark import cloudpickle

from connect_trials import worker

ROOT = Path(__file__).resolve().parent.parent


def run_in(host: worker.Host, fn: Any, argument: Any = None) -> dict[str, Any]:
    payload = worker.objective_payload(cloudpickle.dumps(fn), {})
    row = worker.run_objective(payload, pickle.dumps(argument), {}, host=host)
    assert row["status"] == worker.STATUS_RETURNED, row["error_text"]
    return row


def output_readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "connect-trials-output"]


def open_pipes() -> set[str]:
    pipes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            pipes.add(f"{fd}->{target}")
    return pipes


# A child started by trial 1 that outlives it: it prints when trial 2 tells it to.
CHILDREN: dict[str, subprocess.Popen[bytes]] = {}
CHILD = "import sys; sys.stdin.readline(); print('late line from the child', flush=True)"


def starts_a_long_lived_child(_: Any) -> None:
    CHILDREN["child"] = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE)
    print("trial 1 prints")


def lets_the_child_print(_: Any) -> None:
    print("trial 2 prints")
    child = CHILDREN.pop("child")
    assert child.stdin is not None
    child.stdin.write(b"go\n")
    child.stdin.close()
    child.wait(timeout=60)  # it printed, and exited


def test_a_child_that_prints_after_its_trial_ended_reaches_the_workers_stderr_not_the_next_trials_output(
    capfd: pytest.CaptureFixture[str],
) -> None:
    for reader in output_readers():  # of earlier trials in this process
        reader.join(timeout=60)
    pipes_before = open_pipes()
    first = run_in(worker.Host.EXECUTOR, starts_a_long_lived_child)
    second = run_in(worker.Host.EXECUTOR, lets_the_child_print)
    for reader in output_readers():  # each ends when its pipe's last writer (the child) closed it
        reader.join(timeout=60)

    assert first["output"] == "trial 1 prints\n"
    assert second["output"] == "trial 2 prints\n"
    assert "late line from the child" in capfd.readouterr().err  # the executor's log
    assert output_readers() == []
    assert open_pipes() == pipes_before  # nothing of either trial's capture is left open


BOUNDED = """
    import json, os, pickle, stat, sys, tracemalloc
    from pyspark import cloudpickle
    from connect_trials import worker

    def largest_open_file():
        sizes = [0]
        for fd in os.listdir("/proc/self/fd"):
            try:
                info = os.stat(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                sizes.append(info.st_size)
        return max(sizes)

    def prints_32_mib(_):
        line = "x" * 1023
        for _ in range(32 * 1024):
            print(line)
        print("the last line", file=sys.stderr)
        return largest_open_file()

    tracemalloc.start()
    payload = worker.objective_payload(cloudpickle.dumps(prints_32_mib), {})
    row = worker.run_objective(payload, pickle.dumps(None), {}, host=worker.Host[sys.argv[1]])
    peak = tracemalloc.get_traced_memory()[1]
    with open(sys.argv[2], "w") as f:
        json.dump({"largest_open_file": pickle.loads(row["value"]), "peak_memory": peak,
                   "output_bytes": len(row["output"].encode()), "last": row["output"].splitlines()[-1]}, f)
"""


@pytest.mark.parametrize("host", ["EXECUTOR", "CLIENT"])
def test_a_trial_that_prints_32_mib_holds_no_growing_file_and_bounded_memory(
    host: str, tmp_path: Path
) -> None:
    result_file = tmp_path / "result.json"
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BOUNDED), host, str(result_file)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,  # the worker's own streams: not files either
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=300,
    )
    result = json.loads(result_file.read_text())
    assert result["largest_open_file"] < 1024 * 1024  # no capture file on disk, whatever is printed
    assert result["peak_memory"] < 4 * 1024 * 1024
    assert result["output_bytes"] <= worker.OUTPUT_TAIL_BYTES
    assert result["last"] == "the last line"


LIVE = """
    import os, pickle, sys
    from pyspark import cloudpickle
    from connect_trials import worker

    def prints_then_waits(_):
        print("the trial has started", flush=True)
        os.read(0, 1)  # the test lets go once it saw the line in this worker's stderr

    payload = worker.objective_payload(cloudpickle.dumps(prints_then_waits), {})
    row = worker.run_objective(payload, pickle.dumps(None), {})
    print("ROW", row["status"], repr(row["output"]), file=sys.stderr, flush=True)
"""


def test_the_workers_stderr_gets_the_output_while_the_trial_runs_not_once_it_ended() -> None:
    worker_process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LIVE)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert worker_process.stdin is not None and worker_process.stderr is not None
    try:
        seen = b""
        give_up_at = time.monotonic() + 60
        while b"the trial has started\n" not in seen:
            left = max(0.0, give_up_at - time.monotonic())
            ready, _, _ = select.select([worker_process.stderr], [], [], left)
            assert ready, f"the trial's line did not reach the worker's stderr while it ran: {seen!r}"
            chunk = os.read(worker_process.stderr.fileno(), 65536)
            assert chunk, seen
            seen += chunk
        worker_process.stdin.write(b"g")
        worker_process.stdin.close()
        rest = worker_process.stderr.read()
    finally:
        worker_process.kill()
        worker_process.wait()
    assert b"ROW returned 'the trial has started\\n'" in seen + rest


def configures_a_handler(_: Any) -> None:
    # What logging.basicConfig does: a StreamHandler on the sys.stderr of the moment.
    logging.getLogger("ct-test-trial-handler").addHandler(logging.StreamHandler())


def logs_through_the_handler(_: Any) -> None:
    logging.getLogger("ct-test-trial-handler").warning("logged during the second trial")


@pytest.mark.parametrize("host", [worker.Host.EXECUTOR, worker.Host.CLIENT])
def test_a_handler_a_trial_configured_never_writes_into_a_file_opened_after_it(
    host: worker.Host, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = logging.getLogger("ct-test-trial-handler")
    log.propagate = False
    try:
        run_in(host, configures_a_handler)
        with open(tmp_path / "data.txt", "w") as data:  # takes the lowest free descriptor
            log.warning("logged between the trials")
            data.write("the user's data\n")
        second = run_in(host, logs_through_the_handler)
    finally:
        log.handlers.clear()
        log.propagate = True

    assert (tmp_path / "data.txt").read_text() == "the user's data\n"
    shown = capfd.readouterr().err
    assert "logged between the trials" in shown  # the worker's (or the user's) own stderr
    assert "logged between the trials" not in second["output"]
    if host is worker.Host.EXECUTOR:  # where fd 2 points while the second trial runs
        assert second["output"] == "logged during the second trial\n"
