"""RBF kernel features (Nyström) whose width adapts to the data, for linear models on many rows.

Stage: learn. An exact RBF-kernel SVM (``sklearn.svm.SVC``) trains in time growing with the square of the
rows; past some tens of thousands of rows a linear model on a Nyström approximation of the same kernel is the
affordable stand-in. scikit-learn's ``Nystroem`` takes a fixed ``gamma`` (default ``1 / n_features``, a near-
linear kernel on l2-normalised rows); this transformer resolves ``gamma="scale"`` at fit time as ``SVC`` does
(``1 / (n_features * X.var())``), so the approximation tracks the kernel the exact SVM uses.
"""
from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["RBFFeatures"]


class RBFFeatures(TransformerMixin, BaseEstimator):
    """RBF-kernel features from ``n_components`` Nyström landmarks; ``gamma="scale"`` is SVC's rule."""

    _parameter_constraints = {
        "gamma": [StrOptions({"scale"}), Interval(Real, 0, None, closed="neither")],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, gamma="scale", n_components: int = 1000, random_state=None):
        self.gamma = gamma
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y=None):
        self._validate_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        gamma = self.gamma
        if gamma == "scale":
            var = float(X.var())
            gamma = 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        self.gamma_ = float(gamma)
        self.nystroem_ = Nystroem(kernel="rbf", gamma=self.gamma_, n_components=min(self.n_components, len(X)),
                                  random_state=self.random_state).fit(X)
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self.nystroem_.transform(X)
