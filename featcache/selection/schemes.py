"""Validation schemes: how configurations are scored, as folds of (train rows, validation rows) of the pool.

Stage: selection. Arrays in (labels, the pool's split names, class names), no features, so the sweep and
fine-tuning share it. Test rows never enter a scheme: the pool is train+val (or every labelled row).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Scheme", "make_scheme", "auto_validation"]

log = logging.getLogger("featcache")


@dataclass
class Scheme:
    """How configurations are scored: ``folds`` of (train rows, validation rows) of the pool."""

    kind: str  # "val" (the cache's split), "cv" or "holdout"
    folds: List[Tuple[np.ndarray, np.ndarray]]
    identity: dict  # what enters the result key
    description: str

    def standard_error(self, accuracy: float) -> float:
        """The standard error of an accuracy measured on this scheme's validation rows (binomial)."""
        n_val = sum(len(val) for _, val in self.folds)
        return float(np.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(n_val, 1)))


# Validation sized to the data, when neither --cv nor --val-fraction is given and the cache has no val split:
# every row validates once while rows are few (the scores are noisy), fewer folds and then one hold-out once
# there are thousands (the standard error of one hold-out is already small, and each fold is a full fit).
AUTO_CV_ROWS = 1000  # below: 5-fold CV
AUTO_HOLDOUT_ROWS = 5000  # from here: one stratified hold-out; between: 3-fold CV
AUTO_HOLDOUT_FRACTION = 0.2
AUTO_MAX_VAL_ROWS = 10000  # a hold-out larger than this adds fit rows' worth of time and little precision


def auto_validation(n_rows: int) -> Tuple[Optional[int], Optional[float], str]:
    """``(cv, val_fraction, why)`` for a pool of ``n_rows`` rows (see ``AUTO_*`` above)."""
    if n_rows < AUTO_CV_ROWS:
        return 5, None, f"{n_rows} rows < {AUTO_CV_ROWS}: every row validates once"
    if n_rows < AUTO_HOLDOUT_ROWS:
        return 3, None, f"{AUTO_CV_ROWS} <= {n_rows} rows < {AUTO_HOLDOUT_ROWS}: 3 folds suffice"
    fraction = min(AUTO_HOLDOUT_FRACTION, AUTO_MAX_VAL_ROWS / n_rows)
    return None, fraction, f"{n_rows} rows >= {AUTO_HOLDOUT_ROWS}: one hold-out is precise enough"


def make_scheme(y: np.ndarray, pool_split: Optional[np.ndarray], names: Sequence[str], cv: Optional[int],
                val_fraction: Optional[float], seed: int) -> Scheme:
    """Folds of the pool rows with class indices ``y`` and split names ``pool_split`` (None: no splits).

    The cache's val split; else stratified k-fold CV or a hold-out (``cv``/``val_fraction``; both None: sized
    to the data by :func:`auto_validation`), falling back when classes are tiny.
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
    why = ""
    if cv is None and val_fraction is None:
        cv, val_fraction, why = auto_validation(len(y))
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
        kind = "stratified" if stratified else "random"
        return Scheme("holdout", folds, ident, f"a {100 * val_fraction:.0f}% {kind} hold-out of {where} "
                      f"({n_val} rows, seed {seed})" + (f"; chosen as {why}" if why else ""))
    k = cv
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
    return Scheme("cv", folds, ident, f"{k}-fold {'stratified ' if stratified else ''}CV on {where} (seed {seed})"
                  + (f"; chosen as {why}" if why else ""))
