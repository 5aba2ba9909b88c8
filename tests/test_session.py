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
