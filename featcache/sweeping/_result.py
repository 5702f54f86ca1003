"""What a sweep returns (stage: orchestration): :class:`SweepResult`, gathered from the search, the leaderboard and
the refit."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..config import SweepConfig
from ..selection.fitting import Fits
from ..selection.grids import Config
from ..selection.leaderboard import crossfit_pred
from ._board import Ranking
from ._problem import Problem
from ._search import Rungs

log = logging.getLogger("featcache")


@dataclass
class SweepResult:
    """What :func:`sweep` returns: the leaderboard (best first) and the refitted best pipeline."""

    leaderboard: Any  # pandas DataFrame
    best: Any  # the fitted sklearn Pipeline; predicts class names
    best_config: Config
    scheme: str
    test_scores: Optional[Dict[str, float]]
    n_fits: int  # estimator fits done in this run (folds and refits count one each)
    n_cached: int  # configurations whose results came from the result store
    fitted: List[str] = field(default_factory=list)  # configurations fitted for selection in this run
    refitted: List[str] = field(default_factory=list)  # configurations refitted on train(+val) in this run
    layer_screen: Dict[str, float] = field(default_factory=dict)  # each layer choice's best screen score, if screened
    best_layer: str = ""  # the layers ``best`` reads, "a+b" side by side: ``FeatureSet.matrix(res.best_layer)``
    skipped: List[str] = field(default_factory=list)  # configurations left unfitted when the budget ran out
    standard_error: Optional[float] = None  # of the best validation score (binomial, over the validation rows)
    val_pred: Optional[np.ndarray] = None  # the best's out-of-fold class index per pool row; -1: never validated
    # The same rows predicted cross-fitted: each half by the configuration most accurate on the other half, so a
    # comparison on them does not flatter the best (picked among ``candidates`` on these very rows); -1 as above.
    crossfit_pred: Optional[np.ndarray] = None
    candidates: int = 0  # configurations ranked on all the rows: the best validation score is the best of these
    out: Optional[Path] = None
    files: List[Path] = field(default_factory=list)


def collect(cfg: SweepConfig, problem: Problem, rungs: Rungs, ranking: Ranking, final: List[Config],
            screen: Dict[str, float], refits: Dict[Config, tuple], refitted: List[str]) -> SweepResult:
    """The :class:`SweepResult` (``out`` and ``files`` left to the writer); warns of configurations left unfitted."""
    feats, scheme, fits = problem.feats, problem.scheme, rungs.on(problem.n_train)
    board, keys, ok, whole = ranking.board, ranking.keys, ranking.ok, ranking.whole
    best_config = ranking.top[0]
    best, test_scores, _ = refits[best_config]
    skipped = sorted({c.label() for f in rungs.fits.values() for c in f.skipped} - {c.label() for c in final})
    if skipped:
        log.warning("the budget ran out: %d configuration(s) not fitted (listed in sweep.json)", len(skipped))
    return SweepResult(board, best, best_config, scheme.description, test_scores,
                       sum(f.n_fits for f in rungs.fits.values()) + len(refitted),
                       sum(len(f.cached) for f in rungs.fits.values()),
                       list(dict.fromkeys(c.label() for f in rungs.fits.values() for c in f.fitted)), refitted, screen,
                       best_config.layer or "+".join(feats.layers), skipped=skipped,
                       standard_error=scheme.standard_error(float(ok[f"val_{cfg.metric}"].iloc[0]))
                       if cfg.metric == "accuracy" else None,  # (binomial: for accuracy only)
                       val_pred=np.asarray(fits.records[best_config]["pred"]),
                       crossfit_pred=_crossfit(fits, [c for c in whole if keys[c][:12] in set(ok["config_id"])],
                                               feats.y, cfg.seed),
                       candidates=sum(keys[c][:12] in set(ok["config_id"]) for c in whole))


def _crossfit(fits: Fits, candidates: List[Config], y: np.ndarray, seed: int) -> np.ndarray:
    """The rows every candidate validated, each predicted by the candidate most accurate on the other half of them
    (``selection.leaderboard.crossfit_pred``); -1 elsewhere."""
    preds = np.asarray([fits.records[c]["pred"] for c in candidates])
    out = np.full(len(y), -1, dtype=np.int64)
    rows = np.flatnonzero((preds >= 0).all(axis=0))
    if len(rows):
        out[rows] = crossfit_pred(preds[:, rows], y[rows], seed)
    return out
