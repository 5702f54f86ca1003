"""The sweep's ensemble (stage: orchestration): a weighted soft vote of the best configurations, chosen greedily on
their out-of-fold probabilities, as one more leaderboard entry."""
from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np

from ..config import SweepConfig
from ..learn import metrics
from ..selection import grids
from ..selection.fitting import Fits
from ..selection.grids import Config
from ..selection.halving import record_score
from ..selection.store import config_key

log = logging.getLogger("featcache")

ENSEMBLE_BAG = 20  # the configurations (best calibrated log-loss first) greedy ensemble selection draws from


def greedy_ensemble(cfg: SweepConfig, fits: Fits, final: List[Config], y: np.ndarray) -> Optional[Config]:
    """A weighted soft vote of calibrated members (``learn.ensemble``) on the best configuration's layer choice, its
    weights chosen greedily on the members' out-of-fold probabilities, at most ``cfg.ensemble`` members. Its record
    comes from those same out-of-fold rows: no fit (members are fitted at the refit, if it wins)."""
    from ..learn import calibration
    from ..learn.ensemble import greedy_weights

    ranked = sorted((c for c in final if fits.records[c].get("oof") is not None),
                    key=lambda c: record_score(fits.records[c], cfg.metric), reverse=True)
    if cfg.ensemble < 2 or len(ranked) < 2:
        return None
    bag = [c for c in ranked if c.layer == ranked[0].layer]
    rows = np.flatnonzero(np.all([np.asarray(fits.records[c]["pred"]) >= 0 for c in bag], axis=0))
    probas = [calibration.calibrated(fits.records[c]["oof_kind"], fits.records[c]["oof"][rows],
                                     fits.records[c]["temperature"]) for c in bag]
    order = np.argsort([-record_score({"scores": metrics.scores(y[rows], p.argmax(1), p, p.shape[1])}, "log_loss")
                        for p in probas], kind="stable")[:ENSEMBLE_BAG]  # the best by calibrated log-loss
    weights = greedy_weights([probas[i] for i in order], y[rows], max_members=cfg.ensemble)
    chosen = [(bag[i], w) for i, w in zip(order, weights) if w > 0]
    if len(chosen) < 2:
        log.info("ensemble: greedy selection kept one configuration (%s); no ensemble", chosen[0][0].label())
        return None
    config = grids.ensemble_config([c for c, _ in chosen], ranked[0].layer, [w for _, w in chosen],
                                   [fits.records[c]["temperature"] for c, _ in chosen])
    proba = sum(w * probas[bag.index(c)] for c, w in chosen)
    pred = np.full(len(y), -1, dtype=np.int64)
    pred[rows] = proba.argmax(axis=1)
    fits.keys[config] = config_key(fits.base, config, fits.scheme.identity)
    fits.records[config] = {"scores": metrics.scores(y[rows], pred[rows], proba, proba.shape[1]),
                            "fit_s": sum(fits.records[c]["fit_s"] for c, _ in chosen), "pred": pred.tolist(),
                            "note": "weights chosen greedily on out-of-fold log-loss (no fit)"}
    log.info("ensemble: %s", config.label())
    return config
