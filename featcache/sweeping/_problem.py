"""What a sweep works on (stage: orchestration): the features read from the cache once, the validation scheme,
the grid's configurations, and the result store with what every result's key holds."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List

from ..config import SweepConfig
from ..errors import FeatcacheError
from ..learn import streaming
from ..selection import backends, grids
from ..selection.features import SweepRows, load_features
from ..selection.grids import Config
from ..selection.schemes import Scheme, make_scheme
from ..selection.store import ResultStore, result_versions

log = logging.getLogger("featcache")


@dataclass
class Problem:
    """A sweep's inputs, fixed before any fit."""

    feats: SweepRows
    scheme: Scheme
    configs: List[Config]  # the grid's configurations (the layer screen puts them on its layer choices)
    store: ResultStore
    base: dict  # what every result's key holds besides its configuration and folds
    per_row: int  # training rows per image (its views)
    n_rows: int  # what the best is refitted on: the grid's max_rows/min_rows are about it
    n_train: int  # the training rows of the smallest fold: every training row, the last rung


def prepare(cfg: SweepConfig) -> Problem:
    """Check the backend and the grid, read the features, make the folds, expand the grid, open the result store."""
    backends.require(cfg.backend)
    grid, only = grids.read_grid(cfg.grid), list(cfg.classifiers) or None
    grids.expand_grid(grid, only)  # every table checked now, before the features are read
    feats = load_features(cfg.cache, cfg.layer, cfg.use_views, cfg.out_of_core, cfg.block_rows,
                          shared_copy=cfg.backend == "loky" and (None if cfg.n_jobs is None else cfg.n_jobs != 1),
                          tasks=backends.local_tasks(cfg.backend, cfg.n_jobs))
    if cfg.tta and feats.V is None:
        raise FeatcacheError("{tta} needs augmented views in the cache; extract with {views} K "
                             "(and without {use_views=False})")
    scheme = make_scheme(feats.y, feats.pool_split, feats.classes, cfg.cv, cfg.val_fraction, cfg.seed)
    per_row = 1 + (int(feats.V.shape[1]) if feats.V is not None else 0)  # training rows per image (its views)
    n_rows = len(feats.y) * per_row  # what the best is refitted on: the grid's max_rows/min_rows are about it
    configs = grids.expand_grid(grid, only, n_rows=n_rows)
    if cfg.out_of_core:
        configs = _streamable(configs, cfg.grid is None and not cfg.classifiers)
    results_root = None if not cfg.reuse else Path(cfg.results_dir or feats.path.parent / "sweep-results")
    store = ResultStore(results_root, feats.meta.fingerprint)
    base = {"fingerprint": feats.meta.fingerprint, "layers": feats.layers, "seed": cfg.seed,
            "versions": result_versions()}
    if feats.V is not None:  # only then, so results without views keep their keys
        base.update(views=int(feats.V.shape[1]), tta=cfg.tta)
    if cfg.out_of_core:  # streamed fits shuffle by blocks (and SGD runs max_iter epochs): other results
        base.update(out_of_core={"block_rows": feats.X.block_rows})
    n_train = min(len(tr) for tr, _ in scheme.folds)
    return Problem(feats, scheme, configs, store, base, per_row, n_rows, n_train)


def _streamable(configs: List[Config], default_grid: bool) -> List[Config]:
    """Out of core only classifiers and preprocessing that train from a stream; the default: the streaming grid."""
    if default_grid:
        log.info("--out-of-core: the default streaming grid (%s, which train from a stream)",
                 " and ".join(streaming.STREAMING_CLASSIFIERS))
        return grids.expand_grid(grids.read_grid(grids.STREAMING_GRID))
    ok = [c for c in configs if c.classifier in streaming.STREAMING_CLASSIFIERS
          and all(step in streaming.STREAMING_PREPROCESS for step in c.preprocess.split("+"))]
    if len(ok) < len(configs):
        bad = sorted({c.label() for c in configs} - {c.label() for c in ok})
        raise FeatcacheError(f"{{out_of_core}} trains only {', '.join(streaming.STREAMING_CLASSIFIERS)} with "
                             f"preprocess {' / '.join(streaming.STREAMING_PREPROCESS)} (chained with '+'); not {bad[0]}"
                             + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
    return configs
