"""The model-search scenario on a shared cluster: several model families in one space.

    [SPARK_REMOTE=sc://...] python -m integration.model_search [--max-evals 24] [--tracking-uri URI]

Without ``--url`` or ``SPARK_REMOTE`` it starts a ``LocalCluster`` (2 workers x 1 core,
workers that cannot see this folder) and stops it at the end. TPE searches one conditional
space over logistic regression, random forest, gradient boosting and an SVM on scikit-learn's
breast-cancer data.
The data is loaded here, once, and travels with the objective (once per fmin, as a session
artifact), not once per trial. The best configuration is refit here, logged to MLflow and
registered in the model registry. Prints one JSON line (``--json``) or a short report.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL_NAME = "connect-trials-model-search"


def search_space() -> Any:
    from hyperopt import hp
    from hyperopt.pyll import scope

    return hp.choice(
        "family",
        [
            {"family": "logistic_regression", "C": hp.loguniform("lr_C", -4, 3)},
            {
                "family": "random_forest",
                "n_estimators": scope.int(hp.quniform("rf_n_estimators", 20, 120, 10)),
                "max_depth": scope.int(hp.quniform("rf_max_depth", 2, 12, 1)),
            },
            {
                "family": "gradient_boosting",
                "learning_rate": hp.loguniform("gb_learning_rate", -4, 0),
                "n_estimators": scope.int(hp.quniform("gb_n_estimators", 20, 120, 10)),
                "max_depth": scope.int(hp.quniform("gb_max_depth", 1, 5, 1)),
            },
            {
                "family": "svm",
                "C": hp.loguniform("svm_C", -3, 3),
                "gamma": hp.loguniform("svm_gamma", -8, -2),
            },
        ],
    )


def make_model(params: dict[str, Any]) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    family = params["family"]
    if family == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(C=params["C"], max_iter=1000))
    if family == "random_forest":
        return RandomForestClassifier(
            n_estimators=params["n_estimators"], max_depth=params["max_depth"], random_state=0
        )
    if family == "gradient_boosting":
        return GradientBoostingClassifier(
            learning_rate=params["learning_rate"],
            n_estimators=params["n_estimators"],
            max_depth=params["max_depth"],
            random_state=0,
        )
    return make_pipeline(StandardScaler(), SVC(C=params["C"], gamma=params["gamma"]))


def run(url: str, max_evals: int, parallelism: int | None) -> dict[str, Any]:
    import mlflow
    from hyperopt import fmin, space_eval, tpe
    from pyspark.sql import SparkSession
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import cross_val_score

    from connect_trials import ConnectTrials

    X, y = load_breast_cancer(return_X_y=True)  # once, here: it travels with the objective

    def objective(params: dict[str, Any]) -> dict[str, Any]:
        accuracy = cross_val_score(make_model(params), X, y, cv=3).mean()
        return {"loss": 1.0 - accuracy, "status": "ok"}

    spark = SparkSession.builder.remote(url).getOrCreate()
    try:
        space = search_space()
        trials = ConnectTrials(parallelism=parallelism, spark_session=spark)
        started = time.monotonic()
        with mlflow.start_run(run_name="model-search") as parent:
            best = fmin(objective, space, algo=tpe.suggest, max_evals=max_evals, trials=trials,
                        show_progressbar=False)  # fmt: skip
            best_params = space_eval(space, best)
            model = make_model(best_params).fit(X, y)  # refit on all the data, here
            info = mlflow.sklearn.log_model(
                model, name="model", serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE
            )
        elapsed = time.monotonic() - started
        version = mlflow.register_model(info.model_uri, MODEL_NAME)
        return {
            "best_family": best_params["family"],
            "best_params": best_params,
            "best_loss": trials.best_trial["result"]["loss"],
            "trials": len(trials.trials),
            "seconds": round(elapsed, 1),
            "parent_run_id": parent.info.run_id,
            "registered_model": version.name,
            "version": int(version.version),
        }
    finally:
        spark.stop()


def main(argv: list[str] | None = None) -> int:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("SPARK_REMOTE"),
        help="sc:// URL of a Spark Connect server (default: $SPARK_REMOTE, else start a LocalCluster); "
        "a URL with a token is better passed in SPARK_REMOTE, off the command line",
    )  # fmt: skip
    parser.add_argument("--max-evals", type=int, default=24)
    parser.add_argument("--parallelism", type=int, default=None)
    parser.add_argument("--tracking-uri", default=None, help="default: a sqlite store in .connect-trials/")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    from connect_trials import server

    state = server.DEFAULT_STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    tracking_uri = args.tracking_uri or f"sqlite:///{state / 'model-search.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("connect-trials-model-search")
    if args.url:
        report = run(args.url, args.max_evals, args.parallelism)
    else:
        from connect_trials import LocalCluster

        hidden = [str(Path.cwd()), tempfile.gettempdir()]
        print("starting a local cluster (2 workers x 1 core) ...", flush=True)
        state_dir = state / "model-search-cluster"
        with LocalCluster(workers=2, cores=1, memory="1g", state_dir=state_dir, hide=hidden) as cluster:
            report = run(cluster.url, args.max_evals, args.parallelism)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"best family: {report['best_family']}")
    print(f"best parameters: {report['best_params']}")
    print(f"best loss (1 - accuracy): {report['best_loss']:.4f}", end="  ")
    print(f"({report['trials']} trials, {report['seconds']} s)")
    print(f"registered model: {report['registered_model']} version {report['version']}")
    print(f"MLflow: parent run {report['parent_run_id']} in {tracking_uri}")
    print(f"open the UI:  mlflow ui --backend-store-uri {tracking_uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
