"""An ensemble of the sweep's best configurations: soft voting over pipelines that may lack probabilities.

Stage: learn. scikit-learn's ``VotingClassifier(voting="soft")`` needs ``predict_proba`` from every member;
the sweep's strongest members (an RBF SVM, ridge) have only ``decision_function``, and calibrating them
(``SVC(probability=True)``) costs an internal 5-fold CV per fit. Here such a member's scores become
probabilities by a softmax, so every member votes with a distribution over the classes.
"""
from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["SoftVoting", "member_proba"]


def member_proba(estimator, X) -> np.ndarray:
    """Class probabilities of a fitted classifier: ``predict_proba``, else a softmax of its decision scores."""
    if hasattr(estimator, "predict_proba"):
        return estimator.predict_proba(X)
    scores = estimator.decision_function(X)
    if scores.ndim == 1:  # binary: one score for the positive class
        scores = np.column_stack([-scores, scores]) / 2
    return softmax(scores, axis=1)


class SoftVoting(ClassifierMixin, BaseEstimator):
    """Average the class probabilities of ``estimators`` (``(name, estimator)`` pairs), each fitted on all rows.

    ``estimators=None`` is one logistic regression (so the class has a working default).
    """

    _parameter_constraints = {"estimators": [list, None]}

    def __init__(self, estimators=None):
        self.estimators = estimators

    def fit(self, X, y):
        from sklearn.linear_model import LogisticRegression

        self._validate_params()
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        members = self.estimators or [("logreg", LogisticRegression())]
        self.estimators_ = [clone(est).fit(X, y) for _, est in members]
        for est in self.estimators_:
            if not np.array_equal(est.classes_, self.classes_):
                raise ValueError("every member of the ensemble must see every class")
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return np.mean([member_proba(est, X) for est in self.estimators_], axis=0)

    def predict(self, X):
        proba = self.predict_proba(X)  # checks it is fitted, before classes_ is read
        return self.classes_[np.argmax(proba, axis=1)]
