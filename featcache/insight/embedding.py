"""Compact features and a 2-D map of the rows (stage: insight).

:func:`pca_features` fits a PCA on a sample of rows and projects every row, block by block from the file, to a few
hundred dimensions: what the label model and the map use (PCA never sees a label). :func:`embed_2d` lays the rows
out in 2-D: PCA to 50 dimensions, then openTSNE or UMAP when installed, else scikit-learn's t-SNE; beyond
``MAP_ROWS`` rows, a sample (flagged rows always in it). :func:`plot_map` draws it coloured by class, marked by
split, with label issues and leaks circled.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..cache.rows import Rows

__all__ = ["pca_features", "embed_2d", "map_rows", "plot_map", "MAP_ROWS"]

MAP_ROWS = 20_000  # rows drawn on the map at most
FIT_ROWS = 20_000  # rows the PCA is fitted on at most


def pca_features(cache, layer: str, dims: int = 128, seed: int = 0) -> np.ndarray:
    """Every row projected to ``dims`` principal components (float32, N x dims; fewer when the data has fewer)."""
    from sklearn.decomposition import PCA

    rows = Rows(cache, [layer])
    n, d = rows.shape
    rng = np.random.default_rng(seed)
    sample = []
    for _, X in rows.blocks():
        if n > FIT_ROWS:
            X = X[rng.random(len(X)) < FIT_ROWS / n]
        sample.append(np.nan_to_num(X))
    fit = np.concatenate(sample)
    dims = int(min(dims, d, max(1, len(fit) - 1)))
    pca = PCA(n_components=dims, svd_solver="randomized" if dims < min(fit.shape) // 2 else "full",
              random_state=seed).fit(fit)
    out = np.empty((n, dims), dtype=np.float32)
    for pos, X in rows.blocks():
        out[pos] = pca.transform(np.nan_to_num(X))
    if rows._file is not None:
        rows._file.close()
    return out


def map_rows(n: int, marked: np.ndarray, limit: int = MAP_ROWS, seed: int = 0) -> np.ndarray:
    """The rows drawn on the map: all of them up to ``limit``, else every marked row plus a random sample."""
    if n <= limit:
        return np.arange(n)
    marked = np.flatnonzero(marked)[:limit]
    rest = np.setdiff1d(np.arange(n), marked)
    pick = np.random.default_rng(seed).choice(rest, limit - len(marked), replace=False)
    return np.sort(np.concatenate([marked, pick]))


def embed_2d(Z: np.ndarray, seed: int = 0) -> Tuple[np.ndarray, str]:
    """``(xy, method)``: 2-D coordinates of the rows of ``Z`` (compact features) and how they were made."""
    Z = np.asarray(Z, dtype=np.float32)[:, :50]
    n = len(Z)
    if n < 5:
        xy = np.zeros((n, 2), np.float32)
        xy[:, : min(2, Z.shape[1])] = Z[:, :2]
        return xy, "PCA"
    perplexity = float(min(30, (n - 1) / 3))
    if importlib.util.find_spec("openTSNE") is not None:
        from openTSNE import TSNE

        xy = np.asarray(TSNE(perplexity=perplexity, random_state=seed, n_jobs=-1).fit(Z))
        return xy.astype(np.float32), "PCA + t-SNE (openTSNE)"
    if importlib.util.find_spec("umap") is not None:
        import umap

        xy = umap.UMAP(random_state=seed, n_neighbors=min(15, n - 1)).fit_transform(Z)
        return np.asarray(xy, np.float32), "PCA + UMAP"
    from sklearn.manifold import TSNE

    xy = TSNE(perplexity=perplexity, init="pca", random_state=seed, max_iter=500,
              learning_rate="auto").fit_transform(Z)
    return xy.astype(np.float32), "PCA + t-SNE (scikit-learn)"


def plot_map(xy: np.ndarray, labels: np.ndarray, split: np.ndarray, issue: np.ndarray, leak: np.ndarray,
             classes, path: Path, title: Optional[str] = None) -> Path:
    """The map as a PNG: a colour per class (grey = unlabelled), a marker per split, label issues circled red and
    leaks circled black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 7.5))
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    size = 6 if len(xy) > 5000 else 14
    markers = {"train": "o", "val": "s", "test": "^", "": "o"}
    for s in sorted(set(split)):
        for c in range(-1, len(classes)):
            m = (split == s) & (labels == c)
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=size, marker=markers.get(s, "o"), linewidths=0, alpha=0.7,
                           color="0.6" if c < 0 else cmap(c % cmap.N),
                           label=(classes[c] if c >= 0 else "unlabelled") if s == sorted(set(split))[0] else None)
    if issue.any():
        ax.scatter(xy[issue, 0], xy[issue, 1], s=size * 5, facecolors="none", edgecolors="red", linewidths=0.8,
                   label="label issue")
    if leak.any():
        ax.scatter(xy[leak, 0], xy[leak, 1], s=size * 7, facecolors="none", edgecolors="black", linewidths=0.8,
                   label="leak")
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best", ncol=2)
    ax.set_xticks([])
    ax.set_yticks([])
    shapes = ", ".join(f"{s} {markers.get(s, 'o')}" for s in sorted(set(split)) if s)
    ax.set_title(title or f"the rows in 2-D{f' (marker: {shapes})' if shapes else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
