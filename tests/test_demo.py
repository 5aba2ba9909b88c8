"""`make demo` end to end: the embedded server, a real scikit-learn search, MLflow tracking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_tunes_a_model_says_where_to_look_and_never_prints_the_token(tmp_path):
    env = {**os.environ, "CONNECT_TRIALS_HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cli = [sys.executable, "-m", "connect_trials"]
    try:
        demo = subprocess.run(
            [*cli, "demo", "--max-evals", "4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        token = (tmp_path / "server" / "token").read_text().strip()
    finally:
        subprocess.run([*cli, "server", "stop"], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert demo.returncode == 0, demo.stderr[-3000:]
    out = demo.stdout
    assert "best parameters: {" in out and "'family':" in out
    assert "best loss (1 - accuracy): 0." in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in out
    # The server's URL is shown without its token, which only the state folder holds.
    assert "Spark Connect server: sc://localhost:" in out and ";token=***" in out
    assert len(token) >= 32 and token not in out and token not in demo.stderr

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("connect-trials-demo")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].data.metrics["successful_trials_count"] == 4
