"""Benchmark (not a test): ``featcache extract`` wall time at two git revisions, side by side in one run.

For a change that should cost nothing (listing, hashing, the partial file's creation, publishing), this is the
check that it does not: each revision is checked out into a temporary git worktree and the same command runs
from there (``PYTHONPATH`` = that worktree, this interpreter, a fresh cache folder each time), revisions
alternating round by round so that a busy moment hits both. Whole-process wall time: Python's start and imports
included, as a user sees it. Image sets as in ``scripts/bench_extract.py`` (real photo crops, kept and reused).

    python scripts/bench_revisions.py --base 305045f            # HEAD vs 305045f, 3 rounds, with and without hashing
    python scripts/bench_revisions.py --base v0.2.0 --rounds 5 --pngs 0
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_extract import DEFAULT_WORKDIR, image_sets  # noqa: E402  (the image sets)


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    return where


def extract_seconds(tree: Path, folder: Path, cache: Path, extra: list) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "featcache.extract", "--data", str(folder), "--cache-dir", str(cache),
                          "--image-size", "96", "--no-progress", *extra], env={**os.environ, "PYTHONPATH": str(tree)},
                         cwd=tree, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{tree}: extract failed:\n{run.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the revision to compare with (a commit, tag or branch)")
    p.add_argument("--head", default="HEAD", help="the revision to measure (default: HEAD)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jpegs", type=int, default=1000, help="JPEGs of 320x240 (0: none)")
    p.add_argument("--pngs", type=int, default=6000, help="PNGs of 32x32 (0: none)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = p.parse_args()
    sets = image_sets(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {rev: worktree(rev, tmp / f"tree{i}") for i, rev in enumerate((args.base, args.head))}
        try:
            for name, folder in sets.items():
                for extra in ([], ["--hash-content"]):
                    times = {rev: [] for rev in trees}
                    for _ in range(args.rounds):
                        for rev, tree in trees.items():
                            times[rev].append(extract_seconds(tree, folder, tmp / "cache", extra))
                    base, head = (statistics.median(times[r]) for r in (args.base, args.head))
                    print(f"{name:20s} {' '.join(extra) or 'default':15s} {args.base}: {base:6.2f} s   "
                          f"{args.head}: {head:6.2f} s   ratio {head / base:.3f}   (rounds: "
                          + "; ".join(f"{r} " + ", ".join(f"{x:.2f}" for x in v) for r, v in times.items()) + ")",
                          flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
