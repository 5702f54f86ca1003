"""Outliers: rows far from their nearest neighbours in feature space (stage: insight).

The score of a row is its mean cosine distance to its ``k`` nearest neighbours (the same block-wise search the
duplicates use); a row is flagged when its robust z-score (median and MAD of all scores) exceeds ``Z_FLAG``. A
small group of odd images keeps each other company: ``k`` (default 20) larger than such a group sees past it
(on MNIST with 50 planted odd images, k=10 ranks 74% of them first, k=20 98%).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .data import Dataset
from .neighbours import Neighbours

__all__ = ["find_outliers", "Z_FLAG"]

Z_FLAG = 5.0  # robust z-score above which a row is flagged (measured: scripts/bench_inspect.py)


def find_outliers(ds: Dataset, nb: Neighbours, k: int = 20) -> pd.DataFrame:
    """Every row ranked, farthest from its neighbours first: path, split, label, score (mean cosine distance to
    its k nearest neighbours), z (robust z-score), outlier (flagged), nearest (path of its nearest neighbour)."""
    k = max(1, min(k, nb.index.shape[1]))
    score = 1.0 - nb.similarity[:, :k].astype(np.float64).mean(axis=1)
    median = np.median(score)
    mad = 1.4826 * np.median(np.abs(score - median)) or (score.std() or 1.0)
    z = (score - median) / mad
    table = pd.DataFrame({"path": ds.paths, "split": ds.split_of(np.arange(len(ds))),
                          "label": ds.label_names(ds.y), "score": score, "z": z, "outlier": z > Z_FLAG,
                          "nearest": ds.paths[nb.index[:, 0]], "row": np.arange(len(ds))})
    return table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
