"""The user's own code travels to the cluster: modules of the project, not installed there.

An objective in ``my_project/train.py`` that does ``from my_project.features import build``
works on the embedded server only because that server shares the client's disk and working
directory. A cluster has neither. So, before the first trial of an fmin, every module of the
user's source tree that this process has imported (anything not in the standard library, not
in site-packages and not connect_trials itself) is packed with its whole top-level package,
``.py`` files only, into one zip that becomes a Spark Connect ``pyfile`` session artifact:
the workers put it on their ``sys.path``. It is named by its content hash, so an unchanged
project is sent once per session and an edited one again.

Switch it off with ``CONNECT_TRIALS_SHIP_LOCAL_CODE=0``. To ship more (modules imported only
inside the objective, data files of a package), add them yourself with Spark's own
``spark.addArtifacts("extra.zip", pyfile=True)``, or import them before calling fmin.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
import sysconfig
import types
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from connect_trials.session import add_content_artifact

logger = logging.getLogger("connect_trials")

SHIP_ENV = "CONNECT_TRIALS_SHIP_LOCAL_CODE"
MAX_CODE_BYTES = 50 * 1024 * 1024
# Never shipped: our own package (the workers need nothing of ours) and the debugger's.
_NEVER = frozenset({"connect_trials", "__main__", "pydevd", "_pydevd_bundle", "_pydev_bundle"})
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # a fixed date, so that the same sources give the same hash


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    roots = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.add(sys.base_prefix)
    roots.add(sys.prefix)
    return tuple(os.path.realpath(root) + os.sep for root in roots)


def is_installed(path: str) -> bool:
    """Whether ``path`` belongs to the interpreter: its standard library, its environment."""
    resolved = os.path.realpath(path)
    return any(resolved.startswith(root) for root in _installed_roots())


def is_local(module: types.ModuleType | None) -> bool:
    """Whether ``module`` is the user's own code (a file outside the installed roots)."""
    path = getattr(module, "__file__", None)
    if module is None or path is None or module.__name__.split(".")[0] in _NEVER:
        return False
    return _is_local_file(path)


@functools.lru_cache(maxsize=8192)
def _is_local_file(path: str) -> bool:
    # Cached: every fmin looks at every module loaded, thousands of realpath calls otherwise.
    return not is_installed(path)


def project_roots(modules: Iterable[types.ModuleType]) -> dict[str, list[Path]]:
    """Top-level name -> the folders (a package) or file (a module) that hold its sources."""
    roots: dict[str, list[Path]] = {}
    for module in modules:
        top_name = module.__name__.split(".")[0]
        if top_name in roots:
            continue
        top = sys.modules.get(top_name)
        if top is None:
            continue
        locations = getattr(top.__spec__, "submodule_search_locations", None) if top.__spec__ else None
        if locations:
            roots[top_name] = [Path(p) for p in locations if not is_installed(p)]
        elif getattr(top, "__file__", None):
            roots[top_name] = [Path(top.__file__)]  # type: ignore[arg-type]
    return {name: paths for name, paths in roots.items() if paths}


def build_zip(roots: dict[str, list[Path]], limit: int = MAX_CODE_BYTES) -> bytes:
    """A zip of the ``.py`` files under ``roots``, entries in a fixed order with a fixed date."""
    files: list[tuple[str, Path]] = []
    for name, paths in sorted(roots.items()):
        for path in paths:
            if path.is_file():
                files.append((path.name, path))
                continue
            for source in sorted(path.rglob("*.py")):
                relative = source.relative_to(path)
                if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                    continue
                files.append((f"{name}/{relative.as_posix()}", source))
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname, source in sorted(set(files)):
            data = source.read_bytes()
            total += len(data)
            if total > limit:
                raise ValueError(
                    f"the project's Python sources exceed {limit // (1024 * 1024)} MB; set "
                    f"{SHIP_ENV}=0 and ship what the objective needs with spark.addArtifacts"
                )
            archive.writestr(zipfile.ZipInfo(arcname, _ZIP_DATE), data)
    return buffer.getvalue()


def ship_local_code(spark: Any) -> list[str]:
    """Send the project's imported local packages as one pyfile artifact; their names."""
    if os.environ.get(SHIP_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    roots = project_roots(m for m in list(sys.modules.values()) if is_local(m))
    if not roots:
        return []
    try:
        data = build_zip(roots)
    except (OSError, ValueError) as exc:
        logger.warning("the project's local modules are not shipped to the cluster: %s", exc)
        return []
    try:
        name = add_content_artifact(spark, data, "connect_trials_code_", ".zip", pyfile=True)
    except Exception as exc:  # noqa: BLE001
        logger.warning(
            "could not ship the project's local modules (%s) to the cluster: %s",
            ", ".join(sorted(roots)),
            str(exc).splitlines()[0][:300],
        )
        return []
    logger.debug("shipped local modules %s (%d bytes) as %s", sorted(roots), len(data), name)
    return sorted(roots)
