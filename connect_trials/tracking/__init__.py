"""MLflow on the client: the parent run of an fmin and one child run per trial.

The engine talks to MLflow only through :class:`FminTracker` (``hooks``); ``create_tracker``
(``choice``) decides whether tracking is on. :class:`MlflowTracker` records what Databricks' hyperopt
tracking records, under the same names, so existing dashboards and queries keep working::

    parent run ("fmin-<objective name>"; the caller's active run if there is one)
      params   max_evals, actual_parallelism, parallelism, timeout, max_queue_len,
               algo (the algorithm's module: hyperopt.tpe, hyperopt.rand, hyperopt.anneal)
      tags     runSource=hyperoptAutoTracking, space, fmin_uuid
      metrics  successful_trials_count, failed_trials_count, cancelled_trials_count,
               total_trials_count, best_trial_loss (logged at each improvement, with the
               number of finished trials as its step)
    child run per trial ("trial-<tid>")
      tags     mlflow.parentRunId, fmin_uuid, runSource, trial_tid, hyperopt_vals (at its
               start), trial_status (success / failure / cancelled), attempts (Spark task
               attempts, when the engine reports them) and, for a DONE trial,
               hyperopt_result (its status and loss as returned, JSON) at its end;
               failures also error_type, error_message and the artifact error_traceback.txt
      params   the values the objective received (see ``hyperparameters``), written when
               the trial ends and only under names the run does not hold yet: what the
               objective logs itself (``mlflow.log_params``, autolog) wins
      metrics  loss (successful trials)
      status   FINISHED (success), FAILED (failure), KILLED (cancelled)

``fmin_uuid`` is the first six hex digits of the fmin's id (a search resumed with
``ConnectTrials.from_mlflow`` keeps its own). When the parent is a run that
already has one of these names (a second fmin in the same active run), this fmin writes
that name with the suffix ``_<fmin_uuid>``.

Workers get the tracking through environment variables: :meth:`FminTracker.worker_environ`
(tracking URI, experiment, the client's MLflow credentials and HTTP settings; shipped once
per fmin) and :meth:`FminTracker.trial_started` (``MLFLOW_RUN_ID``, the trial's child run). A
trial without a child run (tracking broke, or MLflow was too slow to create it) gets no run id:
the worker keeps the objective's MLflow logging local, and the client relays it into the
child run if one lands, or drops it. So no run exists that is not the parent or a trial's.

Child runs are owned by one ledger (``run_ledger``): created when their trial starts, in the
trial's own thread, already named ``trial-<tid>`` and tagged with ``trial_tid`` and
``hyperopt_vals``; ended once, with their trial's outcome, whatever ended the trial. None is
ever created ahead or deleted.

Tracking never fails an fmin: MLflow trouble is a warning, and every run fmin created ends
FINISHED, FAILED or KILLED, unless the tracking server is unreachable when fmin ends; then
one warning lists the runs left RUNNING. URIs and errors we print lose their credentials.
"""

from connect_trials.tracking.choice import create_tracker
from connect_trials.tracking.hooks import FminTracker
from connect_trials.tracking.mlflow_runs import RUN_SOURCE
from connect_trials.tracking.outcome import RunStatus, TrialStatus
from connect_trials.tracking.settings import TRACKING_CONF, FminSettings, tracking_enabled

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
