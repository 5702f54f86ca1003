"""Duplicates, near-duplicates and leaks across splits (stage: insight).

Feature-space neighbours propose candidate pairs; the pixels decide. Two different items of a plain class can be
as close in feature space as a re-encoded copy of one image, so a pair counts only when the original files agree:
the correlation of small grey thumbnails (``data.thumbnails``) is at least the threshold (the best over a few
crops of either image, so a slightly cropped copy still lines up), or, for a pair whose thumbnails correlate at
least ``SCREEN``, the images match at native resolution once aligned (``align.aligned_residual`` at most
``RESIDUAL``), or the bytes are the same (SHA-256). The nearest neighbours of the thumbnails (whole, and each crop
against the whole others) propose candidates too: a JPEG re-encode or a crop of a small image can move its features
more than its pixels.

Measured with planted copies (scripts/bench_inspect.py): on MNIST, resized, re-encoded, cropped and brightened
copies correlate at least 0.997, the closest different digits 0.995, hence ``DEFAULT_THRESHOLD``; on 8x8 digits a
resized, 1-pixel-cropped or brightened copy correlates only 0.989-0.994 with its original while two different
``1`` s reach 0.996, but aligned at native resolution such copies leave a residual of at most 0.002 and different
digits at least 0.07 (MNIST: at least 0.18), hence ``RESIDUAL``.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pandas as pd

from .align import aligned_residual
from .data import Dataset, file_hashes, thumbnails
from .neighbours import Neighbours, knn_array

__all__ = ["find_duplicates", "clusters_of", "pixel_similarity", "DEFAULT_THRESHOLD", "RESIDUAL", "SCREEN", "PIXEL_K"]

DEFAULT_THRESHOLD = 0.996  # pixel correlation (best crop) above which a candidate pair is a copy
RESIDUAL = 0.02  # aligned residual (relative to the image's contrast) at or below which a pair is a copy
SCREEN = 0.97  # thumbnail correlation a pair needs before its aligned residual is computed (copies: >= 0.987)
PIXEL_K = 10  # thumbnail neighbours per row added to the candidates
CROP_K = 2  # neighbours of each crop of a row among the whole thumbnails, added to the candidates
PAIR_CHUNK = 4096


def pixel_similarity(T: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Best correlation of rows ``a`` and ``b`` of ``T`` (rows x crops x pixels, crop 0 the whole image): each
    whole image against every crop of the other."""
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), PAIR_CHUNK):
        A = T[a[s:s + PAIR_CHUNK]].astype(np.float32)
        B = T[b[s:s + PAIR_CHUNK]].astype(np.float32)
        ab = np.einsum("np,nvp->nv", A[:, 0], B).max(axis=1)
        ba = np.einsum("np,nvp->nv", B[:, 0], A).max(axis=1)
        out[s:s + PAIR_CHUNK] = np.minimum(np.maximum(ab, ba), 1.0)  # float16 thumbnails round a little
    return out


