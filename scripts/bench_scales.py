"""Benchmark of input size and ``--scales`` on small real images (not a test); prints figures and, last, one JSON line.

Datasets as in scripts/bench_fit.py (MNIST-5k and scikit-learn's digits, val joined to train). For each: the default
layers extracted at each ``--sizes`` crop, and at ``--image-size`` with ``--scales 1 0.667`` (the network at that size
and at 2/3 of it, features joined); then one fixed configuration, the default sweep's best at 96 px on both sets
(an RBF SVM, C=30, on l2-normalised ``_blocks.4+_blocks.10``), validated as the sweep does (3-fold CV on train),
refitted on train and scored on test. Wall time is the extraction's.

    python scripts/bench_scales.py                          # both datasets (~10 min on 2 cores)
    python scripts/bench_scales.py --dataset digits --sizes 64 96
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench_fit  # noqa: E402  (the train/test CSV)
import bench_quality  # noqa: E402  (the datasets)

GRID = {"svm": [{"preprocess": "l2", "C": [30.0]}]}
LAYER = "_blocks.4+_blocks.10"


def measure(data: Path, cache_dir: Path, image_size: int, scales) -> dict:
    import featcache

    t = time.perf_counter()
    cache = featcache.extract(data, image_size=image_size, scales=scales, cache_dir=cache_dir, progress=False)
    seconds = time.perf_counter() - t
    res = featcache.sweep(cache, grid=GRID, layer=LAYER, halving=False, screen_layers=0, ensemble=0, progress=False)
    row = res.leaderboard.iloc[0]
    return {"image_size": image_size, "scales": list(scales), "extract_s": round(seconds, 1),
            "val_accuracy": float(row["val_accuracy"]), "test_accuracy": float(res.test_scores["accuracy"])}


def main() -> int:
    p = bench_fit.dataset_parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 224], help="single-scale crop sizes")
    p.add_argument("--image-size", type=int, default=96, help="the crop for --scales 1 0.667 (default: 96)")
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.dataset or ["mnist5k", "digits"]:
            root, *_ = bench_quality.prepare(name, args.work)
            data = bench_fit.train_test_csv(root)
            runs = [(size, (1.0,)) for size in args.sizes] + [(args.image_size, (1.0, 0.667))]
            results[name] = []
            for size, scales in runs:
                r = measure(data, Path(tmp) / name, size, scales)
                results[name].append(r)
                print(f"[{name}] {size} px, scales {' '.join(f'{s:g}' for s in scales)}: val {r['val_accuracy']:.4f}, "
                      f"test {r['test_accuracy']:.4f} (extraction {r['extract_s']} s)", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
