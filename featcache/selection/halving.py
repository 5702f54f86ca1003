"""Successive halving: every configuration on a sample of the training rows, the best third on three times as many,
and so on up to all of them, as scikit-learn's ``HalvingGridSearchCV`` does with rows as the resource.

Stage: selection. The validation rows stay whole at every rung (each rung's scores are comparable across its
configurations); a rung is a :class:`~featcache.selection.schemes.Scheme` of its own, so its fits are stored and
reused like any other. Configurations that stop early keep the score of their last rung, shown on the
leaderboard with the rows they trained on, and rank below every configuration that reached all the rows.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Dict, List, Tuple

import numpy as np

from ..learn import metrics
from .grids import Config
from .schemes import Scheme

__all__ = ["HALVING_MIN_ROWS", "ETA", "MIN_SURVIVORS", "rung_sizes", "record_score", "rung_scheme",
           "successive_halving"]

log = logging.getLogger("featcache")

ETA = 3  # each rung keeps a third of the configurations and gives them three times the rows
HALVING_MIN_ROWS = 2000  # the smallest rung: fewer rows rank configurations too noisily to drop any
MAX_RUNGS = 3
MIN_SURVIVORS = 4  # never fewer on the last rung (an ensemble needs a few good members)


def rung_sizes(n_train: int, n_configs: int) -> List[int]:
    """Training rows per rung, smallest first, ending with ``n_train``; ``[n_train]`` when halving cannot pay."""
    rungs = min(MAX_RUNGS, 1 + int(math.floor(math.log(max(n_train / HALVING_MIN_ROWS, 1), ETA))),
                1 + int(math.floor(math.log(max(n_configs / MIN_SURVIVORS, 1), ETA))))
    return [int(math.ceil(n_train / ETA ** (rungs - 1 - r))) for r in range(rungs)]


def rung_scheme(scheme: Scheme, y: np.ndarray, rows: int, seed: int) -> Scheme:
    """``scheme`` with each fold's training rows cut to a stratified sample of ``rows`` (validation kept whole)."""
    rng = np.random.default_rng(seed)
    folds = []
    for train, val in scheme.folds:
        if rows >= len(train):
            folds.append((train, val))
            continue
        keep = []  # per class, in proportion (every class keeps at least one row)
        for cls in np.unique(y[train]):
            members = train[y[train] == cls]
            take = max(1, int(round(len(members) * rows / len(train))))
            keep.append(rng.choice(members, size=min(take, len(members)), replace=False))
        folds.append((np.sort(np.concatenate(keep)), val))
    identity = {**scheme.identity, "rung_rows": rows, "rung_seed": seed}
    return dataclasses.replace(scheme, folds=folds, identity=identity,
                               description=f"{scheme.description}, training on {rows} rows")


def successive_halving(configs: List[Config], sizes: List[int], fit_rung: Callable[[List[Config], int], Dict],
                       metric: str) -> Tuple[List[Config], Dict[Config, Tuple[dict, int]]]:
    """Run the rungs; ``fit_rung(configs, rows)`` returns each config's record at that rung.

    Returns the configurations that reached the last rung, and for those stopped earlier their last
    record and the rows it trained on. A configuration ``fit_rung`` gave no record (out of time) goes no further.
    """
    alive = list(configs)
    stopped: Dict[Config, Tuple[dict, int]] = {}
    for rows in sizes[:-1]:
        records = fit_rung(alive, rows)
        alive = [c for c in alive if c in records]

        ranked = sorted(alive, key=lambda c, r=records: record_score(r[c], metric), reverse=True)
        keep = max(MIN_SURVIVORS, int(math.ceil(len(alive) / ETA)))
        for c in ranked[keep:]:
            stopped[c] = (records[c], rows)
        log.info("successive halving: %d configuration(s) on %d training rows; the best %d go on", len(alive),
                 rows, min(keep, len(alive)))
        alive = ranked[:keep]
    return alive, stopped


def record_score(record: dict, metric: str) -> float:
    """A record's sort key on ``metric`` (higher is better; a failed fit or missing metric sorts last)."""
    value = (record.get("scores") or {}).get(metric)
    return metrics.sort_key(metric, np.nan if value is None else float(value))
