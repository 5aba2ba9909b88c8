"""How a trial ends: what an outcome means for its document, and how its failure reads.

hyperopt's side has one way out for a trial (``TrialScheduler.trial_ended``); what it writes into
the trial is decided here, from the outcome alone: a returned value is validated by
hyperopt's rules (DONE, or ERROR if invalid), a raised or failed job is ERROR, and a job that
was cancelled, never submitted, or lost with its server is CANCEL.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from typing import Any

from hyperopt import base, pyll
from hyperopt.utils import coarse_utcnow

from connect_trials.job import OutcomeKind, TrialOutcome


@dataclass(frozen=True)
class TrialEnd:
    """What a trial's document becomes when it ends."""

    state: int  # base.JOB_STATE_DONE, JOB_STATE_ERROR or JOB_STATE_CANCEL
    result: dict[str, Any] | None = None
    error: tuple[str, str] | None = None  # (type, text), as misc["error"]
    outcome: TrialOutcome | None = None  # what came back from its job, if anything

    @classmethod
    def of(cls, outcome: TrialOutcome) -> TrialEnd:
        if outcome.kind is OutcomeKind.RETURNED:
            try:
                return cls(base.JOB_STATE_DONE, result=validated_result(outcome.value), outcome=outcome)
            except Exception as exc:  # noqa: BLE001 - hyperopt's own rules for results
                return cls.failed(str(type(exc)), traceback.format_exc(), outcome)
        if outcome.kind in (OutcomeKind.RAISED, OutcomeKind.FAILED):
            return cls.failed(outcome.error_type or "", outcome.error_text or "", outcome)
        return cls.cancelled(outcome)

    @classmethod
    def failed(cls, error_type: str, error_text: str, outcome: TrialOutcome | None = None) -> TrialEnd:
        return cls(base.JOB_STATE_ERROR, error=(error_type, error_text), outcome=outcome)

    @classmethod
    def cancelled(cls, outcome: TrialOutcome | None = None) -> TrialEnd:
        error = None if outcome is None else (outcome.error_type or "", outcome.error_text or "")
        return cls(base.JOB_STATE_CANCEL, error=error, outcome=outcome)

    def write_into(self, trial: dict[str, Any]) -> None:
        trial["state"] = self.state
        trial["refresh_time"] = coarse_utcnow()
        if self.result is not None:
            trial["result"] = self.result
        if self.error is not None:
            trial["misc"]["error"] = self.error
        outcome = self.outcome
        if outcome is not None and outcome.started_at is not None:
            trial["misc"]["connect_trials"] = {
                "started_at": outcome.started_at,
                "finished_at": outcome.finished_at,
                "attempt": outcome.attempt,
            }
        if outcome is not None and outcome.output is not None:
            trial["misc"]["output"] = outcome.output


def argument_of(domain: base.Domain, trial: dict[str, Any]) -> Any:
    """The value the objective receives for ``trial``, resolved on the client so that workers
    need no hyperopt."""
    spec = base.spec_from_misc(trial["misc"])
    memo = domain.memo_from_config(spec)
    return pyll.rec_eval(domain.expr, memo=memo, print_node_on_error=False)


def validated_result(value: Any) -> dict[str, Any]:
    """hyperopt's rules for what an objective may return (``Domain.evaluate``)."""
    import numbers

    from hyperopt.exceptions import InvalidLoss, InvalidResultStatus

    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        return {"loss": float(value), "status": base.STATUS_OK}  # type: ignore[arg-type]
    result = dict(value)
    if result.get("status") not in base.STATUS_STRINGS:
        raise InvalidResultStatus(result)
    if result["status"] == base.STATUS_OK:
        try:
            result["loss"] = float(result["loss"])
        except (TypeError, KeyError) as exc:
            raise InvalidLoss(result) from exc
    return result


def ok_loss(trial: dict[str, Any]) -> float:
    """The trial's loss if it counts towards the best one (status ok, not NaN), else inf."""
    result = trial["result"]
    loss = result.get("loss")
    if result.get("status") != base.STATUS_OK or loss is None or math.isnan(loss):
        return math.inf
    return float(loss)


# Lines of a failed trial's output shown after its traceback in the log.
_OUTPUT_EXCERPT_LINES = 20


def output_excerpt(output: str | None) -> str:
    """The last lines the failed trial printed, for its log line ('' if it printed nothing)."""
    lines = (output or "").rstrip().splitlines()[-_OUTPUT_EXCERPT_LINES:]
    if not lines:
        return ""
    return "\n Last lines of its output:\n" + "\n".join(f"   {line}" for line in lines)


def failure_summary(error_type: str, error_text: str) -> str:
    """``Type: message`` of a failure, e.g. ``TypeError: bad operand``, for one log line."""
    name = error_type.removeprefix("<class '").removesuffix("'>").rsplit(".", 1)[-1]
    message = _failure_message(error_text)
    qualified, colon, rest = message.partition(":")
    if colon and qualified.rsplit(".", 1)[-1] == name:
        return f"{name}:{rest}"
    return f"{name}: {message}" if message else name


def _failure_message(text: str) -> str:
    """The exception's own line of a Python traceback (the last block's first unindented
    line: what follows may be a JVM stack trace), else the text's first line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    if not lines[0].startswith("Traceback (most recent call last)"):
        return lines[0].strip()
    message, in_traceback = lines[-1].strip(), False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and not line[0].isspace():
            message, in_traceback = line.strip(), False
    return message
