"""Training for fine-tuning (stage: orchestration): each configuration of the grid a
:class:`~featcache.learn.top.TopClassifier` trained from the cached activations, early-stopped on half the
validation rows and scored on the other half; and the held-out predictions ``fit`` compares stages on."""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..cache import FeatureSet, Rows, load
from ..config import FinetuneConfig
from ..learn import metrics
from ..learn.top import TopClassifier
from ..selection.grids import Config
from ..selection.schemes import Scheme
from ..selection.store import result_key
from ._network import split_for

log = logging.getLogger("featcache")


@dataclass
class Holdout:
    """The rows of a fine-tuning run: ``rows`` (the pool) and ``test_rows`` are cache rows; ``train``, ``stop``
    (early stopping) and ``val`` (ranking) index ``rows``, whose classes are ``y``."""

    rows: np.ndarray
    test_rows: np.ndarray
    y: np.ndarray
    scheme: Scheme
    train: np.ndarray
    stop: np.ndarray
    val: np.ndarray


def grid_configs(cfg: FinetuneConfig, fs: FeatureSet, node: str) -> Tuple[List[dict], List[Config], Dict[Config, str]]:
    """The grid (each configuration's parameters), its configurations and their result keys."""
    grid = cfg.grid()
    # Parameters in grid order (not sorted), so the leaderboard shows train_blocks first.
    configs = [Config("finetune", json.dumps(params), "none") for params in grid]
    keys = {c: result_key({"fingerprint": fs.meta.fingerprint, "node": node, "config": c.identity()})
            for c in configs}
    return grid, configs, keys


def train_grid(cfg: FinetuneConfig, top, acts: Rows, h: Holdout, classes: Sequence[str], grid: List[dict],
               configs: List[Config], deadline: Optional[float]):
    """Train each configuration (``configs``, whose parameters are ``grid``); none starts past ``deadline`` but the
    first. Returns each one's record (scores and predictions on the ranking rows, or its error), the trained models,
    and the labels of those left untrained."""
    from tqdm.auto import tqdm

    names, shape = np.asarray(classes, dtype=object), acts.shape[1:]
    rows, y, train, stop, val = h.rows, h.y, h.train, h.stop, h.val
    records, models, skipped = {}, {}, []
    bar = tqdm(total=len(configs), desc="finetune", unit="config", disable=not cfg.progress, file=sys.stderr)
    try:
        for config, params in zip(configs, grid, strict=True):
            if deadline is not None and records and time.monotonic() > deadline:
                skipped.append(config.label())  # out of time; the first configuration always runs
                continue
            est = estimator(cfg, top, shape, params)
            t = time.perf_counter()
            try:
                est.fit(acts[rows[train]], names[y[train]], X_val=acts[rows[stop]],
                        y_val=names[y[stop]], deadline=deadline)  # no epoch starts past the budget
                scores, pred = scores_on(est, acts[rows[val]], y[val], classes)
                cut = deadline is not None and time.monotonic() > deadline and est.n_epochs_ < cfg.epochs
                records[config] = {"scores": scores, "pred": pred, "fit_s": time.perf_counter() - t,
                                   "note": f"{est.n_epochs_} epochs, best {est.best_epoch_}"
                                           + (" (stopped at the budget)" if cut else "")}
                models[config] = est
            except (ValueError, RuntimeError) as e:  # one failing configuration must not end the run
                records[config] = {"error": f"{type(e).__name__}: {e}".splitlines()[0], "fit_s": 0.0}
            bar.update(1)
            log.info("%s: %s", config.label(), records[config].get("note") or records[config].get("error"))
    finally:
        bar.close()
    return records, models, skipped


def held_out_predictions(cache, node: str, params: dict, epochs: int, folds, *, seed: int = 0,
                         device: str = "auto", deadline: Optional[float] = None,
                         fold_s: float = 0.0) -> List[np.ndarray]:
    """Class indices on each fold's held-out rows by the configuration ``params`` trained on the fold's training
    rows for ``epochs`` epochs (``folds``: ``(train_rows, held_out_rows)`` pairs of cache rows). ``fit`` compares
    fine-tuning with another stage on these rows, far more than one hold-out gives. A fold starts only while the
    time left covers the last one (the first: ``fold_s``), so the list may be shorter than ``folds``."""
    cfg = FinetuneConfig(cache=Path(cache), from_layer=node, seed=seed, device=device, progress=False)
    out: List[np.ndarray] = []
    with load(cache, lazy=True) as fs:
        top, _ = split_for(fs.meta, fs.path, node)
        acts = Rows(fs.path, [node], maps=True)
        names = np.asarray(fs.classes, dtype=object)
        for train, held in folds:
            if deadline is not None and time.monotonic() + fold_s > deadline:
                break
            t = time.monotonic()
            est = estimator(cfg, top, acts.shape[1:], params, epochs=epochs, early_stopping=False)
            train = np.sort(train)
            est.fit(acts[train], names[fs.y[train]])
            out.append(scores_on(est, acts[held], fs.y[held], fs.classes)[1])
            fold_s = time.monotonic() - t
    return out


def estimator(cfg: FinetuneConfig, top, shape, params: dict, **changes) -> TopClassifier:
    """The :class:`TopClassifier` of one configuration of ``cfg``'s grid (``changes`` override its settings)."""
    settings = dict(top=top, input_shape=shape, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                    batch_size=cfg.batch_size, n_iter_no_change=cfg.patience, augment=cfg.augment, dropout=cfg.dropout,
                    label_smoothing=cfg.label_smoothing, random_state=cfg.seed, device=cfg.device,
                    precision=cfg.precision)
    return TopClassifier(**{**settings, **params, **changes})


def stop_and_select(y: np.ndarray, val: np.ndarray, seed: int):
    """Validation rows split in two, stratified: one half early-stops training, the other ranks configurations.
    Ranking on the rows a model was stopped on would favour it (its best epoch was chosen on them)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y[val])
    if len(val) < 4 or counts[counts > 0].min() < 2:
        log.warning("too few validation rows to hold early stopping apart from selection (%d; every class needs 2): "
                    "the validation scores are optimistic", len(val))
        return val, val
    stop, select = train_test_split(val, test_size=0.5, stratify=y[val], random_state=seed)
    log.info("validation: %d rows stop each configuration's training early, %d others rank the configurations",
             len(stop), len(select))
    return np.sort(stop), np.sort(select)


def scores_on(est: TopClassifier, X, y_idx: np.ndarray, classes: Sequence[str]):
    """All metrics of ``est`` on ``X`` (true class indices ``y_idx``), and its predicted class indices."""
    proba = est.predict_proba(X)
    full = np.zeros((len(proba), len(classes)))
    full[:, [list(classes).index(c) for c in est.classes_]] = proba
    pred = np.argmax(full, axis=1)
    return metrics.scores(y_idx, pred, full, len(classes)), pred
