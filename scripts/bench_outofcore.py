"""Benchmark of out-of-core sweeps (not a test): training on a cache several times larger than a memory cap.

1. Writes a synthetic feature cache (featcache's HDF5 layout; CNN-like non-negative features, 10
   classes, train/val/test) of ``--ratio`` times the cap, in blocks, so this process stays small too.
2. Runs ``python -m featcache.sweep --out-of-core`` on it in a child process whose data segment is
   capped with ``resource.setrlimit(RLIMIT_DATA)`` (RLIMIT_AS cannot be used: importing torch alone
   reserves ~3.5 GB of address space), and prints its peak RSS, time and accuracies. The same sweep
   without ``--out-of-core`` under the same cap is refused up front, with the way out.
3. On a slice small enough for memory, the same grid in memory vs out of core: accuracies side by side.

    python scripts/bench_outofcore.py                      # 1.25 GiB cap, 4.2x that in features (~5.6 GB on disk)
    python scripts/bench_outofcore.py --slice-rows 20000   # quicker in-memory comparison
    python scripts/bench_outofcore.py --cap-mb 1100 --ratio 4
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

GRID = '[sgd]\npreprocess = "standardize"\nloss = "log_loss"\nalpha = 0.0001\nmax_iter = {epochs}\n'


def write_cache(path: Path, n: int, dim: int, classes: int = 10, seed: int = 0, block: int = 16384) -> Path:
    """A cache of ``n`` x ``dim`` float32 features written block by block (classes in a 64-d latent space)."""
    rng = np.random.default_rng(seed)
    latent = 64
    means = rng.normal(0, 0.35, (classes, latent))
    W = rng.normal(0, 1 / np.sqrt(latent), (latent, dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    split = np.where(np.arange(n) < 0.8 * n, "train", np.where(np.arange(n) < 0.9 * n, "val", "test"))
    chunk = max(1, (1 << 20) // (4 * dim))  # ~1 MiB chunks of whole rows, as featcache writes them
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("features/synthetic", shape=(n, dim), dtype=np.float32, chunks=(chunk, dim))
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            z = (means[y[lo:hi]] + rng.normal(0, 1, (hi - lo, latent))).astype(np.float32)
            ds[lo:hi] = np.maximum(z @ W + rng.normal(0, 0.5, (hi - lo, dim)).astype(np.float32) - 0.3, 0)
        f.create_dataset("labels", data=y.astype(np.int64))
        f.create_dataset("paths", data=np.char.add("row", np.arange(n).astype(str)).astype(object),
                         dtype=h5py.string_dtype())
        f.create_dataset("split", data=split.astype(object), dtype=h5py.string_dtype())
        for name in ("paths", "reasons"):
            f.create_dataset(f"failed/{name}", data=np.array([], dtype=object), dtype=h5py.string_dtype())
        f.attrs.update({"format_version": 1, "complete": True, "layers": json.dumps(["synthetic"]),
                        "class_names": json.dumps([f"class{k}" for k in range(classes)]),
                        "fingerprint": f"bench-outofcore-{n}x{dim}-{seed}", "config": "{}", "key": "{}",
                        "versions": "{}", "n_rows": n})
    return path


def child(cap: int, argv) -> int:
    """Cap this process's data segment first, then run the sweep CLI; print peak RSS as JSON on stderr."""
    if cap:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    from featcache.cli.sweep import main

    code = main(argv)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss": peak}), file=sys.stderr)
    return code


