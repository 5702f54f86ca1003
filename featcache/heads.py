"""Classifier heads that torch makes fast on cached features.

- :class:`DenseHead`: a small MLP (or a linear layer) as a scikit-learn classifier, so ``clone``,
  ``Pipeline`` and ``GridSearchCV`` work with it; CPU by default, a GPU when one is visible.
- :func:`logistic_path`: a whole regularisation path of L2 logistic regression, warm-started from
  the most regularised end, returning ordinary fitted ``sklearn`` ``LogisticRegression`` objects.
"""
from __future__ import annotations

import copy
import functools
import time
import warnings
from contextlib import contextmanager
from numbers import Integral, Real
from typing import List, Sequence, Tuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn
from torch.nn import functional as F

from .streaming import minibatches

PREDICT_BATCH = 8192


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first CUDA GPU when torch sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_tensor(X: np.ndarray) -> torch.Tensor:
    """A float32 tensor sharing memory with ``X`` (which may be a read-only memmap we never write)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(X)


# --- the dense head -----------------------------------------------------------------------------

def _hidden_sizes(value) -> Tuple[int, ...]:
    """``0``/``()``/``None`` mean linear; an int is one hidden layer; a sequence lists them."""
    if value is None:
        return ()
    if isinstance(value, Integral):
        return () if value == 0 else (int(value),)
    return tuple(int(v) for v in value)


class DenseHead(ClassifierMixin, BaseEstimator):
    """A torch MLP classifier for fixed feature vectors, trained with AdamW and cross-entropy.

    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=()
        Width of each hidden layer (ReLU + dropout after each); ``()`` or ``0`` is a linear head.
    dropout : float, default=0.0
        Dropout probability after every hidden layer (and on the input of a linear head).
    lr : float, default=1e-3
        AdamW learning rate.
    weight_decay : float, default=1e-4
        AdamW (decoupled) weight decay.
    epochs : int, default=50
        Maximum number of passes over the training data.
    batch_size : int, default=256
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the training data, stop when its loss has not improved
        for ``n_iter_no_change`` epochs, and keep the weights of the best epoch.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=5
    random_state : int, RandomState or None, default=None
        Seeds weight init, shuffling, dropout and the early-stopping split.
    device : str, default="auto"
        ``auto`` trains on a CUDA GPU when one is visible, else on the CPU. The fitted model is
        kept on the CPU, so it pickles and predicts anywhere.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    module_ : torch.nn.Module
        The trained network (CPU, eval mode).
    n_epochs_ : int
        Epochs actually run.
    best_epoch_ : int
        Epoch whose weights were kept (the last one without early stopping).
    loss_curve_ : list of float
        Mean training loss per epoch.
    validation_loss_curve_ : list of float
        Held-out loss per epoch (empty without early stopping).

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> clf = make_pipeline(StandardScaler(), DenseHead(hidden_layer_sizes=256, dropout=0.2))
    """

    def __init__(self, hidden_layer_sizes=(), dropout=0.0, lr=1e-3, weight_decay=1e-4, epochs=50,
                 batch_size=256, early_stopping=True, validation_fraction=0.1, n_iter_no_change=5,
                 random_state=None, device="auto"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.device = device

    def _validate_params(self) -> None:
        """Check every hyperparameter, saying what was passed and what is allowed."""
        def bad(name, allowed):
            raise ValueError(f"The '{name}' parameter of DenseHead must be {allowed}. "
                             f"Got {getattr(self, name)!r} instead.")

        try:
            sizes = None if isinstance(self.hidden_layer_sizes, str) else _hidden_sizes(self.hidden_layer_sizes)
        except (TypeError, ValueError):
            sizes = None
        if sizes is None or any(s < 1 for s in sizes):
            bad("hidden_layer_sizes", "0, a positive int, or a sequence of positive ints")
        checks = [
            ("dropout", Real, lambda v: 0 <= v < 1, "a float in the range [0, 1)"),
            ("lr", Real, lambda v: v > 0, "a float > 0"),
            ("weight_decay", Real, lambda v: v >= 0, "a float >= 0"),
            ("epochs", Integral, lambda v: v >= 1, "an int >= 1"),
            ("batch_size", Integral, lambda v: v >= 1, "an int >= 1"),
            ("validation_fraction", Real, lambda v: 0 < v < 1, "a float in the range (0, 1)"),
            ("n_iter_no_change", Integral, lambda v: v >= 1, "an int >= 1"),
        ]
        for name, kind, ok, allowed in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
                bad(name, allowed)
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            bad("early_stopping", "a bool")
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'")

    def _build(self, n_in: int, n_out: int) -> nn.Module:
        layers: List[nn.Module] = []
        width = n_in
        sizes = _hidden_sizes(self.hidden_layer_sizes)
        if not sizes and self.dropout:
            layers.append(nn.Dropout(self.dropout))
        for h in sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if self.dropout:
                layers.append(nn.Dropout(self.dropout))
            width = h
        layers.append(nn.Linear(width, n_out))
        return nn.Sequential(*layers)

    def _split(self, y: np.ndarray, rng: np.random.RandomState):
        """Train/held-out rows for early stopping (stratified when every class can spare a row)."""
        n = len(y)
        n_val = int(round(self.validation_fraction * n))
        if not self.early_stopping or n_val < 1 or n - n_val < 1:
            return np.arange(n), np.array([], dtype=np.int64)
        from sklearn.model_selection import train_test_split

        counts = np.bincount(y)
        stratify = y if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts) else None
        train, val = train_test_split(np.arange(n), test_size=n_val, stratify=stratify, random_state=rng)
        return np.sort(train), np.sort(val)

    def fit(self, X, y):
        """Train on ``X`` (n_samples, n_features) and labels ``y``; returns ``self``."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=(np.float32, np.float64))
        check_classification_targets(y)
        return self._fit(_InMemory(X), y)

    def fit_stream(self, rows, y):
        """Train on ``rows`` that need not fit in memory (a :class:`featcache.streaming.Rows`) and labels ``y``.

        Minibatches come from chunk-aligned blocks in a shuffled order, rows shuffled within a buffer of
        blocks, instead of a full shuffle; everything else is as in :meth:`fit`. Returns ``self``.
        """
        self._validate_params()
        y = np.asarray(y)
        if len(y) != len(rows):
            raise ValueError(f"rows has {len(rows)} rows but y has {len(y)} labels")
        check_classification_targets(y)
        self.n_features_in_ = rows.shape[1]
        return self._fit(_Streamed(rows), y)

    def _fit(self, data, y):
        self.classes_, yi = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"DenseHead needs samples of at least 2 classes, but y contains only one "
                             f"class: {self.classes_[0]!r}")
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        train, val = self._split(yi, rng)
        device = resolve_device(self.device)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            self._train(data, yi.astype(np.int64), train, val, device)
        return self

    def _train(self, data, yi, train, val, device) -> None:
        module = self._build(self.n_features_in_, len(self.classes_)).to(device)
        opt = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        y_all = torch.from_numpy(yi)
        self.loss_curve_, self.validation_loss_curve_ = [], []
        best_loss, best_state, stale = np.inf, None, 0
        self.best_epoch_ = 0
        for epoch in range(1, self.epochs + 1):
            module.train()
            total = 0.0
            for rows, X in data.batches(train, self.batch_size, shuffle=True):
                xb = _as_tensor(X).to(device, non_blocking=True)
                yb = y_all[rows].to(device, non_blocking=True)
                loss = F.cross_entropy(module(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(rows)
            self.loss_curve_.append(total / len(train))
            self.n_epochs_ = epoch
            if not len(val):
                self.best_epoch_ = epoch
                continue
            parts = [(rows, self._logits(module, X, device)) for rows, X in data.batches(val, PREDICT_BATCH)]
            logits, rows = torch.cat([p[1] for p in parts]), np.concatenate([p[0] for p in parts])
            val_loss = float(F.cross_entropy(logits, y_all[rows]))
            self.validation_loss_curve_.append(val_loss)
            if val_loss < best_loss - 1e-4:
                best_loss, stale, self.best_epoch_ = val_loss, 0, epoch
                best_state = copy.deepcopy(module.state_dict())
            else:
                stale += 1
                if stale >= self.n_iter_no_change:
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        self.module_ = module.cpu().eval()

    @staticmethod
    def _logits(module: nn.Module, X: np.ndarray, device) -> torch.Tensor:
        module.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(X), PREDICT_BATCH):
                out.append(module(_as_tensor(X[start:start + PREDICT_BATCH]).to(device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, module[-1].out_features)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float32, np.float64))
        logits = self._logits(self.module_, X, torch.device("cpu"))
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class _InMemory:
    """Minibatches of an in-memory array for :meth:`DenseHead.fit`: a full shuffle per epoch (torch's RNG)."""

    def __init__(self, X: np.ndarray):
        self.X = X

    def batches(self, rows: np.ndarray, batch_size: int, shuffle: bool = False):
        return minibatches(self.X, rows[torch.randperm(len(rows)).numpy()] if shuffle else rows, batch_size)


class _Streamed:
    """Minibatches of :class:`featcache.streaming.Rows` for :meth:`DenseHead.fit_stream`: shuffled blocks."""

    def __init__(self, rows):
        self.rows, self.rng = rows, None

    def batches(self, rows: np.ndarray, batch_size: int, shuffle: bool = False):
        if shuffle and self.rng is None:  # seeded from torch's RNG, which DenseHead seeds before training
            self.rng = np.random.default_rng(int(torch.randint(2 ** 31, ())))
        return minibatches(self.rows, rows, batch_size, self.rng if shuffle else None)


# --- the logistic regression path ---------------------------------------------------------------

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
    Xt = _as_tensor(X)
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


@contextmanager
def torch_threads(n: int):
    """Limit torch's intra-op threads inside the block (joblib workers share the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
