"""Cached augmented views (``extract --views K``) in training and evaluation.

Training rows gain their own views as extra rows with the same label; a row's views are only ever
used with that row, so views of validation or test images never reach training. Test-time
augmentation (TTA) averages a classifier's scores over a row's clean features and its views.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from . import metrics

__all__ = ["training_rows", "predict", "decision_scores"]


def training_rows(X: np.ndarray, V: Optional[np.ndarray], y: np.ndarray, rows: np.ndarray
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of ``rows``, followed by every view of those rows (and only of those rows)."""
    rows = np.asarray(rows)
    if V is None:
        return X[rows], y[rows]
    k = V.shape[1]
    views = np.asarray(V[rows]).reshape(len(rows) * k, -1)
    return np.concatenate([X[rows], views]), np.concatenate([y[rows], np.repeat(y[rows], k)])


def predict(estimator, X: np.ndarray, V: Optional[np.ndarray], labels: Sequence
            ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Predictions (indices into ``labels``) and probabilities, averaged over the clean row and its
    views when ``V`` (rows, K, D) is given: probabilities where the classifier has them, else
    decision scores (LinearSVC, ridge), else a majority vote."""
    index = {label: i for i, label in enumerate(labels)}
    if V is None:
        pred = np.array([index[p] for p in estimator.predict(X)], dtype=np.int64)
        return pred, metrics.full_proba(estimator, X, labels)
    batches = [X] + [np.asarray(V[:, j]) for j in range(V.shape[1])]
    proba = metrics.full_proba(estimator, X, labels)
    if proba is not None:
        proba = np.mean([proba] + [metrics.full_proba(estimator, b, labels) for b in batches[1:]], axis=0)
        return proba.argmax(axis=1), proba
    if hasattr(estimator, "decision_function"):
        score = np.mean([decision_scores(estimator, b, labels) for b in batches], axis=0)
        return score.argmax(axis=1), None
    votes = np.zeros((len(X), len(labels)))
    for b in batches:
        votes[np.arange(len(X)), [index[p] for p in estimator.predict(b)]] += 1
    return votes.argmax(axis=1), None


def decision_scores(estimator, X: np.ndarray, labels: Sequence) -> np.ndarray:
    """``decision_function`` with one column per label (binary problems give one signed column)."""
    d = estimator.decision_function(X)
    classes = list(estimator.classes_)
    out = np.full((len(X), len(labels)), -np.inf)
    column = {label: i for i, label in enumerate(labels)}
    if d.ndim == 1:
        out[:, column[classes[0]]], out[:, column[classes[1]]] = -d, d
    else:
        out[:, [column[c] for c in classes]] = d
    return out
