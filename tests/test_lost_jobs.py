"""A trial whose jobs were lost with their server or session, on a real Spark Connect server:
the losses say nothing against the objective, so its next job runs it (the worker does not
count them as the objective's attempts)."""

from __future__ import annotations

import pickle

from hyperopt import base

from connect_trials.job import OutcomeKind, SparkJobExecutor, TrialOutcome
from connect_trials.trial_loop import MAX_JOBS_LOST
from tests.test_scheduler import FakeRecovery, make_scheduler


class LostBeforeStarting:
    """A real executor whose first jobs of each trial were lost before they reached the server
    (a laptop's lid closed twice while the trial waited for a slot)."""

    runs_in_caller = False

    def __init__(self, executor: SparkJobExecutor, losses: int) -> None:
        self.executor = executor
        self.losses = losses
        self.requests: list[int] = []

    def run_trial(self, request):  # type: ignore[no-untyped-def]
        self.requests.append(request.tid)
        if self.requests.count(request.tid) <= self.losses:
            return TrialOutcome(request.tid, OutcomeKind.UNAVAILABLE, error_type="<class 'grpc.RpcError'>",
                                error_text="StatusCode.UNAVAILABLE: failed to connect")  # fmt: skip
        return self.executor.run_trial(request)

    def cancel_all(self) -> None:
        self.executor.cancel_all()


def test_a_trial_whose_jobs_were_lost_before_its_objective_started_still_runs_it(spark):
    executor = LostBeforeStarting(SparkJobExecutor(spark, "b" * 32, pickle.dumps(abs)), MAX_JOBS_LOST - 1)
    trials, scheduler = make_scheduler(executor, max_evals=1, parallelism=1, recovery=FakeRecovery())
    scheduler.run()
    trial = trials._dynamic_trials[0]
    assert executor.requests == [0] * MAX_JOBS_LOST
    assert trial["state"] == base.JOB_STATE_DONE, trial["misc"].get("error")
    assert trial["misc"]["connect_trials"]["attempt"] == 0  # the objective ran once
