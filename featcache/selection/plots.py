"""PNG plots of a sweep: validation score against each swept hyperparameter, and a confusion matrix.

Uses matplotlib's object API (``Figure``, Agg canvas), so it never needs a display or touches pyplot state.
Stage: selection (outputs).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from ..learn.metrics import LOWER_IS_BETTER

__all__ = ["hyperparameter_plot", "confusion_plot", "plot_all", "best_per_value"]


def _values(rows: List[dict], key: str) -> list:
    return [r["preprocess"] if key == "preprocess" else r["params"].get(key) for r in rows]


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def best_per_value(x, scores, metric: str) -> Dict[float, float]:
    """The best score at each value of a hyperparameter: the largest, or the smallest for a loss (log_loss)."""
    pick = min if metric in LOWER_IS_BETTER else max
    best: Dict[float, float] = {}
    for xi, s in zip(x, scores):
        if not np.isnan(s):
            best[xi] = pick(best[xi], s) if xi in best else s
    return best


def hyperparameter_plot(classifier: str, rows: List[dict], metric: str, path: Path) -> bool:
    """One panel per swept hyperparameter: every config's score (dots) and the best per value (line).

    ``rows`` hold ``params`` (dict), ``preprocess`` and ``score``. Returns False when nothing was swept.
    """
    keys = sorted({k for r in rows for k in r["params"]} | {"preprocess"})
    swept = [k for k in keys if len({json.dumps(v, sort_keys=True) for v in _values(rows, k)}) > 1]
    if not swept:
        return False
    fig = Figure(figsize=(4.2 * len(swept), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(swept), sharey=True))
    scores = np.array([r["score"] for r in rows], dtype=float)
    for ax, key in zip(axes, swept):
        values = _values(rows, key)
        if _numeric(values):
            x = np.array(values, dtype=float)
            if x.min() > 0 and x.max() / x.min() >= 10:
                ax.set_xscale("log")
            ticks = None
        else:
            names = sorted({json.dumps(v) if not isinstance(v, str) else v for v in values})
            x = np.array([names.index(json.dumps(v) if not isinstance(v, str) else v) for v in values], dtype=float)
            ticks = names
        ax.scatter(x, scores, s=18, alpha=0.5, color="tab:blue")
        best = best_per_value(x, scores, metric)
        if best:
            xs = sorted(best)
            ax.plot(xs, [best[v] for v in xs], "-o", color="tab:orange", ms=4, label="best")
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation {metric}")
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(classifier)
    fig.savefig(path, dpi=110)
    return True


def confusion_plot(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], title: str, path: Path) -> None:
    """Counts of true (rows) vs predicted (columns) classes, labelled when there are few classes."""
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(k))
    size = min(12.0, 2.5 + 0.35 * k)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
        if k <= 15:
            top = cm.max() or 1
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if cm[i, j] > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.savefig(path, dpi=110)


def plot_all(classifier_rows: Dict[str, List[dict]], metric: str, out_dir: Path) -> List[Path]:
    """:func:`hyperparameter_plot` for every classifier; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for clf, rows in classifier_rows.items():
        path = out_dir / f"{clf}.png"
        if hyperparameter_plot(clf, rows, metric, path):
            written.append(path)
    return written
