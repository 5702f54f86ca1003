"""The search of a sweep (stage: orchestration): fit the configurations on the rungs' training rows.

The plain grid fits every configuration on all the training rows (one rung). Successive halving
(``selection.halving``) fits them on a fraction of the rows first and only the best go on to more; its rungs are
sized to the rows and configurations (``--no-halving``, and ``--out-of-core``: the plain grid). Each rung's fits
(``selection.fitting.Fits``) are made on first use and kept, so the leaderboard can show where each configuration
stopped. Last, the greedy ensemble of the best configurations joins those fitted on all the rows.
"""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Tuple

from ..config import SweepConfig
from ..selection.fitting import Fits
from ..selection.grids import Config
from ..selection.halving import rung_scheme, rung_sizes, successive_halving
from ._ensemble import greedy_ensemble
from ._problem import Problem

log = logging.getLogger("featcache")


class Rungs:
    """The fits of each rung by its training rows (``problem.n_train``: every training row), made on first use;
    ``sizes``: the rungs' rows, smallest first (one: the plain grid)."""

    def __init__(self, cfg: SweepConfig, problem: Problem, deadline: Optional[float]):
        self.cfg, self.problem, self.deadline = cfg, problem, deadline
        self.fits: Dict[int, Fits] = {}
        feats, n_train = problem.feats, problem.n_train
        n_configs = len(problem.configs) * max(1, min(cfg.screen_layers or 99, len(feats.layer_choices or [""])))
        self.sizes = rung_sizes(n_train, n_configs) if cfg.halving and not cfg.out_of_core else [n_train]

    def on(self, rows: int) -> Fits:
        """The fits of the rung on ``rows`` training rows."""
        if rows not in self.fits:
            p = self.problem
            s = p.scheme if rows >= p.n_train else rung_scheme(p.scheme, p.feats.y, rows, self.cfg.seed)
            max_components = min(p.feats.X.shape[1], min(len(tr) for tr, _ in s.folds) * p.per_row)
            self.fits[rows] = Fits(self.cfg, p.feats, s, max_components, p.store, p.base, self.deadline)
        return self.fits[rows]


def search(cfg: SweepConfig, problem: Problem, rungs: Rungs, configs: List[Config], extra: List[Config],
           layers: List[str], deadline: Optional[float]) -> Tuple[List[Config], Dict[Config, Tuple[dict, int]]]:
    """Fit ``configs`` (on the layer choices ``layers``): successive halving over ``rungs.sizes``, or the plain grid
    on all the rows; then the ensemble. Returns the configurations fitted on all the rows, and for the others
    (stopped by halving or the budget at a later rung, and the layer screen's ``extra``) their last record and the
    rows it trained on."""
    feats, scheme, sizes, n_train = problem.feats, problem.scheme, rungs.sizes, problem.n_train
    fitting = {layer: len(range(feats.X.shape[1])[feats.columns(layer)]) for layer in layers}
    log.info("%d configurations on %d rows, the grid on layer choice(s) %s, %d classes; validation: %s%s",
             len(configs), len(feats.X), ", ".join(f"{layer or '+'.join(feats.layers)} ({width} features)"
                                                   for layer, width in fitting.items()),
             len(feats.classes), scheme.description,
             f"; successive halving over {' -> '.join(map(str, sizes))} training rows" if len(sizes) > 1 else "")

    def fit_rung(cs: List[Config], rows: int) -> Dict[Config, dict]:
        rungs.on(rows).fit(cs, desc=f"sweep, {rows} rows" if rows < n_train else "sweep")
        return rungs.on(rows).records

    if len(sizes) > 1:
        alive, stopped = successive_halving(configs, sizes, fit_rung, cfg.metric)
    else:  # the plain grid: every configuration goes on to all the rows
        alive, stopped = list(configs), {}
    stopped.update({p: (rungs.on(sizes[0]).records[p], sizes[0]) for p in extra})
    fits = rungs.on(n_train)
    fits.fit(alive)
    final = [c for c in alive if c in fits.records]
    for c in configs:  # out of time at a later rung: its last record stays on the leaderboard, as a stopped one
        if c not in stopped and c not in fits.records:
            last = next(((rungs.fits[r].records[c], r) for r in sorted(rungs.fits, reverse=True)
                         if c in rungs.fits[r].records), None)
            if last is not None:
                stopped[c] = last
    out_of_time = deadline is not None and time.monotonic() > deadline
    ensemble = None if out_of_time or cfg.out_of_core else greedy_ensemble(cfg, fits, final, feats.y)  # (no streaming)
    final += [ensemble] if ensemble is not None and ensemble in fits.records else []
    return final, stopped
