"""Fitting a sweep's configurations: every (configuration, fold) the result store lacks, in joblib workers.

Stage: selection. Workers share one copy of the features (a memmap locally; sent once to a Ray or Dask
cluster, see ``backends``; or streamed from the cache, see ``learn.streaming``); a logistic regression's C
values are one warm-started path. :class:`Fits` holds a sweep's records, read from the store or fitted; the
layer screen (:func:`screen_layers`) ranks layer choices with a few cheap fits before the grid.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
import warnings
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..cache import Rows
from ..config import SweepConfig
from ..learn import calibration, metrics, streaming, views
from . import backends, grids
from .features import SweepRows
from .grids import Config
from .schemes import Scheme
from .store import ResultStore, as_stored, config_key

__all__ = ["fit_configs", "Fits", "screen_layers", "SCREEN_GRID", "SCREEN_TEXT", "scorer", "refit_reserve"]

log = logging.getLogger("featcache")

SMALL_FIT = 1 << 20  # training values (rows x features) below which a fit runs single-threaded


def fit_configs(configs: List[Config], X, y, seed: int, max_components: int) -> List[Tuple[Any, float, str]]:
    """Fit each config's pipeline on ``(X, y)``; a logistic path shares one preprocessing fit.

    Returns ``(pipeline, fit seconds, note)`` per config, in order.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import Pipeline

    from ..learn.logistic import logistic_path

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if isinstance(X, Rows):
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
    on the ``val`` rows (one fold). Arrays may come as cluster handles (:func:`backends.fetch`). ``threads``
    limits BLAS and torch in this (worker) process; None leaves them as the caller set them (threads of one
    process share those limits, so they are set once around all tasks, not per task)."""
    X, V, y, train, val = (backends.fetch(a) for a in (X, V, y, train, val))
    if columns != slice(None):
        X, V = X[:, columns], (None if V is None else V[..., columns])

    if threads is not None and len(train) * X.shape[1] < SMALL_FIT:
        threads = 1  # thread start-up and spin-waiting cost more than they save on tiny fits
    with _thread_limits(threads):
        try:
            fitted = fit_configs(configs, *views.training_rows(X, V, y, train), seed, max_components)
            X_val, V_val, y_val = X[val], (V[val] if V is not None and tta else None), y[val]
            results = []
            for pipe, seconds, note in fitted:
                pred, proba = views.predict(scorer(pipe, X_val), X_val, V_val, range(n_classes))
                kind, oof = calibration.class_scores(scorer(pipe, X_val), X_val, V_val, range(n_classes))
                results.append({"scores": metrics.scores(y_val, pred, proba, n_classes), "pred": pred.tolist(),
                                "fit_s": seconds, "note": note, "oof_kind": kind,
                                "oof": None if oof is None else as_stored(oof)})
            return results
        except Exception as e:  # one bad configuration must not end the sweep
            return [{"error": f"{type(e).__name__}: {e}".splitlines()[0], "fit_s": 0.0} for _ in configs]


def _thread_limits(threads):
    """BLAS and torch intra-op threads limited to ``threads`` inside the block (nothing for None)."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    from ..runtime import torch_threads

    stack = contextlib.ExitStack()
    stack.enter_context(threadpool_limits(limits=threads))
    stack.enter_context(torch_threads(threads))
    return stack


def scorer(pipe, X):
    """``pipe`` itself, or one that predicts a block at a time when ``X`` is streamed from the cache."""
    return streaming.Blockwise(pipe) if isinstance(X, Rows) else pipe


def _warn_pca(configs: List[Config], max_components: int) -> None:
    for spec in sorted({c.preprocess for c in configs}):
        too_big = [k for k in grids.pca_components(spec) if k > max_components]
        if too_big:
            log.warning("preprocess %s: only %d components exist (training rows and features); using %d",
                        spec, max_components, max_components)


def _tasks(todo: List[Config], n_folds: int, lead: Optional[Config] = None) -> List[Tuple[List[Config], int]]:
    """One task per (configuration, fold), except that a logistic path is one task per fold; ``lead``'s unit
    first (under a budget: the one that always runs)."""
    groups: Dict[Any, List[Config]] = defaultdict(list)
    for c in todo:
        groups[c.path_group() or c].append(c)
    units = [sorted(g, key=lambda c: c.path_value()) if g[0].path_group() else g for g in groups.values()]
    # Slow units first, so a parallel sweep does not end waiting on one long fit.
    units.sort(key=lambda g: (lead not in g, g[0].classifier != "dense", -len(g)))
    return [(unit, f) for unit in units for f in range(n_folds)]


