"""The arguments of ``ConnectTrials`` and of its ``fmin``, checked before any job runs: each
error names the argument and the fix. Also which session and parallelism they come to."""

from __future__ import annotations

import logging
import math
import numbers
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hyperopt import tpe

from connect_trials import cluster
from connect_trials.session import session_kind

logger = logging.getLogger("connect_trials")

# Parallelism when it is not given and the cluster's task slots cannot be learned.
FALLBACK_PARALLELISM = 1
# Hard cap on the number of concurrent hyperopt tasks (Spark jobs), as SparkTrials'.
MAX_CONCURRENT_JOBS_ALLOWED = 128


@dataclass(frozen=True)
class FminCall:
    """One fmin call's arguments, checked and with hyperopt's defaults filled in."""

    called_at: float  # time.monotonic(): the timeout counts from here, uploads included
    max_evals: int  # sys.maxsize when there is no limit
    unlimited: bool
    algo: Callable[..., Any]
    loss_threshold: float | None
    max_queue_len: int
    rstate: np.random.Generator


def check_fmin_call(
    fn: Any, max_evals: Any, algo: Any, loss_threshold: Any, default_loss_threshold: float | None,
    max_queue_len: Any, rstate: Any, pass_expr_memo_ctrl: Any, catch_eval_exceptions: Any,
) -> FminCall:  # fmt: skip
    called_at = time.monotonic()
    if pass_expr_memo_ctrl:
        raise ValueError(
            "pass_expr_memo_ctrl is not supported by ConnectTrials: the objective runs on a "
            "Spark worker and receives the resolved point only. Remove pass_expr_memo_ctrl."
        )
    if catch_eval_exceptions:
        raise ValueError(
            "catch_eval_exceptions is not supported by ConnectTrials: a failing trial is "
            "always recorded as ERROR and the search goes on. Remove catch_eval_exceptions."
        )
    if not callable(fn):
        raise TypeError(f"fn must be a callable objective, not {type(fn).__name__}")
    unlimited = max_evals is None or max_evals == sys.maxsize  # hyperopt.fmin's None arrives so
    if max_evals is None:
        max_evals = sys.maxsize
    if isinstance(max_evals, bool) or not isinstance(max_evals, numbers.Integral) or max_evals < 0:
        raise ValueError(f"max_evals must be a non-negative integer, not {max_evals!r}")
    integral = isinstance(max_queue_len, numbers.Integral) and not isinstance(max_queue_len, bool)
    if not integral or max_queue_len < 1:
        raise ValueError(f"max_queue_len must be a positive integer, not {max_queue_len!r}")
    if loss_threshold is not None:
        validate_loss_threshold(loss_threshold)
    else:
        loss_threshold = default_loss_threshold
    if algo is None:
        algo = tpe.suggest
        logger.warning("TPE is being used as the default algorithm.")
    if rstate is None:
        seed = os.environ.get("HYPEROPT_FMIN_SEED", "")
        rstate = np.random.default_rng(int(seed)) if seed else np.random.default_rng()
    return FminCall(called_at, int(max_evals), unlimited, algo, loss_threshold, int(max_queue_len), rstate)


def decide_parallelism(requested_parallelism: int | None, spark_default_parallelism: int | None) -> int:
    """The parallelism fmin will use; see ``parallelism`` in the class docstring."""
    if requested_parallelism is None or requested_parallelism <= 0:
        if spark_default_parallelism is None:
            parallelism = FALLBACK_PARALLELISM
            logger.warning(
                "Because the requested parallelism was None or a non-positive value, "
                f"and the cluster's task slots could not be learned over Spark Connect, "
                f"parallelism will be set to ({parallelism}). "
                "We recommend setting parallelism explicitly to a positive value because "
                "the total of Spark task slots is subject to cluster sizing."
            )
        else:
            parallelism = max(spark_default_parallelism, 1)
            logger.warning(
                "Because the requested parallelism was None or a non-positive value, "
                f"parallelism will be set to ({parallelism}), which is Spark's default "
                f"parallelism ({spark_default_parallelism}), or 1, whichever is greater. "
                "We recommend setting parallelism explicitly to a positive value because "
                "the total of Spark task slots is subject to cluster sizing."
            )
    else:
        parallelism = requested_parallelism
    cap = MAX_CONCURRENT_JOBS_ALLOWED
    if parallelism > cap:
        logger.warning(
            f"Parallelism ({parallelism}) is capped at SparkTrials.MAX_CONCURRENT_JOBS_ALLOWED ({cap})."
        )
        parallelism = cap
    return parallelism




