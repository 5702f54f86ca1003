"""Train many classifiers on cached features and keep the best: ``python -m featcache.sweep CACHE.h5``.

The path of the data: the chosen layer(s) are read from the cache once → the grid is expanded
into configurations and the validation scheme into folds → every (configuration, fold) the
result store lacks is fitted in joblib workers that share one copy of the features (a memmap
locally; put in the object store or scattered once on a Ray or Dask cluster, see ``backends``;
or left in the HDF5 file and streamed in blocks with ``out_of_core``, see ``streaming``)
(logistic regression fits all its C values as one warm-started path) → the leaderboard ranks
configurations on validation → the best is refitted on train(+val), scored once on test, saved
with its metadata as ``best.joblib`` → plots.

Results are stored per (cache fingerprint, layers, configuration, validation scheme, seed,
library versions), so rerunning a sweep fits nothing and adding a grid point fits only that point.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import backends, grids, metrics, streaming, views
from .cli import Parser, make_callable, run_cli
from .config import FeatcacheError
from .grids import Config

log = logging.getLogger("featcache")

RESULT_FORMAT = 1
SMALL_FIT = 1 << 20  # training values (rows x features) below which a fit runs single-threaded


@dataclass
class SweepConfig:
    """Everything that decides what a sweep fits, how it validates, and where results go."""

    cache: Path
    out: Optional[Path] = None  # None: write nothing (the Python API still returns the result)
    grid: Any = None  # None = the default grid; a .toml/.yaml path; or a dict of the same shape
    classifiers: Sequence[str] = ()  # restrict the grid to these classifiers
    layer: Optional[str] = None  # "a", "a+b" (concatenated), "a,b,a+b" (try these); None = every choice
    screen_layers: int = 2  # with layer=None: the whole grid on the N best choices of a cheap screen; 0 = on all
    views: bool = True  # train on the cache's augmented views (extract --views) when it has them
    tta: bool = False  # average predictions over each row's views (test-time augmentation)
    cv: Optional[int] = None  # k-fold CV (default 5 when the cache has no val split)
    val_fraction: Optional[float] = None  # a random stratified hold-out instead of CV
    metric: str = "accuracy"
    seed: int = 0
    n_jobs: Optional[int] = None  # parallel tasks; None = 1 with loky/threading, every cluster core with ray/dask
    backend: str = "loky"  # where fits run: loky, threading (this machine), ray or dask (a cluster)
    address: Optional[str] = None  # cluster to join (default: $RAY_ADDRESS / $DASK_SCHEDULER_ADDRESS, else a local one)
    out_of_core: bool = False  # stream features from the cache in blocks instead of loading them (sgd and dense)
    block_rows: Optional[int] = None  # rows per read when out of core (default: whole HDF5 chunks, ~4 MiB)
    test_top: int = 1  # how many of the best configurations are refitted and scored on test
    results_dir: Optional[Path] = None  # default: <cache folder>/sweep-results
    reuse: bool = True  # read and write the result store
    plots: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.metric not in metrics.METRICS:
            raise FeatcacheError(f"--metric must be one of {', '.join(metrics.METRICS)}; got {self.metric!r}")
        if self.cv is not None and self.val_fraction is not None:
            raise FeatcacheError("use either --cv or --val-fraction, not both")
        if self.cv is not None and (not isinstance(self.cv, int) or self.cv < 2):
            raise FeatcacheError(f"--cv must be an integer >= 2; got {self.cv!r}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise FeatcacheError(f"--val-fraction must be between 0 and 1; got {self.val_fraction!r}")
        if self.n_jobs is not None and (not isinstance(self.n_jobs, int) or self.n_jobs == 0 or self.n_jobs < -1):
            raise FeatcacheError(f"--n-jobs must be a positive integer or -1 (all cores); got {self.n_jobs!r}")
        if self.backend not in backends.BACKENDS:
            raise FeatcacheError(f"--backend must be one of {', '.join(backends.BACKENDS)}; got {self.backend!r}")
        if self.address and self.backend not in backends.CLUSTER_BACKENDS:
            raise FeatcacheError(f"--address is for --backend ray or dask, not {self.backend}")
        if self.block_rows is not None and (not isinstance(self.block_rows, int) or self.block_rows < 1):
            raise FeatcacheError(f"--block-rows must be a positive integer; got {self.block_rows!r}")
        if self.block_rows is not None and not self.out_of_core:
            raise FeatcacheError("--block-rows only applies with --out-of-core")
        if isinstance(self.screen_layers, bool) or not isinstance(self.screen_layers, int) or self.screen_layers < 0:
            raise FeatcacheError(f"--screen-layers must be an integer >= 0; got {self.screen_layers!r}")
        if not isinstance(self.test_top, int) or self.test_top < 1:
            raise FeatcacheError(f"--test-top must be a positive integer; got {self.test_top!r}")


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
    out: Optional[Path] = None
    files: List[Path] = field(default_factory=list)


# --- features ---------------------------------------------------------------------------------------

@dataclass
class Features:
    """The rows a sweep uses: the selection pool (train+val, or every labelled row) and test."""

    X: np.ndarray
    y: np.ndarray  # class indices into ``classes``
    pool_split: Optional[np.ndarray]  # "train"/"val" per pool row when the cache has splits
    X_test: Optional[np.ndarray]
    y_test: Optional[np.ndarray]
    V: Optional[np.ndarray]  # (pool rows, K, D) augmented views, when the cache has them and they are used
    V_test: Optional[np.ndarray]
    classes: List[str]
    layers: List[str]
    layer_dims: Dict[str, int]
    meta: dict
    path: Path
    # The layer dimension: "a", "b", "a+b" -> the columns of X they are; empty when the sweep has one choice.
    layer_choices: Dict[str, Any] = field(default_factory=dict)

    def columns(self, choice: str):
        """Column selector of a layer choice ("" = every column): a slice, so memmaps stay views."""
        return self.layer_choices[choice] if choice else slice(None)

    def for_layer(self, choice: str) -> "Features":
        """These features restricted to one layer choice (what a configuration with ``layer=choice`` sees)."""
        if not choice:
            return self
        cols, names = self.columns(choice), choice.split("+")
        changes = {"layers": names, "layer_dims": {n: self.layer_dims[n] for n in names}, "layer_choices": {}}
        for name in ("X", "X_test", "V", "V_test"):  # views: (rows, K, D), columns last
            value = getattr(self, name, None)
            if value is not None:
                changes[name] = value[..., cols]
        return dataclasses.replace(self, **changes)


def load_features(path, layer: Optional[str] = None, views: bool = True, out_of_core: bool = False,
                  block_rows: Optional[int] = None) -> Features:
    """Read only the layer(s) the sweep needs (and their augmented views), split off pool and test rows.

    ``out_of_core``: read no features now; ``X`` and ``X_test`` are :class:`streaming.Rows` views of the file.
    """
    from . import store

    fs = store.load(path, lazy=True)
    try:
        if out_of_core and not layer and len(fs.layers) > 1:
            layer = fs.layers[-1]  # one layer choice streams; the last, as FeatureSet.X
            log.info("--out-of-core: using the cache's last layer %s (pick another with --layer)", layer)
        layers, choices = _pick_layers(fs.layers, layer)
        dims = {name: int(np.prod(fs.features[name].shape[1:])) for name in layers}
        use_views = views and all(name in fs.views for name in layers)
        if out_of_core and (len(choices) > 1 or use_views):
            raise FeatcacheError("--out-of-core streams one layer choice without augmented views: pick it with "
                                 "--layer (e.g. --layer " + "+".join(layers) + ")" + (" and add --no-views" if use_views else ""))
        if not out_of_core:
            _check_memory(len(fs) * sum(dims.values()) * 4 * (1 + (fs.views[layers[0]].shape[1] if use_views else 0)))
            blocks = [np.asarray(fs.features[name][:], dtype=np.float32).reshape(len(fs), -1) for name in layers]
        if use_views:
            k = fs.views[layers[0]].shape[1]
            vblocks = [np.asarray(fs.views[name][:], dtype=np.float32).reshape(len(fs), k, -1) for name in layers]
    finally:
        fs.close()
    if out_of_core:
        X = streaming.Rows(fs.path, layers, block_rows=block_rows)
    else:
        X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    V = (vblocks[0] if len(vblocks) == 1 else np.concatenate(vblocks, axis=2)) if use_views else None
    labelled = fs.y >= 0
    if not fs.classes or not labelled.any():
        raise FeatcacheError(f"{fs.path} has no labels (every row is unlabelled); a sweep needs labelled images: "
                             f"class subfolders, or a CSV with a label column")
    unlabelled = int((~labelled).sum())
    if unlabelled:
        log.info("ignoring %d unlabelled row(s)", unlabelled)
    split = fs.split
    pool = labelled & (np.isin(split, ["train", "val"]) if split is not None else True)
    test = labelled & (split == "test") if split is not None else np.zeros(len(fs), bool)
    if split is not None and not (pool & (split == "train")).any():
        raise FeatcacheError(f"{fs.path} has splits but no labelled 'train' rows to fit on")
    present = np.unique(fs.y[pool])
    if len(present) < 2:
        name = fs.classes[present[0]] if len(present) else "none"
        raise FeatcacheError(f"{fs.path}: the training rows hold only one class ({name}); a classifier needs "
                             f"at least 2")
    if V is not None:
        log.info("training with %d cached augmented view(s) per training image", V.shape[1])
    return Features(
        X=X[np.flatnonzero(pool)] if not pool.all() else X, y=fs.y[pool], pool_split=split[pool] if split is not None else None,
        X_test=X[np.flatnonzero(test)] if test.any() else None, y_test=fs.y[test] if test.any() else None,
        V=None if V is None else (V[pool] if not pool.all() else V),
        V_test=V[test] if V is not None and test.any() else None,
        classes=list(fs.classes), layers=layers, layer_dims=dims, meta=fs.meta, path=Path(fs.path),
        layer_choices=_choice_columns(choices, layers, dims) if len(choices) > 1 else {})


def _check_memory(nbytes: int) -> None:
    """Refuse, before reading, features that cannot fit in memory: out of core is the way to train on them."""
    available = streaming.available_memory()
    if available is not None and nbytes > available:
        raise FeatcacheError(f"the features need {_size(nbytes)} but {_size(max(available, 0))} of memory "
                             f"is available; rerun with --out-of-core to stream them from the cache (classifiers "
                             f"{', '.join(streaming.STREAMING_CLASSIFIERS)})")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def layer_choices(available: List[str]) -> List[List[str]]:
    """The layer dimension of a sweep on a cache with several layers: each layer alone, every run of
    adjacent layers (for 3+ layers), and all of them concatenated."""
    n = len(available)
    runs = [available[i:j] for size in range(1, n + 1) for i in range(n - size + 1) for j in [i + size]]
    return runs if n <= 3 else [[a] for a in available] + [available]


def _pick_layers(available: List[str], layer: Optional[str]) -> Tuple[List[str], List[List[str]]]:
    """The layers to read (in the order they sit side by side in X) and the layer choices to sweep.

    ``layer``: None = every layer alone and concatenated (just the layer, for a one-layer cache);
    ``"a+b"`` = that concatenation only; ``"a,b,a+b"`` = these choices.
    """
    if not layer:
        if len(available) == 1:
            return available, [available]
        choices = layer_choices(available)
        log.info("the cache has layers %s; trying %s (pin one with --layer, e.g. --layer %s)",
                 ", ".join(available), ", ".join("+".join(c) for c in choices), "+".join(available))
        return available, choices
    choices = []
    for text in layer.split(","):
        chosen = [name.strip() for name in text.split("+") if name.strip()]
        for name in chosen:
            if name not in available:
                raise FeatcacheError(f"--layer {name!r} is not in this cache; it has {', '.join(available)} "
                                     f"(join several with '+', e.g. {'+'.join(available[:2])}; try several "
                                     f"choices with ',', e.g. {available[0]},{'+'.join(available[:2])})")
        if len(set(chosen)) != len(chosen):
            raise FeatcacheError(f"--layer {text!r} names a layer twice")
        if not chosen:
            raise FeatcacheError(f"--layer {layer!r}: an empty layer choice")
        if chosen not in choices:
            choices.append(chosen)
    if len(choices) == 1:
        return choices[0], choices
    # Every choice must be a slice of X (column views, no copies): lay the layers out so that each choice
    # sits side by side, reading a layer twice only for a choice that cannot (e.g. "a,b,a+c" reads a+b, a+c).
    layers: List[str] = []
    for c in choices:
        if _run_at(layers, c) is None:
            layers += c
    return layers, choices


def _run_at(layers: List[str], choice: List[str]) -> Optional[int]:
    """Where ``choice`` sits as a contiguous run in ``layers``, or None."""
    n = len(choice)
    return next((i for i in range(len(layers) - n + 1) if layers[i:i + n] == choice), None)


def _choice_columns(choices: List[List[str]], layers: List[str], dims: Dict[str, int]) -> Dict[str, slice]:
    starts = np.cumsum([0] + [dims[n] for n in layers]).tolist()
    out = {}
    for c in choices:
        i = _run_at(layers, c)
        out["+".join(c)] = slice(starts[i], starts[i + len(c)])
    return out


# --- the validation scheme ------------------------------------------------------------------------

@dataclass
class Scheme:
    """How configurations are scored: ``folds`` of (train rows, validation rows) of the pool."""

    kind: str  # "val" (the cache's split), "cv" or "holdout"
    folds: List[Tuple[np.ndarray, np.ndarray]]
    identity: dict  # what enters the result key
    description: str


def make_scheme(feats: Features, cv: Optional[int], val_fraction: Optional[float], seed: int) -> Scheme:
    """The cache's val split; else stratified k-fold CV or a hold-out, falling back when classes are tiny."""
    from sklearn.model_selection import KFold, ShuffleSplit, StratifiedKFold, StratifiedShuffleSplit

    y, names = feats.y, feats.classes
    has_val = feats.pool_split is not None and (feats.pool_split == "val").any()
    where = "train+val" if has_val else ("train" if feats.pool_split is not None else "all labelled rows")
    if has_val and cv is None and val_fraction is None:
        train, val = np.flatnonzero(feats.pool_split == "train"), np.flatnonzero(feats.pool_split == "val")
        unseen = sorted(set(y[val]) - set(y[train]))
        if unseen:
            log.warning("class(es) %s appear in val but not in train; no classifier can predict them",
                        ", ".join(names[i] for i in unseen))
        return Scheme("val", [(train, val)], {"kind": "val"}, f"the cache's val split ({len(val)} rows)")
    counts = np.bincount(y, minlength=len(names))
    present = np.flatnonzero(counts)
    smallest = present[np.argmin(counts[present])]
    least = int(counts[smallest])
    if val_fraction is not None:
        n_val = int(np.ceil(val_fraction * len(y)))
        stratified = least >= 2 and min(n_val, len(y) - n_val) >= len(present)
        if not stratified:
            log.warning("class %s has %d row(s): too few for a stratified %.0f%% hold-out; using a random one",
                        names[smallest], least, 100 * val_fraction)
        splitter = (StratifiedShuffleSplit if stratified else ShuffleSplit)(
            n_splits=1, test_size=n_val, random_state=seed)
        folds = list(splitter.split(np.zeros(len(y)), y))
        ident = {"kind": "holdout", "fraction": val_fraction, "seed": seed, "stratified": stratified}
        return Scheme("holdout", folds, ident, f"a {100 * val_fraction:.0f}% hold-out of {where} (seed {seed})")
    k = cv or 5
    if least >= k:
        splitter, stratified = StratifiedKFold(k, shuffle=True, random_state=seed), True
    elif least >= 2:
        log.warning("class %s has only %d labelled rows, too few for %d-fold CV; using %d-fold CV",
                    names[smallest], least, k, least)
        k = least
        splitter, stratified = StratifiedKFold(k, shuffle=True, random_state=seed), True
    else:
        k = min(k, len(y))
        log.warning("class %s has a single labelled row, so no stratified split exists; using plain %d-fold CV "
                    "(that class is missing from some training folds)", names[smallest], k)
        splitter, stratified = KFold(k, shuffle=True, random_state=seed), False
    folds = list(splitter.split(np.zeros(len(y)), y))
    ident = {"kind": "cv", "k": k, "seed": seed, "stratified": stratified}
    return Scheme("cv", folds, ident, f"{k}-fold {'stratified ' if stratified else ''}CV on {where} (seed {seed})")


