"""Fault injection: the Spark Connect server dies in the middle of an fmin.

Run as ``python -m integration.server_dies sc://127.0.0.1:PORT SIGNAL_PORT``. Three trials
finish, the fourth connects to ``SIGNAL_PORT`` on loopback (so whoever kills the server
knows a trial is running) and blocks. Prints one JSON line with what fmin did, then exits:
the process must not hang in gRPC at exit.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from hyperopt import fmin, hp, rand
from pyspark.sql import SparkSession

from connect_trials import ClusterUnavailableError, ConnectTrials


def main(url: str, signal_port: int) -> None:
    spark = SparkSession.builder.remote(url).getOrCreate()
    marks = tempfile.mkdtemp(prefix="server-dies-")

    def objective(x: float) -> float:
        import os
        import socket
        import time

        if len(os.listdir(marks)) < 3:
            open(os.path.join(marks, str(x)), "w").close()
            return x
        socket.create_connection(("127.0.0.1", signal_port)).close()
        time.sleep(300)
        return x

    trials = ConnectTrials(parallelism=1, spark_session=spark, reconnect_timeout=20)
    report: dict[str, object] = {}
    try:
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 10, trials=trials, show_progressbar=False)
    except ClusterUnavailableError as exc:
        report["error"] = type(exc).__name__
        report["message"] = str(exc)
    report["failed_at"] = time.time()
    report["successful"] = trials.count_successful_trials()
    report["cancelled"] = trials.count_cancelled_trials()
    report["losses"] = [t["result"].get("loss") for t in trials.trials if t["state"] == 2]
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(os.environ["SPARK_REMOTE"], int(sys.argv[1]))  # the URL holds the token: not on argv
