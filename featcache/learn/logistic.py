"""L2 logistic regression along a whole path of C values, warm-started, returning sklearn estimators.

Stage: learning. Imports torch and scikit-learn. Plain L2 LBFGS is solved here in float32 with torch,
in preconditioned coordinates; any other solver or penalty falls back to scikit-learn's own ``warm_start``.
"""
from __future__ import annotations

import copy
import functools
import time
from typing import List, Sequence, Tuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from torch.nn import functional as F

from .training import as_tensor

__all__ = ["logistic_path", "fast_path_supported"]

FAST_PATH_DEFAULTS = {"penalty": ("l2", "deprecated"), "solver": ("lbfgs",), "dual": (False,),
                      "l1_ratio": (None, 0, 0.0), "multi_class": ("auto", "multinomial", "deprecated")}
IGNORED_BY_FAST_PATH = {"C", "tol", "max_iter", "fit_intercept", "class_weight", "random_state", "verbose",
                        "n_jobs", "warm_start", "intercept_scaling"}
DENSE_PRECONDITIONER_MAX_D = 4096  # above this an eigendecomposition of the D x D covariance costs too much
GRAM_ROWS = 8192  # the preconditioner only needs the covariance's shape, so a sample of rows is enough
CURVATURE = 0.25  # p(1-p) at the start: scales the covariance against the L2 term


def fast_path_supported(params: dict) -> bool:
    """True when ``params`` describe plain L2 multinomial LBFGS, which :func:`logistic_path` solves itself."""
    for name, value in params.items():
        if name in FAST_PATH_DEFAULTS:
            if value not in FAST_PATH_DEFAULTS[name]:
                return False
        elif name not in IGNORED_BY_FAST_PATH:
            return False
    return True


class _Preconditioner:
    """``W = U diag(d) V``: coordinates in which the L2 logistic loss is close to isotropic.

    ``U, s`` are the eigenvectors/values of the feature covariance; for a given L2 strength the
    Hessian is roughly ``CURVATURE * cov + lam``, so ``d = (CURVATURE * s + lam) ** -1/2``, scaled
    so ``min(d) = 1`` (the gradient in ``V`` is then never smaller than in ``W``, so stopping on it
    is at least as strict as LBFGS on ``W`` itself).
    """

    def __init__(self, X: torch.Tensor, mu: torch.Tensor, seed: int):
        n, dim = X.shape
        rows = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n, min(n, GRAM_ROWS), replace=False)))
        Xs = X[rows] - mu
        if dim <= DENSE_PRECONDITIONER_MAX_D:
            cov = (Xs.T @ Xs).double() / len(rows)
            s, U = torch.linalg.eigh(cov)
            self.s, self.U = s.clamp(min=0), U.float()
        else:
            self.s, self.U = Xs.double().pow(2).mean(0), None

    def scales(self, lam: float) -> torch.Tensor:
        d = (CURVATURE * self.s + lam).rsqrt()
        return (d / d.min()).float()

    def to_w(self, V: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.U @ (d[:, None] * V) if self.U is not None else d[:, None] * V

    def from_w(self, W: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return (self.U.T @ W) / d[:, None] if self.U is not None else W / d[:, None]


def logistic_path(X, y, Cs: Sequence[float], *, seed: int = 0, **params) -> List[Tuple[LogisticRegression, float]]:
    """Fit ``LogisticRegression(C=c, **params)`` for every ``c``, warm-starting from the smallest C.

    Plain L2 LBFGS (the default) is solved here in float32 with torch, in preconditioned
    coordinates, each C starting from the previous solution: the same objective sklearn minimises,
    in a fraction of the passes over ``X``. Any other solver/penalty falls back to sklearn's own
    ``warm_start``. Returns ``(fitted estimator, seconds)`` pairs in the order of ``Cs``.
    """
    params = {k: v for k, v in params.items() if k != "C"}
    order = np.argsort(Cs, kind="stable")
    fit = _torch_path if fast_path_supported(params) else _sklearn_path
    fitted = fit(X, y, [float(Cs[i]) for i in order], seed=seed, **params)
    out = [None] * len(Cs)
    for i, result in zip(order, fitted):
        out[i] = result
    return out


def _sklearn_path(X, y, Cs, *, seed, **params):
    est = LogisticRegression(**{**params, "warm_start": True})
    out = []
    for C in Cs:
        t = time.perf_counter()
        est.set_params(C=C).fit(X, y)
        done = copy.deepcopy(est).set_params(warm_start=params.get("warm_start", False))
        out.append((done, time.perf_counter() - t))
    return out


def _torch_path(X, y, Cs, *, seed, tol=1e-4, max_iter=100, fit_intercept=True, class_weight=None, **params):
    t0 = time.perf_counter()
    check_classification_targets(y)
    classes, yi = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"LogisticRegression needs samples of at least 2 classes, but y contains only one "
                         f"class: {classes[0]!r}")
    Xt = as_tensor(X)
    target = torch.from_numpy(yi.astype(np.int64))
    weights = compute_class_weight(class_weight, classes=classes, y=y) if class_weight is not None \
        else np.ones(len(classes))
    sw = torch.from_numpy(weights[yi].astype(np.float32))
    sw_sum = float(sw.sum())
    binary = len(classes) == 2
    n_out = 1 if binary else len(classes)
    mu = Xt.mean(0) if fit_intercept else torch.zeros(Xt.shape[1])
    pre = _Preconditioner(Xt, mu, seed)
    setup_s = (time.perf_counter() - t0) / len(Cs)

    def objective(V, shift, d, lam):
        W = pre.to_w(V, d)
        logits = Xt @ W + (shift - mu @ W)
        if binary:
            per_row = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), reduction="none")
        else:
            per_row = F.cross_entropy(logits, target, reduction="none")
        return (sw * per_row).sum() / sw_sum + 0.5 * lam * (W * W).sum()

    W = torch.zeros(Xt.shape[1], n_out)
    b = torch.zeros(n_out)
    out = []
    for C in Cs:
        t = time.perf_counter()
        lam = 1.0 / (C * sw_sum)
        d = pre.scales(lam)
        V = pre.from_w(W, d).requires_grad_()
        shift = (b + mu @ W).requires_grad_(fit_intercept)  # intercept of the centred features
        n_iter = _minimise(functools.partial(objective, V, shift, d, lam), [V, shift] if fit_intercept else [V],
                           tol, max_iter)
        with torch.no_grad():
            W = pre.to_w(V, d)
            b = shift - mu @ W
        est = LogisticRegression(C=C, tol=tol, max_iter=max_iter, fit_intercept=fit_intercept,
                                 class_weight=class_weight, **params)
        est.classes_ = classes
        est.coef_ = W.T.double().numpy().copy()
        est.intercept_ = b.double().numpy().copy() if fit_intercept else np.zeros(n_out)
        est.n_features_in_ = Xt.shape[1]
        est.n_iter_ = np.array([n_iter], dtype=np.int32)
        out.append((est, time.perf_counter() - t + setup_s))
    return out


def _minimise(objective, params: List[torch.Tensor], tol: float, max_iter: int) -> int:
    """LBFGS with a strong-Wolfe line search until no gradient entry exceeds ``tol``; returns iterations."""
    opt = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-9,
                            history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    return int(opt.state[params[0]].get("n_iter", 0))