# --- the result store -------------------------------------------------------------------------------

def library_versions() -> dict:
    """The versions a fitted result depends on (in result keys and model metadata)."""
    import sklearn
    import torch

    from . import __version__

    return {"featcache": __version__, "sklearn": sklearn.__version__, "torch": torch.__version__.split("+")[0]}


def result_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def config_key(base: dict, config: Config, scheme: dict) -> str:
    """A configuration's result key: its own layers (not the others the sweep tries), so a fit on layer4
    is found again whether layer4 was pinned with --layer or one choice of a layer dimension."""
    ident = {k: v for k, v in config.identity().items() if k != "layer"}
    layers = config.layer.split("+") if config.layer else base["layers"]
    return result_key({**base, "layers": layers, "config": ident, "scheme": scheme})


class ResultStore:
    """One small JSON file per fitted configuration (plus refitted models), under ``root/<fingerprint>``."""

    def __init__(self, root: Optional[Path], fingerprint: str):
        self.dir = Path(root) / fingerprint[:16] if root is not None else None

    def get(self, key: str) -> Optional[dict]:
        if self.dir is None:
            return None
        try:
            record = json.loads((self.dir / f"{key[:32]}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if record.get("key") == key and record.get("format") == RESULT_FORMAT else None

    def put(self, key: str, record: dict) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key[:32]}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**record, "key": key, "format": RESULT_FORMAT}), encoding="utf-8")
        os.replace(tmp, self.dir / f"{key[:32]}.json")

    def model_path(self, key: str) -> Optional[Path]:
        return self.dir / f"{key[:32]}.joblib" if self.dir is not None else None


