"""The inspect report in a real browser: headless Chromium opens ``index.html`` from disk (no server), its script
runs without errors, and the galleries, the map and a missing file's placeholder are on the page. The screenshot
is kept under pytest's temporary folder (its path is printed). Skips only where Chromium is not installed
(Debian: ``apt-get install chromium``)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_SETTINGS
from PIL import Image

import featcache

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)

pytestmark = pytest.mark.slow  # every test here builds a report and runs Chromium on it


def _chromium(*args, timeout=120):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--hide-scrollbars", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium), so "
                                             "the report cannot be opened in a real browser here")
def test_report_renders_in_chromium(tmp_path):
    root = tmp_path / "digits"
    shutil.copytree(REPO / "data" / "digits", root, ignore=shutil.ignore_patterns("*.md"))
    src = sorted((root / "test").rglob("*.png"))[0]
    Image.open(src).resize((96, 96)).save(root / "train" / src.parent.name / "leak_copy.png")  # a leak
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    odd = root / "train" / "0" / "odd_one.png"
    Image.fromarray(noise).save(odd)  # an outlier, whose file is gone by the time of the report
    cache = featcache.extract(root, **FAST_SETTINGS, cache_dir=tmp_path / "cache")
    odd.unlink()
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "featcache", "inspect", str(cache), "--out", str(out),
                          "--no-progress"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == str(out / "index.html")
    assert "LEAKS across splits: 1 pairs" in run.stdout

    page = (out / "index.html").resolve()
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert re.search(r'<body[^>]*data-ready="1"', html), "the page's script did not run to the end"
    errors = re.search(r'<pre id="js-errors">(.*?)</pre>', html, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else html[:500]
    assert "Uncaught" not in dom.stderr, [line for line in dom.stderr.splitlines() if "Uncaught" in line]
    for title in ("Leaks across splits", "Duplicate clusters", "Likely label errors", "Outliers", "Map"):
        assert f"<h2>{title}" in html, title
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) >= 5  # gallery thumbnails, inline
    assert re.search(r'<canvas id="map"[^>]*data-points="30[12]"', html), "the map was not drawn"
    assert 'class="missing">missing file' in html  # the outlier whose file is gone
    assert "image files are missing" in html

    shot = tmp_path / "inspect-report.png"
    taken = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    print(f"screenshot of the report: {shot}")


HOSTILE = ["one<!--<script", "x\"><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">", "@@data@@"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium), so "
                                             "the report cannot be opened in a real browser here")
def test_hostile_class_and_file_names_stay_text_in_the_report(tmp_path, make_image):
    """Class folders named to break the page (``one<!--<script`` once hid the inline data's closing tag from the
    parser: no data-ready, no error shown), to inject markup, or to be a template slot; a file name too."""
    root = tmp_path / "data"
    for k, name in enumerate(HOSTILE):
        for i in range(10):
            file = f"<b>{i}</b>&amp.png" if i == 0 else f"img_{i}.png"
            make_image(root / name / file, k, i, size=(40, 40))
    cache = featcache.extract(root, **FAST_SETTINGS, cache_dir=tmp_path / "cache")
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "featcache", "inspect", str(cache), "--out", str(out),
                          "--no-progress"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    dom = _chromium("--dump-dom", (out / "index.html").resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert re.search(r'<body[^>]*data-ready="1"', html), "the page's script did not run to the end"
    errors = re.search(r'<pre id="js-errors">(.*?)</pre>', html, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else html[:500]
    assert not re.search(r"<body[^>]*data-pwned", html) and '<img src="x"' not in html  # no element, no handler
    assert re.search(r'<canvas id="map"[^>]*data-points="30"', html), "the map's data did not survive"
    assert "one&lt;!--&lt;script" in html and "&lt;b&gt;0&lt;/b&gt;&amp;amp.png" in html  # shown as text
