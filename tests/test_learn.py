"""DenseHead as a scikit-learn estimator, and the warm-started logistic regression path."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from featcache.learn.dense import DenseHead
from featcache.learn.logistic import fast_path_supported, logistic_path


# One instance with a hidden layer and dropout (the linear head is covered by the tests below).
# check_classifiers_train needs > 83% training accuracy on 300 blob points within the default
# number of epochs; lr=1e-2 gets there in a few, which keeps the ~60 checks quick. No check is
# skipped or expected to fail (check_array_api_input skips itself without SCIPY_ARRAY_API).
@pytest.mark.slow  # each case is quick; its cases together take more than 10 s
@parametrize_with_checks([DenseHead(hidden_layer_sizes=8, dropout=0.1, lr=1e-2, epochs=30)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_classification(n_samples=300, n_features=20, n_informative=8, n_classes=3, random_state=0)
    names = np.array(["ant", "bee", "cat"])[y]
    return X.astype(np.float32), names


@pytest.mark.slow
def test_dense_head_in_pipeline_and_grid_search(blobs):
    X, y = blobs
    pipe = make_pipeline(StandardScaler(), DenseHead(epochs=30, batch_size=32, random_state=0))
    search = GridSearchCV(pipe, {"densehead__hidden_layer_sizes": [0, (16,)], "densehead__lr": [1e-3, 1e-2]}, cv=3)
    search.fit(X, y)
    assert search.best_score_ > 0.7
    best = search.best_estimator_
    assert list(best.classes_) == ["ant", "bee", "cat"]
    proba = best.predict_proba(X)
    assert proba.shape == (300, 3) and np.allclose(proba.sum(1), 1)
    assert set(best.predict(X)) <= {"ant", "bee", "cat"}
    copy = clone(best)
    assert copy.get_params()["densehead__lr"] == best.get_params()["densehead__lr"]
    assert not hasattr(copy[-1], "module_")


def test_dense_head_is_reproducible_and_pickles(blobs):
    X, y = blobs
    a = DenseHead(hidden_layer_sizes=[16], dropout=0.2, epochs=10, random_state=3).fit(X, y)
    b = DenseHead(hidden_layer_sizes=[16], dropout=0.2, epochs=10, random_state=3).fit(X, y)
    assert np.allclose(a.predict_proba(X), b.predict_proba(X))
    again = pickle.loads(pickle.dumps(a))
    assert np.allclose(again.predict_proba(X), a.predict_proba(X))


def test_early_stopping_keeps_the_best_epoch(blobs):
    X, y = blobs
    head = DenseHead(epochs=200, lr=5e-2, n_iter_no_change=3, random_state=0).fit(X, y)
    assert head.n_epochs_ < 200
    assert head.best_epoch_ == int(np.argmin(head.validation_loss_curve_)) + 1
    no_es = DenseHead(epochs=4, early_stopping=False, random_state=0).fit(X, y)
    assert no_es.n_epochs_ == 4 and no_es.validation_loss_curve_ == [] and len(no_es.loss_curve_) == 4


@pytest.mark.parametrize("params, match", [
    ({"dropout": 1.0}, r"'dropout' parameter of DenseHead must be a float in the range \[0, 1\). Got 1.0"),
    ({"hidden_layer_sizes": [16, -2]}, "'hidden_layer_sizes' parameter"),
    ({"epochs": 0}, "'epochs' parameter of DenseHead must be an int >= 1"),
    ({"device": "tpu"}, "'device' parameter"),
])
def test_dense_head_rejects_bad_parameters(blobs, params, match):
    with pytest.raises(ValueError, match=match):
        DenseHead(**params).fit(*blobs)


# --- logistic_path ------------------------------------------------------------------------------

def _objective(est, X, y, C):
    """sklearn's L2 logistic objective: mean log-loss + ||W||^2 / (2 C n)."""
    from sklearn.metrics import log_loss

    return log_loss(y, est.predict_proba(X)) + (est.coef_ ** 2).sum() / (2 * C * len(y))


@pytest.mark.parametrize("n_classes", [2, 4])
def test_logistic_path_matches_sklearn(n_classes):
    X, y = make_classification(n_samples=600, n_features=40, n_informative=10, n_classes=n_classes,
                               random_state=1)
    X = (X * 3 + 1).astype(np.float32)  # uncentred, unscaled, as raw CNN features are
    Cs = [1.0, 0.01, 0.1]  # any order in, same order out
    path = logistic_path(X, y, Cs)
    for (est, seconds), C in zip(path, Cs):
        assert isinstance(est, LogisticRegression) and est.C == C and seconds >= 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ref = LogisticRegression(C=C).fit(X, y)
        assert est.coef_.shape == ref.coef_.shape
        assert _objective(est, X, y, C) <= _objective(ref, X, y, C) + 1e-4
        assert np.mean(est.predict(X) == ref.predict(X)) > 0.98


def test_logistic_path_class_weight_and_string_labels():
    X, y = make_classification(n_samples=400, n_features=10, weights=[0.8, 0.2], random_state=0)
    labels = np.where(y == 1, "rare", "common")
    (est, _), = logistic_path(X, labels, [0.5], class_weight="balanced")
    ref = LogisticRegression(C=0.5, class_weight="balanced", tol=1e-8, max_iter=1000).fit(X, labels)
    assert list(est.classes_) == ["common", "rare"]
    assert np.allclose(est.predict_proba(X), ref.predict_proba(X), atol=2e-3)


def test_logistic_path_falls_back_to_sklearn_for_other_solvers():
    X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    assert fast_path_supported({"C": 1.0, "max_iter": 50, "class_weight": None})
    assert not fast_path_supported({"solver": "saga"}) and not fast_path_supported({"l1_ratio": 1.0})
    path = logistic_path(X, y, [0.1, 1.0], solver="liblinear")
    for (est, _), C in zip(path, [0.1, 1.0]):
        ref = LogisticRegression(C=C, solver="liblinear").fit(X, y)
        assert est.get_params()["warm_start"] is False
        assert np.allclose(est.coef_, ref.coef_, atol=1e-3)


def test_a_temperature_calibrates_overconfident_scores_and_greedy_weights_keep_the_useful_members():
    """learn.calibration and learn.ensemble on scores made to order: an SVM-like scorer ten times too sure of itself
    is cooled (T > 1, lower log-loss); greedy selection keeps a perfect member alone, and mixes two that err on
    different rows."""
    from featcache.learn.calibration import calibrated, fit_temperature
    from featcache.learn.ensemble import _log_loss, greedy_weights

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), y] += 1.5  # right about 70% of the time...
    scores = 10 * logits  # ...and far too sure
    t = fit_temperature("decision", scores, y)
    assert 5 < t < 20
    assert _log_loss(calibrated("decision", scores, t), y) < _log_loss(calibrated("decision", scores, 1.0), y)
    perfect = np.eye(3)[y] * 0.98 + 0.01
    assert greedy_weights([calibrated("decision", logits, 1.0), perfect], y).tolist() == [0.0, 1.0]
    a, b = np.full((600, 3), 0.1), np.full((600, 3), 0.1)
    half = np.arange(600) < 300
    a[half, y[half]], b[~half, y[~half]] = 0.8, 0.8  # each right on its half, unsure elsewhere
    a[~half] = b[half] = 1 / 3
    w = greedy_weights([a, b], y)
    assert w[0] > 0 and w[1] > 0 and abs(w.sum() - 1) < 1e-12
