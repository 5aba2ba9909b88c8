"""Fault injection: the Spark Connect server's driver restarts in the middle of an fmin.

Run as ``python -m integration.driver_restart_exit SIGNAL_PORT [--stop-dead-session]`` with
``SPARK_REMOTE`` set to the server's URL (it holds the token: not on argv). Each run of a trial
connects to ``SIGNAL_PORT`` on loopback as it starts, so that whoever restarts the server knows
when trials are in flight. fmin reconnects to the restarted server and runs all its trials;
the script prints one JSON line of what it saw, then, with ``--stop-dead-session``, stops the
session it was given (dead with the old driver), as a tidy script ends its work, and prints
how long that took. With ``--finalizer-first`` it holds a ``tempfile.TemporaryDirectory``
made before its session, as many scripts do: the process's finalizers then run after
pyspark's own exit hooks, the order that hung before. It then exits as any script does,
leaving the rest to the interpreter (pyspark's exit hooks, the sessions' finalizers): it must
not hang there.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from hyperopt import fmin, hp, rand
from pyspark.sql import SparkSession

from connect_trials import ConnectTrials


def main(url: str, signal_port: int, stop_dead_session: bool, finalizer_first: bool) -> None:
    scratch = tempfile.TemporaryDirectory() if finalizer_first else None  # noqa: SIM115 - held to exit
    spark = SparkSession.builder.remote(url).create()

    def objective(x: float) -> float:
        import socket
        import time

        socket.create_connection(("127.0.0.1", signal_port)).close()  # "a run of a trial starts"
        time.sleep(2)
        return x

    trials = ConnectTrials(parallelism=2, spark_session=spark, reconnect_timeout=90)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 6, trials=trials, show_progressbar=False)
    report: dict[str, object] = {
        "states": [t["state"] for t in trials.trials],
        "renewed": trials.spark_session is not spark,
    }
    report["new_session_counts"] = trials.spark_session.range(3).count()
    print(json.dumps(report), flush=True)
    if stop_dead_session:
        started = time.monotonic()
        spark.stop()
        print(json.dumps({"stopped_in_s": round(time.monotonic() - started, 2)}), flush=True)
    if scratch is not None:
        print(json.dumps({"scratch_kept_to_exit": os.path.isdir(scratch.name)}), flush=True)


if __name__ == "__main__":
    # The URL holds the token: not on argv.
    main(os.environ["SPARK_REMOTE"], int(sys.argv[1]), stop_dead_session="--stop-dead-session" in sys.argv,
         finalizer_first="--finalizer-first" in sys.argv)  # fmt: skip
