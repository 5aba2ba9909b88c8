"""What the shared cluster costs, measured in one run on this machine (issue "shared cluster").

- cluster start time (``LocalCluster``, 2 workers x 2 cores, workers hidden from the client);
- per-trial wall time of no-op trials at parallelism 4 on that cluster and on the embedded
  local[4] server;
- the MLflow relay's extra cost per trial: a no-op objective that makes 10 ``log_metric``
  calls, tracked to a sqlite store the workers cannot see (relayed) vs to a real
  ``mlflow server`` they reach over loopback (direct).

    python -m integration.cluster_costs [--trials 48] [--repeats 3]

Prints one JSON document. Medians of the repeats, warm sessions (one untimed fmin first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def noop(x: float) -> float:
    return x


def ten_metrics(x: float) -> float:
    import mlflow

    for step in range(10):
        mlflow.log_metric("m", x * step, step=step)
    return x


def per_trial_s(spark: Any, objective: Any, trials_n: int, tracking: bool) -> float:
    from hyperopt import fmin, hp, rand

    from connect_trials import ConnectTrials

    trials = ConnectTrials(parallelism=4, spark_session=spark, mlflow_tracking=tracking)
    started = time.perf_counter()
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, trials_n, trials=trials, show_progressbar=False)
    elapsed = time.perf_counter() - started
    assert trials.count_successful_trials() == trials_n, [
        t["misc"].get("error") for t in trials._dynamic_trials
    ]
    return elapsed / trials_n


def median_of(repeats: int, measure: Any) -> float:
    measure()  # warm-up: Python workers, objective artifact, MLflow imports on the workers
    return statistics.median(measure() for _ in range(repeats))


def use_store(uri: str) -> None:
    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_EXPERIMENT_ID"] = MlflowClient(uri).create_experiment(
        f"cluster-costs-{time.time_ns()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from pyspark.sql import SparkSession

    from connect_trials import LocalCluster, LocalConnectServer
    from connect_trials.server import LocalMlflowServer

    report: dict[str, Any] = {"trials": args.trials, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="connect-trials-costs-") as base:
        hidden_store = Path(base, "client-only")
        hidden_store.mkdir()
        with LocalMlflowServer(state_dir=Path(base, "mlflow")) as mlflow_server:
            started = time.monotonic()
            with LocalCluster(workers=2, cores=2, memory="1g", state_dir=Path(base, "cluster"),
                              hide=[str(ROOT), str(hidden_store)]) as cluster:  # fmt: skip
                report["cluster_start_s"] = round(time.monotonic() - started, 1)
                spark = SparkSession.builder.remote(cluster.url).create()
                report["cluster_noop_p4_s_per_trial"] = median_of(
                    args.repeats, lambda: per_trial_s(spark, noop, args.trials, tracking=False)
                )
                use_store(f"sqlite:///{hidden_store / 'mlflow.db'}")
                report["relay_10_metrics_s_per_trial"] = median_of(
                    args.repeats, lambda: per_trial_s(spark, ten_metrics, args.trials, tracking=True)
                )
                use_store(mlflow_server.url)
                report["direct_10_metrics_s_per_trial"] = median_of(
                    args.repeats, lambda: per_trial_s(spark, ten_metrics, args.trials, tracking=True)
                )
                spark.stop()
            with LocalConnectServer(master="local[4]", state_dir=Path(base, "server")) as server:
                spark = SparkSession.builder.remote(server.url).create()
                report["local_noop_p4_s_per_trial"] = median_of(
                    args.repeats, lambda: per_trial_s(spark, noop, args.trials, tracking=False)
                )
                spark.stop()
    report["cluster_vs_local"] = report["cluster_noop_p4_s_per_trial"] / report["local_noop_p4_s_per_trial"]
    report["relay_extra_s_per_trial"] = (
        report["relay_10_metrics_s_per_trial"] - report["direct_10_metrics_s_per_trial"]
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
