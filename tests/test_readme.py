"""The README's snippets run as written: each ``<!-- snippet: NAME [raises=Error] -->`` block
is executed in a Python process of its own, with ``SPARK_REMOTE`` naming the test server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPET = re.compile(
    r"<!-- snippet: (?P<name>[\w-]+)(?: raises=(?P<raises>\w+))? -->\n```python\n(?P<code>.*?)```", re.S
)


def snippets() -> list[tuple[str, str | None, str]]:
    return [(m["name"], m["raises"], m["code"]) for m in SNIPPET.finditer(README.read_text())]


def test_the_readme_has_its_snippets():
    assert {"debug", "replay", "output", "resume-file", "resume-mlflow"} <= {
        name for name, _, _ in snippets()
    }


@pytest.mark.parametrize(("name", "raises", "code"), snippets(), ids=[s[0] for s in snippets()])
def test_readme_snippet_runs(name, raises, code, connect_server, tmp_path):
    env = {**os.environ, "SPARK_REMOTE": connect_server.url}
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    if raises is None:
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        assert result.returncode != 0 and f"{raises}:" in result.stderr.splitlines()[-1], result.stderr[
            -3000:
        ]
