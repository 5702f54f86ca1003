"""Class confusion: which class pairs overlap in feature space, from the out-of-fold predictions (stage: insight).

A pair's ``rate`` is the share of its rows the out-of-fold model gives to the other class of the pair; its
``overlap`` the mean probability the model puts on the other class. :func:`plot_confusion` draws the row-normalised
confusion matrix (given label by predicted label) as a PNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pandas as pd

__all__ = ["confusion_pairs", "confusion_matrix", "plot_confusion"]


def confusion_matrix(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Counts of given label (rows) by out-of-fold predicted label (columns)."""
    k = proba.shape[1]
    out = np.zeros((k, k), dtype=np.int64)
    np.add.at(out, (y, proba.argmax(axis=1)), 1)
    return out


def confusion_pairs(y: np.ndarray, proba: np.ndarray, classes: List[str]) -> pd.DataFrame:
    """One row per class pair that the model confuses at all (class_a, class_b, a_as_b, b_as_a, rate, overlap),
    most confused first."""
    cm = confusion_matrix(y, proba)
    counts = cm.sum(axis=1)
    rows = []
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            if not counts[a] or not counts[b]:
                continue
            overlap = (proba[y == a, b].mean() + proba[y == b, a].mean()) / 2
            n = cm[a, b] + cm[b, a]
            rows.append({"class_a": classes[a], "class_b": classes[b], "a_as_b": int(cm[a, b]),
                         "b_as_a": int(cm[b, a]), "rate": n / (counts[a] + counts[b]), "overlap": float(overlap)})
    table = pd.DataFrame(rows, columns=["class_a", "class_b", "a_as_b", "b_as_a", "rate", "overlap"])
    return table.sort_values(["rate", "overlap"], ascending=False, kind="stable").reset_index(drop=True)


def plot_confusion(y: np.ndarray, proba: np.ndarray, classes: List[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = confusion_matrix(y, proba).astype(float)
    cm /= np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    size = min(12, 2 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    if cm[i, j] >= 0.005:
                        ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted (out of fold)")
    ax.set_ylabel("given label")
    ax.set_title("class confusion, row-normalised")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
