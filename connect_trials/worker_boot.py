"""What each trial job carries to its worker: a small function, the worker code as bytes, and
the trial's own arguments.

The cluster has no connect_trials installed, so the worker package (``worker/``) travels by
value. Pickling it by value costs the client about a millisecond of CPU per job, and
unpickling it costs the worker as much again; so the client pickles it once per process
(``job.worker_code``), and each job carries those bytes with this module's function, which
is all that is pickled per job. A Python worker process unpickles the code the first time it
meets it and keeps it, by content key, for later trials (it is small, and a long-lived
worker may serve several clients). Like the worker package, this module imports only the
standard library.
"""

from __future__ import annotations

import pickle
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# The unpickled worker code, per content key, for the Python worker process's life.
_CACHE_MODULE = "_connect_trials_worker_code"
_CACHE_SIZE = 4


Task = Callable[[Iterable[Any]], Iterator[Any]]


def booted_task(code_key: str, code: bytes, args: tuple[Any, ...]) -> Task:
    """The ``mapInPandas`` function of one trial: ``worker.trial_task(*args)``, with the worker
    code taken from ``code`` (pickled ``trial_task``) once per process."""

    def run(batches: Iterable[Any]) -> Iterator[Any]:
        yield from worker_code(code_key, code)(*args)(batches)

    return run


def worker_code(code_key: str, code: bytes) -> Callable[..., Any]:
    module = sys.modules.get(_CACHE_MODULE)
    if module is None:
        module = sys.modules.setdefault(_CACHE_MODULE, types.ModuleType(_CACHE_MODULE))
    cache: dict[str, Callable[..., Any]] = module.__dict__.setdefault("trial_task", {})
    factory = cache.get(code_key)
    if factory is None:
        factory = pickle.loads(code)
        while len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[code_key] = factory
    return factory
