"""The Spark job executor's cancellation and shipping rules, with a fake session (no server)."""

from __future__ import annotations

import logging
import pickle
import threading

import pytest

from connect_trials import job, worker
from connect_trials.job import OutcomeKind, SparkJobExecutor, TrialRequest
from connect_trials.worker.objective import load_objective
from tests.conftest import captured_log


class FakeServer:
    """Jobs register under the tags their thread had when they reached the server;
    interruptTag ends the registered ones only, as a real server does."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[int, tuple[set[str], threading.Event]] = {}
        self.interrupts: list[str] = []
        self.collect_called = threading.Event()
        self.may_reach_server = threading.Event()
        self.may_reach_server.set()
        self.collects = 0


class FakeJob:
    def __init__(self, session: FakeSession, tid: int) -> None:
        self.session = session
        self.tid = tid

    def collect(self):
        server = self.session.server
        server.collects += 1
        server.collect_called.set()
        assert server.may_reach_server.wait(10)
        interrupted = threading.Event()
        with server.lock:
            server.running[self.tid] = (set(self.session.tags()), interrupted)
        if not interrupted.wait(10):
            raise AssertionError("the job was never interrupted")
        raise RuntimeError("OPERATION_CANCELED")


class FakeSession:
    def __init__(self) -> None:
        self.server = FakeServer()
        self._local = threading.local()
        self.next_tid = 0

    def tags(self) -> set[str]:
        return self._local.__dict__.setdefault("tags", set())

    def addTag(self, tag: str) -> None:
        self.tags().add(tag)

    def removeTag(self, tag: str) -> None:
        self.tags().discard(tag)

    def interruptTag(self, tag: str) -> None:
        with self.server.lock:
            self.server.interrupts.append(tag)
            for tags, interrupted in self.server.running.values():
                if tag in tags:
                    interrupted.set()

    def range(self, *args):
        return self

    schema = None  # stands for the source DataFrame too

    def mapInPandas(self, task, schema):
        return FakeJob(self, self.next_tid)


def executor_on(session) -> SparkJobExecutor:
    return SparkJobExecutor(session, "f" * 32, pickle.dumps(len))


def test_no_job_is_submitted_after_cancel_all():
    session = FakeSession()
    executor = executor_on(session)
    executor.cancel_all()
    outcome = executor.run_trial(TrialRequest(0, pickle.dumps(1)))
    assert outcome.kind == OutcomeKind.CANCELLED
    assert session.server.collects == 0


def test_a_job_that_reaches_the_server_after_the_interruption_is_interrupted_again():
    session = FakeSession()
    session.server.may_reach_server.clear()
    executor = executor_on(session)
    outcomes = []
    thread = threading.Thread(target=lambda: outcomes.append(executor.run_trial(TrialRequest(0, b""))))
    thread.start()
    assert session.server.collect_called.wait(5)  # the job is on its way, not yet on the server
    executor.cancel_all()  # its interruptTag finds nothing to interrupt
    session.server.may_reach_server.set()  # now the job arrives
    thread.join(8)
    assert not thread.is_alive(), "the job that slipped through ran on"
    assert outcomes[0].kind == OutcomeKind.CANCELLED
    assert job.trial_tag("f" * 32, 0) in session.server.interrupts


def test_a_failed_interruption_is_a_warning():
    session = FakeSession()

    def broken_interrupt(tag):
        raise ConnectionError("server unreachable")

    session.interruptTag = broken_interrupt
    executor = executor_on(session)
    with captured_log("connect_trials", logging.WARNING) as out:
        executor.cancel_all()
    assert "could not interrupt the Spark jobs tagged" in out.getvalue()
    assert "server unreachable" in out.getvalue()


class RefusingArtifacts:
    def addArtifacts(self, *paths, file=False):
        raise RuntimeError("artifacts are disabled on this server")


@pytest.fixture
def connect_kind(monkeypatch):
    monkeypatch.setattr(job, "session_kind", lambda spark: job.CONNECT)


def test_a_small_objective_whose_upload_fails_rides_inline_with_a_warning_and_no_credentials(connect_kind):
    blob = pickle.dumps(len)
    with captured_log("connect_trials", logging.WARNING) as out:
        ref = job.ship_objective(RefusingArtifacts(), blob, {"MLFLOW_TRACKING_TOKEN": "secret"})
    assert isinstance(ref, bytes)
    assert b"secret" not in ref
    assert "could not ship the objective as a session artifact" in out.getvalue()
    assert "artifacts are disabled" in out.getvalue()
    assert load_objective(ref) == (len, {})


def test_a_large_objective_whose_upload_fails_is_refused_with_the_fix(connect_kind):
    blob = b"x" * (job.MAX_INLINE_OBJECTIVE_BYTES + 1)
    with pytest.raises(RuntimeError, match="refused above 8 MB.*load large data inside it"):
        job.ship_objective(RefusingArtifacts(), blob, {})


def test_the_artifact_holds_the_fmin_environ_and_the_job_plan_does_not(connect_kind, tmp_path):
    uploaded = {}

    class Artifacts:
        def addArtifacts(self, path, file=False):
            with open(path, "rb") as f:
                uploaded[path.rsplit("/", 1)[-1]] = f.read()

    ref = job.ship_objective(Artifacts(), pickle.dumps(len), {"MLFLOW_TRACKING_TOKEN": "secret"})
    assert isinstance(ref, str) and ref in uploaded
    assert b"secret" in uploaded[ref]
    task = worker.trial_task(ref, pickle.dumps(1), {"MLFLOW_RUN_ID": "r1"})
    from pyspark import cloudpickle

    assert b"secret" not in cloudpickle.dumps(task)


def test_a_crashed_python_worker_gets_a_clear_message():
    executor = executor_on(FakeSession())
    exc = RuntimeError("org.apache.spark.SparkException: Python worker exited unexpectedly (crashed)")
    outcome = executor._outcome_of_exception(3, exc)
    assert outcome.kind == OutcomeKind.FAILED
    assert outcome.error_text.startswith("the objective's Python worker died while it ran this trial")