# --- fitting (runs in joblib workers) -------------------------------------------------------------

def fit_configs(configs: List[Config], X, y, seed: int, max_components: int) -> List[Tuple[Any, float, str]]:
    """Fit each config's pipeline on ``(X, y)``; a logistic path shares one preprocessing fit.

    Returns ``(pipeline, fit seconds, note)`` per config, in order.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import Pipeline

    from .heads import logistic_path

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if isinstance(X, streaming.Rows):
            out = []
            for c in configs:
                t = time.perf_counter()
                out.append((streaming.fit(c.pipeline(seed, max_components), X, y), time.perf_counter() - t, ""))
        elif configs[0].path_group() is not None:
            t = time.perf_counter()
            pre = configs[0].pipeline(seed, max_components)[:-1]
            Xt = pre.fit_transform(X, y) if len(pre) else X
            pre_s = (time.perf_counter() - t) / len(configs)
            fixed = {k: v for k, v in configs[0].estimator(seed).get_params().items() if k != "C"}
            path = logistic_path(Xt, y, [c.path_value() for c in configs], seed=seed, **fixed)
            out = [(Pipeline(list(pre.steps) + [("clf", est)]), s + pre_s,
                    "not converged" if est.n_iter_.max() >= est.max_iter else "") for est, s in path]
        else:
            t = time.perf_counter()
            pipe = configs[0].pipeline(seed, max_components).fit(X, y)
            out = [(pipe, time.perf_counter() - t, "")]
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        out = [(p, s, note or "not converged") for p, s, note in out]
    return out


def _run_task(configs: List[Config], X, V, y, train, val, columns, n_classes: int, seed: int, max_components: int,
              threads: int, tta: bool) -> List[dict]:
    """Fit ``configs`` on the ``train`` rows (and their views) of the ``columns`` of the layer choice, score them
    on the ``val`` rows (one fold). Arrays may come as cluster handles (:func:`backends.fetch`)."""
    from threadpoolctl import threadpool_limits

    from .heads import torch_threads

    X, V, y, train, val = (backends.fetch(a) for a in (X, V, y, train, val))
    if columns != slice(None):
        X, V = X[:, columns], (None if V is None else V[..., columns])

    if len(train) * X.shape[1] < SMALL_FIT:
        threads = 1  # thread start-up and spin-waiting cost more than they save on tiny fits
    with threadpool_limits(limits=threads), torch_threads(threads):
        try:
            fitted = fit_configs(configs, *views.training_rows(X, V, y, train), seed, max_components)
            X_val, V_val, y_val = X[val], (V[val] if V is not None and tta else None), y[val]
            results = []
            for pipe, seconds, note in fitted:
                pred, proba = views.predict(_scorer(pipe, X_val), X_val, V_val, range(n_classes))
                results.append({"scores": metrics.scores(y_val, pred, proba, n_classes), "pred": pred.tolist(),
                                "fit_s": seconds, "note": note})
            return results
        except Exception as e:  # one bad configuration must not end the sweep
            return [{"error": f"{type(e).__name__}: {e}".splitlines()[0], "fit_s": 0.0} for _ in configs]


def _scorer(pipe, X):
    """``pipe`` itself, or one that predicts a block at a time when ``X`` is streamed from the cache."""
    return streaming.Blockwise(pipe) if isinstance(X, streaming.Rows) else pipe


# --- the sweep --------------------------------------------------------------------------------------

def sweep(cache, **settings) -> SweepResult:
    """Fit a grid of classifiers on a feature cache, select on validation, refit the best, score test.

    ``settings`` are :class:`SweepConfig` fields, e.g.
    ``sweep("cache.h5", out="runs/exp1", grid="grid.toml", n_jobs=2)``. Returns a
    :class:`SweepResult` with the leaderboard (best first) and the refitted best pipeline.
    """
    cfg = SweepConfig(cache=Path(cache).expanduser(), **settings)
    return run(cfg)


def run(cfg: SweepConfig) -> SweepResult:
    """The sweep for one :class:`SweepConfig` (what :func:`sweep` and the CLI call)."""
    cfg.validate()
    backends.require(cfg.backend)
    configs = grids.expand_grid(grids.read_grid(cfg.grid), list(cfg.classifiers) or None)
    if cfg.out_of_core:
        configs = _streamable(configs, cfg.grid is None and not cfg.classifiers)
    feats = load_features(cfg.cache, cfg.layer, cfg.views, cfg.out_of_core, cfg.block_rows)
    if cfg.tta and feats.V is None:
        raise FeatcacheError("--tta needs augmented views in the cache; extract with --views K "
                             "(and do not pass --no-views)")
    scheme = make_scheme(feats, cfg.cv, cfg.val_fraction, cfg.seed)
    results_root = None if not cfg.reuse else Path(cfg.results_dir or feats.path.parent / "sweep-results")
    store = ResultStore(results_root, str(feats.meta.get("fingerprint", "")))
    base = {"fingerprint": feats.meta.get("fingerprint"), "layers": feats.layers, "seed": cfg.seed,
            "versions": library_versions()}
    if feats.V is not None:  # only then, so results without views keep their keys
        base.update(views=int(feats.V.shape[1]), tta=cfg.tta)
    if cfg.out_of_core:  # streamed fits shuffle by blocks (and SGD runs max_iter epochs): other results
        base.update(out_of_core={"block_rows": feats.X.block_rows})
    max_components = min(feats.X.shape[1], min(len(tr) for tr, _ in scheme.folds))
    fits = _Fits(cfg, feats, scheme, max_components, store, base)
    screen: Dict[str, float] = {}
    if feats.layer_choices:  # the layer dimension: every grid point on every (screened) layer choice
        choices = list(feats.layer_choices)
        if cfg.layer is None and 0 < cfg.screen_layers < len(choices):
            screen = _screen_layers(fits, choices)
        if screen and all(np.isnan(v) for v in screen.values()):
            log.warning("the layer screen has no score (every screen fit failed); fitting the grid on every choice")
            screen = {}
        elif screen:
            choices = list(screen)[:cfg.screen_layers]
            log.info("layer screen (%s, val %s): %s -> the grid on %s (--screen-layers 0: on every choice)",
                     SCREEN_TEXT, cfg.metric, ", ".join(f"{k} {v:.4f}" for k, v in screen.items()),
                     ", ".join(choices))
        grid_points = set(configs)
        configs = ([dataclasses.replace(c, layer=choice) for choice in choices for c in configs]
                   + [p for p in fits.records if p.layer not in choices and dataclasses.replace(p, layer="") in grid_points])
    log.info("%d configurations on %d x %d features (%s), %d classes; validation: %s",
             len(configs), len(feats.X), feats.X.shape[1], "+".join(feats.layers), len(feats.classes),
             scheme.description)
    fits.fit(configs)
    records, keys = {c: fits.records[c] for c in configs}, fits.keys
    cached = {c for c in configs if c in fits.cached}
    n_fits = fits.n_fits
    board = leaderboard(configs, records, cached, keys, cfg.metric, "+".join(feats.layers))
    ok = board[board["status"] == "ok"]
    if ok.empty:
        raise FeatcacheError(f"every configuration failed; the first error: {board['status'].iloc[0]}")
    by_id = {keys[c][:12]: c for c in configs}
    refits, refitted = _refit_top(cfg, [by_id[i] for i in ok["config_id"].iloc[: cfg.test_top]], feats, base, store)
    n_fits += len(refitted)
    for config, (_, test, _) in refits.items():
        if test:
            row = board.index[board["config_id"] == keys[config][:12]][0]
            for name, value in test.items():
                board.loc[row, f"test_{name}"] = value
    best_config = by_id[ok["config_id"].iloc[0]]
    best, test_scores, test_pred = refits[best_config]
    result = SweepResult(board, best, best_config, scheme.description, test_scores, n_fits, len(cached),
                         [c.label() for c in fits.fitted], refitted, screen)
    if cfg.out is not None:
        result.out = Path(cfg.out).expanduser()
        result.files = _write_outputs(cfg, result, feats.for_layer(best_config.layer), scheme, records, keys,
                                      test_pred)
    return result


def _streamable(configs: List[Config], default_grid: bool) -> List[Config]:
    """Out of core only classifiers and preprocessing that train from a stream; the default grid keeps just those."""
    ok = [c for c in configs if c.classifier in streaming.STREAMING_CLASSIFIERS
          and all(step in streaming.STREAMING_PREPROCESS for step in c.preprocess.split("+"))]
    if default_grid and ok:
        log.info("--out-of-core: the default grid's %s configurations (the ones that train from a stream)",
                 " and ".join(streaming.STREAMING_CLASSIFIERS))
        return ok
    if len(ok) < len(configs):
        bad = sorted({c.label() for c in configs} - {c.label() for c in ok})
        raise FeatcacheError(f"--out-of-core trains only {', '.join(streaming.STREAMING_CLASSIFIERS)} with preprocess "
                             f"{' / '.join(streaming.STREAMING_PREPROCESS)} (chained with '+'); not {bad[0]}"
                             + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
    return configs


def _warn_pca(configs: List[Config], max_components: int) -> None:
    for spec in sorted({c.preprocess for c in configs}):
        too_big = [k for k in grids.pca_components(spec) if k > max_components]
        if too_big:
            log.warning("preprocess %s: only %d components exist (training rows and features); using %d",
                        spec, max_components, max_components)


def _tasks(todo: List[Config], n_folds: int) -> List[Tuple[List[Config], int]]:
    """One task per (configuration, fold), except that a logistic path is one task per fold."""
    groups: Dict[Any, List[Config]] = defaultdict(list)
    for c in todo:
        groups[c.path_group() or c].append(c)
    units = [sorted(g, key=lambda c: c.path_value()) if g[0].path_group() else g for g in groups.values()]
    # Slow units first, so a parallel sweep does not end waiting on one long fit.
    units.sort(key=lambda g: (g[0].classifier != "dense", -len(g)))
    return [(unit, f) for unit in units for f in range(n_folds)]


class _Fits:
    """The records of a sweep's configurations: read from the result store, or fitted (and stored) when missing."""

    def __init__(self, cfg: SweepConfig, feats: Features, scheme: Scheme, max_components: int, store: ResultStore,
                 base: dict):
        self.cfg, self.feats, self.scheme, self.max_components, self.store, self.base = (
            cfg, feats, scheme, max_components, store, base)
        self.keys: Dict[Config, str] = {}
        self.records: Dict[Config, dict] = {}
        self.cached: set = set()  # configurations whose record came from the store
        self.fitted: List[Config] = []  # configurations fitted in this run
        self.n_fits = 0

    def fit(self, configs: List[Config], desc: str = "sweep") -> None:
        """Give every configuration a record, fitting those neither seen in this run nor stored."""
        for c in configs:
            if c not in self.keys:
                self.keys[c] = config_key(self.base, c, self.scheme.identity)
                record = self.store.get(self.keys[c])
                if record is not None:
                    self.records[c] = record
                    self.cached.add(c)
        todo = [c for c in dict.fromkeys(configs) if c not in self.records]
        _warn_pca(todo, self.max_components)
        t0 = time.perf_counter()
        n_fits = _fit_missing(self.cfg, todo, self.feats, self.scheme, self.max_components, self.store,
                              self.keys, self.records, desc)
        self.n_fits += n_fits
        self.fitted += todo
        log.info("%s: fitted %d configuration(s) (%d fits) in %.1f s; %d from the result store%s", desc, len(todo),
                 n_fits, time.perf_counter() - t0, sum(c in self.cached for c in configs),
                 f" ({self.store.dir})" if self.store.dir else "")


