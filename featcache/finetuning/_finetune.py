"""Fine-tuning from end to end (stage: orchestration): ``finetune`` and ``run_finetune``; the network, the training
and the outputs are the modules beside it."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .._malloc import tune_allocator
from ..cache import FeatureSet, Rows, in_use, load
from ..config import FinetuneConfig
from ..errors import FeatcacheError
from ..learn.top import TopClassifier, top_blocks
from ..selection.features import pool_and_test
from ..selection.leaderboard import crossfit_pred, leaderboard
from ..selection.outputs import prepare_out
from ..selection.schemes import make_scheme
from ._network import backbone_of, check_activations, split_for
from ._result import FinetuneResult
from ._train import Holdout, estimator, grid_configs, scores_on, stop_and_select, train_grid
from ._write import write

log = logging.getLogger("featcache")


def finetune(cache, from_layer: str, **settings) -> FinetuneResult:
    """Train the top blocks after ``from_layer`` (+ a new head) from the cache's activations at that layer.

    ``settings`` are :class:`FinetuneConfig` fields, e.g. ``finetune("c.h5", "layer3", out="runs/ft", epochs=5)``.
    """
    return run_finetune(FinetuneConfig(cache=Path(cache).expanduser(), from_layer=from_layer, **settings))


def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """The fine-tuning run for one :class:`FinetuneConfig` (what :func:`finetune` and the CLI call); the cache is
    marked in use meanwhile, so ``rm`` and ``prune`` leave it alone."""
    cfg.validate()
    with in_use(cfg.cache):
        return _finetune(cfg)


def _finetune(cfg: FinetuneConfig) -> FinetuneResult:
    tune_allocator()
    if cfg.out is not None:  # before any training: an unwritable or occupied --out fails now
        prepare_out(cfg.out, cfg.overwrite)
    fs = load(cfg.cache, lazy=True)
    try:
        node, top = _top_after(cfg, fs)  # the layers after the cached node
        h = _hold_out(cfg, fs)  # the pool's training, early-stopping and ranking rows; the test rows
        acts = Rows(fs.path, [node], maps=True)
        log.info("fine-tuning the top after %s (%d blocks, %s parameters) on %d x %s activations; validation: %s",
                 node, len(top_blocks(top)), f"{sum(p.numel() for p in top.parameters()):,}", len(h.train),
                 "x".join(map(str, acts.shape[1:])), h.scheme.description)
        grid, configs, keys = grid_configs(cfg, fs, node)
        deadline = None if cfg.budget is None else time.monotonic() + cfg.budget_s
        records, models, skipped = train_grid(cfg, top, acts, h, fs.classes, grid, configs, deadline)
        if skipped:
            log.warning("the budget ran out: %d configuration(s) not trained: %s", len(skipped), "; ".join(skipped))
        configs = [c for c in configs if c in records]
        board = leaderboard(configs, records, set(), keys, cfg.metric, node, {c: len(h.train) for c in configs})
        ok = board[board["status"] == "ok"]
        if ok.empty:
            raise FeatcacheError(f"every configuration failed; the first error: {board['status'].iloc[0]}")
        best_config = next(c for c in configs if keys[c][:12] == ok["config_id"].iloc[0])
        best = _refit_best(cfg, top, acts, h, fs, best_config, models[best_config], records, skipped, deadline)
        test_scores, test_pred = None, None
        if len(h.test_rows):
            test_scores, test_pred = scores_on(best, acts[h.test_rows], fs.y[h.test_rows], fs.classes)
            for name, value in test_scores.items():
                board.loc[0, f"test_{name}"] = value
        result = FinetuneResult(board, best, best_config.params, test_scores, h.scheme.description, skipped=skipped,
                                train_rows=h.rows[h.train], val_rows=h.rows[h.val],
                                val_pred=crossfit_pred([records[c]["pred"] for c in configs if "pred" in records[c]],
                                                       h.y[h.val], cfg.seed),
                                best_epochs=int(models[best_config].best_epoch_))
        if cfg.out is not None:
            result.out = Path(cfg.out).expanduser()
            truth = (fs.y[h.test_rows], test_pred, "test") if test_pred is not None else \
                (h.y[h.val], records[best_config]["pred"], "validation")
            result.files = write(cfg, result, fs, node, records, truth)
    finally:
        fs.close()
    return result


def _top_after(cfg: FinetuneConfig, fs: FeatureSet):
    """``(node, top)``: the cache layer to train from and the network's layers after it; an error when the cache
    holds no activations there or ``--train-blocks`` asks for more blocks than the top has."""
    backbone = backbone_of(fs.meta, fs.path)
    node = check_activations(fs, cfg.from_layer, backbone)
    top, _ = split_for(fs.meta, fs.path, node, backbone)
    n_blocks = len(top_blocks(top))
    too_many = [b for b in cfg.train_blocks if b != "all" and b > n_blocks]
    if too_many:
        raise FeatcacheError(f"{{train_blocks}} {too_many[0]}: the top after {node} has {n_blocks} blocks with "
                             f"weights ({', '.join(top_blocks(top))})")
    return node, top


def _hold_out(cfg: FinetuneConfig, fs: FeatureSet) -> Holdout:
    """The pool's rows split into training and validation (the cache's val split, else a stratified hold-out), the
    validation rows into early stopping and ranking halves; the test rows."""
    split = fs.split
    pool, test = pool_and_test(fs)
    rows, test_rows = np.flatnonzero(pool), np.flatnonzero(test)
    if len(np.unique(fs.y[rows])) < 2:
        raise FeatcacheError(f"{fs.path}: fine-tuning needs labelled training rows of at least 2 classes")
    y, pool_split = fs.y[rows], split[rows] if split is not None else None
    has_val = pool_split is not None and (pool_split == "val").any()
    scheme = make_scheme(y, pool_split, fs.classes, None, cfg.val_fraction or (None if has_val else 0.2), cfg.seed)
    (train, val), = scheme.folds
    val = val[np.isin(y[val], y[train])]  # a class never trained on cannot be early-stopped on
    stop, val = stop_and_select(y, val, cfg.seed)
    return Holdout(rows, test_rows, y, scheme, train, stop, val)


def _refit_best(cfg: FinetuneConfig, top, acts: Rows, h: Holdout, fs: FeatureSet, best_config, best: TopClassifier,
                records, skipped, deadline) -> TopClassifier:
    """``best`` retrained on every pool row (val too) for its best epochs, as the sweep refits its best, when
    ``cfg.refit`` and the time left allow; else ``best`` (a refit out of time is added to ``skipped``)."""
    rows, y, train = h.rows, h.y, h.train
    if cfg.refit and len(h.val):
        fit_s = records[best_config]["fit_s"] * len(rows) / max(len(train), 1)
        if deadline is None or time.monotonic() + fit_s <= deadline:
            # As the sweep refits its best: every pool row (val too), for the epochs that were best.
            log.info("refitting %s on %d rows for %d epochs", best_config.label(), len(rows), best.best_epoch_)
            best = estimator(cfg, top, acts.shape[1:], best_config.params, epochs=best.best_epoch_,
                             early_stopping=False)
            best.fit(acts[rows], np.asarray(fs.classes, dtype=object)[y])
        else:
            skipped.append(f"refit of {best_config.label()} on train+val, about {fit_s:.0f} s")
    return best
