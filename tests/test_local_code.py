"""The user's own modules travel to the cluster (the end-to-end proof on workers that cannot
see the client's disk is in test_cluster.py)."""

from __future__ import annotations

import importlib
import io
import logging
import os
import re
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from connect_trials import local_code


@pytest.fixture
def my_project(tmp_path, monkeypatch):
    package = tmp_path / "my_project"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "features.py").write_text("def build(x):\n    return x * 2\n")
    (package / "train.py").write_text(
        "from my_project.features import build\n\ndef objective(x):\n    return build(x)\n"
    )
    (package / "__pycache__" / "junk.py").write_text("")
    (package / "notes.txt").write_text("not code")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("my_project.train")
    for name in [n for n in sys.modules if n.split(".")[0] == "my_project"]:
        del sys.modules[name]


def test_the_projects_imported_packages_are_local_and_installed_ones_are_not(my_project):
    import hyperopt

    import connect_trials

    assert local_code.is_local(my_project)
    assert not local_code.is_local(hyperopt)
    assert not local_code.is_local(connect_trials)  # ours never travels: workers need nothing of ours
    assert not local_code.is_local(io)


def test_the_zip_holds_the_whole_package_sources_and_nothing_else(my_project):
    roots = local_code.project_roots([my_project])
    archive = zipfile.ZipFile(io.BytesIO(local_code.build_zip(roots)))
    assert sorted(archive.namelist()) == [
        "my_project/__init__.py",
        "my_project/features.py",
        "my_project/train.py",
    ]


def test_the_same_sources_give_the_same_bytes_so_they_ship_once(my_project):
    roots = local_code.project_roots([my_project])
    assert local_code.build_zip(roots) == local_code.build_zip(roots)


def test_sources_over_the_limit_are_refused_with_the_switch_named(my_project):
    roots = local_code.project_roots([my_project])
    with pytest.raises(ValueError, match=local_code.SHIP_ENV):
        local_code.build_zip(roots, limit=10)


# -- installed code never travels -----------------------------------------------------------------
def _import_from(folder, *names):
    """Import ``names`` with ``folder`` first on sys.path; the modules."""
    sys.path.insert(0, str(folder))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(folder))


@pytest.fixture
def forget_modules():
    """Modules the test imports are forgotten after it (by their top-level names)."""
    names: list[str] = []
    yield names
    for name in [n for n in sys.modules if n.split(".")[0] in names]:
        del sys.modules[name]


def test_a_pythonpath_folder_holding_installed_distributions_ships_nothing_of_it(
    my_project, tmp_path, forget_modules
):
    """pip install --target libs (or a vendored PYTHONPATH): the folder is an installation, so
    neither its packages nor a module in it without metadata of its own travel."""
    libs = tmp_path / "libs"
    (libs / "vendored_lib").mkdir(parents=True)
    (libs / "vendored_lib" / "__init__.py").write_text("VERSION = '2.0'\n")
    (libs / "vendored_lib-2.0.dist-info").mkdir()
    (libs / "vendored_lib-2.0.dist-info" / "METADATA").write_text("Name: vendored_lib\nVersion: 2.0\n")
    (libs / "vendored_lib-2.0.dist-info" / "RECORD").write_text("vendored_lib/__init__.py,,\n")
    (libs / "loose_module.py").write_text("X = 1\n")
    forget_modules.extend(["vendored_lib", "loose_module"])
    vendored, loose = _import_from(libs, "vendored_lib", "loose_module")

    assert not local_code.is_local(vendored)
    assert not local_code.is_local(loose)
    shipped = local_code.project_roots(m for m in [my_project, vendored, loose] if local_code.is_local(m))
    assert sorted(shipped) == ["my_project"]


@pytest.mark.parametrize("kind", ["distutils egg-info file", "pip legacy egg-info folder"])
def test_a_package_with_installed_egg_info_beside_it_is_not_local(tmp_path, forget_modules, kind):
    name = "egg_installed_" + kind.split()[0]
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    if kind.startswith("distutils"):
        (tmp_path / f"{name}-1.0-py3.11.egg-info").write_text("Metadata-Version: 1.0\n")
    else:
        (tmp_path / f"{name}-1.0.egg-info").mkdir()
        (tmp_path / f"{name}-1.0.egg-info" / "installed-files.txt").write_text(f"../{name}/__init__.py\n")
    forget_modules.append(name)
    (module,) = _import_from(tmp_path, name)
    assert not local_code.is_local(module)


