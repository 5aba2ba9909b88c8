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


def test_the_watchdog_keeps_quiet_while_the_server_accepts_and_speaks_once_it_refuses():
    import socket
    import threading

    from connect_trials.session import ServerWatchdog

    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    gone: list[str] = []
    declared = threading.Event()

    def on_gone(reason: str) -> None:
        gone.append(reason)
        declared.set()

    with ServerWatchdog(address, on_gone, gone_after=0.5, probe_every=0.05):
        for _ in range(15):  # 15 probes (0.75 s > gone_after), all accepted
            listener.settimeout(5)
            listener.accept()[0].close()
        assert not declared.is_set()
        listener.close()  # the server dies: connections are refused from now on
        assert declared.wait(5)
    assert len(gone) == 1 and "refused connections" in gone[0]


def test_a_classic_or_unknown_session_has_no_address_to_watch():
    from connect_trials.session import server_address

    assert server_address(object()) is None


def test_a_session_declared_dead_ends_the_retry_loops_already_under_way():
    import grpc
    from pyspark.sql.connect.client.retries import DefaultPolicy, Retrying
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    from connect_trials.session import give_up_quickly

    class Client:
        policies = [DefaultPolicy()]  # ~10 minutes of retries

        def get_retry_policies(self):
            return list(self.policies)

        def set_retry_policies(self, policies):
            self.policies = list(policies)

    class Unavailable(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def trailing_metadata(self):
            return ()

        def details(self):
            return "connection refused"

    session = ConnectSession.__new__(ConnectSession)
    session.__dict__["_client"] = Client()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the watchdog declares the server gone meanwhile
        sleeps.append(seconds)
        if len(sleeps) == 1:
            give_up_quickly(session)

    try:
        for attempt in Retrying(session.__dict__["_client"].get_retry_policies(), sleep=sleep):
            with attempt:
                raise Unavailable()
    except Unavailable:
        pass
    assert len(sleeps) == 1  # not the 15 retries of the default policy


def test_a_call_asleep_in_a_minute_long_back_off_wakes_when_the_server_is_declared_gone():
    """The CI run that hung: a retry loop (pyspark's release of an interrupted execution, in a
    thread the interpreter joins at exit) had gone to sleep for a 51 s back-off before the
    watchdog spoke. A real Connect client, aimed at a port where nothing listens."""
    import socket
    import threading

    from pyspark.sql import SparkSession
    from pyspark.sql.connect.client.retries import DefaultPolicy

    from connect_trials.session import give_up_quickly, wakeable_backoffs

    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    spark = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").create()
    client = spark.client
    client.set_retry_policies([DefaultPolicy(initial_backoff=60_000, jitter=0)])
    wakeable_backoffs(spark)
    wakeable_backoffs(spark)  # a second fmin on the session changes nothing

    asleep = threading.Event()
    make_retrying = client._retrying

    def watched_retrying():
        loop = make_retrying()
        backoff = loop._sleep

        def sleep(seconds):
            asleep.set()
            backoff(seconds)

        loop._sleep = sleep
        return loop

    client._retrying = watched_retrying
    failed: list[BaseException] = []

    def call():
        try:
            spark.range(1).collect()
        except BaseException as exc:
            failed.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        assert asleep.wait(30), "the call never reached its back-off"
        give_up_quickly(spark)
        caller.join(15)  # the back-off alone is 60 s
        assert not caller.is_alive(), "the call slept on after the server was declared gone"
        assert failed, "a call to a server that is not there must fail"
    finally:
        spark.client.close()
