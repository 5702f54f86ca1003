"""Likely label errors: out-of-fold predicted probabilities and confident learning (stage: insight).

:func:`out_of_fold` fits a fast classifier (logistic regression on standardised features) k times, each time on
every fold but one, and predicts the held-out fold: a row is only ever scored by a model that never saw it, or its
label. :func:`label_issues` ranks rows by how little that model believes the given label (self-confidence) and
flags issues by confident learning (Northcutt, Jiang & Chuang, JAIR 2021: per-class thresholds, the confident
joint calibrated to the class counts, pruned by noise rate), with cleanlab's ``find_label_issues`` when cleanlab is
installed (``pip install 'featcache[inspect]'``), else this module's implementation of the same method.
"""
from __future__ import annotations

import importlib.util
from typing import Optional, Tuple

import numpy as np
import pandas as pd

__all__ = ["out_of_fold", "default_estimator", "confident_learning", "label_issues", "have_cleanlab",
           "N_FOLDS"]

N_FOLDS = 5


def default_estimator(seed: int = 0):
    """Standardised features into multinomial logistic regression: fast, and its probabilities are usable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500, random_state=seed))


def out_of_fold(X: np.ndarray, y: np.ndarray, n_classes: int, n_folds: int = N_FOLDS, seed: int = 0,
                estimator=None) -> Tuple[np.ndarray, np.ndarray]:
    """``(proba, fold)``: ``proba[i]`` (n_classes columns) predicted by a model fitted on the other folds only;
    ``fold[i]`` the fold row ``i`` was held out in. Stratified folds; ``n_folds`` is lowered to the smallest
    class's size (each class needs at least 2 rows: the caller drops smaller ones)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=n_classes)
    n_folds = int(min(n_folds, counts[counts > 0].min()))
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    proba = np.zeros((len(y), n_classes), dtype=np.float64)
    fold = np.full(len(y), -1, dtype=np.int64)
    base = estimator if estimator is not None else default_estimator(seed)
    for f, (train, held) in enumerate(folds.split(X, y)):
        model = clone(base).fit(X[train], y[train])
        p = model.predict_proba(X[held])
        proba[np.ix_(held, np.asarray(model.classes_, dtype=np.int64))] = p
        fold[held] = f
    return proba, fold


def have_cleanlab() -> bool:
    return importlib.util.find_spec("cleanlab") is not None


def confident_learning(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Rows whose label is likely wrong, by confident learning with ``prune_by_noise_rate`` (the method's
    default in cleanlab): a boolean mask."""
    n, k = proba.shape
    counts = np.bincount(y, minlength=k)
    thresholds = np.array([proba[y == j, j].mean() if counts[j] else 1.0 for j in range(k)])
    above = proba >= thresholds[None, :] - 1e-12
    masked = np.where(above, proba, -np.inf)
    confident = above.any(axis=1)
    true = masked.argmax(axis=1)
    joint = np.zeros((k, k))
    np.add.at(joint, (y[confident], true[confident]), 1)
    # calibrate: each given-label row of the joint sums to that label's count
    sums = joint.sum(axis=1, keepdims=True)
    joint = np.where(sums > 0, joint / np.where(sums > 0, sums, 1) * counts[:, None], 0)
    issue = np.zeros(n, dtype=bool)
    for i in range(k):
        rows = np.flatnonzero(y == i)
        for j in range(k):
            m = int(round(joint[i, j]))
            if i == j or m == 0 or len(rows) == 0:
                continue
            margin = proba[rows, j] - proba[rows, i]
            issue[rows[np.argsort(-margin, kind="stable")[:m]]] = True
    # a row whose given label the model still prefers is not an issue (cleanlab does the same)
    issue &= proba.argmax(axis=1) != y
    return issue


def label_issues(ds, rows: np.ndarray, y: np.ndarray, proba: np.ndarray, fold: np.ndarray,
                 method: Optional[str] = None) -> Tuple[pd.DataFrame, str]:
    """The ranked table (path, split, given_label, suggested_label, score, issue, fold, row): every scored row,
    least believed first, flagged or not; ``score`` is the out-of-fold probability of the given label.
    ``method`` ("cleanlab" or "featcache"; default cleanlab when installed) flags ``issue``; returns the table
    and a sentence naming the method."""
    method = method or ("cleanlab" if have_cleanlab() else "featcache")
    if method == "cleanlab":
        from cleanlab.filter import find_label_issues

        issue = np.asarray(find_label_issues(y, proba, filter_by="prune_by_noise_rate"), dtype=bool)
        about = "confident learning by cleanlab (find_label_issues, prune_by_noise_rate) on out-of-fold " \
                "probabilities"
    else:
        issue = confident_learning(y, proba)
        about = "confident learning (Northcutt et al. 2021, prune_by_noise_rate; featcache's implementation, " \
                "cleanlab not installed) on out-of-fold probabilities"
    score = proba[np.arange(len(y)), y]
    suggested = proba.argmax(axis=1)
    table = pd.DataFrame({"path": ds.paths[rows], "split": ds.split_of(rows),
                          "given_label": ds.label_names(y), "suggested_label": ds.label_names(suggested),
                          "score": score, "suggested_score": proba[np.arange(len(y)), suggested],
                          "issue": issue, "fold": fold, "row": rows})
    table = table.sort_values("score", kind="stable").reset_index(drop=True)
    return table, about
