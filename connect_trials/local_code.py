"""The user's own code travels to the cluster: modules of the project, not installed there.

An objective in ``my_project/train.py`` that does ``from my_project.features import build``
works on the embedded server only because that server shares the client's disk and working
directory. A cluster has neither. So, before the first trial of an fmin, every module of the
user's source tree that this process has imported is packed with its whole top-level package,
``.py`` files only, into one zip that becomes a Spark Connect ``pyfile`` session artifact:
the workers put it on their ``sys.path``. It is named by its content hash, so an unchanged
project is sent once per session and an edited one again; one INFO line names what was
shipped and its size, once per content.

Installed code never travels, wherever it was installed: the zip lands early on the workers'
``sys.path``, so a ``.py``-only copy of an installed package (``pip install --user numpy``
without its compiled extensions) would shadow the workers' own install and break every
import. Installed means: the interpreter's standard library and environment, the user site,
any folder of an environment (``site-packages``, ``dist-packages``, an ``.egg``, anything under
a folder holding ``pyvenv.cfg`` or ``conda-meta``), and any folder that installers write into:
one holding installed distributions' metadata (a ``*.dist-info``, an ``*.egg-info`` file, an
``*.egg-info`` folder listing ``installed-files.txt``), such as ``pip install --target`` or a
``PYTHONPATH`` of vendored packages. An ``*.egg-info`` folder without that list is what
setuptools writes into a project's own source tree (``pip install -e .``): that project is
the user's code, not installed on the cluster, and travels. connect_trials itself never does.

Switch it off with ``CONNECT_TRIALS_SHIP_LOCAL_CODE=0``. To ship more (modules imported only
inside the objective, data files of a package), add them yourself with Spark's own
``spark.addArtifacts("extra.zip", pyfile=True)``, or import them before calling fmin.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import site
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


# Folders whose contents are installed code, wherever they are.
_ENVIRONMENT_FOLDER_NAMES = frozenset({"site-packages", "dist-packages"})
# What sits at the root of an environment: a venv, a conda environment.
_ENVIRONMENT_MARKERS = (("pyvenv.cfg", os.path.isfile), ("conda-meta", os.path.isdir))


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    roots = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update({sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix})
    roots.add(site.getusersitepackages())  # pip install --user: JupyterHub's default
    roots.update(getattr(site, "getsitepackages", list)())
    return tuple(os.path.realpath(root) + os.sep for root in roots)


def _under_installed_root(resolved: str) -> bool:
    return any(resolved.startswith(root) for root in _installed_roots())


def is_installed(path: str) -> bool:
    """Whether ``path`` (a module's file, a top-level package's folder) is installed code: in
    the interpreter's roots, the user site, an environment, or a folder installers write into."""
    resolved = os.path.realpath(path)
    return _under_installed_root(resolved) or _is_installation(os.path.dirname(resolved))


def is_local(module: types.ModuleType | None) -> bool:
    """Whether ``module`` is the user's own code, which the cluster cannot import (see above)."""
    path = getattr(module, "__file__", None)
    if module is None or not isinstance(path, str) or module.__name__.split(".")[0] in _NEVER:
        return False
    return _is_local_file(path, module.__name__)


@functools.lru_cache(maxsize=16384)
def _is_local_file(path: str, name: str) -> bool:
    # Cached: every fmin looks at every module loaded (thousands), and realpath alone took
    # seconds. The folders' verdicts are cached too, so a new module costs a realpath.
    resolved = os.path.realpath(path)
    if _under_installed_root(resolved):
        return False
    return not _is_installation(_import_root(resolved, name))


def _import_root(resolved: str, name: str) -> str:
    """The folder ``name`` was imported from: for ``a.b`` in ``/x/a/b.py`` (or in
    ``/x/a/b/__init__.py``), ``/x``. Where the path does not spell the name (a module
    registered under another name), the deepest folder that does."""
    folder, file_name = os.path.split(resolved)
    parts = name.split(".")
    packages = parts if file_name.split(".")[0] == "__init__" else parts[:-1]
    for part in reversed(packages):
        if os.path.basename(folder) != part:
            break
        folder = os.path.dirname(folder)
    return folder


@functools.lru_cache(maxsize=4096)
def _is_installation(folder: str) -> bool:
    """Whether modules imported from ``folder`` are installed code: it lies in an environment,
    or it holds installed distributions (it is where an installer puts packages)."""
    return _in_environment(folder) or _holds_installed_distributions(folder)


@functools.lru_cache(maxsize=4096)
def _in_environment(folder: str) -> bool:
    name = os.path.basename(folder)
    if name in _ENVIRONMENT_FOLDER_NAMES or name.endswith(".egg"):
        return True
    if any(exists(os.path.join(folder, marker)) for marker, exists in _ENVIRONMENT_MARKERS):
        return True
    parent = os.path.dirname(folder)
    return parent != folder and _in_environment(parent)


def _holds_installed_distributions(folder: str) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(_is_installed_metadata(entry) for entry in entries)
    except OSError:
        return False


def _is_installed_metadata(entry: os.DirEntry[str]) -> bool:
    if entry.name.endswith(".dist-info"):
        return entry.is_dir()  # only installers write these
    if entry.name.endswith(".egg-info"):
        # A file: distutils' install. A folder: pip's legacy install lists what it installed;
        # setuptools' egg_info in a source tree (an editable install) lists nothing of the kind.
        return entry.is_file() or os.path.isfile(os.path.join(entry.path, "installed-files.txt"))
    return False


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
    if name not in _announced:  # the name holds the content hash: once per content, not per fmin
        _announced.add(name)
        logger.info(
            "Shipped the project's own code to the cluster: %s (%s zipped); installed packages "
            "are not shipped (set %s=0 to ship nothing).",
            ", ".join(_shipped_names(roots)),
            _size_text(len(data)),
            SHIP_ENV,
        )
    logger.debug("local code artifact %s", name)
    return sorted(roots)


_announced: set[str] = set()  # the artifacts whose shipping was logged


def _shipped_names(roots: dict[str, list[Path]]) -> list[str]:
    """Top-level names as a reader knows them: ``my_project`` for a package, ``helpers.py``."""
    return [
        paths[0].name if len(paths) == 1 and paths[0].is_file() else name
        for name, paths in sorted(roots.items())
    ]


def _size_text(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"
