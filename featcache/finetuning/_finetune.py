"""Fine-tuning in one module, for now: ``finetune``, ``run`` and their steps (stage: orchestration)."""
from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import models
from .._malloc import tune_allocator
from ..cache import FeatureSet, Rows, in_use, load
from ..cache.layout import CacheMeta, extract_settings
from ..config import ExtractConfig, FinetuneConfig
from ..errors import FeatcacheError
from ..learn import metrics
from ..learn.top import TopClassifier, top_blocks
from ..selection.features import pool_and_test
from ..selection.grids import Config
from ..selection.leaderboard import crossfit_pred, leaderboard
from ..selection.modelfile import load_model
from ..selection.outputs import model_metadata, prepare_out, settings_record, write_outputs
from ..selection.schemes import make_scheme
from ..selection.store import result_key

__all__ = ["finetune", "run", "held_out_predictions", "network", "Network", "FinetuneConfig", "FinetuneResult",
           "split_for"]

log = logging.getLogger("featcache")


def backbone_of(meta: CacheMeta, path) -> models.Backbone:
    """The cache's model rebuilt with its weights, refused unless the weights' checksum matches the cache's."""
    record = meta.config
    if record.get("weights") == "given module":
        raise FeatcacheError(f"{path}: its features came from a torch module passed in Python, which featcache "
                             f"cannot rebuild; fine-tune it in Python with TopClassifier(top=backbones.split_top(...))")
    backbone = models.load_backbone(ExtractConfig(**extract_settings(record)))
    if backbone.weights_sha256 != record.get("weights_sha256"):
        raise FeatcacheError(f"{path}: the weights loaded for {record.get('model')} ({backbone.weights}) are not the "
                             f"ones its features came from (the checksums differ); use the same weights file")
    return backbone


def split_for(meta: CacheMeta, path, node: str, backbone: Optional[models.Backbone] = None):
    """``(top, backbone)``: the layers of the cache's network after ``node`` up to its penultimate features."""
    backbone = backbone or backbone_of(meta, path)
    nodes = models.graph_node_names(backbone.module)
    return models.split_top(backbone.module, node, models.default_layer(backbone.module, nodes)), backbone


