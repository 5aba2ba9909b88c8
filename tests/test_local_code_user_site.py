"""A package installed with ``pip install --user`` (JupyterHub's default) is never shipped as
the project's code: the workers' own install must win, compiled parts and all."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

# The client: an interpreter outside a venv reads its user site at start-up; this one is the
# suite's venv, so it does what site.py does there (ENABLE_USER_SITE, addsitedir) by hand.
CLIENT = """
import json, os, site, sys

site.ENABLE_USER_SITE = True
site.addsitedir(site.getusersitepackages())
sys.path.insert(0, os.environ["PROJECT"])

import logging
from hyperopt import fmin, hp, rand
from pyspark.sql import SparkSession

from connect_trials import ConnectTrials, local_code
from train import objective  # the project's module; it imports user_site_pkg

shipped = []
real_add = local_code.add_content_artifact

def add_and_record(spark, data, *args, **kwargs):
    import io, zipfile
    shipped.extend(zipfile.ZipFile(io.BytesIO(data)).namelist())
    return real_add(spark, data, *args, **kwargs)

local_code.add_content_artifact = add_and_record
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("connect_trials").addHandler(handler)

spark = SparkSession.builder.remote(os.environ["CONNECT_URL"]).create()
try:
    trials = ConnectTrials(parallelism=1, spark_session=spark, mlflow_tracking=False)
    fmin(objective, hp.uniform("x", 1, 2), rand.suggest, 2, trials=trials, show_progressbar=False,
         return_argmin=False)
    errors = [t["misc"].get("error") for t in trials.trials if t["state"] != 2]
    print(json.dumps({
        "user_site_pkg": sys.modules["user_site_pkg"].__file__,
        "shipped": sorted(set(shipped)),
        "shipped_lines": [line for line in lines if line.startswith("Shipped")],
        "successful": trials.count_successful_trials(),
        "errors": [str(e)[-500:] for e in errors],
    }))
finally:
    spark.stop()
"""


def _user_site(base: Path) -> Path:
    """site.getusersitepackages() for PYTHONUSERBASE=base, computed as site does on POSIX."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return base / "lib" / version / "site-packages"


def _install_compiled_package(site_packages: Path) -> None:
    """user_site_pkg 1.0 as pip would leave it: its sources, a compiled extension (a copy of
    the standard library's _json, importable under any package), and its dist-info."""
    package = site_packages / "user_site_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from user_site_pkg import _json  # compiled, as numpy's core is\n\n"
        "def square(x):\n    return x * x\n"
    )
    compiled = importlib.import_module("_json").__file__
    assert compiled and compiled.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), compiled
    shutil.copy(compiled, package / Path(compiled).name)
    info = site_packages / "user_site_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: user_site_pkg\nVersion: 1.0\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("user_site_pkg/__init__.py,,\n")


def test_a_user_site_package_the_objective_imports_is_not_shipped_and_the_objective_still_runs(
    connect_server, tmp_path
):
    """The embedded server's workers share this disk, and read the same user site (they add it
    as the client's interpreter does: a cluster with its own install of the package). A zip
    holding the package's .py files but not its compiled part would come first on their
    sys.path, and every trial would fail to import it."""
    user_base = tmp_path / "user-base"
    site_packages = _user_site(user_base)
    _install_compiled_package(site_packages)
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(
        textwrap.dedent(
            f"""
            import user_site_pkg

            USER_SITE = {str(site_packages)!r}

            def objective(x):
                import site

                site.addsitedir(USER_SITE)  # the worker's own install of user_site_pkg
                import user_site_pkg

                return user_site_pkg.square(x)
            """
        )
    )
    env = {
        **os.environ,
        "PYTHONUSERBASE": str(user_base),
        "PROJECT": str(project),
        "CONNECT_URL": connect_server.url,
    }
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    assert report["user_site_pkg"].startswith(str(site_packages)), report  # the client's is the user site's
    assert not [name for name in report["shipped"] if name.startswith("user_site_pkg")], report["shipped"]
    assert "train.py" in report["shipped"]  # the project's own code still travels
    assert len(report["shipped_lines"]) == 1 and "train.py" in report["shipped_lines"][0], report
    assert report["successful"] == 2, report["errors"]
