"""DenseHead: a small torch MLP (or linear layer) as a scikit-learn classifier, for fixed feature vectors.

Stage: learning. Imports torch, scikit-learn and ``learn.training``. ``clone``, ``Pipeline`` and
``GridSearchCV`` work with it; it trains on the CPU by default and on a GPU when one is visible, and
streams rows larger than memory with :meth:`DenseHead.fit_stream`.
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import List, Tuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn
from torch.nn import functional as F

from .._validation import Interval, Options, validate_params
from .._validation import Sequence as ListOf
from ..config import DEVICE
from ..rowsource import minibatches
from ..runtime import resolve_device
from .training import EarlyStopping, as_tensor, holdout_split, state_copy

__all__ = ["DenseHead"]

PREDICT_BATCH = 8192


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

    _parameter_constraints = {
        "hidden_layer_sizes": [Options((0,)), Interval(Integral, 1, None), ListOf((Interval(Integral, 1, None),))],
        "dropout": [Interval(Real, 0, 1, "left")],
        "lr": [Interval(Real, 0, None, "neither")],
        "weight_decay": [Interval(Real, 0, None)],
        "epochs": [Interval(Integral, 1, None)],
        "batch_size": [Interval(Integral, 1, None)],
        "early_stopping": [bool],
        "validation_fraction": [Interval(Real, 0, 1, "neither")],
        "n_iter_no_change": [Interval(Integral, 1, None)],
        "random_state": [None, Integral, np.random.RandomState],
        "device": [DEVICE],
    }

    def _validate_params(self) -> None:
        """Check every hyperparameter against the table, saying what was passed and what is allowed."""
        validate_params(self, self._parameter_constraints)

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

    def fit(self, X, y):
        """Train on ``X`` (n_samples, n_features) and labels ``y``; returns ``self``."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=(np.float32, np.float64))
        check_classification_targets(y)
        return self._fit(_InMemory(X), y)

    def fit_stream(self, rows, y):
        """Train on ``rows`` that need not fit in memory (a :class:`featcache.rowsource.RowSource`) and labels ``y``.

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
        train, val = (holdout_split(yi, self.validation_fraction, rng) if self.early_stopping
                      else (np.arange(len(yi)), np.array([], dtype=np.int64)))
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
        stopping = EarlyStopping(self.n_iter_no_change)
        self.best_epoch_ = 0
        for epoch in range(1, self.epochs + 1):
            module.train()
            total = 0.0
            for rows, X in data.batches(train, self.batch_size, shuffle=True):
                xb = as_tensor(X).to(device, non_blocking=True)
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
            stop = stopping.update(val_loss, epoch, lambda: state_copy(module))
            self.best_epoch_ = stopping.best_epoch
            if stop:
                break
        if stopping.best_state is not None:
            module.load_state_dict(stopping.best_state)
        self.module_ = module.cpu().eval()

    @staticmethod
    def _logits(module: nn.Module, X: np.ndarray, device) -> torch.Tensor:
        module.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(X), PREDICT_BATCH):
                out.append(module(as_tensor(X[start:start + PREDICT_BATCH]).to(device)).float().cpu())
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

    def __getstate__(self):
        """The fitted network as plain arrays (its weights by name), not a pickled torch module: a model file
        (skops) then holds only data, and loading it runs no code from the file."""
        state = dict(super().__getstate__())  # a copy: object.__getstate__ hands back the instance's own dict
        module = state.pop("module_", None)
        if module is not None:
            state["module_weights_"] = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        return state

    def __setstate__(self, state):
        state = dict(state)
        weights = state.pop("module_weights_", None)
        super().__setstate__(state)
        if weights is not None:  # the same architecture from the hyperparameters, then the weights
            # Shapes first, on torch's meta device (nothing allocated): a 10 KB file whose hyperparameters declare
            # 131,072 inputs and hidden units would otherwise ask for 64 GiB before any weight is compared.
            with torch.device("meta"):
                declared = {k: tuple(v.shape) for k, v in
                            self._build(int(self.n_features_in_), len(self.classes_)).state_dict().items()}
            stored = {k: tuple(np.shape(v)) for k, v in weights.items()}
            if declared != stored:
                raise ValueError(f"DenseHead: the stored weights {stored} are not the shapes its hyperparameters "
                                 f"declare {declared}: a damaged or crafted model file")
            module = self._build(self.n_features_in_, len(self.classes_))
            module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
            self.module_ = module.eval()


class _InMemory:
    """Minibatches of an in-memory array for :meth:`DenseHead.fit`: a full shuffle per epoch (torch's RNG)."""

    def __init__(self, X: np.ndarray):
        self.X = X

    def batches(self, rows: np.ndarray, batch_size: int, shuffle: bool = False):
        return minibatches(self.X, rows[torch.randperm(len(rows)).numpy()] if shuffle else rows, batch_size)


class _Streamed:
    """Minibatches of a :class:`featcache.rowsource.RowSource` for :meth:`DenseHead.fit_stream`: shuffled blocks."""

    def __init__(self, rows):
        self.rows, self.rng = rows, None

    def batches(self, rows: np.ndarray, batch_size: int, shuffle: bool = False):
        if shuffle and self.rng is None:  # seeded from torch's RNG, which DenseHead seeds before training
            self.rng = np.random.default_rng(int(torch.randint(2 ** 31, ())))
        return minibatches(self.rows, rows, batch_size, self.rng if shuffle else None)