class Fits:
    """The records of a sweep's configurations: read from the result store, or fitted (and stored) when missing."""

    def __init__(self, cfg: SweepConfig, feats: SweepRows, scheme: Scheme, max_components: int, store: ResultStore,
                 base: dict, deadline: Optional[float] = None):
        self.cfg, self.feats, self.scheme, self.max_components, self.store, self.base = (
            cfg, feats, scheme, max_components, store, base)
        self.deadline = deadline  # time.monotonic() after which no fit starts (None: no limit)
        self.keys: Dict[Config, str] = {}
        self.records: Dict[Config, dict] = {}
        self.cached: set = set()  # configurations whose record came from the store
        self.fitted: List[Config] = []  # configurations fitted in this run
        self.skipped: List[Config] = []  # configurations left unfitted when the deadline passed
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
                              self.keys, self.records, desc, self.deadline)
        self.n_fits += n_fits
        self.fitted += [c for c in todo if c in self.records]
        missed = [c for c in todo if c not in self.records]
        self.skipped += missed
        log.info("%s: fitted %d configuration(s) (%d fits) in %.1f s; %d from the result store%s", desc,
                 len(todo) - len(missed),
                 n_fits, time.perf_counter() - t0, sum(c in self.cached for c in configs),
                 f" ({self.store.dir})" if self.store.dir else "")


# The layer screen: cheap fits that rank layer choices well (measured on MNIST-5k and sklearn digits, where the
# best of these picked the choices holding the best configuration of the whole grid; see docs/benchmarks.md). Each is a
# point of the default grid, so the grid reuses them on the choices it keeps.
SCREEN_GRID = {"svm": {"preprocess": "l2", "C": 10.0, "max_rows": 20000},
               "ridge": {"preprocess": "standardize", "alpha": [1000.0, 100000.0]},
               "logreg": {"preprocess": "l2", "C": [1.0, 10.0, 100.0, 1000.0]}}
SCREEN_TEXT = "an RBF SVM and a logistic path on l2-normalised features, ridge on standardized ones"


def screen_layers(fits: Fits, choices: List[str], n_rows: int) -> Dict[str, float]:
    """Each layer choice's best validation score over the screen's configurations, best first (stable).
    ``n_rows``: the rows the sweep's grid is expanded for (its ``max_rows``/``min_rows``), so the two agree."""
    probes = [dataclasses.replace(c, layer=choice) for choice in choices
              for c in grids.expand_grid(SCREEN_GRID, n_rows=n_rows)]
    fits.fit(probes, desc="layer screen")
    metric = fits.cfg.metric
    def score(p: Config) -> float:  # a failed or skipped fit, or a metric the classifier lacks (ridge's log-loss): NaN
        value = (fits.records.get(p, {}).get("scores") or {}).get(metric)
        return np.nan if value is None else float(value)

    best = {choice: max((score(p) for p in probes if p.layer == choice), key=lambda v: metrics.sort_key(metric, v))
            for choice in choices}
    return dict(sorted(best.items(), key=lambda kv: -metrics.sort_key(metric, kv[1])))


