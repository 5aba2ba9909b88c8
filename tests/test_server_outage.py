"""A Spark Connect server that pauses or dies during fmin (a server of this module's own)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
from hyperopt import base, fmin, hp, rand

from connect_trials import ConnectTrials
from connect_trials.errors import ClusterUnavailableError
from connect_trials.server import LocalConnectServer
from connect_trials.session import SERVER_GONE_AFTER_S
from tests.test_driver_restart_exit import restart_after_the_third_run


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    with LocalConnectServer(master="local[2]", state_dir=tmp_path_factory.mktemp("outage-server")) as server:
        yield server


@pytest.fixture(scope="module")
def own_spark(own_server):
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(own_server.url).create()
    session.range(0, 1, 1, 1).mapInPandas(lambda it: it, "id long").collect()
    try:
        yield session
    finally:
        session.stop()


def jvm_of(server: LocalConnectServer) -> int:
    """The server's JVM: the java process in the process group its launcher leads."""
    pgid = server._proc.pid
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                comm, fields = f.read().split(") ", 1)
        except OSError:
            continue
        if int(fields.split()[2]) == pgid and comm.endswith("(java"):
            return int(entry)
    raise AssertionError("the server's JVM was not found")


def running_signal() -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(120)
    return listener, listener.getsockname()[1]


def test_a_server_paused_for_seconds_costs_no_trial(own_server, own_spark):
    listener, port = running_signal()

    def objective(x: float) -> float:
        import socket
        import time

        socket.create_connection(("127.0.0.1", port)).close()  # "I am running"
        time.sleep(2)
        return x

    def pause_the_server_once_a_trial_runs() -> None:
        listener.accept()[0].close()
        jvm = jvm_of(own_server)
        os.kill(jvm, signal.SIGSTOP)
        time.sleep(8)  # the outage itself: a paused server, as in a GC pause or a blip
        os.kill(jvm, signal.SIGCONT)

    pauser = threading.Thread(target=pause_the_server_once_a_trial_runs, daemon=True)
    pauser.start()
    trials = ConnectTrials(parallelism=2, spark_session=own_spark)
    fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 4, trials=trials, show_progressbar=False)
    pauser.join(30)
    listener.close()
    assert trials.count_successful_trials() == 4
    assert trials.count_cancelled_trials() == 0 and trials.count_failed_trials() == 0


