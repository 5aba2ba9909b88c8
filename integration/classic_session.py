"""ConnectTrials on a classic (py4j) local SparkSession: mapInPandas and tags work there too.

Run as ``python -m integration.classic_session``; prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

from hyperopt import fmin, hp, tpe
from pyspark.sql import SparkSession

from connect_trials import ConnectTrials


def main() -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    try:
        trials = ConnectTrials(spark_session=spark, timeout=60)
        best = fmin(
            lambda x: (x - 1) ** 2,
            hp.uniform("x", -3, 3),
            tpe.suggest,
            8,
            trials=trials,
            show_progressbar=False,
        )
        slow = ConnectTrials(parallelism=1, timeout=2, spark_session=spark)

        def sleepy(x: float) -> float:
            import time

            time.sleep(60)
            return x

        fmin(sleepy, hp.uniform("x", 0, 1), tpe.suggest, 2, trials=slow, return_argmin=False)
        print(
            json.dumps(
                {
                    "kind": trials._session_kind,
                    "parallelism": trials.parallelism,
                    "successful": trials.count_successful_trials(),
                    "best_x": best["x"],
                    "timeout_cancelled": slow.count_cancelled_trials(),
                }
            ),
            flush=True,
        )
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
