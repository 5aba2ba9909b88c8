"""``make demo``: tune a real scikit-learn model on the embedded Spark Connect server.

Starts the local server if it is not running (and leaves it running for the next time),
tunes a conditional space of three model families on scikit-learn's digits data with TPE,
tracks the search in a local MLflow store (a parent run, one child run per trial), and
prints the best model and where to look.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from connect_trials import server


def objective(params: dict[str, Any]) -> dict[str, Any]:
    """Cross-validated error of one model; runs on a Spark worker."""
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    family = params["family"]
    if family == "svm":
        model = make_pipeline(StandardScaler(), SVC(C=params["C"], gamma=params["gamma"]))
    elif family == "random_forest":
        model = RandomForestClassifier(
            n_estimators=int(params["n_estimators"]), max_depth=int(params["max_depth"]), random_state=0
        )
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=params["C"], max_iter=500))
    accuracy = cross_val_score(model, X, y, cv=3).mean()
    return {"loss": 1.0 - accuracy, "status": "ok", "accuracy": accuracy}


def search_space() -> Any:
    from hyperopt import hp

    return hp.choice(
        "family",
        [
            {
                "family": "svm",
                "C": hp.loguniform("svm_C", -3, 3),
                "gamma": hp.loguniform("svm_gamma", -8, -2),
            },
            {
                "family": "random_forest",
                "n_estimators": hp.quniform("rf_n_estimators", 20, 120, 10),
                "max_depth": hp.quniform("rf_max_depth", 3, 16, 1),
            },
            {"family": "logistic_regression", "C": hp.loguniform("lr_C", -4, 2)},
        ],
    )


def main(max_evals: int = 24, parallelism: int = 2) -> int:
    import mlflow
    from hyperopt import fmin, space_eval, tpe
    from pyspark.sql import SparkSession

    from connect_trials import ConnectTrials

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("connect_trials").setLevel(logging.INFO)
    state = server.DEFAULT_STATE_DIR
    running = server.read_server_info()
    if running is None:
        print("starting the embedded Spark Connect server (first time: ~10-30 s) ...", flush=True)
        srv = server.LocalConnectServer(master="local[2]").start()
        url, public_url = srv.url, srv.public_url
    else:
        url, public_url = running.url, running.public_url
    print(f"Spark Connect server: {public_url}")  # the token stays in the state folder

    tracking_uri = f"sqlite:///{state / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.set_experiment("connect-trials-demo")

    spark = SparkSession.builder.remote(url).getOrCreate()
    trials = ConnectTrials(parallelism=parallelism, spark_session=spark)
    space = search_space()
    started = time.monotonic()
    # fmin tracks itself; an active run becomes the parent of one child run per trial.
    with mlflow.start_run(run_name="digits-model-search") as parent:
        best = fmin(objective, space, algo=tpe.suggest, max_evals=max_evals, trials=trials)
    elapsed = time.monotonic() - started
    best_trial = trials.best_trial
    print()
    print(f"tuned {max_evals} trials in {elapsed:.1f} s at parallelism {parallelism}")
    print(f"best parameters: {space_eval(space, best)}")
    print(f"best loss (1 - accuracy): {best_trial['result']['loss']:.4f}")
    print(f"MLflow experiment '{experiment.name}' (id {experiment.experiment_id}) in {tracking_uri}")
    print(f"parent run {parent.info.run_id} with one child run per trial")
    print(f"open the UI:  mlflow ui --backend-store-uri {tracking_uri}")
    print("stop the server:  make server-stop")
    spark.stop()
    return 0
