"""Errors that connect_trials raises to its callers."""


class ClusterUnavailableError(RuntimeError):
    """The Spark Connect server stopped answering during fmin.

    Every trial that had finished is kept in the trials object; trials that were running
    are marked cancelled.
    """
