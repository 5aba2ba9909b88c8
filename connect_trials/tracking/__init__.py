"""MLflow on the client: the parent run of an fmin and one child run per trial.

The engine talks to MLflow only through :class:`FminTracker` (``hooks``); ``create_tracker``
decides whether tracking is on. :class:`MlflowTracker` records what Databricks' hyperopt
tracking records, under the same names, so existing dashboards and queries keep working::

    parent run ("fmin-<objective name>"; the caller's active run if there is one)
      params   max_evals, actual_parallelism, parallelism, timeout, max_queue_len,
               algo (the algorithm's module: hyperopt.tpe, hyperopt.rand, hyperopt.anneal)
      tags     runSource=hyperoptAutoTracking, space, fmin_uuid
      metrics  successful_trials_count, failed_trials_count, cancelled_trials_count,
               total_trials_count, best_trial_loss (logged at each improvement, with the
               number of finished trials as its step)
    child run per trial ("trial-<tid>"; "trial-pending" until its trial has run 1 s, or ends)
      tags     mlflow.parentRunId, fmin_uuid, runSource, trial_status (success / failure /
               cancelled), attempts (Spark task attempts, when the engine reports them);
               failures also error_type, error_message and the artifact error_traceback.txt
      params   the values the objective received (see ``hyperparameters``), written when
               the trial ends and only under names the run does not hold yet: what the
               objective logs itself (``mlflow.log_params``, autolog) wins
      metrics  loss (successful trials)
      status   FINISHED (success), FAILED (failure), KILLED (cancelled)

``fmin_uuid`` is the first six hex digits of the fmin's id. When the parent is a run that
already has one of these names (a second fmin in the same active run), this fmin writes
that name with the suffix ``_<fmin_uuid>``.

Workers get the tracking through environment variables: :meth:`FminTracker.worker_environ`
(tracking URI, experiment, the client's MLflow credentials and HTTP settings; shipped once
per fmin) and :meth:`FminTracker.trial_started` (``MLFLOW_RUN_ID``, the trial's child run).

Child runs are created ahead of the trials that take them, so that starting a trial never
waits for MLflow: a child's start time is when it was created (the first wave's at fmin's
start, later ones at most a few submissions early). A trial that runs for more than a second
gets its name and its ``trial_tid`` tag then; a shorter one gets them with its outcome (one
request fewer per trial: each costs the tracking server 15-25 ms of CPU). Runs created ahead
that no trial took are ended KILLED and deleted: they are not trials.

Tracking never fails an fmin: MLflow trouble is a warning, and every run fmin created ends
FINISHED, FAILED or KILLED, unless the tracking server is unreachable when fmin ends; then
one warning lists the runs left RUNNING.
"""

from connect_trials.tracking.hooks import (
    TRACKING_CONF,
    FminSettings,
    FminTracker,
    create_tracker,
    tracking_enabled,
)
from connect_trials.tracking.mlflow_runs import RUN_SOURCE
from connect_trials.tracking.outcome import RunStatus, TrialStatus

__all__ = [
    "RUN_SOURCE",
    "TRACKING_CONF",
    "FminSettings",
    "FminTracker",
    "RunStatus",
    "TrialStatus",
    "create_tracker",
    "tracking_enabled",
]
