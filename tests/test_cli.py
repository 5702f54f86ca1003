"""The command line as a user meets it: mistyped flags, pipes, cache housekeeping (ls, rm, prune)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import featcache

REPO = Path(__file__).resolve().parents[1]


def _run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "featcache", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, **kwargs)


def test_a_mistyped_flag_gets_a_suggestion():
    r = _run("sweep", "x.h5", "--scren-layers", "1")
    assert r.returncode == 2 and "did you mean --screen-layers?" in r.stderr and "Traceback" not in r.stderr
    r = _run("extract", "--dta", "photos/")
    assert r.returncode == 2 and "did you mean --data?" in r.stderr


def test_a_closed_pipe_ends_quietly():
    """``featcache ... | head``: the reader closes the pipe before the command writes; no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "featcache", "sweep", "--print-grid"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # before the interpreter has even started: every write will hit a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def _caches(split_folder, tmp_path):
    fast = dict(model="resnet18", weights="none", image_size=32, progress=False, cache_dir=tmp_path / "c")
    return (featcache.extract(split_folder, layers=["layer4"], **fast),
            featcache.extract(split_folder, layers=["layer3"], pool="max", dtype="float16", **fast))


def test_ls_tells_caches_apart(split_folder, tmp_path):
    a, b = _caches(split_folder, tmp_path)
    r = _run("ls", "--cache-dir", tmp_path / "c", "--json")
    records = {rec["path"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert records[str(a)]["pool"] == "avg" and records[str(b)]["pool"] == "max"
    assert records[str(b)]["dtype"] == "float16" and records[str(a)]["weights"] == "RANDOM"
    table = _run("ls", "--cache-dir", tmp_path / "c")
    assert table.stdout.splitlines()[0].split()[:5] == ["dataset", "model", "weights", "layers", "pool"]
    assert "RANDOM: extracted with --weights none" in table.stderr


def test_rm_and_prune(split_folder, tmp_path):
    a, b = _caches(split_folder, tmp_path)
    store = tmp_path / "c" / "sweep-results" / featcache.load(a).meta.fingerprint[:16]
    store.mkdir(parents=True)
    (store / "r.json").write_text("{}")
    partial = tmp_path / "c" / "other.partial.h5"
    partial.write_bytes(b"in progress")
    assert _run("prune", "--cache-dir", tmp_path / "c").returncode == 2  # says what to choose by
    dry = _run("prune", "--cache-dir", tmp_path / "c", "--all", "--dry-run")
    assert dry.returncode == 0 and "would remove 2 cache(s)" in dry.stdout and a.exists() and b.exists()
    old = time.time() - 40 * 86400
    for path in (b, b.parent / ".used" / b.name):
        if path.exists():
            os.utime(path, (old, old))  # b: made, and last hit or loaded, 40 days ago
    pruned = _run("prune", "--cache-dir", tmp_path / "c", "--unused-days", "30")
    assert pruned.returncode == 0 and "removed 1 cache(s)" in pruned.stdout and a.exists() and not b.exists()
    featcache.load(a)  # a load counts as a use
    assert time.time() - (a.parent / ".used" / a.name).stat().st_mtime < 60
    removed = _run("rm", a)
    assert removed.returncode == 0 and not a.exists() and not store.exists()
    assert partial.exists()  # never pruned: a run may be writing it
    bad = _run("rm", partial)
    assert bad.returncode == 2 and "not a finished cache file" in bad.stderr