def _fit_missing(cfg, todo, feats, scheme, max_components, store, keys, records, desc: str = "sweep",
                 deadline: Optional[float] = None) -> int:
    """Fit every (configuration, fold) not in the store, in parallel; store each config when complete.

    No task starts (those running finish) but the first configuration's once ``deadline``, less the time the best so
    far would take to refit on all the rows (:func:`refit_reserve`), has passed; returns the fits done.
    """
    if not todo:
        return 0
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    # Under a budget the first unit always runs: the caller's first (successive halving: the best so far).
    tasks = _tasks(todo, len(scheme.folds), todo[0] if deadline is not None else None)
    per_config: Dict[Config, List[dict]] = defaultdict(list)
    bar = tqdm(total=len(todo), desc=desc, unit="config", disable=not cfg.progress, file=sys.stderr,
               dynamic_ncols=True)
    arrays = [feats.X, feats.V, feats.y] + [rows for fold in scheme.folds for rows in fold]
    with backends.session(cfg.backend, cfg.address, cfg.n_jobs, len(tasks), arrays) as session, \
            contextlib.ExitStack() as stack:
        X, V, y, folds = session.arrays[0], session.arrays[1], session.arrays[2], session.arrays[3:]
        if session.workers > 1 or cfg.backend in backends.CLUSTER_BACKENDS:
            log.info("%d task(s) on %s, %d at a time", len(tasks), cfg.backend, session.workers)
        width = {c.layer: len(range(feats.X.shape[1])[feats.columns(c.layer)]) for c in todo}
        shared = cfg.backend == "threading"  # tasks are threads of this process: limits are set once, here
        scale = (len(feats.y) / min(len(tr) for tr, _ in scheme.folds)) ** 2  # a refit's rows, squared: kernel SVMs

        def calls():  # joblib takes tasks from this generator as workers free up: the deadline stops it
            for i, (unit, f) in enumerate(tasks):  # (after the first unit's folds: every call fits something)
                if deadline is not None and i >= len(scheme.folds) and \
                        time.monotonic() > deadline - refit_reserve(records, cfg.metric, len(scheme.folds), scale):
                    return
                yield delayed(_run_task)(unit, X, V, y, folds[2 * f], folds[2 * f + 1], feats.columns(unit[0].layer),
                                         len(feats.classes), cfg.seed, min(max_components, width[unit[0].layer]),
                                         None if shared else session.threads, cfg.tta)
        done = 0
        runner = Parallel(return_as=session.return_as)  # n_jobs and the backend come from the session
        try:
            stack.enter_context(_thread_limits(session.threads if shared else None))
            for (unit, f), results in zip(tasks, runner(calls())):
                done += len(unit)
                for config, result in zip(unit, results):
                    per_config[config].append({**result, "fold": f})
                    if len(per_config[config]) == len(scheme.folds):
                        records[config] = _combine(per_config[config], scheme, feats.y)
                        if "error" not in records[config]:  # failures are retried next time
                            store.put(keys[config], records[config])
                        bar.update(1)
                bar.set_postfix_str(f"{unit[0].classifier} fold {f + 1}/{len(scheme.folds)}")
        finally:
            bar.close()
    return done


def refit_reserve(records: Dict[Config, dict], metric: str, n_folds: int, scale: float) -> float:
    """Seconds to keep, under a budget, for refitting the best configuration so far on every row: one fold's fit
    time (its record sums ``n_folds``) times ``scale`` (the rows of the refit over a fold's, squared)."""
    scored = [r for r in records.values() if (r.get("scores") or {}).get(metric) is not None]
    if not scored:
        return 0.0
    best = max(scored, key=lambda r: metrics.sort_key(metric, r["scores"][metric]))
    return best["fit_s"] / max(n_folds, 1) * scale


def _combine(folds: List[dict], scheme: Scheme, y: np.ndarray) -> dict:
    """One record per configuration: mean (and std) of the fold scores, the out-of-fold predictions, and the
    out-of-fold class scores (``oof``, NaN on rows never validated) with the temperature that calibrates them
    (``learn.calibration``); a classifier with decision scores only gets its calibrated log-loss."""
    errors = [f["error"] for f in folds if "error" in f]
    if errors:
        return {"error": errors[0], "fit_s": 0.0}
    pred = np.full(len(y), -1, dtype=np.int64)
    for f in folds:
        pred[scheme.folds[f["fold"]][1]] = f["pred"]
    notes = sorted({f["note"] for f in folds if f["note"]})
    record = {"scores": metrics.average([f["scores"] for f in folds]), "fit_s": sum(f["fit_s"] for f in folds),
              "note": "; ".join(notes), "pred": pred.tolist()}
    kind = folds[0].get("oof_kind")
    if kind is not None and all(f.get("oof") is not None for f in folds):
        oof = np.full((len(y), folds[0]["oof"].shape[1]), np.nan, dtype=np.float32)
        for f in folds:
            oof[scheme.folds[f["fold"]][1]] = f["oof"]
        seen = pred >= 0
        record.update(oof=oof, oof_kind=kind, temperature=calibration.fit_temperature(kind, oof[seen], y[seen]))
        if kind == "decision":  # its log-loss, from the calibrated probabilities of every validated row
            proba = calibration.calibrated(kind, oof[seen], record["temperature"])
            record["scores"]["log_loss"] = metrics.scores(y[seen], pred[seen], proba, oof.shape[1])["log_loss"]
    return record