def clusters_of(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the pairs ``(a, b)`` over ``n`` rows: a cluster number per row (-1 = alone),
    numbered by size, largest first."""
    parent = np.arange(n)

    def find(x):
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for i, j in zip(a, b):
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)])
    members = np.zeros(n, dtype=bool)
    members[np.asarray(a, dtype=np.int64)] = members[np.asarray(b, dtype=np.int64)] = True
    out = np.full(n, -1, dtype=np.int64)
    if not members.any():
        return out
    uniq, counts = np.unique(roots[members], return_counts=True)
    order = uniq[np.lexsort((uniq, -counts))]
    number = {int(r): c for c, r in enumerate(order)}
    out[members] = [number[int(r)] for r in roots[members]]
    return out


def find_duplicates(ds: Dataset, nb: Neighbours, threshold: float = DEFAULT_THRESHOLD, pixel_k: int = PIXEL_K,
                    progress: Optional[Callable[[int], None]] = None):
    """Copies among the rows of ``ds``. Returns ``(pairs, clusters, notes)``: ``pairs`` a DataFrame (path_a,
    path_b, split_a, split_b, similarity, exact, residual, leak, cluster, feature_similarity, row_a, row_b; residual
    is NaN where it was not needed), exact copies first, then by similarity; ``clusters`` (cluster, size, splits,
    leak, paths); ``notes``, sentences for the summary (missing files)."""
    n = len(ds)
    thumbs = thumbnails(list(ds.paths))
    if progress:
        progress(n)
    ok = np.array([thumbs[p] is not None for p in ds.paths])
    shape = next((t.shape for t in thumbs.values() if t is not None), (1, 1))
    T = np.zeros((n,) + shape, dtype=np.float16)
    for i, p in enumerate(ds.paths):
        if ok[i]:
            T[i] = thumbs[p]
    del thumbs
    # candidates: feature neighbours, plus the thumbnails' own neighbours
    a = np.repeat(np.arange(n), nb.index.shape[1])
    b = nb.index.ravel()
    fsim = {}
    for i, j, s in zip(a, b, nb.similarity.ravel()):
        fsim[(min(i, j), max(i, j))] = float(s)
    good = np.flatnonzero(ok)
    if len(good) > 1:
        for v in range(T.shape[1]):  # the whole thumbnail, then each crop, against the whole thumbnails
            pidx, _ = knn_array(T[good, 0], pixel_k if v == 0 else CROP_K, rows=good,
                                queries=None if v == 0 else T[good, v])
            a = np.concatenate([a, np.repeat(good, pidx.shape[1])])
            b = np.concatenate([b, pidx.ravel()])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = (lo != hi) & (lo >= 0)
    pairs = np.unique(np.stack([lo[keep], hi[keep]], axis=1), axis=0) if keep.any() else np.empty((0, 2), np.int64)
    both = ok[pairs[:, 0]] & ok[pairs[:, 1]]
    sim = np.full(len(pairs), np.nan, dtype=np.float32)
    sim[both] = pixel_similarity(T, pairs[both, 0], pairs[both, 1])
    hashes = file_hashes(list(ds.paths[np.unique(pairs)])) if len(pairs) else {}
    if ds.sha256 is not None:  # the cache's own hashes of the files it read, where it stored them
        hashes.update({p: h for p, h in zip(ds.paths, ds.sha256) if h and hashes.get(p) is not None})
    ha = np.array([hashes.get(p) for p in ds.paths[pairs[:, 0]]], dtype=object)
    hb = np.array([hashes.get(p) for p in ds.paths[pairs[:, 1]]], dtype=object)
    exact = np.array([x is not None and x == y for x, y in zip(ha, hb)], dtype=bool)
    sim0 = np.nan_to_num(sim, nan=-1.0)
    residual = np.full(len(pairs), np.nan)
    check = (sim0 >= SCREEN) & (sim0 < threshold) & ~exact
    residual[check] = aligned_residual(list(ds.paths[pairs[check, 0]]), list(ds.paths[pairs[check, 1]]))
    found = exact | (sim0 >= threshold) | (np.nan_to_num(residual, nan=np.inf) <= RESIDUAL)
    pairs, sim, exact, residual = pairs[found], sim[found], exact[found], residual[found]
    sim[exact] = np.where(np.isnan(sim[exact]), 1.0, sim[exact])
    cluster = clusters_of(n, pairs[:, 0], pairs[:, 1])
    sa, sb = ds.split_of(pairs[:, 0]), ds.split_of(pairs[:, 1])
    table = pd.DataFrame({
        "path_a": ds.paths[pairs[:, 0]], "path_b": ds.paths[pairs[:, 1]], "split_a": sa, "split_b": sb,
        "similarity": sim.astype(float), "exact": exact, "residual": residual,
        "leak": (sa != sb) & (sa != "") & (sb != ""),
        "cluster": cluster[pairs[:, 0]],
        "feature_similarity": [fsim.get((int(i), int(j)), np.nan) for i, j in pairs],
        "row_a": pairs[:, 0], "row_b": pairs[:, 1]})
    table = table.sort_values(["exact", "similarity"], ascending=False, kind="stable").reset_index(drop=True)
    groups = []
    for c in range(int(cluster.max()) + 1 if len(pairs) else 0):
        rows = np.flatnonzero(cluster == c)
        splits = sorted({s for s in ds.split_of(rows) if s})
        groups.append({"cluster": c, "size": len(rows), "splits": ",".join(splits), "leak": len(splits) > 1,
                       "paths": list(ds.paths[rows]), "rows": list(rows)})
    clusters = pd.DataFrame(groups, columns=["cluster", "size", "splits", "leak", "paths", "rows"])
    notes = []
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} of {n} image files are missing or unreadable: their copies could be "
                     f"checked by byte hash only (e.g. {ds.paths[~ok][0]})")
    return table, clusters, notes