def test_a_project_in_editable_mode_is_still_the_users_code(tmp_path, forget_modules):
    """pip install -e . leaves setuptools' egg-info in the source tree; the cluster does not
    have that project, so it travels."""
    (tmp_path / "editable_project").mkdir()
    (tmp_path / "editable_project" / "__init__.py").write_text("")
    info = tmp_path / "editable_project.egg-info"
    info.mkdir()
    for part in ("PKG-INFO", "SOURCES.txt", "top_level.txt", "dependency_links.txt"):
        (info / part).write_text("editable_project\n")
    forget_modules.append("editable_project")
    (module,) = _import_from(tmp_path, "editable_project")
    assert local_code.is_local(module)


@pytest.mark.parametrize(
    "marker, package_folder",
    [
        ("pyvenv.cfg", "lib/python3.11/vendor"),  # a venv: anything under its root
        ("conda-meta/", "share/python"),  # a conda environment
        (None, "opt/lib/python3/dist-packages"),  # Debian's
        (None, "anywhere/site-packages"),
        (None, "lib/something-1.0-py3.11.egg"),  # an unzipped egg
    ],
)
def test_code_inside_an_environment_is_not_local(tmp_path, forget_modules, marker, package_folder):
    if marker == "pyvenv.cfg":
        (tmp_path / marker).write_text("home = /usr/bin\n")
    elif marker:
        (tmp_path / marker).mkdir()
    folder = tmp_path / package_folder
    name = "env_pkg_" + "".join(c for c in package_folder if c.isalnum())
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text("")
    (folder / name / "sub.py").write_text("")
    forget_modules.append(name)
    module, submodule = _import_from(folder, name, f"{name}.sub")
    assert not local_code.is_local(module)
    assert not local_code.is_local(submodule)
    assert local_code.is_installed(str(folder / name))


class _ArtifactStore:
    """A session's addArtifacts, as seen by the caller: the zips it was given."""

    def __init__(self) -> None:
        self.zips: list[zipfile.ZipFile] = []

    def addArtifacts(self, path: str, pyfile: bool = False) -> None:  # noqa: N802 - pyspark's name
        with open(path, "rb") as f:
            self.zips.append(zipfile.ZipFile(io.BytesIO(f.read())))


def test_one_info_line_says_what_was_shipped_and_its_size_once_per_content(my_project):
    from tests.conftest import captured_log

    store = _ArtifactStore()
    with captured_log(level=logging.INFO) as out:
        local_code.ship_local_code(store)
        local_code.ship_local_code(store)  # a second fmin, the same sources
        lines = out.getvalue().splitlines()
        assert len(lines) == 1, lines
        assert "Shipped the project's own code" in lines[0] and "my_project" in lines[0]
        assert re.search(r"\d+\.\d (KiB|MiB) zipped", lines[0]), lines[0]
        assert not any(n.startswith(("hyperopt/", "pyspark/")) for n in store.zips[0].namelist())

        (Path(my_project.__file__).parent / "features.py").write_text("def build(x):\n    return x * 3\n")
        local_code.ship_local_code(store)  # the project was edited: new content, one more line
        assert len(out.getvalue().splitlines()) == 2


def test_which_modules_are_local_is_decided_once_per_module(my_project, monkeypatch):
    """Every fmin looks at every loaded module: after the first, it costs no file-system call."""
    modules = list(sys.modules.values())
    [local_code.is_local(m) for m in modules]
    calls: list[str] = []
    this_thread = threading.get_ident()  # other threads of the suite may use os.path meanwhile

    def counted(name, real):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            if threading.get_ident() == this_thread:
                calls.append(name)
            return real(*args, **kwargs)

        return call

    for name in ("realpath", "isfile", "isdir"):
        monkeypatch.setattr(os.path, name, counted(name, getattr(os.path, name)))
    monkeypatch.setattr(os, "scandir", counted("scandir", os.scandir))
    [local_code.is_local(m) for m in modules]
    assert calls == []
