"""The README's and docs/'s Python examples run as written (each block in a fresh interpreter, from the repository
root), and every relative link in them points at a file, and a heading, that exists."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# the python blocks README.md held before its reference moved to docs/: the count across the pages never drops
PYTHON_BLOCKS_BEFORE_SPLIT = 4


def _name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def _python_blocks(page: Path) -> list:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.S | re.M)


BLOCKS = [(f"{_name(page)}:{i + 1}", block) for page in PAGES for i, block in enumerate(_python_blocks(page))]


def test_the_readme_has_python_examples():
    assert _python_blocks(REPO / "README.md"), "the README shows the Python API"
    assert len(BLOCKS) >= PYTHON_BLOCKS_BEFORE_SPLIT, [name for name, _ in BLOCKS]


@pytest.mark.slow
@pytest.mark.parametrize("block", [block for _, block in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_python_example_runs(block, tmp_path_factory):
    cache_dir = tmp_path_factory.getbasetemp() / "readme-cache"  # shared: the digits are extracted once
    env = {**os.environ, "FEATCACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-c", block], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, f"python block failed:\n{block}\n{run.stderr[-3000:]}"
    assert run.stdout.strip(), "each example prints what it found"


def _without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lowercased, punctuation but - and _ dropped,
    spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())   # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    seen: dict = {}
    result = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", text, flags=re.M):
        slug = github_slug(heading)
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


def test_github_slug():
    assert github_slug("From images to the best model: `python -m featcache.fit`") == \
        "from-images-to-the-best-model-python--m-featcachefit"
    assert github_slug("Which layers: presets and the sweep's layer dimension") == \
        "which-layers-presets-and-the-sweeps-layer-dimension"


@pytest.mark.parametrize("page", PAGES, ids=[_name(page) for page in PAGES])
def test_relative_links_point_at_what_exists(page):
    text = _without_code(page.read_text(encoding="utf-8"))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?: \"[^\"]*\")?\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):       # https:, mailto: ...: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(REPO) if file.is_relative_to(REPO) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{_name(page)}: " + "; ".join(broken)
