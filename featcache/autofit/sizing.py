"""The input size ``fit`` feeds the network, chosen from the images (``image_size="auto"``, fit's default).

Stage: commands (``fit``'s first step). Small images upscaled to a network's own 224 px are better seen smaller, and
cost 5-15x less to extract there (MNIST-5k at 64 px: +2.0 points over 224, see docs/benchmarks.md). So ``auto``
reads the sizes of a sample of the images (headers only); when they are smaller than the model's input, it extracts
a stratified sample of the training images (never test) at a few sizes and keeps the size whose probe (an RBF SVM on
l2-normalised features, every layer choice, 3-fold CV) validates best, the smaller on a tie, within a small share
of the budget. Images as large as the model's input keep the model's own size, with no screen.
"""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..config import ExtractConfig, FitConfig

__all__ = ["choose_image_size", "candidate_sizes", "SCREEN_ROWS", "SCREEN_SHARE", "PROBE_GRID"]

log = logging.getLogger("featcache")

SCREEN_ROWS = 1000  # training images in the screen's sample (stratified)
SCREEN_SHARE = 0.1  # of the budget, at most, for the screen (the first size always runs)
LARGE = 0.75  # images whose shorter side is at least this share of the model's input keep the model's size
PROBE_GRID = {"svm": {"preprocess": "l2", "C": 10.0}}  # the probe: one point of the default grid
_SIZES = (64, 96, 128)
_SIZE_STEP = 16  # the native size is rounded to a multiple of this
# ...and is at least this: EfficientNet-Lite0 at 32 px fitted digits' sample best but cannot run fit's scales stage
# (0.667 of 32 px is below its smallest input), measured on sklearn digits.
_MIN_SIZE = 48


def candidate_sizes(native: int, model_size: int) -> List[int]:
    """The sizes to screen for images whose shorter side is ``native`` px: 64, 96, 128 and the native size (rounded
    to 16 px, at least 48), each below the model's own ``model_size``; ascending."""
    own = max(_MIN_SIZE, _SIZE_STEP * round(native / _SIZE_STEP))
    return sorted({s for s in (*_SIZES, own) if s < model_size})


def _native_size(source, n: int = 200) -> int:
    """The median shorter side of up to ``n`` images spread over the source, from their headers alone."""
    from PIL import Image

    sides = []
    for i in np.unique(np.linspace(0, len(source) - 1, num=min(n, len(source))).round().astype(int)):
        try:
            with Image.open(source.file_path(int(i))) as im:
                sides.append(min(im.size))
        except (OSError, ValueError):  # a bad file is the extraction's to report
            continue
    return int(median(sides)) if sides else 0


