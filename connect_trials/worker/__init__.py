"""The code that runs one trial: in its ``mapInPandas`` task on a Spark executor, or in the
user's own process in debug mode (``inline.py``). Which of the two is explicit: a
:class:`Host`.

The cluster has neither connect_trials nor hyperopt installed, so this package travels by
value inside every trial job (``job.py`` registers it with pyspark's cloudpickle). It imports
nothing but the standard library at module level, and nothing from the client side.

What happens in a trial (:func:`run_objective`):
1. The client's Python and pyspark versions are checked, and so is the task attempt.
2. The objective arrives (``objective.py``) with the fmin's environment (tracking URI,
   experiment id, credentials), which travels once per fmin and never inside a Spark plan;
   the trial's own variables (its child run's id) ride in the job.
3. Files the client's MLflow settings name are placed on the worker (``client_files.py``).
   MLflow calls go to the trial's child run, or to a task-local store whose records come
   back in the row (``relay.py``); the objective sees an empty run stack, and only the runs
   it left open are ended (``mlflow_env.py``).
4. What the objective prints is captured (``capture.py``), and so are the warnings it raised
   (``reported.py``), so that the client can show them.
5. The environment and MLflow's process settings are restored, and the trial answers with
   one row (``row.py``).

Modules: ``host`` (where it runs), ``row`` (the row protocol), ``trial`` (the steps above),
``objective``, ``capture``, ``reported``, ``mlflow_env``, ``relay``, ``client_files``.
"""

from connect_trials.worker.capture import OUTPUT_TAIL_BYTES
from connect_trials.worker.client_files import SHIPPED_FILE_PREFIX
from connect_trials.worker.host import Host
from connect_trials.worker.objective import ObjectiveRef, objective_payload
from connect_trials.worker.relay import MAX_RELAYED_ARTIFACT_BYTES
from connect_trials.worker.row import (
    MAX_OBJECTIVE_ATTEMPTS,
    RESULT_SCHEMA,
    STATUS_ATTEMPTS_EXHAUSTED,
    STATUS_MISMATCH,
    STATUS_RAISED,
    STATUS_RETURNED,
    TrialRetriedError,
)
from connect_trials.worker.trial import run_objective, trial_task

__all__ = [
    "MAX_OBJECTIVE_ATTEMPTS",
    "MAX_RELAYED_ARTIFACT_BYTES",
    "OUTPUT_TAIL_BYTES",
    "RESULT_SCHEMA",
    "SHIPPED_FILE_PREFIX",
    "STATUS_ATTEMPTS_EXHAUSTED",
    "STATUS_MISMATCH",
    "STATUS_RAISED",
    "STATUS_RETURNED",
    "Host",
    "ObjectiveRef",
    "TrialRetriedError",
    "objective_payload",
    "run_objective",
    "trial_task",
]
