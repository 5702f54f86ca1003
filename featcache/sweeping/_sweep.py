"""The sweep from end to end (stage: orchestration): ``sweep`` and ``run_sweep``, each step a module beside it."""
from __future__ import annotations

import time
from pathlib import Path

from .._malloc import tune_allocator
from ..cache.use import in_use
from ..config import SweepConfig
from ..selection import backends
from ..selection.outputs import prepare_out
from ._board import rank
from ._problem import prepare
from ._refit import refit
from ._result import SweepResult, collect
from ._screen import screen_choices
from ._search import Rungs, search
from ._write import write


def sweep(cache, **settings) -> SweepResult:
    """Fit a grid of classifiers on a feature cache, select on validation, refit the best, score test.

    ``settings`` are :class:`SweepConfig` fields, e.g.
    ``sweep("cache.h5", out="runs/exp1", grid="grid.toml", n_jobs=2)``. Returns a
    :class:`SweepResult` with the leaderboard (best first) and the refitted best pipeline.
    """
    cfg = SweepConfig(cache=Path(cache).expanduser(), **settings)
    return run_sweep(cfg)


def run_sweep(cfg: SweepConfig) -> SweepResult:
    """The sweep for one :class:`SweepConfig` (what :func:`sweep` and the CLI call); the cache is marked in use
    meanwhile, so ``rm`` and ``prune`` leave it alone."""
    cfg.validate()
    with in_use(cfg.cache):
        return _sweep(cfg)


def _sweep(cfg: SweepConfig) -> SweepResult:
    tune_allocator()
    backends.remove_stale_scratch()  # what killed sweeps left in shared memory
    deadline = None if cfg.budget is None else time.monotonic() + cfg.budget_s
    if cfg.out is not None:  # before any fit: an unwritable or occupied --out fails now, not after the work
        prepare_out(cfg.out, cfg.overwrite)
    problem = prepare(cfg)  # the features, the validation scheme, the grid's configurations, the result store
    rungs = Rungs(cfg, problem, deadline)  # the training rows of each rung (one: the plain grid) and their fits
    screened = screen_choices(cfg, problem, rungs)  # the layer choices the grid runs on
    final, stopped = search(cfg, problem, rungs, screened.configs, screened.extra, screened.layers, deadline)
    ranking = rank(cfg, problem, rungs, final, stopped)  # the leaderboard and the top candidates
    fits = rungs.on(problem.n_train)
    refits, refitted = refit(cfg, problem, fits, ranking)  # the top on every pool row, scored on test
    result = collect(cfg, problem, rungs, ranking, final, screened.scores, refits, refitted)
    if cfg.out is not None:
        best_config = result.best_config
        result.out = Path(cfg.out).expanduser()
        result.files = write(cfg, result, problem.feats.for_layer(best_config.layer), problem.scheme,
                             {c: fits.records[c] for c in dict.fromkeys(final + [best_config])}, refits[best_config][2])
    return result
