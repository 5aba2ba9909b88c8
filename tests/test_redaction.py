"""What we log of URIs and errors never carries credentials (pure logic, no servers)."""

from __future__ import annotations

import logging

import pytest

from connect_trials.tracking.uris import redacted_text, redacted_uri
from connect_trials.tracking.writes import TrackingWrites
from tests.conftest import captured_log


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://bob:pa55@mlflow.internal:5000/", "http://***@mlflow.internal:5000/"),
        ("https://token@mlflow.internal/?sig=abc&x=1", "https://***@mlflow.internal/"),
        ("databricks://profile", "databricks://profile"),
        ("sqlite:////home/me/mlflow.db", "sqlite:////home/me/mlflow.db"),
        ("sc://localhost:15002/;token=t0k3n", "sc://localhost:15002/;token=***"),
        ("", ""),
    ],
)
def test_a_uri_is_printed_without_userinfo_query_or_connect_token(uri: str, shown: str) -> None:
    assert redacted_uri(uri) == shown


def test_an_mlflow_error_naming_the_url_it_called_loses_the_credentials_in_it() -> None:
    said = redacted_text(
        "API request to http://bob:pa55@127.0.0.1:5000/api/2.0/mlflow/runs/create?run=1 failed "
        "with exception HTTPConnectionPool(host='127.0.0.1', port=5000)"
    )
    assert "pa55" not in said and "bob" not in said and "run=1" not in said
    assert "http://***@127.0.0.1:5000/api/2.0/mlflow/runs/create failed" in said


def test_tracking_that_turns_off_or_is_refused_logs_no_credentials() -> None:
    writes = TrackingWrites()
    writes.tracking_uri = "http://bob:pa55@127.0.0.1:5000?token=q"
    error = ConnectionError("API request to http://bob:pa55@127.0.0.1:5000/api/x?token=q failed")
    with captured_log(level=logging.DEBUG) as log:
        writes.refused(error)
        writes.disable(error)
    said = log.getvalue()
    assert "MLflow tracking is off" in said and "MLflow refused part" in said
    assert "pa55" not in said and "token=q" not in said
    writes.close()