def sweep(cache: Path, out: Path, grid: Path, cap: int, *extra) -> dict:
    argv = [str(cache), "--grid", str(grid), "--out", str(out), "--no-reuse", "--no-plots", "--no-progress", *extra]
    t = time.perf_counter()
    run = subprocess.run([sys.executable, __file__, "--child", str(cap), *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    stats = json.loads(run.stderr.strip().splitlines()[-1]) if run.stderr.strip().endswith("}") else {}
    errors = [line for line in run.stderr.splitlines() if line.startswith("featcache: ")]
    result = {"rc": run.returncode, "seconds": seconds, "peak_rss": stats.get("peak_rss"),
              "error": errors[-1] if run.returncode and errors else run.stderr[-300:]}
    if run.returncode == 0:
        summary = json.loads((out / "sweep.json").read_text())
        import pandas as pd

        board = pd.read_csv(out / "leaderboard.csv")
        result.update(val=float(board["val_accuracy"].iloc[0]), test=summary["test"]["accuracy"])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cap-mb", type=int, default=1280, help="RLIMIT_DATA of the sweep process, MiB (default: 1280; "
                                                           "importing torch + sklearn alone takes ~930)")
    p.add_argument("--ratio", type=float, default=4.2, help="feature bytes / cap (default: 4.2)")
    p.add_argument("--dim", type=int, default=2048, help="features per row, as ResNet-50's (default: 2048); the "
                   "per-row metadata (paths, split) is still loaded, so very many narrow rows need more headroom")
    p.add_argument("--epochs", type=int, default=2, help="SGD epochs (max_iter) (default: 2)")
    p.add_argument("--slice-rows", type=int, default=40_000, help="rows of the in-memory comparison (default: 100000)")
    p.add_argument("--workdir", type=Path, help="where the caches go (default: a temporary folder, removed after)")
    args = p.parse_args()
    cap = args.cap_mb << 20
    n = int(args.ratio * cap / (4 * args.dim)) + 1
    with tempfile.TemporaryDirectory(prefix="featcache-ooc-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        grid = tmp / "grid.toml"
        grid.write_text(GRID.format(epochs=args.epochs), encoding="utf-8")
        t = time.perf_counter()
        big = write_cache(tmp / "big.h5", n, args.dim)
        print(f"[cache] {n:,} x {args.dim} float32 = {4 * n * args.dim / 2**30:.2f} GiB of features "
              f"({big.stat().st_size / 2**30:.2f} GiB file), written in {time.perf_counter() - t:.0f} s; "
              f"memory cap (RLIMIT_DATA) {cap / 2**30:.2f} GiB -> features / cap = {4 * n * args.dim / cap:.2f}",
              flush=True)
        refused = sweep(big, tmp / "in-memory", grid, cap)
        print(f"[capped, in memory]   exit {refused['rc']}: {refused['error']}", flush=True)
        ooc = sweep(big, tmp / "ooc", grid, cap, "--out-of-core")
        if ooc["rc"]:
            print(f"[capped, out of core] FAILED, exit {ooc['rc']}: {ooc['error']}")
        else:
            print(f"[capped, out of core] completed in {ooc['seconds']:.0f} s; peak RSS {ooc['peak_rss'] / 2**20:.0f} "
                  f"MiB (cap {cap / 2**20:.0f} MiB, features {4 * n * args.dim / 2**20:,.0f} MiB); "
                  f"sgd val accuracy {ooc['val']:.4f}, test accuracy {ooc['test']:.4f}", flush=True)
        small = write_cache(tmp / "small.h5", args.slice_rows, args.dim)
        mem = sweep(small, tmp / "s-mem", grid, 0)
        sooc = sweep(small, tmp / "s-ooc", grid, 0, "--out-of-core")
        print(f"[slice {args.slice_rows:,} rows, no cap] in memory: val {mem['val']:.4f}, test {mem['test']:.4f}, "
              f"{mem['seconds']:.0f} s, peak RSS {mem['peak_rss'] / 2**20:.0f} MiB; out of core: val "
              f"{sooc['val']:.4f}, test {sooc['test']:.4f}, {sooc['seconds']:.0f} s, peak RSS "
              f"{sooc['peak_rss'] / 2**20:.0f} MiB; test accuracy difference {sooc['test'] - mem['test']:+.4f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(int(sys.argv[2]), sys.argv[3:]))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