# The layer screen: cheap fits that rank layer choices well (measured on MNIST-5k and sklearn digits, where the
# best of these two picked the choices holding the best configuration of the whole grid; see the README).
SCREEN_GRID = {"ridge": {"preprocess": "standardize", "alpha": [10.0, 1000.0, 100000.0]},
               "logreg": {"preprocess": "l2", "C": [0.1, 1.0, 10.0, 100.0, 1000.0]}}
SCREEN_TEXT = "ridge on standardized features, logistic regression on l2-normalised ones"


def _screen_layers(fits: _Fits, choices: List[str]) -> Dict[str, float]:
    """Each layer choice's best validation score over the screen's configurations, best first (stable)."""
    probes = [dataclasses.replace(c, layer=choice) for choice in choices for c in grids.expand_grid(SCREEN_GRID)]
    fits.fit(probes, desc="layer screen")
    metric = fits.cfg.metric
    def score(p: Config) -> float:  # a failed fit, or a metric the classifier cannot give (log-loss of ridge): NaN
        value = (fits.records[p].get("scores") or {}).get(metric)
        return np.nan if value is None else float(value)

    best = {choice: max((score(p) for p in probes if p.layer == choice), key=lambda v: metrics.sort_key(metric, v))
            for choice in choices}
    return dict(sorted(best.items(), key=lambda kv: -metrics.sort_key(metric, kv[1])))


