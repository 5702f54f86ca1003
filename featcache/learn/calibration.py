"""Calibrated class probabilities for every classifier, from its out-of-fold scores (stage: learning).

A classifier gives probabilities (``predict_proba``) or only decision scores (an RBF SVM, ridge, a linear SVM). Either
becomes calibrated probabilities by one temperature, fitted on out-of-fold rows to the lowest log-loss: a softmax of
the scores (of the log-probabilities) divided by it (Guo et al., 2017). So an SVM gets a log-loss and can be picked
by ``--metric log_loss``, and an ensemble averages like with like.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from . import metrics
from .views import decision_scores

__all__ = ["class_scores", "calibrated", "fit_temperature", "KINDS"]

KINDS = ("proba", "decision")  # what a classifier's scores are
_FLOOR = 1e-12  # probabilities below this count as this, before the log
_ABSENT = -1e4  # the score of a class the fold never trained on (its column in a decision function)


def class_scores(estimator, X: np.ndarray, V: Optional[np.ndarray], labels: Sequence
                 ) -> Tuple[Optional[str], Optional[np.ndarray]]:
    """``(kind, scores)`` with one column per label: probabilities, else decision scores, averaged over each row
    and its views when ``V`` is given; ``(None, None)`` for a classifier with neither."""
    batches = [X] + ([np.asarray(V[:, j]) for j in range(V.shape[1])] if V is not None else [])
    if hasattr(estimator, "predict_proba"):
        return "proba", np.mean([metrics.full_proba(estimator, b, labels) for b in batches], axis=0)
    if hasattr(estimator, "decision_function"):
        scores = np.mean([decision_scores(estimator, b, labels) for b in batches], axis=0)
        return "decision", np.where(np.isfinite(scores), scores, _ABSENT)
    return None, None


def _logits(kind: str, scores: np.ndarray) -> np.ndarray:
    return np.log(np.clip(scores, _FLOOR, None)) if kind == "proba" else np.asarray(scores, dtype=np.float64)


def calibrated(kind: str, scores: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities: a softmax of the logits (decision scores, or log-probabilities) over ``temperature``."""
    from scipy.special import softmax

    return softmax(_logits(kind, scores) / temperature, axis=1)


def fit_temperature(kind: str, scores: np.ndarray, y: np.ndarray) -> float:
    """The temperature (0.01 to 100) whose calibrated probabilities have the lowest log-loss on ``y``."""
    from scipy.optimize import minimize_scalar

    logits = _logits(kind, scores)
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, y]))

    return float(np.exp(minimize_scalar(loss, bounds=(np.log(0.01), np.log(100.0)), method="bounded").x))
