"""What every torch classifier here shares: tensors from arrays, the early-stopping split and rule, AdamW.

Stage: learning. Imports torch, numpy, scikit-learn's splitter and ``rowsource``. :class:`DenseHead` and
:class:`TopClassifier` train with the same :class:`EarlyStopping` and :func:`holdout_split`.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from ..rowsource import RowSource, available_memory

__all__ = ["as_tensor", "holdout_split", "EarlyStopping", "adamw", "in_memory_if_small", "IN_MEMORY_BYTES"]

IN_MEMORY_BYTES = 2 << 30  # cached rows up to this size (and a quarter of free memory) are read once, not streamed


def as_tensor(X: np.ndarray) -> torch.Tensor:
    """A float32 tensor sharing memory with ``X`` (which may be a read-only memmap we never write)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(X)


def holdout_split(y: np.ndarray, fraction: float, rng, min_val: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted train/held-out positions of ``y`` (class indices) for early stopping: ``fraction`` of the rows
    (at least ``min_val``), stratified when every class can spare a row; no held-out rows when none can be spared.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_val = max(min_val, int(round(fraction * n)))
    if n_val < 1 or n - n_val < 1:
        return np.arange(n), np.array([], dtype=np.int64)
    counts = np.bincount(y)
    stratify = y if counts.min() >= 2 and min(n_val, n - n_val) >= len(counts) else None
    train, val = train_test_split(np.arange(n), test_size=n_val, stratify=stratify, random_state=rng)
    return np.sort(train), np.sort(val)


class EarlyStopping:
    """Stop when the validation loss has not improved by ``min_delta`` for ``patience`` epochs; keep the best
    epoch's state (whatever ``snapshot()`` returns when the loss improves)."""

    def __init__(self, patience: int, min_delta: float = 1e-4):
        self.patience, self.min_delta = patience, min_delta
        self.best_loss, self.best_epoch, self.best_state, self.stale = np.inf, 0, None, 0

    def update(self, loss: float, epoch: int, snapshot: Callable[[], object]) -> bool:
        """Record epoch ``epoch``'s validation ``loss``; True when training should stop."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.stale = loss, epoch, 0
            self.best_state = snapshot()
            return False
        self.stale += 1
        return self.stale >= self.patience


def state_copy(module: torch.nn.Module) -> dict:
    """A detached copy of ``module``'s state dict (what :class:`EarlyStopping` keeps)."""
    return copy.deepcopy(module.state_dict())


def adamw(groups: List[dict], weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where this torch has it (CPU: 2.4+; ~8 ms less per step here)."""
    try:
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay)


def in_memory_if_small(X: Optional[object]):
    """A :class:`RowSource` (a cache's ``Rows`` view) read into a float32 array when it fits comfortably in
    memory; anything else as is.

    In memory every epoch is a full shuffle. A stream only shuffles within a buffer of chunk-aligned blocks,
    which on a class-sorted cache gives minibatches of few classes: measured on MNIST-5k at 224 px (192x7x7 maps,
    a 888-row buffer of 3,000 rows), test accuracy 0.862 streamed vs 0.954 for the same training on
    shuffled images.
    """
    if not isinstance(X, RowSource):
        return X
    nbytes = len(X) * int(np.prod(X.row_shape)) * 4
    free = available_memory()
    if nbytes > IN_MEMORY_BYTES or (free is not None and nbytes > free // 4):
        return X
    out = np.empty(X.shape, dtype=np.float32)
    for pos, block in X.blocks():
        out[pos] = block
    return out