def _fit_missing(cfg, todo, feats, scheme, max_components, store, keys, records, desc: str = "sweep") -> int:
    """Fit every (configuration, fold) not in the store, in parallel; store each config when complete."""
    if not todo:
        return 0
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    tasks = _tasks(todo, len(scheme.folds))
    per_config: Dict[Config, List[dict]] = defaultdict(list)
    bar = tqdm(total=len(todo), desc=desc, unit="config", disable=not cfg.progress, file=sys.stderr,
               dynamic_ncols=True)
    arrays = [feats.X, feats.V, feats.y] + [rows for fold in scheme.folds for rows in fold]
    with backends.session(cfg.backend, cfg.address, cfg.n_jobs, len(tasks), arrays) as session:
        X, V, y, folds = session.arrays[0], session.arrays[1], session.arrays[2], session.arrays[3:]
        if session.workers > 1 or cfg.backend in backends.CLUSTER_BACKENDS:
            log.info("%d task(s) on %s, %d at a time", len(tasks), cfg.backend, session.workers)
        width = {c.layer: len(range(feats.X.shape[1])[feats.columns(c.layer)]) for c in todo}
        calls = (delayed(_run_task)(unit, X, V, y, folds[2 * f], folds[2 * f + 1], feats.columns(unit[0].layer),
                                    len(feats.classes), cfg.seed, min(max_components, width[unit[0].layer]),
                                    session.threads, cfg.tta) for unit, f in tasks)
        runner = Parallel(return_as=session.return_as)  # n_jobs and the backend come from the session
        try:
            for (unit, f), results in zip(tasks, runner(calls)):
                for config, result in zip(unit, results):
                    per_config[config].append({**result, "fold": f})
                    if len(per_config[config]) == len(scheme.folds):
                        records[config] = _combine(per_config[config], scheme, len(feats.y))
                        if "error" not in records[config]:  # failures are retried next time
                            store.put(keys[config], records[config])
                        bar.update(1)
                bar.set_postfix_str(f"{unit[0].classifier} fold {f + 1}/{len(scheme.folds)}")
        finally:
            bar.close()
    return len(todo) * len(scheme.folds)


