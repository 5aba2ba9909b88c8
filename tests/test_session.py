"""The retry policy connect_trials puts on a Connect client during fmin (no server needed)."""

from __future__ import annotations


def test_bounded_retries_give_the_client_its_policies_back_unless_the_server_is_gone():
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    from connect_trials.errors import ClusterUnavailableError
    from connect_trials.session import bounded_retries

    class Client:
        policies = ["default"]

        def get_retry_policies(self):
            return list(self.policies)

        def set_retry_policies(self, policies):
            self.policies = list(policies)

    session = ConnectSession.__new__(ConnectSession)  # no server: only its client is used
    session.__dict__["_client"] = Client()
    client = session.__dict__["_client"]
    for raised in (None, KeyboardInterrupt, ValueError):
        try:
            with bounded_retries(session):
                assert client.policies != ["default"]
                if raised is not None:
                    raise raised()
        except (KeyboardInterrupt, ValueError):
            pass
        assert client.policies == ["default"], raised
    try:
        with bounded_retries(session):
            raise ClusterUnavailableError("gone")
    except ClusterUnavailableError:
        pass
    assert client.policies != ["default"]


def test_the_watchdog_keeps_quiet_while_the_server_answers_and_speaks_once_it_refuses():
    import threading
    from concurrent import futures

    import grpc
    from pyspark.sql.connect.client.core import DefaultChannelBuilder

    from connect_trials.session import Probe, ProbeResult, ServerProbe, ServerWatchdog

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))  # answers every call
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    probe = ServerProbe(DefaultChannelBuilder(f"sc://127.0.0.1:{port}"), server_port=port)
    answered: list[ProbeResult] = []
    enough = threading.Event()
    gone: list[str] = []
    declared = threading.Event()

    def counted() -> ProbeResult:
        result = probe()
        if result.kind is Probe.ANSWERED:
            answered.append(result)
            if len(answered) == 15:  # 15 probes (0.75 s > gone_after), all answered
                enough.set()
        return result

    def on_gone(reason: str) -> None:
        gone.append(reason)
        declared.set()

    with ServerWatchdog(counted, on_gone, gone_after=0.5, probe_every=0.05):
        assert enough.wait(30)
        assert not declared.is_set()
        server.stop(None)  # the server dies: connections are refused from now on
        assert declared.wait(10)
    assert len(gone) == 1 and "refused connections" in gone[0]


def test_a_classic_or_unknown_session_has_no_address_to_watch():
    from connect_trials.session import server_address

    assert server_address(object()) is None


def _session_on(port: int):  # type: ignore[no-untyped-def]
    """A real Connect client for ``port`` (nothing is sent until a call is made)."""
    from pyspark.sql import SparkSession

    return SparkSession.builder.remote(f"sc://127.0.0.1:{port}").create()


def _port_where_nothing_listens() -> int:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as closed:
        return closed.getsockname()[1]


def _what_the_client_was(client):  # type: ignore[no-untyped-def]
    policies = client.get_retry_policies()
    return client.__dict__.get("_retrying"), policies, [vars(policy).copy() for policy in policies]


def _call_asleep_in_a_minute_long_back_off(spark):  # type: ignore[no-untyped-def]
    """A call on ``spark`` in a thread, and an event set once its retry loop sleeps."""
    import threading

    asleep = threading.Event()
    make_retrying = spark.client._retrying

    def retrying():  # type: ignore[no-untyped-def]
        loop = make_retrying()
        backoff = loop._sleep

        def sleep(seconds: float) -> None:
            asleep.set()
            backoff(seconds)

        loop._sleep = sleep
        return loop

    spark.client._retrying = retrying
    failed: list[BaseException] = []

    def call() -> None:
        try:
            spark.range(1).collect()
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            failed.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert asleep.wait(30), "the call never reached its back-off"
    return caller, failed