class FlakyProxy:
    """A loopback TCP proxy in front of the server that can refuse connections for a while:
    a network blip or a load balancer's restart, as the client sees it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._serve(self.listener)

    def _serve(self, listener: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def refuse_for(self, seconds: float) -> None:
        """Drop every connection and refuse new ones for ``seconds``, then accept again."""
        self.close()
        for connection in self.connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        self.connections.clear()
        time.sleep(seconds)  # the outage itself
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self._serve(self.listener)

    def close(self) -> None:
        # shutdown() first: close() alone leaves the socket listening while accept() blocks on it.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_connections_refused_for_seconds_cost_no_trial(own_server):
    from pyspark.sql import SparkSession

    proxy = FlakyProxy(own_server.port)
    # The token is sent to the host name "localhost" only (no TLS).
    session = SparkSession.builder.remote(f"sc://localhost:{proxy.port}/;token={own_server.token}").create()
    listener, port = running_signal()

    def objective(x: float) -> float:
        import socket
        import time

        socket.create_connection(("127.0.0.1", port)).close()  # "I am running"
        time.sleep(3)
        return x

    def blip_once_a_trial_runs() -> None:
        listener.accept()[0].close()
        proxy.refuse_for(6)

    blip = threading.Thread(target=blip_once_a_trial_runs, daemon=True)
    blip.start()
    try:
        trials = ConnectTrials(parallelism=2, spark_session=session)
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 4, trials=trials, show_progressbar=False)
        blip.join(30)
        assert trials.count_successful_trials() == 4
        assert trials.count_cancelled_trials() == 0 and trials.count_failed_trials() == 0
    finally:
        listener.close()
        session.stop()
        proxy.close()


def test_a_dead_server_fails_fmin_in_tens_of_seconds_and_keeps_finished_trials(
    own_server, own_spark, tmp_path
):
    listener, port = running_signal()
    first_done = tmp_path / "first-trial-done"

    def objective(x: float) -> float:
        import os
        import socket
        import time

        if not os.path.exists(first_done):
            open(first_done, "w").close()
            return x
        socket.create_connection(("127.0.0.1", port)).close()  # the second trial runs
        time.sleep(300)
        return x

    killed_at: list[float] = []

    def kill_the_server_once_the_second_trial_runs() -> None:
        listener.accept()[0].close()
        killed_at.append(time.monotonic())
        os.killpg(own_server._proc.pid, signal.SIGKILL)

    threading.Thread(target=kill_the_server_once_the_second_trial_runs, daemon=True).start()
    trials = ConnectTrials(parallelism=1, spark_session=own_spark, reconnect_timeout=SERVER_GONE_AFTER_S)
    with pytest.raises(ClusterUnavailableError, match="refused connections|did not come back"):
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 3, trials=trials, show_progressbar=False)
    failed_after = time.monotonic() - killed_at[0]
    listener.close()
    assert failed_after < SERVER_GONE_AFTER_S + 15, f"fmin took {failed_after:.0f} s to give up"
    states = [t["state"] for t in trials._dynamic_trials]
    assert states == [base.JOB_STATE_DONE, base.JOB_STATE_CANCEL]
    # The in-flight trial did not fail: the cluster went away. Its child run says so.
    import mlflow

    uri = os.environ["MLFLOW_TRACKING_URI"]  # a registry URI of its own: MLflow asks a dead session otherwise
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    [child] = client.search_runs(  # this fmin's trial 1: the latest of that tid in the test experiment
        [os.environ["MLFLOW_EXPERIMENT_ID"]], filter_string="tags.trial_tid = '1'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    assert child.info.status == "KILLED" and child.data.tags["trial_status"] == "cancelled"


def test_a_server_restarted_on_its_port_with_its_token_costs_only_the_trials_in_flight(tmp_path):
    """A driver restart: the server is killed and started again 5 s later at the same URL.
    The search goes on in a new session; the trials in flight run once more; all end DONE."""
    import mlflow
    from pyspark.sql import SparkSession

    server = LocalConnectServer(master="local[2]", state_dir=tmp_path / "restarting").start()
    session = SparkSession.builder.remote(server.url).create()
    listener, port = running_signal()
    runs: list[str] = []

    def objective(x: float) -> float:
        import socket
        import time

        socket.create_connection(("127.0.0.1", port)).close()  # "a run of a trial starts"
        time.sleep(2)
        return x

    restarted = restart_after_the_third_run(listener, server, runs)
    try:
        trials = ConnectTrials(parallelism=2, spark_session=session, reconnect_timeout=60)
        fmin(objective, hp.uniform("x", 0, 1), rand.suggest, 6, trials=trials, show_progressbar=False)
        assert restarted.is_set()
        assert [t["state"] for t in trials._dynamic_trials] == [base.JOB_STATE_DONE] * 6
        # 6 trials, and at most the 2 in flight at the kill (plus the one starting) ran again.
        assert 6 <= len(runs) <= 9
        assert trials.spark_session is not session
        assert trials.spark_session.range(3).count() == 3  # the new session is live
        attempts = [(t["misc"].get("connect_trials") or {}).get("attempt") for t in trials._dynamic_trials]
        assert all(a in (0, 1) for a in attempts), attempts
        client = mlflow.MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments()]
        left = [r for r in client.search_runs(experiments) if r.info.status == "RUNNING"]
        assert left == []
    finally:
        listener.close()
        try:
            trials.spark_session.stop()
        except Exception:  # noqa: BLE001
            pass
        server.stop()