def _combine(folds: List[dict], scheme: Scheme, n_rows: int) -> dict:
    """One record per configuration: mean (and std) of the fold scores, the out-of-fold predictions."""
    errors = [f["error"] for f in folds if "error" in f]
    if errors:
        return {"error": errors[0], "fit_s": 0.0}
    pred = np.full(n_rows, -1, dtype=np.int64)
    for f in folds:
        pred[scheme.folds[f["fold"]][1]] = f["pred"]
    notes = sorted({f["note"] for f in folds if f["note"]})
    return {"scores": metrics.average([f["scores"] for f in folds]), "fit_s": sum(f["fit_s"] for f in folds),
            "note": "; ".join(notes), "pred": pred.tolist()}


def leaderboard(configs, records, cached, keys, metric: str, layers: str = ""):
    """One row per configuration, best first; ``fit_s`` sums all folds, failures sort last."""
    import pandas as pd

    rows = []
    for c in configs:
        r = records[c]
        row = {"classifier": c.classifier, "params": c.params_text(), "preprocess": c.preprocess,
               "layer": c.layer or layers}
        for name, value in (r.get("scores") or {}).items():
            row[f"val_{name}"] = value
        row.update({"fit_s": round(r["fit_s"], 3), "note": r.get("note", ""), "from_cache": c in cached,
                    "status": "ok" if "error" not in r else f"failed: {r['error']}", "config_id": keys[c][:12]})
        rows.append(row)
    board = pd.DataFrame(rows)
    for name in metrics.METRICS:
        if f"val_{name}" not in board:
            board[f"val_{name}"] = np.nan
    # Best first; ties go to the lower validation log-loss, then to the faster fit.
    order = board.assign(_failed=board["status"] != "ok",
                         _key=board[f"val_{metric}"].map(lambda v: metrics.sort_key(metric, v)),
                         _tie=board["val_log_loss"].map(lambda v: metrics.sort_key("log_loss", v)))
    board = order.sort_values(["_failed", "_key", "_tie", "fit_s"], ascending=[True, False, False, True],
                              kind="stable").drop(columns=["_failed", "_key", "_tie"])
    board.insert(0, "rank", range(1, len(board) + 1))
    first = ["rank", "classifier", "params", "preprocess", "layer"] + [f"val_{m}" for m in metrics.METRICS]
    return board[first + [c for c in board.columns if c not in first]].reset_index(drop=True)


# --- refit, test, outputs -----------------------------------------------------------------------------

def _refit_top(cfg: SweepConfig, top: List[Config], feats: Features, base: dict, store: ResultStore):
    """Refit the top configurations on the whole pool, score test once; reuse stored refits."""
    from .predict import load_model, save_model

    names = np.asarray(feats.classes, dtype=object)
    y_names = names[feats.y]
    has_test = feats.X_test is not None
    out, refitted = {}, []
    everything = feats
    for config in top:
        feats = everything.for_layer(config.layer)
        key = config_key(base, config, {"kind": "refit"})
        record, path = store.get(key), store.model_path(key)
        if record is not None and path is not None and path.is_file():
            try:
                out[config] = (load_model(path).pipeline, record.get("test"), record.get("test_pred"))
                continue
            except FeatcacheError as e:
                log.warning("refitting %s: the stored model could not be used (%s)", config.label(), e)
        log.info("refitting %s on %d rows", config.label(), len(feats.y))
        X, y = views.training_rows(feats.X, feats.V, y_names, np.arange(len(y_names)))
        (pipe, _, _), = fit_configs([config], X, y, cfg.seed, min(X.shape))
        refitted.append(config.label())
        test, test_pred = None, None
        if has_test:
            pred, proba = views.predict(_scorer(pipe, feats.X_test), feats.X_test, feats.V_test if cfg.tta else None,
                                        feats.classes)
            test, test_pred = metrics.scores(feats.y_test, pred, proba, len(feats.classes)), pred.tolist()
        out[config] = (pipe, test, test_pred)
        if path is not None:
            save_model(path, pipe, {"config": config.identity()})
            store.put(key, {"test": test, "test_pred": test_pred})
    return out, refitted


