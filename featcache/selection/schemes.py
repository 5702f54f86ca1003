"""Validation schemes: how configurations are scored, as folds of (train rows, validation rows) of the pool.

Stage: selection. Arrays in (labels, the pool's split names, class names), no features, so the sweep and
fine-tuning share it. Test rows never enter a scheme: the pool is train+val (or every labelled row).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Scheme", "make_scheme"]

log = logging.getLogger("featcache")


@dataclass
class Scheme:
    """How configurations are scored: ``folds`` of (train rows, validation rows) of the pool."""

    kind: str  # "val" (the cache's split), "cv" or "holdout"
    folds: List[Tuple[np.ndarray, np.ndarray]]
    identity: dict  # what enters the result key
    description: str


def make_scheme(y: np.ndarray, pool_split: Optional[np.ndarray], names: Sequence[str], cv: Optional[int],
                val_fraction: Optional[float], seed: int) -> Scheme:
    """Folds of the pool rows with class indices ``y`` and split names ``pool_split`` (None: no splits).

    The cache's val split; else stratified k-fold CV or a hold-out, falling back when classes are tiny.
    """
    from sklearn.model_selection import KFold, ShuffleSplit, StratifiedKFold, StratifiedShuffleSplit

    has_val = pool_split is not None and (pool_split == "val").any()
    where = "train+val" if has_val else ("train" if pool_split is not None else "all labelled rows")
    if has_val and cv is None and val_fraction is None:
        train, val = np.flatnonzero(pool_split == "train"), np.flatnonzero(pool_split == "val")
        unseen = sorted(set(y[val]) - set(y[train]))
        if unseen:
            log.warning("class(es) %s appear in val but not in train; no classifier can predict them",
                        ", ".join(names[i] for i in unseen))
        return Scheme("val", [(train, val)], {"kind": "val"}, f"the cache's val split ({len(val)} rows)")
    counts = np.bincount(y, minlength=len(names))
    present = np.flatnonzero(counts)
    smallest = present[np.argmin(counts[present])]
    least = int(counts[smallest])
    if val_fraction is not None:
        n_val = int(np.ceil(val_fraction * len(y)))
        stratified = least >= 2 and min(n_val, len(y) - n_val) >= len(present)
        if not stratified:
            log.warning("class %s has %d row(s): too few for a stratified %.0f%% hold-out; using a random one",
                        names[smallest], least, 100 * val_fraction)
        splitter = (StratifiedShuffleSplit if stratified else ShuffleSplit)(
            n_splits=1, test_size=n_val, random_state=seed)
        folds = list(splitter.split(np.zeros(len(y)), y))
        ident = {"kind": "holdout", "fraction": val_fraction, "seed": seed, "stratified": stratified}
        return Scheme("holdout", folds, ident, f"a {100 * val_fraction:.0f}% hold-out of {where} (seed {seed})")
    k = cv or 5
    if least >= k:
        splitter, stratified = StratifiedKFold(k, shuffle=True, random_state=seed), True
    elif least >= 2:
        log.warning("class %s has only %d labelled rows, too few for %d-fold CV; using %d-fold CV",
                    names[smallest], least, k, least)
        k = least
        splitter, stratified = StratifiedKFold(k, shuffle=True, random_state=seed), True
    else:
        k = min(k, len(y))
        log.warning("class %s has a single labelled row, so no stratified split exists; using plain %d-fold CV "
                    "(that class is missing from some training folds)", names[smallest], k)
        splitter, stratified = KFold(k, shuffle=True, random_state=seed), False
    folds = list(splitter.split(np.zeros(len(y)), y))
    ident = {"kind": "cv", "k": k, "seed": seed, "stratified": stratified}
    return Scheme("cv", folds, ident, f"{k}-fold {'stratified ' if stratified else ''}CV on {where} (seed {seed})")