def test_a_session_leaves_the_watch_with_its_own_retrying_and_policy_objects_however_the_block_ends():
    import socket

    from pyspark.sql.connect.client.retries import DefaultPolicy

    from connect_trials.session import watched

    with socket.create_server(("127.0.0.1", 0)) as listener:  # the kernel accepts: a live server
        spark = _session_on(listener.getsockname()[1])
        client = spark.client
        try:
            client.set_retry_policies([DefaultPolicy(max_retries=7), DefaultPolicy(initial_backoff=9)])
            found = _what_the_client_was(client)
            for raised in (None, KeyboardInterrupt, ValueError):
                try:
                    with watched(spark, lambda reason: None) as watch:
                        assert client.__dict__.get("_retrying") is not None  # back-offs are wakeable
                        if raised is not None:
                            raise raised()
                except (KeyboardInterrupt, ValueError):
                    pass
                assert watch.gone_reason is None
                now = _what_the_client_was(client)
                assert now[0] is found[0] is None  # the class's own _retrying again
                assert [id(p) for p in now[1]] == [id(p) for p in found[1]]  # the same objects
                assert now[2] == found[2], raised  # max_retries and all, unchanged
        finally:
            client.close()


def test_fmins_watching_one_session_at_once_share_its_loops_and_the_last_puts_them_back():
    import socket

    from connect_trials.session import watched

    with socket.create_server(("127.0.0.1", 0)) as listener:
        spark = _session_on(listener.getsockname()[1])
        try:
            first, second = watched(spark, print), watched(spark, print)
            first.__enter__()
            second.__enter__()
            wakeable = spark.client.__dict__["_retrying"]
            first.__exit__(None, None, None)  # not in the order they came
            assert spark.client.__dict__["_retrying"] is wakeable  # the second fmin still runs
            second.__exit__(None, None, None)
            assert "_retrying" not in spark.client.__dict__
        finally:
            spark.client.close()


def test_a_server_declared_gone_ends_the_calls_in_flight_and_leaves_the_users_policy_objects_alone():
    """The CI hang (a call asleep in a 51 s back-off kept the process from exiting), now with
    the real watchdog on a port that refuses: the call ends, the user's policy objects keep
    their retries, and the dead session gives up in seconds afterwards (spark.stop())."""
    import threading

    from pyspark.sql.connect.client.retries import DefaultPolicy

    from connect_trials.session import watched

    spark = _session_on(_port_where_nothing_listens())
    users_policy = DefaultPolicy(initial_backoff=60_000, jitter=0)  # 15 retries, a minute apart
    spark.client.set_retry_policies([users_policy])
    declared = threading.Event()
    reasons: list[str] = []

    def on_gone(reason: str) -> None:
        reasons.append(reason)
        declared.set()

    with watched(spark, on_gone, gone_after=0.3, probe_every=0.05) as watch:
        caller, failed = _call_asleep_in_a_minute_long_back_off(spark)
        assert declared.wait(30)
        caller.join(15)  # the back-off alone is 60 s
        assert not caller.is_alive(), "the call slept on after the server was declared gone"
        assert failed, "a call to a server that is not there must fail"
    assert len(reasons) == 1 and "refused connections" in reasons[0] and watch.gone_reason == reasons[0]
    assert users_policy.max_retries == 15  # never modified
    assert watch.found_policies == [users_policy]
    assert "_retrying" not in spark.client.__dict__
    stopping = threading.Thread(target=spark.stop, daemon=True)
    stopping.start()
    stopping.join(30)  # the user's policy would retry the release for 15 minutes
    assert not stopping.is_alive(), "spark.stop() on the dead session did not give up"


def test_a_cluster_unavailable_error_leaving_the_block_ends_the_calls_in_flight():
    """fmin's own evidence (a trial's call failed with UNAVAILABLE) before the watchdog's."""
    import pytest
    from pyspark.sql.connect.client.retries import DefaultPolicy

    from connect_trials.errors import ClusterUnavailableError
    from connect_trials.session import watched

    spark = _session_on(_port_where_nothing_listens())
    spark.client.set_retry_policies([DefaultPolicy(initial_backoff=60_000, jitter=0)])
    try:
        with pytest.raises(ClusterUnavailableError):
            with watched(spark, lambda reason: None) as watch:  # the watchdog's 20 s never pass
                caller, failed = _call_asleep_in_a_minute_long_back_off(spark)
                raise ClusterUnavailableError("the trial's call says the server is gone")
        caller.join(15)
        assert not caller.is_alive(), "the call slept on after fmin gave up on the server"
        assert failed and watch.gone_reason == "the trial's call says the server is gone"
    finally:
        spark.client.close()


def test_a_classic_or_unknown_session_is_not_watched():
    from connect_trials.session import watched

    with watched(object(), lambda reason: None) as watch:
        assert watch.address is None