def _check_activations(fs: FeatureSet, node: Optional[str], backbone: models.Backbone) -> str:
    """The cache layer to train from: spatial activations at ``node`` (or at the tensor it names: ``_blocks.10.add``
    is the cache's ``_blocks.10``); else an error naming the extract command."""
    record = fs.meta.config
    spatial = [name for name in fs.layers if record.get("pool") == "none" and len(fs.features[name].shape) >= 3]
    nodes = models.graph_node_names(backbone.module)
    if node is not None and node not in spatial and (node in nodes or any(n.startswith(node + ".") for n in nodes)):
        node = models.canonical_layer(node, nodes, backbone.module)
    if node in spatial:
        return node
    settings = extract_settings(record)
    command = (f"python -m featcache.extract --data {record.get('data') or 'DATA'} --model {settings['model']} "
               f"--weights {settings['weights']} --image-size {settings['image_size']} --layer {node or 'NODE'} "
               f"--pool none --dtype float16")
    has = ", ".join(f"{name} {'x'.join(map(str, fs.features[name].shape[1:]))}" for name in fs.layers)
    if node is None:
        raise FeatcacheError(f"--from-layer is required: the node whose activations the cache holds "
                             f"({', '.join(spatial) or 'none here'}); cache layers: {has}")
    raise FeatcacheError(f"{fs.path} holds no spatial activations at {node} (it has {has}, --pool "
                         f"{record.get('pool')}); extract them first: {command}")


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the leaderboard (best first) and the best trained model."""

    leaderboard: Any  # pandas DataFrame
    best: TopClassifier
    best_params: dict
    test_scores: Optional[Dict[str, float]]
    scheme: str
    skipped: List[str] = field(default_factory=list)  # configurations not trained when the budget ran out
    train_rows: Optional[np.ndarray] = None  # the cache rows the models trained on
    val_rows: Optional[np.ndarray] = None  # the cache rows the configurations were ranked on
    val_pred: Optional[np.ndarray] = None  # class indices on them, each by a configuration ranked on others
    best_epochs: Optional[int] = None  # the best configuration's early-stopped epoch count
    out: Optional[Path] = None
    files: List[Path] = field(default_factory=list)


def finetune(cache, from_layer: str, **settings) -> FinetuneResult:
    """Train the top blocks after ``from_layer`` (+ a new head) from the cache's activations at that layer.

    ``settings`` are :class:`FinetuneConfig` fields, e.g. ``finetune("c.h5", "layer3", out="runs/ft", epochs=5)``.
    """
    return run(FinetuneConfig(cache=Path(cache).expanduser(), from_layer=from_layer, **settings))


def run(cfg: FinetuneConfig) -> FinetuneResult:
    """The fine-tuning run for one :class:`FinetuneConfig` (what :func:`finetune` and the CLI call); the cache is
    marked in use meanwhile, so ``rm`` and ``prune`` leave it alone."""
    cfg.validate()
    with in_use(cfg.cache):
        return _run(cfg)


def _run(cfg: FinetuneConfig) -> FinetuneResult:
    from tqdm.auto import tqdm

    tune_allocator()
    if cfg.out is not None:  # before any training: an unwritable or occupied --out fails now
        prepare_out(cfg.out, cfg.overwrite)
    fs = load(cfg.cache, lazy=True)
    try:
        backbone = backbone_of(fs.meta, fs.path)
        node = _check_activations(fs, cfg.from_layer, backbone)
        top, _ = split_for(fs.meta, fs.path, node, backbone)
        n_blocks = len(top_blocks(top))
        too_many = [b for b in cfg.train_blocks if b != "all" and b > n_blocks]
        if too_many:
            raise FeatcacheError(f"--train-blocks {too_many[0]}: the top after {node} has {n_blocks} blocks with "
                                 f"weights ({', '.join(top_blocks(top))})")
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
        stop, val = _stop_and_select(y, val, cfg.seed)
        names = np.asarray(fs.classes, dtype=object)
        acts = Rows(fs.path, [node], maps=True)
        shape = acts.shape[1:]
        log.info("fine-tuning the top after %s (%d blocks, %s parameters) on %d x %s activations; validation: %s",
                 node, n_blocks, f"{sum(p.numel() for p in top.parameters()):,}", len(train), "x".join(map(str, shape)),
                 scheme.description)
        grid = cfg.grid()
        # Parameters in grid order (not sorted), so the leaderboard shows train_blocks first.
        configs = [Config("finetune", json.dumps(params), "none") for params in grid]
        keys = {c: result_key({"fingerprint": fs.meta.fingerprint, "node": node, "config": c.identity()})
                for c in configs}
        records, models, skipped = {}, {}, []
        deadline = None if cfg.budget is None else time.monotonic() + cfg.budget
        bar = tqdm(total=len(configs), desc="finetune", unit="config", disable=not cfg.progress, file=sys.stderr)
        try:
            for config, params in zip(configs, grid, strict=True):
                if deadline is not None and records and time.monotonic() > deadline:
                    skipped.append(config.label())  # out of time; the first configuration always runs
                    continue
                est = _estimator(cfg, top, shape, params)
                t = time.perf_counter()
                try:
                    est.fit(acts[rows[train]], names[y[train]], X_val=acts[rows[stop]],
                            y_val=names[y[stop]], deadline=deadline)  # no epoch starts past the budget
                    scores, pred = _scores(est, acts[rows[val]], y[val], fs.classes)
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
        if skipped:
            log.warning("the budget ran out: %d configuration(s) not trained: %s", len(skipped), "; ".join(skipped))
        configs = [c for c in configs if c in records]
        board = leaderboard(configs, records, set(), keys, cfg.metric, node, {c: len(train) for c in configs})
        ok = board[board["status"] == "ok"]
        if ok.empty:
            raise FeatcacheError(f"every configuration failed; the first error: {board['status'].iloc[0]}")
        best_config = next(c for c in configs if keys[c][:12] == ok["config_id"].iloc[0])
        best = models[best_config]
        if cfg.refit and len(val):
            fit_s = records[best_config]["fit_s"] * len(rows) / max(len(train), 1)
            if deadline is None or time.monotonic() + fit_s <= deadline:
                # As the sweep refits its best: every pool row (val too), for the epochs that were best.
                log.info("refitting %s on %d rows for %d epochs", best_config.label(), len(rows), best.best_epoch_)
                best = _estimator(cfg, top, shape, best_config.params, epochs=best.best_epoch_, early_stopping=False)
                best.fit(acts[rows], names[y])
            else:
                skipped.append(f"refit of {best_config.label()} on train+val, about {fit_s:.0f} s")
        test_scores, test_pred = None, None
        if len(test_rows):
            test_scores, test_pred = _scores(best, acts[test_rows], fs.y[test_rows], fs.classes)
            for name, value in test_scores.items():
                board.loc[0, f"test_{name}"] = value
        result = FinetuneResult(board, best, best_config.params, test_scores, scheme.description, skipped=skipped,
                                train_rows=rows[train], val_rows=rows[val],
                                val_pred=crossfit_pred([records[c]["pred"] for c in configs if "pred" in records[c]],
                                                       y[val], cfg.seed),
                                best_epochs=int(models[best_config].best_epoch_))
        if cfg.out is not None:
            result.out = Path(cfg.out).expanduser()
            truth = (fs.y[test_rows], test_pred, "test") if test_pred is not None else \
                (y[val], records[best_config]["pred"], "validation")
            result.files = _write(cfg, result, fs, node, records, truth)
    finally:
        fs.close()
    return result


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
            est = _estimator(cfg, top, acts.shape[1:], params, epochs=epochs, early_stopping=False)
            train = np.sort(train)
            est.fit(acts[train], names[fs.y[train]])
            out.append(_scores(est, acts[held], fs.y[held], fs.classes)[1])
            fold_s = time.monotonic() - t
    return out


def _estimator(cfg: FinetuneConfig, top, shape, params: dict, **changes) -> TopClassifier:
    """The :class:`TopClassifier` of one configuration of ``cfg``'s grid (``changes`` override its settings)."""
    settings = dict(top=top, input_shape=shape, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                    batch_size=cfg.batch_size, n_iter_no_change=cfg.patience, augment=cfg.augment, dropout=cfg.dropout,
                    random_state=cfg.seed, device=cfg.device, precision=cfg.precision)
    return TopClassifier(**{**settings, **params, **changes})


