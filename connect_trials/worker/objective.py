"""The objective as it reaches a worker: the fmin's payload, inline, in a session file, or in
a broadcast variable, unpickled once per Python worker process."""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from typing import Any

# What a trial job refers to the fmin's payload by: the payload itself (bytes), the name of a
# session file that holds it (Spark Connect artifacts, SparkContext.addFile), or, on a classic
# session, ``(content name, pyspark Broadcast of the payload)``.
ObjectiveRef = bytes | str | tuple[str, Any]

# Objectives unpickled per Python worker process. The cache lives in a module of its own in
# sys.modules because this package arrives by value with every job, so its own globals are
# new each time.
_CACHE_MODULE = "_connect_trials_objective_cache"
_CACHE_SIZE = 4


def objective_payload(objective_blob: bytes, fmin_environ: dict[str, str]) -> bytes:
    """What one fmin ships to the workers once: the pickled objective and the fmin's
    environment for it (plain pickle of bytes and strings, readable with the stdlib)."""
    return pickle.dumps({"objective": objective_blob, "environ": dict(fmin_environ)})


def load_objective(ref: ObjectiveRef) -> tuple[Callable[[Any], Any], dict[str, str]]:
    """The objective and the fmin's environment, from the payload ``ref`` stands for."""
    if isinstance(ref, bytes):
        return _unpack(ref)
    cache: dict[str, Any] = process_cache().setdefault("objectives", {})
    name = ref if isinstance(ref, str) else ref[0]
    if name not in cache:
        if isinstance(ref, str):
            with open(_session_file_path(ref), "rb") as f:
                loaded = _unpack(f.read())
        else:
            loaded = _unpack(ref[1].value)
        while len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[name] = loaded
    objective, fmin_environ = cache[name]
    return objective, fmin_environ


def process_cache() -> dict[str, Any]:
    """State kept for the worker process's life, in a module of its own in sys.modules."""
    module = sys.modules.get(_CACHE_MODULE)
    if module is None:
        import types

        module = sys.modules.setdefault(_CACHE_MODULE, types.ModuleType(_CACHE_MODULE))
    return module.__dict__


def dumps_value(value: Any) -> bytes:
    """The objective's return value, pickled for the client, or a TypeError that says why not."""
    try:
        from pyspark import cloudpickle
    except ImportError:  # pragma: no cover - a worker always has pyspark
        import pickle as cloudpickle  # type: ignore[no-redef]
    try:
        return cloudpickle.dumps(value)
    except Exception as exc:
        raise TypeError(
            f"the objective returned a value of type {type(value).__name__} that cannot be "
            f"pickled to send it back to the client: {exc}"
        ) from exc


def _unpack(payload: bytes) -> tuple[Callable[[Any], Any], dict[str, str]]:
    parts = pickle.loads(payload)
    return pickle.loads(parts["objective"]), dict(parts["environ"])


def _session_file_path(name: str) -> str:
    """Where a session file is on this worker: Spark Connect runs Python workers in the
    session's artifact folder; SparkFiles knows it otherwise."""
    if os.path.exists(name):
        return name
    try:
        from pyspark import SparkFiles

        candidate = os.path.join(SparkFiles.getRootDirectory(), name)
        if os.path.exists(candidate):
            return candidate
    except Exception:  # noqa: BLE001
        pass
    raise FileNotFoundError(
        f"the objective's artifact {name} is not in this worker's session folder ({os.getcwd()})"
    )
