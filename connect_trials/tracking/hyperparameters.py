"""A trial's hyperparameters as MLflow params, and the names and texts tracking writes.

A child run's hyperparameter params are the values the objective received, written the way
``mlflow.log_params`` writes them (``str(value)``), so an objective that logs its own argument
writes exactly what we would:

- a dict argument: one param per top-level key. A nested dict is one param holding its
  ``str()``, as ``mlflow.log_params(params)`` would log it; flattening to dotted keys would add
  names the objective never writes and could not match its own logging.
- a list or tuple argument: one param per element, named after the hyperopt label nearest to
  that element's expression (its position when it has none).
- any other argument: one param named after the label nearest to the space's root.
- for each active ``hp.choice`` / ``hp.pchoice``: ``<label>_index``, the index hyperopt
  stores, unless a param of that name is already there.
"""

from __future__ import annotations

import collections
import logging
import re
from typing import Any

logger = logging.getLogger("connect_trials")

# MLflow's limits (mlflow.utils.validation).
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
_MAX_KEY_CHARS = 250


class SearchSpace:
    """The parts of a search space that name params: its expression and its choices."""

    def __init__(self, root: Any, choice_labels: frozenset[str]) -> None:
        self._root = root  # the space as a pyll expression, or None if it could not be read
        self._choice_labels = choice_labels

    @classmethod
    def of(cls, space: Any) -> SearchSpace:
        from hyperopt import pyll

        try:
            root = pyll.as_apply(space)
            choices = frozenset(
                node.pos_args[0].arg["label"].obj
                for node in pyll.dfs(root)
                if node.name == "switch" and node.pos_args and node.pos_args[0].name == "hyperopt_param"
            )
        except Exception as exc:  # noqa: BLE001 - then params are named by position only
            logger.debug("could not read the search space: %s", exc)
            return cls(None, frozenset())
        return cls(root, choices)

    def params(self, argument: Any, vals: dict[str, list[Any]]) -> dict[str, str]:
        """The MLflow params of a trial whose objective received ``argument``."""
        params: dict[str, str] = {}
        if isinstance(argument, dict):
            for key, value in argument.items():
                params.setdefault(param_key(str(key)), param_value(value))
        elif isinstance(argument, (list, tuple)):
            elements = self._root.pos_args if self._root is not None and self._root.name == "pos_args" else []
            for i, value in enumerate(argument):
                label = _nearest_label(elements[i]) if len(elements) == len(argument) else None
                params.setdefault(param_key(label if label is not None else str(i)), param_value(value))
        elif (label := _nearest_label(self._root)) is not None:
            params[param_key(label)] = param_value(argument)
        for label in sorted(self._choice_labels):
            if vals.get(label):
                params.setdefault(param_key(f"{label}_index"), str(int(vals[label][0])))
        return params


def raw_params(vals: dict[str, list[Any]]) -> dict[str, str]:
    """Params for a trial whose argument could not be built: hyperopt's raw values by label."""
    return {param_key(label): param_value(values[0]) for label, values in vals.items() if values}


def _nearest_label(node: Any) -> str | None:
    """The label of the hyperopt parameter closest to ``node`` (breadth first): the label
    of ``scope.int(hp.quniform("n", ...))`` is ``n``, of an ``hp.choice`` its own label."""
    if node is None:
        return None
    seen: set[int] = set()
    frontier = collections.deque([node])
    while frontier:
        current = frontier.popleft()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.name == "hyperopt_param":
            return str(current.arg["label"].obj)
        frontier.extend(current.inputs())
    return None


def algo_name(algo: Any) -> str:
    """The algorithm's module, as Databricks logs it: ``hyperopt.tpe``, ``hyperopt.rand``,
    ``hyperopt.anneal``; for another algorithm, its function's module."""
    func = getattr(algo, "func", algo)  # functools.partial(tpe.suggest, ...)
    module = getattr(func, "__module__", None)
    return module or str(algo)


def space_text(space: Any) -> str:
    """The space as hyperopt prints it (a dict of expressions would print object addresses)."""
    try:
        from hyperopt import pyll

        return str(pyll.as_apply(space))
    except Exception:  # noqa: BLE001
        return str(space)


def param_key(label: str) -> str:
    """A name as an MLflow key: alphanumerics, ``_ - .`` and spaces only."""
    key = re.sub(r"[^\w.\- ]", "_", str(label))[:_MAX_KEY_CHARS] or "_"
    return "_" + key[1:] if key.startswith(".") else key


def param_value(value: Any) -> str:
    return str(value)[:MAX_PARAM_CHARS]


def truncated(text: str) -> str:
    """A tag value within MLflow's limit, saying how long it was."""
    if len(text) <= MAX_TAG_CHARS:
        return text
    marker = f"\n... [truncated: {len(text)} characters]"
    return text[: MAX_TAG_CHARS - len(marker)] + marker
