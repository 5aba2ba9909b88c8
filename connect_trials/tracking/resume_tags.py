"""The child-run tags that let ``ConnectTrials.from_mlflow`` rebuild a trial: its id, and
hyperopt's own values for its hyperparameters (what TPE learns from, which the params, being
the values the objective received, cannot give back: a choice's index, an int's raw float)."""

from __future__ import annotations

import json
from typing import Any

TID_TAG = "trial_tid"
VALS_TAG = "hyperopt_vals"
_MAX_TAG_CHARS = 8000


def resume_tags(trial: dict[str, Any]) -> dict[str, str]:
    vals = {label: [_plain(v) for v in values] for label, values in trial["misc"].get("vals", {}).items()}
    text = json.dumps(vals, sort_keys=True)
    tags = {TID_TAG: str(trial["tid"])}
    if len(text) <= _MAX_TAG_CHARS:  # a space too large for one tag: that trial cannot be rebuilt
        tags[VALS_TAG] = text
    return tags


def _plain(value: Any) -> Any:
    """numpy scalars as the Python numbers JSON knows."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