def accepted_resource_profile(spark: Any, resource_profile: Any) -> Any:
    """The profile the trial tasks run with: checked against the cluster, None on a local master."""
    if resource_profile is None:
        return None
    from pyspark.resource import ResourceProfile

    if not isinstance(resource_profile, ResourceProfile):
        raise TypeError(
            "resource_profile must be a pyspark.resource.ResourceProfile (built with "
            f"ResourceProfileBuilder), not {type(resource_profile).__name__}"
        )
    master = cluster.spark_conf(spark, "spark.master") or ""
    if master.startswith("local"):
        logger.warning(
            "ConnectTrials was constructed with a ResourceProfile, but the cluster's master "
            f"({master}) does not support stage-level scheduling; it is ignored."
        )
        return None
    cluster.check_task_cpus(spark, resource_profile)
    cluster.bind_resource_profile(spark, resource_profile)
    return resource_profile





def resolve_session(spark_session: Any, create: bool = True) -> Any:
    """The given session, else the active one, else (with ``create``) a new one."""
    if spark_session is None:
        spark_session = _default_session(create)
        if spark_session is None:
            return None
    if session_kind(spark_session) is None:
        raise TypeError(
            "spark_session must be a pyspark SparkSession (Spark Connect or classic), not "
            f"{type(spark_session).__module__}.{type(spark_session).__name__}; pass "
            "SparkSession.builder.remote('sc://host:15002').getOrCreate() or leave it None"
        )
    return spark_session


def _default_session(create: bool = True) -> Any:
    """The session a script written for ``SparkTrials()`` means: the active one (Spark Connect
    or classic; a Connect session made in another thread is the process's default), else
    ``SparkSession.builder.getOrCreate()``, which honours ``SPARK_REMOTE``.

    ``builder.getOrCreate()`` alone is not enough: once a Connect session exists the builder
    is in Connect mode and, without ``SPARK_REMOTE``, refuses with CONNECT_URL_NOT_SET."""
    from pyspark.sql import SparkSession

    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        connect_session = ConnectSession.getActiveSession() or ConnectSession._get_default_session()
    except ImportError:  # pragma: no cover - pyspark without the connect extra
        connect_session = None
    if connect_session is not None:
        return connect_session
    try:
        classic = SparkSession.getActiveSession()
    except Exception:  # noqa: BLE001 - Connect mode without a URL: no classic session here
        classic = None
    if classic is not None or not create:
        return classic
    return SparkSession.builder.getOrCreate()



def validate_parallelism(parallelism: Any) -> None:
    if parallelism is None:
        return
    if isinstance(parallelism, bool) or not isinstance(parallelism, numbers.Integral):
        raise TypeError(
            f"parallelism must be None or an integer, not {parallelism!r}; e.g. ConnectTrials(parallelism=4)"
        )


def validate_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, numbers.Real)
        or not math.isfinite(float(timeout))
        or timeout <= 0
    ):
        raise ValueError(
            "The timeout argument should be None or a positive value. "
            f"Given value: {timeout}. Pass seconds as a positive number, or None for no timeout."
        )


# How long fmin waits for a Spark Connect server that stopped answering (ConnectTrials'
# reconnect_timeout): a driver restarted by an admin or a managed cluster is back well within.
DEFAULT_RECONNECT_TIMEOUT_S = 120.0


def validated_reconnect_timeout(reconnect_timeout: Any) -> float:
    if (
        isinstance(reconnect_timeout, bool)
        or not isinstance(reconnect_timeout, numbers.Real)
        or not math.isfinite(float(reconnect_timeout))
        or reconnect_timeout <= 0
    ):
        raise ValueError(
            f"reconnect_timeout must be a positive number of seconds, not {reconnect_timeout!r}: how "
            "long fmin waits for a Spark Connect server that stopped answering (default "
            f"{DEFAULT_RECONNECT_TIMEOUT_S:.0f})."
        )
    return float(reconnect_timeout)


def validate_loss_threshold(loss_threshold: Any) -> None:
    if loss_threshold is None:
        return
    if (
        isinstance(loss_threshold, bool)
        or not isinstance(loss_threshold, numbers.Real)
        or math.isnan(float(loss_threshold))
    ):
        raise ValueError(
            f"The loss_threshold argument should be None or a numeric value. Given value: {loss_threshold}"
        )


def points_given_to_hyperopt_fmin(caller: Any) -> list[dict[str, Any]] | None:
    """The ``points_to_evaluate`` of the ``hyperopt.fmin`` call that called ``trials.fmin``
    (``caller``: its frame), or None. hyperopt does not pass them on to ``trials.fmin``, and
    drops them without a word when a trials object is given; its frame still holds them (the
    local of that name in hyperopt 0.2.7 and 0.3.0). Only a frame of hyperopt's own ``fmin``
    (by its name and file, so that a wrapper of it still leads there) is read."""
    module = sys.modules.get("hyperopt.fmin")
    module_file = getattr(module, "__file__", None)
    if caller is None or module_file is None:
        return None
    code = caller.f_code
    if code.co_name != "fmin" or os.path.abspath(code.co_filename) != os.path.abspath(module_file):
        return None
    points = caller.f_locals.get("points_to_evaluate")
    if points is None:
        return None
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise TypeError(
            "points_to_evaluate must be a list of dicts, one per point, each mapping the space's "
            f"labels to values (hp.choice: the index), not {type(points).__name__}"
        )
    return points