def model_metadata(result: SweepResult, feats: Features, scheme: Scheme, metric: str, tta: bool = False) -> dict:
    """What ``best.joblib`` carries so :mod:`featcache.predict` can reproduce and check the features."""
    from .predict import feature_identity

    row = result.leaderboard.iloc[0]
    return {
        "classes": feats.classes,
        "layers": feats.layers,
        "layer_dims": feats.layer_dims,
        "n_features": int(feats.X.shape[1]),
        "feature_identity": feature_identity(feats.meta),
        "feature_versions": (feats.meta.get("key") or {}).get("versions"),
        "extract_config": feats.meta.get("config"),
        "cache": {"path": str(feats.path), "fingerprint": feats.meta.get("fingerprint"),
                  "dataset": feats.meta.get("dataset")},
        "config": result.best_config.identity(),
        "views": int(feats.V.shape[1]) if feats.V is not None else 0,  # trained with this many views per image
        "tta": tta,  # predict averages over views made exactly as at extraction
        "selection": {"scheme": scheme.description, "metric": metric,
                      "val": {m: _num(row[f"val_{m}"]) for m in metrics.METRICS}},
        "test": result.test_scores,
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _num(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def _write_outputs(cfg, result: SweepResult, feats: Features, scheme: Scheme, records, keys, test_pred) -> List[Path]:
    from . import plots
    from .predict import save_model

    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "leaderboard.csv"]
    result.leaderboard.to_csv(files[0], index=False)
    metadata = model_metadata(result, feats, scheme, cfg.metric, cfg.tta)
    files.append(save_model(out / "best.joblib", result.best, metadata))
    if cfg.plots:
        by_clf: Dict[str, List[dict]] = defaultdict(list)
        for c, r in records.items():
            if "scores" in r:
                by_clf[c.classifier].append({"params": c.params, "preprocess": c.preprocess,
                                             "score": r["scores"][cfg.metric]})
        files += plots.plot_all(by_clf, cfg.metric, out / "plots")
        if test_pred is not None:
            y_true, y_pred, on = feats.y_test, np.asarray(test_pred), "test"
        else:
            pred = np.asarray(records[result.best_config]["pred"])
            seen = pred >= 0
            y_true, y_pred, on = feats.y[seen], pred[seen], "validation" if scheme.kind != "cv" else "out-of-fold"
        path = out / "plots" / "confusion_matrix.png"
        plots.confusion_plot(y_true, y_pred, feats.classes, f"{result.best_config.label()}\n({on})", path)
        files.append(path)
    summary = {"cache": str(feats.path), "fingerprint": feats.meta.get("fingerprint"), "layers": feats.layers,
               "scheme": scheme.description, "metric": cfg.metric, "seed": cfg.seed,
               "best": result.best_config.identity(), "test": result.test_scores, "layer_screen": result.layer_screen,
               "n_configurations": len(records), "n_cached": result.n_cached, "n_fits": result.n_fits,
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}}
    files.append(out / "sweep.json")
    files[-1].write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return files


# --- command line -----------------------------------------------------------------------------------

