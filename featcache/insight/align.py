"""The pixel check at native resolution (stage: insight): how far a pair of images is from being one picture,
once aligned.

A copy that was cropped, brightened (even with clipping) or resized with an ordinary kernel matches its original
almost exactly when both are compared on the pixel grid of one of them, which the fixed 16x16 thumbnails cannot
do for very small images (at 8x8, a brightened or 1-pixel-cropped copy correlates less with its original than two
different ``1`` s drawn alike). :func:`aligned_residual` tries each crop of one image (``data.CROPS`` off the
sides) against the whole other, on the grid of the smaller and of the larger region (longest side at most
``GRID_MAX``), fits ``y = clip(a * x + b)`` in both directions (a pixel saturated at 0 or 255 in ``y`` only counts
when the fit falls on the wrong side of it; ``a`` within ``GAIN``) and returns the smallest root-mean-square
residual, relative to the standard deviation of ``y``.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from .data import CROPS, open_grey

__all__ = ["aligned_residual", "GRID_MAX", "GAIN"]

GRID_MAX = 32  # longest side of the comparison grid
GAIN = (0.5, 2.0)  # contrast change a copy may have
LO, HI = 0.5, 254.5  # grey levels at which a pixel counts as saturated


def _boxes(size: Tuple[int, int]):
    w, h = size
    return [(round(a * w), round(a * h), w - round(b * w), h - round(b * h)) for a in CROPS for b in CROPS]


def _grids(box, size) -> list:
    rw, rh = box[2] - box[0], box[3] - box[1]
    out = []
    for gw, gh in ((min(rw, size[0]), min(rh, size[1])), (max(rw, size[0]), max(rh, size[1]))):
        s = min(1.0, GRID_MAX / max(gw, gh))
        out.append((max(1, round(gw * s)), max(1, round(gh * s))))
    return list(dict.fromkeys(out))


def _fit_residual(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative residual of ``y ~ clip(a * x + b)`` per row of ``x``, ``y`` (pairs x pixels, grey levels)."""
    top, bot = y >= HI, y <= LO
    use = ~(top | bot)
    for _ in range(4):
        w = use.astype(np.float32)
        n = np.maximum(w.sum(1, keepdims=True), 1.0)
        mx, my = (w * x).sum(1, keepdims=True) / n, (w * y).sum(1, keepdims=True) / n
        dx = w * (x - mx)
        vx, cxy = (dx * (x - mx)).sum(1, keepdims=True) / n, (dx * (y - my)).sum(1, keepdims=True) / n
        a = np.where(vx > 1e-6, cxy / np.maximum(vx, 1e-6), 1.0)
        p = a * x + (my - a * mx)
        again = ~((top & (p >= HI)) | (bot & (p <= LO)))
        if (again == use).all():
            break
        use = again
    r = np.sqrt(((y - np.clip(p, 0, 255)) ** 2).mean(1)) / np.maximum(y.std(1), 1.0)
    return np.where((a[:, 0] >= GAIN[0]) & (a[:, 0] <= GAIN[1]), r, np.inf)


def aligned_residual(paths_a: Sequence[str], paths_b: Sequence[str]) -> np.ndarray:
    """Smallest relative residual of each pair ``(paths_a[i], paths_b[i])`` over the alignments tried (0 = the same
    picture up to crop, scale and brightness); ``inf`` where a file cannot be read."""
    images: Dict[str, object] = {}
    for p in dict.fromkeys(list(paths_a) + list(paths_b)):
        try:
            images[p] = open_grey(p)
            images[p].thumbnail((4 * GRID_MAX, 4 * GRID_MAX))  # a large photo is compared at 32 px anyway
        except (OSError, ValueError, SyntaxError):
            images[p] = None
    out = np.full(len(paths_a), np.inf)
    groups: Dict[tuple, list] = {}
    for i, (pa, pb) in enumerate(zip(paths_a, paths_b)):
        if images[pa] is not None and images[pb] is not None:
            groups.setdefault((images[pa].size, images[pb].size), []).append(i)
    resized: Dict[tuple, np.ndarray] = {}

    def grid(path, box, size):
        key = (path, box, size)
        if key not in resized:
            from PIL import Image

            resized[key] = np.asarray(images[path].resize(size, Image.BILINEAR, box=box), np.float32).ravel()
        return resized[key]

    for (sa, sb), rows in groups.items():
        pa, pb = [paths_a[i] for i in rows], [paths_b[i] for i in rows]
        best = np.full(len(rows), np.inf)
        for first, second, s1, s2 in ((pa, pb, sa, sb), (pb, pa, sb, sa)):
            for box in _boxes(s1):
                whole = (0, 0) + s2
                for g in _grids(box, s2):
                    x = np.stack([grid(p, box, g) for p in first])
                    y = np.stack([grid(p, whole, g) for p in second])
                    best = np.minimum(best, np.minimum(_fit_residual(x, y), _fit_residual(y, x)))
        out[rows] = best
    return out