def _sample_csv(source, folder: Path, seed: int) -> Optional[Path]:
    """``folder/sample.csv``: up to :data:`SCREEN_ROWS` labelled non-test images, stratified by class."""
    from sklearn.model_selection import train_test_split

    splits = source.splits or ["train"] * len(source)
    rows = np.array([i for i in range(len(source)) if source.labels[i] >= 0 and splits[i] != "test"])
    if len(rows) < 6 or len(np.unique(source.labels[rows])) < 2:
        return None
    if len(rows) > SCREEN_ROWS:
        counts = np.bincount(source.labels[rows])
        stratify = source.labels[rows] if counts[counts > 0].min() >= 2 else None
        rows, _ = train_test_split(rows, train_size=SCREEN_ROWS, stratify=stratify, random_state=seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sample.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for i in sorted(rows):
            writer.writerow([str(source.file_path(int(i)).resolve()), source.class_names[source.labels[i]], "train"])
    return path


def _probe(sample: Path, size: int, cfg: FitConfig) -> Tuple[float, float]:
    """``(validation score, seconds)`` of the probe on the sample's features at ``size`` px."""
    from ..extraction import extract
    from ..sweeping import sweep

    t = time.monotonic()
    # torch, not a CPU engine: a CPU engine's first export of each size would cost more than this small sample
    # saves (its fp32 features are torch's, and so share the cache).
    given = cfg.extract
    cache = extract(config=ExtractConfig(data=sample, model=given.model, weights=given.weights, image_size=size,
                                         device=given.device, cache_dir=given.cache_dir, engine="torch",
                                         precision="fp32" if given.device in ("auto", "cpu") else "auto",
                                         progress=False))
    res = sweep(cache, grid=PROBE_GRID, screen_layers=0, cv=3, halving=False, ensemble=0, seed=cfg.seed,
                n_jobs=cfg.n_jobs, metric=cfg.metric, progress=False)
    board = res.leaderboard
    return float(board[board["status"] == "ok"][f"val_{cfg.metric}"].iloc[0]), time.monotonic() - t


def choose_image_size(cfg: FitConfig, out: Path, earlier: Optional[Dict] = None) -> Tuple[Optional[int], Dict]:
    """``(size, record)``: the crop size fit extracts at (``None``: the model's own) and what decided it. ``earlier``
    is the record of a previous run in the same folder, reused when made for the same images, model and seed."""
    from ..learn.metrics import sort_key
    from ..models import load_backbone
    from ..sources import open_source

    if cfg.image_size != "auto":
        return cfg.image_size, {"chosen": cfg.image_size, "how": "given (--image-size)" if cfg.image_size else
                                "the model's own (image_size=None)"}
    signature = {"data": str(cfg.extract.data), "model": str(cfg.extract.model), "weights": cfg.extract.weights,
                 "seed": cfg.seed, "metric": cfg.metric}
    if earlier and earlier.get("signature") == signature and "chosen" in earlier:
        log.info("fit: input size %s, as chosen by the previous run in this folder", earlier["chosen"] or "the model's")
        return earlier["chosen"], earlier
    t0 = time.monotonic()
    model_size = load_backbone(ExtractConfig(model=cfg.extract.model, weights="none")).preprocess.crop_size
    source = open_source(cfg.extract.data)
    native = _native_size(source) if source.root is not None else 0
    record = {"signature": signature, "native": native, "model": model_size}
    if native >= LARGE * model_size or native == 0:
        record.update(chosen=None, how=f"the model's own {model_size} px: the images' shorter side is {native} px")
        return None, record
    sample = _sample_csv(source, out / "image-size", cfg.seed)
    if sample is None:
        record.update(chosen=None, how="the model's own: too few labelled training images to screen sizes")
        return None, record
    allowance = SCREEN_SHARE * cfg.budget_s
    scores: Dict[int, float] = {}
    last_s = 0.0
    for size in candidate_sizes(native, model_size):
        spent = time.monotonic() - t0
        if scores and spent + last_s * (size / max(scores)) ** 2 > allowance:  # cost grows with the pixels
            log.info("fit: input size screen stops at %s px (%.0f s of its %.0f s)", max(scores), spent, allowance)
            break
        scores[size], last_s = _probe(sample, size, cfg)
        log.info("fit: input size %d px: val %s %.4f (%.1f s)", size, cfg.metric, scores[size], last_s)
    best = max(scores, key=lambda s: (sort_key(cfg.metric, scores[s]), -s))  # a tie: the smaller
    record.update(chosen=best, screened={str(s): round(v, 4) for s, v in scores.items()},
                  rows=sum(1 for _ in open(sample, encoding="utf-8")) - 1, seconds=round(time.monotonic() - t0, 1),
                  how=f"screened on a stratified sample of the training images (the probe: an RBF SVM on "
                      f"l2-normalised features, every layer choice, 3-fold CV); their shorter side is {native} px")
    log.info("fit: input size %d px (screened %s; the images are %d px, the model's own %d px)", best,
             ", ".join(f"{s} px {v:.4f}" for s, v in scores.items()), native, model_size)
    return best, record
