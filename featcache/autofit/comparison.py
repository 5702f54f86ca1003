"""How ``fit`` compares two models: on the same held-out rows, each trained without them (stage: commands, ``fit``'s).

:func:`paired_comparison` is the one rule for every stage (scales, views, fine-tuning): the challenger replaces the
best so far only when it is right on more of the same rows; the exact McNemar p-value says how sure that is. Both
sides' predictions are out of fold (a sweep's are cross-fitted, ``selection.leaderboard.crossfit_pred``), so the best
so far, picked among many configurations on these very rows, is not flattered by them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["Comparison", "paired_comparison", "p_better", "held_out", "pool_truth", "trained_rows"]


@dataclass(frozen=True)
class Comparison:
    """Two models on the same held-out rows: how many rows, over how many folds; each one's accuracy there; how many
    only one gets right; the one-sided exact McNemar p-value; the winner (a tie keeps the best so far)."""

    against: str  # the best so far, named down to its stage and configuration (and cache, for fine-tuning)
    rows: int
    folds: int
    new: Optional[float]  # the challenger's accuracy on those rows
    best: Optional[float]  # the best so far's
    new_only: int
    best_only: int
    p_value: float
    winner: str  # a stage name
    train_rows: Optional[int] = None  # the first fold's training rows, where the sides were retrained for it

    def record(self) -> dict:
        """As ``fit.json`` keeps it (``stages[<stage>]["vs_best"]``)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("new", "best")}


def paired_comparison(new_right: np.ndarray, best_right: np.ndarray, *, new: str, best: str, against: str,
                      folds: int = 1, train_rows: Optional[int] = None) -> Comparison:
    """Compare a challenger (stage ``new``) with the best so far (stage ``best``) from whether each was right on
    every one of the same held-out rows."""
    new_right, best_right = np.asarray(new_right, dtype=bool), np.asarray(best_right, dtype=bool)
    new_only, best_only = int((new_right & ~best_right).sum()), int((best_right & ~new_right).sum())
    rows = len(new_right)
    return Comparison(against=against, rows=rows, folds=folds,
                      new=float(new_right.mean()) if rows else None, best=float(best_right.mean()) if rows else None,
                      new_only=new_only, best_only=best_only, p_value=p_better(new_only, best_only),
                      winner=new if new_only > best_only else best, train_rows=train_rows)


def p_better(only_new: int, only_old: int) -> float:
    """One-sided exact McNemar test: how likely a model right on ``only_new`` rows where another is wrong, and
    wrong on ``only_old`` where it is right, would be at least this far ahead if both were equally good."""
    from scipy.stats import binomtest

    n = only_new + only_old
    return float(binomtest(only_new, n, 0.5, alternative="greater").pvalue) if n else 1.0


def held_out(result) -> np.ndarray:
    """A sweep's out-of-fold predictions, cross-fitted over its candidates (its best's own when there is one)."""
    return result.crossfit_pred if result.crossfit_pred is not None else result.val_pred


def trained_rows(result):
    """The rows of a sweep's leaderboard that trained (status ok)."""
    return result.leaderboard[result.leaderboard["status"] == "ok"]


def pool_truth(cache: Path) -> np.ndarray:
    """The class index of every row of ``cache``'s pool (train and val rows, as the sweep validated them)."""
    from ..cache import load
    from ..selection.features import pool_and_test

    with load(cache, lazy=True) as fs:
        return fs.y[pool_and_test(fs)[0]]
