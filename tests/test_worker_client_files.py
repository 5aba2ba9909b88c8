"""Copies of the client's MLflow certificate files on a worker: in a folder of this user's
alone, named by content, and used only when they hold that content."""

from __future__ import annotations

import os
import pickle
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pyspark import cloudpickle

from connect_trials import worker


def reads_the_ca_bundle(_: Any) -> tuple[str, str]:
    path = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    with open(path) as f:
        return path, f.read()


@pytest.fixture
def shipped_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The payload of an fmin whose client has a CA bundle this worker cannot see; the
    worker's temporary folder is the test's own."""
    from connect_trials.tracking import uris

    bundle = tmp_path / "client-only" / "ca.pem"
    bundle.parent.mkdir()
    bundle.write_text("the client's CA\n")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(bundle))
    fmin_environ = uris.worker_environ("https://tracking.example", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
    bundle.unlink()
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(worker_tmp))
    return worker.objective_payload(cloudpickle.dumps(reads_the_ca_bundle), fmin_environ)


def placed(payload: bytes) -> tuple[str, str]:
    row = worker.run_objective(payload, pickle.dumps(None), {})
    assert row["status"] == worker.STATUS_RETURNED, row["error_text"]
    path, content = pickle.loads(row["value"])
    return path, content


def test_copies_go_to_a_folder_only_this_user_can_enter(shipped_bundle: bytes) -> None:
    path, content = placed(shipped_bundle)
    assert content == "the client's CA\n"
    folder = os.lstat(os.path.dirname(path))
    assert stat.S_ISDIR(folder.st_mode) and folder.st_uid == os.geteuid()
    assert stat.S_IMODE(folder.st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(path).st_mode) & 0o077 == 0


def test_a_copy_whose_content_does_not_match_its_name_is_never_used(shipped_bundle: bytes) -> None:
    path, _ = placed(shipped_bundle)
    with open(path, "w") as f:
        f.write("someone else's CA\n")
    again, content = placed(shipped_bundle)
    assert content == "the client's CA\n"
    assert again == path  # rewritten in place, whole


def test_a_folder_others_could_enter_is_not_used_for_copies(shipped_bundle: bytes) -> None:
    path, _ = placed(shipped_bundle)
    loose = os.path.dirname(path)
    os.chmod(loose, 0o777)  # as if another user had made it first
    os.unlink(path)
    again, content = placed(shipped_bundle)
    assert content == "the client's CA\n"
    assert os.path.dirname(again) != loose
    assert stat.S_IMODE(os.lstat(os.path.dirname(again)).st_mode) == 0o700
