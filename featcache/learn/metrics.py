"""Scores for a fitted classifier: accuracy, balanced accuracy, macro-F1, log-loss where defined.

Stage: learning. Imports numpy, and scikit-learn's metrics on use.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..config import METRICS

__all__ = ["METRICS", "LOWER_IS_BETTER", "full_proba", "scores", "average", "sort_key"]
LOWER_IS_BETTER = {"log_loss"}


def full_proba(estimator, X, labels: Sequence) -> Optional[np.ndarray]:
    """``predict_proba`` with one column per entry of ``labels``, in that order (classes a fold lacked get 0).

    None for classifiers without probabilities (LinearSVC, RidgeClassifier, SGD with hinge loss).
    """
    if not hasattr(estimator, "predict_proba"):
        return None
    proba = estimator.predict_proba(X)
    column = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(proba), len(labels)))
    out[:, [column[c] for c in estimator.classes_]] = proba
    return out


def scores(y_true: np.ndarray, y_pred: np.ndarray, proba: Optional[np.ndarray], n_classes: int) -> Dict[str, float]:
    """All of :data:`METRICS` (``log_loss`` is NaN without probabilities)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

    present = np.unique(y_true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes missing from a small fold are expected, not news
        out = {
            "accuracy": accuracy_score(y_true, y_pred),
            "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
            "f1_macro": f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
            "log_loss": log_loss(y_true, proba, labels=np.arange(n_classes)) if proba is not None else np.nan,
        }
    return {k: float(v) for k, v in out.items()}


def average(folds: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean of each metric over folds, plus ``<metric>_std`` when there are several."""
    out = {}
    for m in METRICS:
        values = np.array([f[m] for f in folds], dtype=float)
        out[m] = float(np.mean(values))
        if len(folds) > 1:
            out[f"{m}_std"] = float(np.std(values))
    return out


def sort_key(metric: str, value: float) -> float:
    """Larger is better for every key (NaN sorts last)."""
    if value is None or np.isnan(value):
        return -np.inf
    return -value if metric in LOWER_IS_BETTER else value
