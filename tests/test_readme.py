"""The README's Python examples run as written (each block in a fresh interpreter, from the repository root)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("block", range(len(BLOCKS)))
def test_readme_python_example_runs(block, tmp_path_factory):
    cache_dir = tmp_path_factory.getbasetemp() / "readme-cache"  # shared: the digits are extracted once
    env = {**os.environ, "FEATCACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-c", BLOCKS[block]], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, f"README python block {block + 1} failed:\n{BLOCKS[block]}\n{run.stderr[-3000:]}"
    assert run.stdout.strip(), "each example prints what it found"
