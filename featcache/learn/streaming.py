"""Training classifiers on caches larger than memory: a scikit-learn pipeline fitted from streamed blocks.

Stage: learning. Imports scikit-learn and ``rowsource``. :func:`fit` trains a pipeline on a
:class:`~featcache.rowsource.RowSource` (a cache's :class:`~featcache.cache.Rows` view): each stateful
preprocessing step in one streaming pass (``partial_fit``), then the classifier from shuffled blocks (SGD by
``partial_fit`` epochs, :class:`DenseHead` by ``fit_stream``). :class:`Blockwise` predicts a block at a time.
"""
from __future__ import annotations

import numpy as np

from ..rowsource import BUFFER_BLOCKS, RowSource

__all__ = ["fit", "Blockwise", "STREAMING_CLASSIFIERS", "STREAMING_PREPROCESS"]

STREAMING_CLASSIFIERS = ("sgd", "dense")  # the sweep's classifiers that can train from a stream
STREAMING_PREPROCESS = ("none", "standardize", "l2")


def fit(estimator, X: RowSource, y):
    """Fit a clone of ``estimator`` (a classifier, or a Pipeline ending in one) on rows streamed from a cache.

    Stateful preprocessing steps (``StandardScaler``) take one streaming pass each with ``partial_fit``;
    stateless ones (``Normalizer``) need none. The classifier then trains from blocks in a shuffled order:
    ``DenseHead`` through ``fit_stream``, anything with ``partial_fit`` (``SGDClassifier``) for ``max_iter``
    epochs (no ``tol`` stop: a stop needs the training loss, which would cost another pass per epoch).
    """
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline
    from sklearn.utils import check_random_state, get_tags

    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    estimator = clone(estimator)
    steps = estimator.steps if isinstance(estimator, Pipeline) else [("clf", estimator)]
    view = X
    for name, step in steps[:-1]:
        if hasattr(step, "partial_fit"):
            for pos, block in view.blocks():
                step.partial_fit(block, y[pos])
        elif not get_tags(step).requires_fit:  # stateless, e.g. Normalizer
            step.fit(np.zeros((1, view.shape[1]), np.float32))
        else:
            raise ValueError(f"preprocessing step {name} ({type(step).__name__}) cannot be fitted by streaming; "
                             f"use {', '.join(STREAMING_PREPROCESS)}")
        view = view.with_transform(_chain(view.transform, step.transform))
    clf = steps[-1][1]
    if hasattr(clf, "fit_stream"):
        clf.fit_stream(view, y)
    elif hasattr(clf, "partial_fit"):
        classes = np.unique(y)
        rng = np.random.default_rng(check_random_state(getattr(clf, "random_state", None)).randint(2 ** 31))
        for _ in range(getattr(clf, "max_iter", 1)):
            for pos, block in view.batches(BUFFER_BLOCKS * view.block_rows, rng):
                clf.partial_fit(block, y[pos], classes=classes)
    else:
        raise ValueError(f"{type(clf).__name__} cannot train by streaming (it has neither fit_stream nor partial_fit)")
    return estimator


def _chain(first, second):
    return second if first is None else _Chained(first, second)


class _Chained:
    """``second(first(X))``, picklable (for joblib workers)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __call__(self, X):
        return self.second(self.first(X))


class Blockwise:
    """A fitted classifier that predicts on a :class:`RowSource` a block at a time (its other attributes pass
    through)."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        if name in ("predict", "predict_proba", "decision_function"):
            method = getattr(self.model, name)  # AttributeError when the model has no such method
            return lambda X: _apply(method, X)
        return getattr(self.model, name)


def _apply(method, X: RowSource) -> np.ndarray:
    out = None
    for pos, block in X.blocks():
        result = method(block)
        if out is None:
            out = np.empty((len(X),) + result.shape[1:], dtype=result.dtype)
        out[pos] = result
    return out
