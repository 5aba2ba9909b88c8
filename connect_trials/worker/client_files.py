"""Files the client's MLflow settings name (CA bundles, client certificates), placed on a
worker that cannot see the client's disk.

``SHIPPED_FILE_PREFIX + NAME`` in the fmin's environment holds the content (base64) of the
client file that the variable ``NAME`` points to. The copy goes to a folder only this user
can enter (``connect-trials-client-files-<uid>`` in the temporary folder, mode 0700, or a
fresh private folder when that one is not safe), named by its content, and a file there is
used only if it holds exactly that content.
"""

from __future__ import annotations

import os
import stat
import tempfile

from connect_trials.worker.objective import process_cache
from connect_trials.worker.reported import ReportedWarnings

SHIPPED_FILE_PREFIX = "CONNECT_TRIALS_FILE_"


def place_client_files(reported: ReportedWarnings) -> None:
    """Point each variable that names a client file at a copy of it on this worker, when the
    client's path is not there."""
    import base64

    for key in [k for k in os.environ if k.startswith(SHIPPED_FILE_PREFIX)]:
        content = base64.b64decode(os.environ.pop(key))
        name = key.removeprefix(SHIPPED_FILE_PREFIX)
        path = os.environ.get(name, "")
        if path and not os.path.exists(path):
            os.environ[name] = _private_copy(content, os.path.basename(path), reported)


def _private_copy(content: bytes, basename: str, reported: ReportedWarnings) -> str:
    import hashlib

    folder = _private_folder(reported)
    copy = os.path.join(folder, hashlib.sha256(content).hexdigest()[:32] + "-" + basename)
    if not _holds(copy, content):
        descriptor, written = tempfile.mkstemp(dir=folder)  # 0600
        with os.fdopen(descriptor, "wb") as f:
            f.write(content)
        os.replace(written, copy)  # whole or not at all, for concurrent tasks
    return copy


def _private_folder(reported: ReportedWarnings) -> str:
    cache = process_cache()
    folder = os.path.join(tempfile.gettempdir(), f"connect-trials-client-files-{os.geteuid()}")
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    if _is_private(folder):
        return folder
    fallback = cache.get("client_files_folder")
    if fallback is None or not _is_private(fallback):
        fallback = cache["client_files_folder"] = tempfile.mkdtemp(prefix="connect-trials-client-files-")
        reported.add(
            f"{folder} is not a folder of this user's alone (mode 0700); copies of the client's "
            f"MLflow files go to {fallback} instead"
        )
    return str(fallback)


def _is_private(folder: str) -> bool:
    """A real folder (not a link) owned by this user that no one else may enter or list."""
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


def _holds(path: str, content: bytes) -> bool:
    """Whether ``path`` is a regular file of this user's (not a link) with exactly ``content``."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    with os.fdopen(descriptor, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return False
        return f.read(len(content) + 1) == content
