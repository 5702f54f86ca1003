"""An ensemble of the sweep's configurations: calibrated members, weighted by greedy selection on out-of-fold rows.

Stage: learn. Every member's class scores (probabilities, or an SVM's or ridge's decision scores) become calibrated
probabilities by its own temperature (``calibration``), fitted on its out-of-fold scores; the weights come from
greedy ensemble selection with replacement on the same out-of-fold probabilities (Caruana et al., 2004, as
AutoGluon's weighted ensemble does): start from the best member by log-loss, then, round after round, add whichever
member lowers the average's log-loss most. It costs no fit: the sweep has every member's out-of-fold scores.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from . import calibration

__all__ = ["SoftVoting", "member_proba", "greedy_weights", "ROUNDS"]

ROUNDS = 25  # greedy rounds: the weights are multiples of 1/25


def member_proba(estimator, X, temperature: Optional[float] = None) -> np.ndarray:
    """Class probabilities of a fitted classifier: calibrated by ``temperature`` when given; else its
    ``predict_proba``, or a softmax of its decision scores."""
    if hasattr(estimator, "predict_proba"):
        proba = estimator.predict_proba(X)
        return proba if temperature is None else calibration.calibrated("proba", proba, temperature)
    scores = estimator.decision_function(X)
    if scores.ndim == 1:  # binary: one score for the positive class
        scores = np.column_stack([-scores, scores]) / 2
    return softmax(scores, axis=1) if temperature is None else calibration.calibrated("decision", scores, temperature)


def _log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None))))


def greedy_weights(probas: List[np.ndarray], y: np.ndarray, rounds: int = ROUNDS,
                   max_members: Optional[int] = None) -> np.ndarray:
    """Weights (summing to 1) of ``probas`` (each (n, classes), calibrated, on the same out-of-fold rows with true
    classes ``y``) chosen greedily with replacement to lower the average's log-loss; at most ``max_members`` get a
    weight. The round with the lowest log-loss is kept, so the result is never worse than the best single member on
    these rows. Ties go to the earlier entry."""
    counts = np.zeros(len(probas))
    total = np.zeros_like(probas[0], dtype=np.float64)
    best_loss, best_counts = np.inf, counts
    for r in range(rounds):
        allowed = [i for i in range(len(probas))
                   if max_members is None or counts[i] > 0 or (counts > 0).sum() < max_members]
        losses = [_log_loss((total + probas[i]) / (r + 1), y) for i in allowed]
        pick = allowed[int(np.argmin(losses))]
        counts = counts.copy()
        counts[pick] += 1
        total += probas[pick]
        if min(losses) < best_loss - 1e-12:
            best_loss, best_counts = min(losses), counts
    return best_counts / best_counts.sum()


class SoftVoting(ClassifierMixin, BaseEstimator):
    """Average the class probabilities of ``estimators`` (``(name, estimator)`` pairs), each fitted on all rows.

    ``weights``: one per member (default: equal); ``temperatures``: one per member, calibrating its scores into
    probabilities (``learn.calibration``); without them a member's decision scores go through a plain softmax.
    ``estimators=None`` is one logistic regression (so the class has a working default).
    """

    _parameter_constraints = {"estimators": [list, None], "weights": [list, None], "temperatures": [list, None]}

    def __init__(self, estimators=None, weights=None, temperatures=None):
        self.estimators = estimators
        self.weights = weights
        self.temperatures = temperatures

    def fit(self, X, y):
        from sklearn.linear_model import LogisticRegression

        self._validate_params()
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        members = self.estimators or [("logreg", LogisticRegression())]
        for name, given in (("weights", self.weights), ("temperatures", self.temperatures)):
            if given is not None and len(given) != len(members):
                raise ValueError(f"{name}: one per member ({len(members)}); got {len(given)}")
        self.estimators_ = [clone(est).fit(X, y) for _, est in members]
        for est in self.estimators_:
            if not np.array_equal(est.classes_, self.classes_):
                raise ValueError("every member of the ensemble must see every class")
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        # (a model file written before weights and temperatures existed has neither attribute: equal and plain)
        temps = getattr(self, "temperatures", None) or [None] * len(self.estimators_)
        probas = [member_proba(est, X, t) for est, t in zip(self.estimators_, temps)]
        return np.average(probas, axis=0, weights=getattr(self, "weights", None))

    def predict(self, X):
        proba = self.predict_proba(X)  # checks it is fitted, before classes_ is read
        return self.classes_[np.argmax(proba, axis=1)]
