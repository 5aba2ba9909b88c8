"""The user's own modules travel to the cluster (the end-to-end proof on workers that cannot
see the client's disk is in test_cluster.py)."""

from __future__ import annotations

import importlib
import io
import sys
import zipfile

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
