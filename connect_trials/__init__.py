"""Distributed hyperopt over the Spark Connect client, with automated MLflow tracking."""

from connect_trials.errors import ClusterUnavailableError
from connect_trials.logs import configure_default_logger
from connect_trials.server import LocalCluster, LocalConnectServer
from connect_trials.trials import ConnectTrials

__version__ = "0.1.0"

configure_default_logger()

__all__ = ["ClusterUnavailableError", "ConnectTrials", "LocalCluster", "LocalConnectServer", "__version__"]