def _stop_and_select(y: np.ndarray, val: np.ndarray, seed: int):
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


def _scores(est: TopClassifier, X, y_idx: np.ndarray, classes: Sequence[str]):
    """All metrics of ``est`` on ``X`` (true class indices ``y_idx``), and its predicted class indices."""
    proba = est.predict_proba(X)
    full = np.zeros((len(proba), len(classes)))
    full[:, [list(classes).index(c) for c in est.classes_]] = proba
    pred = np.argmax(full, axis=1)
    return metrics.scores(y_idx, pred, full, len(classes)), pred


class Network(nn.Module):
    """uint8 images (B, 3, S, S) in, class logits out: the frozen bottom up to the split node, the trained top,
    the head. ``classes`` names the logits' columns."""

    def __init__(self, bottom: nn.Module, node: str, top: nn.Module, head: nn.Module, classes: Sequence[str]):
        super().__init__()
        self.bottom, self.node, self.top, self.head, self.classes = bottom, node, top, head, list(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.top(self.bottom(images)[self.node]))


def network(model_path, trust_model_code: bool = False) -> Network:
    """A saved fine-tuned model (``best.safetensors``) as one torch module, rebuilding the bottom from its metadata."""
    saved = load_model(model_path, trust_model_code=trust_model_code)
    if not isinstance(saved.pipeline, TopClassifier):
        raise FeatcacheError(f"{model_path} is not a fine-tuned model (it holds a {type(saved.pipeline).__name__})")
    node = saved.metadata["config"]["from_layer"]
    bottom = models.FeatureExtractor(backbone_of(CacheMeta(config=saved.metadata["extract_config"]), model_path),
                                     [node], "none")
    est = saved.pipeline
    return Network(bottom, node, est.top_, est.head_, est.classes_).eval()


def _write(cfg: FinetuneConfig, result: FinetuneResult, fs: FeatureSet, node: str, records, truth) -> List[Path]:
    """The run's outputs: leaderboard, ``best.safetensors`` (predict re-extracts ``node``), plots, ``finetune.json``."""
    trained = copy.copy(result.best)
    trained.top = None  # the pretrained top, needed only to fit again: leaving it out halves the file
    config = {"classifier": "finetune", "params": result.best_params, "from_layer": node,
              "input_shape": list(result.best.input_shape_)}
    metadata = model_metadata(fs.meta, fs.path, fs.classes, {node: int(np.prod(fs.features[node].shape[1:]))},
                              config, result.leaderboard.iloc[0], result.scheme, cfg.metric, result.test_scores)
    rows = [{"params": c.params, "preprocess": c.preprocess, "score": r["scores"][cfg.metric]}
            for c, r in records.items() if "scores" in r]
    y_true, y_pred, on = truth
    summary = {"cache": str(fs.path), "fingerprint": fs.meta.fingerprint, "from_layer": node,
               "scheme": result.scheme, "metric": cfg.metric, "best": result.best_params, "test": result.test_scores,
               "epochs_run": result.best.n_epochs_, "best_epoch": result.best.best_epoch_,
               "settings": settings_record(cfg)}
    return write_outputs(result.out, result.leaderboard, trained, metadata, summary, "finetune.json",
                         plots=cfg.plots, plot_rows={"finetune": rows}, metric=cfg.metric,
                         confusion=(y_true, y_pred, fs.classes, f"finetune {result.best_params}\n({on})"))
