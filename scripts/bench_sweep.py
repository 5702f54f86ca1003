"""Benchmark of featcache's sweep (not a test): prints figures and, last, one JSON line.

1. C path: a 10-point logistic-regression C path on synthetic CNN-like features (N x D, 10 classes)
   with featcache's warm-started path (``featcache.logistic_path``, the engine of the sweep)
   vs a plain loop of ``LogisticRegression(C=c).fit``; accuracy of both on the same held-out rows.
2. Dense head: 10 epochs on cached features (extract once + train) vs end to end (decode and run
   the frozen EfficientNet-Lite0 every epoch, then the same head step), on real images (by default
   1500 of scikit-learn's handwritten digits written as PNGs by scripts/make_demo_data.py). All
   epochs of both sides are measured unless ``--e2e-epochs`` asks for fewer (then the rest is
   extrapolated, and the output says so); per-image costs are printed for other dataset sizes.
3. Default sweep: the previous release's defaults (its grid, 5-fold CV, one worker, no halving, no ensemble) vs
   today's, side by side, on 6,000 training rows x D synthetic features (``--grid-n 7500``, 80/20 train/test):
   wall time, best validation and test accuracy, and today's cost per 1,000 training rows.
   ``scripts/bench_fit.py`` makes the same comparison on real images (MNIST-5k, sklearn digits).

    python scripts/bench_sweep.py                # N=60000, D=1280 (several minutes on 2 cores)
    python scripts/bench_sweep.py --n 12000      # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def synthetic(n: int, dim: int, classes: int, seed: int = 0, sep: float = 0.35):
    """Non-negative, correlated features with class structure in a 64-d latent space (like pooled CNN features)."""
    rng = np.random.default_rng(seed)
    latent = 64
    means = rng.normal(0, sep, (classes, latent))
    y = rng.integers(0, classes, n)
    W = rng.normal(0, 1 / np.sqrt(latent), (latent, dim)).astype(np.float32)
    X = np.empty((n, dim), np.float32)
    for lo in range(0, n, 8192):  # in blocks, to keep the float64 temporaries small
        hi = min(n, lo + 8192)
        z = (means[y[lo:hi]] + rng.normal(0, 1, (hi - lo, latent))).astype(np.float32)
        X[lo:hi] = np.maximum(z @ W + rng.normal(0, 0.5, (hi - lo, dim)).astype(np.float32) - 0.3, 0)
    return X, y


def write_cache(path: Path, X: np.ndarray, y: np.ndarray, split: np.ndarray, classes) -> Path:
    """A minimal cache in featcache's HDF5 layout (what ``featcache.load`` reads) from arrays."""
    fingerprint = f"synthetic-{len(X)}x{X.shape[1]}"
    with h5py.File(path, "w") as f:
        f.create_dataset("features/synthetic", data=X, chunks=(min(len(X), 256), X.shape[1]))
        f.create_dataset("labels", data=y.astype(np.int64))
        f.create_dataset("paths", data=np.array([f"row{i}" for i in range(len(X))], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("split", data=split.astype(object), dtype=h5py.string_dtype())
        for name in ("paths", "reasons"):
            f.create_dataset(f"failed/{name}", data=np.array([], dtype=object), dtype=h5py.string_dtype())
        f.attrs.update({"format_version": 1, "complete": True, "layers": json.dumps(["synthetic"]),
                        "class_names": json.dumps([str(c) for c in classes]), "fingerprint": fingerprint,
                        "config": json.dumps({"model": "synthetic"}), "key": json.dumps({"model": "synthetic"}),
                        "versions": json.dumps({}), "n_rows": len(X)})
    return path


def bench_c_path(n: int, dim: int, n_cs: int) -> dict:
    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from featcache.learn.logistic import logistic_path

    X, y = synthetic(n, dim, 10)
    n_train = int(0.8 * n)
    Xtr, ytr, Xte, yte = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    Cs = np.logspace(-4, 1, n_cs)
    print(f"[C path] {n_train} train / {n - n_train} held-out rows x {dim} features, 10 classes; "
          f"C = {', '.join(f'{c:.2g}' for c in Cs)}; {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
          flush=True)

    t = time.perf_counter()
    fast = logistic_path(Xtr, ytr, Cs)
    t_fast = time.perf_counter() - t
    acc_fast = [float(est.score(Xte, yte)) for est, _ in fast]
    iters_fast = [int(est.n_iter_[0]) for est, _ in fast]
    print(f"[C path] featcache logistic_path: {t_fast:.1f} s, LBFGS iterations {iters_fast}", flush=True)

    t = time.perf_counter()
    acc_plain, iters_plain = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in Cs:
            est = LogisticRegression(C=C).fit(Xtr, ytr)
            acc_plain.append(float(est.score(Xte, yte)))
            iters_plain.append(int(est.n_iter_[0]))
    t_plain = time.perf_counter() - t
    print(f"[C path] plain loop of LogisticRegression(C=c).fit: {t_plain:.1f} s, LBFGS iterations {iters_plain}")
    print(f"[C path] held-out accuracy per C, featcache: {' '.join(f'{a:.4f}' for a in acc_fast)}")
    print(f"[C path] held-out accuracy per C, plain:     {' '.join(f'{a:.4f}' for a in acc_plain)}")
    diff = max(abs(a - b) for a, b in zip(acc_fast, acc_plain))
    print(f"[C path] best accuracy: featcache {max(acc_fast):.4f}, plain {max(acc_plain):.4f} "
          f"(largest per-C difference {diff:.4f}); speed-up {t_plain / t_fast:.2f}x", flush=True)
    return {"n_train": n_train, "dim": dim, "featcache_s": round(t_fast, 2), "plain_s": round(t_plain, 2),
            "speedup": round(t_plain / t_fast, 2), "best_acc_featcache": round(max(acc_fast), 4),
            "best_acc_plain": round(max(acc_plain), 4), "max_acc_diff": round(diff, 4)}


def digits_folder(workdir: Path, per_class: int) -> Path:
    """Real labelled images: scikit-learn's digits as 64 px PNGs in train/val/test class folders."""
    sys.path.insert(0, str(REPO / "scripts"))
    import make_demo_data

    out = workdir / f"digits-{per_class}"
    make_demo_data.main(["--out", str(out), "--per-class", str(per_class)])
    return out


def bench_dense(images: Path, e2e_epochs: int, epochs: int = 10) -> dict:
    import torch
    from torch.nn import functional as F

    import featcache
    from featcache import decode, models, sources
    from featcache.config import ExtractConfig
    from featcache.learn.dense import DenseHead

    head_params = dict(hidden_layer_sizes=512, epochs=epochs, batch_size=64, early_stopping=False, random_state=0)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        # One layer, the penultimate features, on both sides (the comparison is about epochs, not layers).
        cache = featcache.extract(images, model="efficientnet_lite0", layers=["last1"], cache_dir=tmp, progress=False)
        t_extract = time.perf_counter() - t
        fs = featcache.load(cache)
    n = len(fs)
    t = time.perf_counter()
    DenseHead(**head_params).fit(fs.X, fs.y)
    t_head = time.perf_counter() - t
    cached_total = t_extract + t_head
    print(f"[dense] cached: extract {n} images once {t_extract:.1f} s (model load, decode, forward, write) + "
          f"{epochs} epochs of DenseHead(512) {t_head:.2f} s = {cached_total:.1f} s (all measured)", flush=True)

    # End to end: the same images decoded and pushed through the frozen base every epoch.
    record = fs.meta["config"]
    pre = record["preprocess"]
    t = time.perf_counter()
    backbone = models.load_backbone(ExtractConfig(model="efficientnet_lite0"))
    fx = models.FeatureExtractor(backbone, record["layers"], record["pool"]).eval()
    t_load = time.perf_counter() - t
    source = sources.open_source(images)
    dataset = [(i, source) for i in range(len(source))]

    def collate(batch):
        arrays = [decode.decode_sample(src, i, pre["resize_size"], pre["crop_size"]) for i, src in batch]
        images_ = torch.from_numpy(np.stack(arrays))
        return images_, torch.from_numpy(source.labels[[i for i, _ in batch]])

    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, collate_fn=collate,
                                         num_workers=1, persistent_workers=True)
    head = torch.nn.Sequential(torch.nn.Linear(fs.X.shape[1], 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, len(fs.classes)))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    dtype = torch.bfloat16 if record["precision"] == "bf16" else None
    epoch_s = []
    for _ in range(min(e2e_epochs, epochs)):
        t = time.perf_counter()
        for images_, labels in loader:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                feats = fx(images_)[record["layers"][-1]].float()
            loss = F.cross_entropy(head(feats.clone()), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch_s.append(time.perf_counter() - t)
    per_epoch = float(np.mean(epoch_s))
    e2e_total = t_load + (sum(epoch_s) if e2e_epochs >= epochs else epochs * per_epoch)
    print(f"[dense] end to end: model load {t_load:.1f} s + {e2e_epochs} epoch(s) measured at "
          f"{', '.join(f'{s:.1f}' for s in epoch_s)} s; {epochs} epochs: {e2e_total:.1f} s "
          f"(precision {record['precision']})")
    ratio = e2e_total / cached_total
    # Extraction = fixed start-up (model build, tracing, workers) + a per-image cost from its own timer.
    loop_s = json.loads(fs.meta["timings"])["total_s"] if "timings" in fs.meta else t_extract
    extract_fixed, extract_img = t_extract - loop_s, loop_s / n
    base_img, head_img = per_epoch / n, t_head / (epochs * n)
    print(f"[dense] per image (measured): extraction {1000 * extract_img:.2f} ms once (+ {extract_fixed:.1f} s "
          f"start-up), frozen base + decode {1000 * base_img:.2f} ms every epoch, head {1000 * head_img:.3f} ms "
          f"every epoch")
    big = 60000
    big_cached = extract_fixed + big * extract_img + epochs * big * head_img
    big_e2e = t_load + epochs * big * (base_img + head_img)
    big_ratio = big_e2e / big_cached
    how = ("both sides measured" if e2e_epochs >= epochs else
           f"cached measured; end to end {e2e_epochs} of {epochs} epochs measured, the rest extrapolated")
    print(f"[dense] speed-up, {epochs} epochs on {n} images: {ratio:.1f}x ({how})")
    print(f"[dense] speed-up extrapolated from the per-image costs to {big} images: {big_ratio:.1f}x "
          f"({big_e2e / 60:.0f} min vs {big_cached / 60:.1f} min)", flush=True)
    return {"images": n, "cached_s": round(cached_total, 2), "e2e_s_extrapolated": round(e2e_total, 2),
            "e2e_epochs_measured": e2e_epochs, "speedup": round(ratio, 2),
            "speedup_60k_extrapolated": round(big_ratio, 2)}


# The previous release's default sweep (featcache 0.2.0), kept here to measure the current defaults against it:
# its grid, its layer screen, 5-fold CV whenever the cache has no val split, one worker, every configuration on all
# the rows, no ensemble.
PREVIOUS_GRID = {
    "logreg": [{"preprocess": "standardize", "C": [0.0001, 0.001, 0.01, 0.1, 1.0]},
               {"preprocess": "l2", "C": [0.1, 1.0, 10.0, 100.0, 1000.0]}],
    "linsvm": {"preprocess": "standardize", "C": [0.0001, 0.001, 0.01], "dual": True},
    "ridge": {"preprocess": "standardize", "alpha": [10.0, 1000.0, 100000.0]},
    "sgd": {"preprocess": "standardize", "loss": "log_loss", "alpha": [0.0001, 0.001, 0.01], "max_iter": 20},
    "knn": {"preprocess": ["none", "pca:128"], "n_neighbors": [5, 20], "weights": "distance"},
    "dense": {"preprocess": "standardize", "hidden_layer_sizes": [0, 512], "dropout": 0.2, "weight_decay": 0.01,
              "epochs": 30},
}
PREVIOUS_SCREEN = {"ridge": {"preprocess": "standardize", "alpha": [10.0, 1000.0, 100000.0]},
                   "logreg": {"preprocess": "l2", "C": [0.1, 1.0, 10.0, 100.0, 1000.0]}}
PREVIOUS = dict(grid=PREVIOUS_GRID, cv=5, n_jobs=1, halving=False, ensemble=0)


def previous_and_current(cache: Path, label: str) -> dict:
    """The previous release's default sweep and today's on ``cache``, side by side in one process (no reuse)."""
    from featcache.selection import fitting
    from featcache.sweeping import sweep

    out = {}
    for side, kw in (("previous", PREVIOUS), ("current", {})):
        screen = fitting.SCREEN_GRID
        if side == "previous":
            fitting.SCREEN_GRID = PREVIOUS_SCREEN
        try:
            t = time.perf_counter()
            res = sweep(cache, reuse=False, progress=False, **kw)
            elapsed = time.perf_counter() - t
        finally:
            fitting.SCREEN_GRID = screen
        board = res.leaderboard
        out[side] = {"seconds": round(elapsed, 1), "configs": len(board), "fits": res.n_fits,
                     "val_accuracy": round(float(board["val_accuracy"].iloc[0]), 4),
                     "test_accuracy": round(float(res.test_scores["accuracy"]), 4), "best": res.best_config.label(),
                     "scheme": res.scheme}
        print(f"[defaults] {label} {side:>8}: {elapsed:6.1f} s, {len(board)} configurations, {res.n_fits} fits; "
              f"best val {out[side]['val_accuracy']:.4f}, test {out[side]['test_accuracy']:.4f}: {out[side]['best']}; "
              f"validation: {res.scheme}", flush=True)
    out["speedup"] = round(out["previous"]["seconds"] / out["current"]["seconds"], 2)
    print(f"[defaults] {label}: current defaults {out['speedup']:.2f}x faster; best val "
          f"{out['current']['val_accuracy'] - out['previous']['val_accuracy']:+.4f}, test "
          f"{out['current']['test_accuracy'] - out['previous']['test_accuracy']:+.4f}", flush=True)
    return out


def bench_default_grid(n: int, dim: int) -> dict:
    """The default sweep, previous release vs today, on ``n`` x ``dim`` synthetic features split 80/20 train/test."""
    X, y = synthetic(n, dim, 10, seed=1)
    split = np.where(np.arange(n) % 10 < 8, "train", "test")
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_cache(Path(tmp) / "synthetic.h5", X, y, split, range(10))
        out = previous_and_current(cache, f"synthetic {int(0.8 * n)} train x {dim}")
    per_1000 = out["current"]["seconds"] / (0.8 * n / 1000)
    print(f"[defaults] current default sweep: {per_1000:.1f} s per 1,000 training rows of {dim} features on this "
          f"machine ({os.cpu_count()} cores)", flush=True)
    return {"n": n, "dim": dim, **out, "seconds_per_1000_rows": round(per_1000, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60000, help="rows of the C-path benchmark (default: 60000)")
    p.add_argument("--dim", type=int, default=1280, help="features per row (default: 1280)")
    p.add_argument("--cs", type=int, default=10, help="points on the C path (default: 10)")
    p.add_argument("--images", type=Path, default=None,
                   help="labelled images for the dense-head benchmark (default: --per-class digits per class, "
                        "written to a temporary folder)")
    p.add_argument("--per-class", type=int, default=150,
                   help="digits per class when --images is not given (default: 150, i.e. 1500 images)")
    p.add_argument("--e2e-epochs", type=int, default=10,
                   help="end-to-end epochs actually run; fewer than 10 extrapolates the rest (default: 10)")
    p.add_argument("--grid-n", type=int, default=7500,
                   help="rows of the default-sweep comparison, 80%% train (default: 7500, i.e. 6,000 x --dim)")
    p.add_argument("--skip", nargs="*", default=[], choices=["cpath", "dense", "grid"], help="parts to skip")
    args = p.parse_args()
    out = {}
    if "cpath" not in args.skip:
        out["c_path"] = bench_c_path(args.n, args.dim, args.cs)
    if "dense" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            images = args.images or digits_folder(Path(tmp), args.per_class)
            out["dense_head"] = bench_dense(images, args.e2e_epochs)
    if "grid" not in args.skip:
        out["default_grid"] = bench_default_grid(args.grid_n, args.dim)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