def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.sweep",
        description="Fit a grid of classifiers on cached features, rank them on validation data, refit the "
                    "best on train(+val) and score it once on test. Writes OUT/leaderboard.csv (best first), "
                    "OUT/best.joblib (+ .json sidecar) for featcache.predict, OUT/plots/*.png and OUT/sweep.json; "
                    "prints the leaderboard, and OUT as the last line. Results are stored per configuration, "
                    "so a rerun fits nothing and a new grid point fits only itself.",
        epilog="validation: the cache's val split when it has one (else CV inside train); without splits,\n"
               "stratified k-fold CV (--cv, default 5) or a --val-fraction hold-out. Test rows are never\n"
               "used for selection.\n\n"
               "examples:\n"
               "  python -m featcache.sweep CACHE.h5 --out runs/exp1\n"
               "  python -m featcache.sweep CACHE.h5 --grid grid.toml --n-jobs 2\n"
               "  python -m featcache.sweep CACHE.h5 --classifiers logreg,knn --layer layer3+layer4 --cv 10\n"
               "  python -m featcache.sweep --print-grid > grid.toml     # the default grid, to edit\n"
               "  python -m featcache.sweep CACHE.h5 --backend dask --address tcp://HOST:8786\n"
               "  RAY_ADDRESS=auto python -m featcache.sweep CACHE.h5 --backend ray\n"
               "  python -m featcache.sweep BIG.h5 --out-of-core             # features larger than memory",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", nargs="?", type=Path, help="a feature cache (.h5) written by featcache.extract")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<dataset>-<date-time>)")
    p.add_argument("--grid", type=Path,
                   help="TOML (or YAML) grid file: a table per classifier; lists are swept, scalars fixed "
                        "(default: the built-in grid, see --print-grid)")
    p.add_argument("--classifiers", help=f"comma-separated subset of the grid's classifiers "
                                         f"({','.join(grids.CLASSIFIERS)}) (default: all in the grid)")
    p.add_argument("--layer", help="cache layer to use, several joined with '+' to concatenate them, or "
                                   "comma-separated choices to try (e.g. layer3,layer4,layer3+layer4) (default: "
                                   "the cache's layer; with several, each alone, adjacent runs and all of them "
                                   "concatenated are tried, as a 'layer' column of the leaderboard)")
    p.add_argument("--screen-layers", type=int, default=2, metavar="N",
                   help="when the sweep tries several layer choices on its own (no --layer), first rank them "
                        "with a cheap screen (ridge and an l2 logistic path on each) and fit the whole grid on "
                        "the N best only; 0 = the whole grid on every choice (default: 2)")
    p.add_argument("--no-views", dest="views", action="store_false",
                   help="ignore the cache's augmented views (extract --views K); by default every training "
                        "image's views join training as extra rows with its label (views of validation and "
                        "test images never do)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: score validation and test rows (and predict new images) by "
                        "averaging over each image's clean features and its cached views")
    p.add_argument("--cv", type=int, help="k-fold cross-validation (default: 5 when the cache has no val split; "
                                          "given with a val split, CV runs on train+val)")
    p.add_argument("--val-fraction", type=float, help="score on a random stratified hold-out of this fraction "
                                                      "instead of CV (e.g. 0.2)")
    p.add_argument("--metric", default="accuracy", choices=metrics.METRICS,
                   help="selection metric (default: accuracy; ties go to the lower log-loss, then the faster fit)")
    p.add_argument("--seed", type=int, default=0, help="seed for folds, hold-outs and estimators (default: 0)")
    p.add_argument("--n-jobs", type=int,
                   help="parallel tasks, -1 = one per core; locally BLAS/torch threads are split between them "
                        "(default: 1 with loky/threading, which uses every core inside each fit; every core of "
                        "the cluster with ray/dask)")
    p.add_argument("--backend", default="loky", choices=backends.BACKENDS,
                   help="where the fits run: loky (worker processes) or threading on this machine, or a Ray or "
                        "Dask cluster (pip install 'featcache[ray]' / 'featcache[dask]'), which gets the "
                        "features once, not once per fit (default: loky)")
    p.add_argument("--address", help="the ray/dask cluster to join: ray.init address (auto, ray://HEAD:10001) or "
                                     "Dask scheduler (tcp://HOST:8786) (default: $RAY_ADDRESS or "
                                     "$DASK_SCHEDULER_ADDRESS, else start a local cluster of --n-jobs workers)")
    p.add_argument("--out-of-core", action="store_true",
                   help="leave the features in the cache and stream them in blocks: for caches larger than "
                        "memory; trains sgd and dense (none/standardize/l2), the default grid keeps those")
    p.add_argument("--block-rows", type=int, metavar="N",
                   help="with --out-of-core, rows read at once (default: whole HDF5 chunks, about 4 MiB)")
    p.add_argument("--test-top", type=int, default=1,
                   help="refit this many of the best configurations and score them on test; the first is "
                        "saved as best.joblib (default: 1)")
    p.add_argument("--results-dir", type=Path,
                   help="where per-configuration results are stored (default: sweep-results/ next to the cache)")
    p.add_argument("--no-reuse", action="store_true", help="neither read nor write stored results: fit everything")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--print-grid", action="store_true", help="print the default grid (TOML) and exit")
    p.add_argument("--list-classifiers", action="store_true",
                   help="list the classifiers and the hyperparameters a grid may set, and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors, and the output folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _main(args: argparse.Namespace) -> int:
    if args.print_grid:
        print(grids.DEFAULT_GRID, end="")
        return 0
    if args.list_classifiers:
        print(grids.describe_classifiers())
        return 0
    if args.cache is None:
        raise FeatcacheError("give a cache file: python -m featcache.sweep CACHE.h5 (see --help)")
    out = args.out or Path("runs") / f"{args.cache.stem.split('__')[0]}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    cfg = SweepConfig(
        cache=args.cache, out=out, grid=args.grid, layer=args.layer, screen_layers=args.screen_layers,
        views=args.views, tta=args.tta, cv=args.cv, val_fraction=args.val_fraction,
        classifiers=[c.strip() for c in args.classifiers.split(",") if c.strip()] if args.classifiers else (),
        metric=args.metric, seed=args.seed, n_jobs=args.n_jobs, backend=args.backend, address=args.address,
        out_of_core=args.out_of_core, block_rows=args.block_rows, test_top=args.test_top,
        results_dir=args.results_dir, reuse=not args.no_reuse, plots=not args.no_plots,
        progress=not (args.no_progress or args.quiet))
    result = run(cfg)
    if not args.quiet:
        print(format_leaderboard(result.leaderboard))
        best = result.leaderboard.iloc[0]
        test = f"; test {cfg.metric} {result.test_scores[cfg.metric]:.4f}" if result.test_scores else ""
        print(f"best: {result.best_config.label()}: val {cfg.metric} {best[f'val_{cfg.metric}']:.4f}{test}")
        if result.layer_screen:
            print("layer screen: " + ", ".join(f"{k} {v:.4f}" for k, v in result.layer_screen.items())
                  + f" (the whole grid ran on the best {cfg.screen_layers})")
        if result.leaderboard["layer"].nunique() > 1:
            print("best per layer: " + by_layer_text(result.leaderboard, cfg.metric))
    print(result.out)
    return 0


def best_per_layer(board, metric: str = "accuracy") -> Dict[str, float]:
    """The best validation score of each layer choice, best first (the leaderboard is sorted)."""
    ok = board[board["status"] == "ok"]
    return {layer: float(score) for layer, score in ok.groupby("layer", sort=False)[f"val_{metric}"].first().items()}


def by_layer_text(board, metric: str = "accuracy") -> str:
    return ", ".join(f"{layer} {score:.4f}" for layer, score in best_per_layer(board, metric).items())


def format_leaderboard(board, limit: int = 25) -> str:
    """The leaderboard as a fixed-width table (the first ``limit`` rows)."""
    several = "layer" in board and board["layer"].nunique() > 1  # the layer column only when it varies
    cols = [c for c in ["rank", "classifier", "params", "preprocess", "layer" if several else "", "val_accuracy",
                        "val_balanced_accuracy", "val_f1_macro", "val_log_loss", "test_accuracy", "fit_s", "note"]
            if c in board]
    shown = board[cols].head(limit).copy()
    shown["params"] = shown["params"].str.slice(0, 40)
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")
    if len(board) > limit:
        text += f"\n... {len(board) - limit} more rows in leaderboard.csv"
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())


make_callable(__name__, sweep)

if __name__ == "__main__":
    sys.exit(main())
