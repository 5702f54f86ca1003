"""The sweep in one module, for now: ``sweep``, ``run`` and their steps (stage: orchestration)."""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .._malloc import tune_allocator
from ..cache.use import in_use
from ..config import SweepConfig
from ..errors import FeatcacheError
from ..learn import metrics, streaming, views
from ..selection import backends, grids
from ..selection.features import Features, load_features
from ..selection.fitting import SCREEN_TEXT, Fits, fit_configs, scorer, screen_layers
from ..selection.grids import Config
from ..selection.halving import record_score, rung_scheme, rung_sizes, successive_halving
from ..selection.leaderboard import crossfit_pred, leaderboard
from ..selection.modelfile import load_model, save_model
from ..selection.outputs import model_metadata, prepare_out, settings_record, write_outputs
from ..selection.schemes import Scheme, make_scheme
from ..selection.store import ResultStore, config_key, result_versions

__all__ = ["sweep", "run", "SweepConfig", "SweepResult"]

log = logging.getLogger("featcache")

ENSEMBLE_BAG = 20  # the configurations (best calibrated log-loss first) greedy ensemble selection draws from


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
    best_layer: str = ""  # the layers ``best`` reads, "a+b" side by side: ``FeatureSet.matrix(res.best_layer)``
    skipped: List[str] = field(default_factory=list)  # configurations left unfitted when the budget ran out
    standard_error: Optional[float] = None  # of the best validation score (binomial, over the validation rows)
    val_pred: Optional[np.ndarray] = None  # the best's out-of-fold class index per pool row; -1: never validated
    # The same rows predicted cross-fitted: each half by the configuration most accurate on the other half, so a
    # comparison on them does not flatter the best (picked among ``candidates`` on these very rows); -1 as above.
    crossfit_pred: Optional[np.ndarray] = None
    candidates: int = 0  # configurations ranked on all the rows: the best validation score is the best of these
    out: Optional[Path] = None
    files: List[Path] = field(default_factory=list)


def sweep(cache, **settings) -> SweepResult:
    """Fit a grid of classifiers on a feature cache, select on validation, refit the best, score test.

    ``settings`` are :class:`SweepConfig` fields, e.g.
    ``sweep("cache.h5", out="runs/exp1", grid="grid.toml", n_jobs=2)``. Returns a
    :class:`SweepResult` with the leaderboard (best first) and the refitted best pipeline.
    """
    cfg = SweepConfig(cache=Path(cache).expanduser(), **settings)
    return run(cfg)


def run(cfg: SweepConfig) -> SweepResult:
    """The sweep for one :class:`SweepConfig` (what :func:`sweep` and the CLI call); the cache is marked in use
    meanwhile, so ``rm`` and ``prune`` leave it alone."""
    cfg.validate()
    with in_use(cfg.cache):
        return _run(cfg)


def _run(cfg: SweepConfig) -> SweepResult:
    tune_allocator()
    backends.remove_stale_scratch()  # what killed sweeps left in shared memory
    deadline = None if cfg.budget is None else time.monotonic() + cfg.budget
    if cfg.out is not None:  # before any fit: an unwritable or occupied --out fails now, not after the work
        prepare_out(cfg.out, cfg.overwrite)
    backends.require(cfg.backend)
    grid, only = grids.read_grid(cfg.grid), list(cfg.classifiers) or None
    grids.expand_grid(grid, only)  # every table checked now, before the features are read
    feats = load_features(cfg.cache, cfg.layer, cfg.views, cfg.out_of_core, cfg.block_rows,
                          shared_copy=cfg.backend == "loky" and (None if cfg.n_jobs is None else cfg.n_jobs != 1),
                          tasks=backends.local_tasks(cfg.backend, cfg.n_jobs))
    if cfg.tta and feats.V is None:
        raise FeatcacheError("--tta needs augmented views in the cache; extract with --views K "
                             "(and do not pass --no-views)")
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
    rungs: Dict[int, Fits] = {}

    def fits_on(rows: int) -> Fits:  # the fits of one rung (rows = n_train: every training row)
        if rows not in rungs:
            s = scheme if rows >= n_train else rung_scheme(scheme, feats.y, rows, cfg.seed)
            max_components = min(feats.X.shape[1], min(len(tr) for tr, _ in s.folds) * per_row)
            rungs[rows] = Fits(cfg, feats, s, max_components, store, base, deadline)
        return rungs[rows]

    n_configs = len(configs) * max(1, min(cfg.screen_layers or 99, len(feats.layer_choices or [""])))
    sizes = rung_sizes(n_train, n_configs) if cfg.halving and not cfg.out_of_core else [n_train]
    screen: Dict[str, float] = {}
    extra: List[Config] = []  # screen fits of the layer choices the grid does not run on
    if feats.layer_choices:  # the layer dimension: every grid point on every (screened) layer choice
        choices = list(feats.layer_choices)
        if cfg.layer is None and 0 < cfg.screen_layers < len(choices):
            screen = screen_layers(fits_on(sizes[0]), choices, n_rows)
        if screen and all(np.isnan(v) for v in screen.values()):
            log.warning("the layer screen has no score (every screen fit failed); fitting the grid on every choice")
            screen = {}
        elif screen:
            choices = list(screen)[:cfg.screen_layers]
            log.info("layer screen (%s, val %s%s): %s -> the grid on %s (--screen-layers 0: on every choice)",
                     SCREEN_TEXT, cfg.metric, f", {sizes[0]} training rows" if len(sizes) > 1 else "",
                     ", ".join(f"{k} {v:.4f}" for k, v in screen.items()), ", ".join(choices))
        grid_points = set(configs)
        configs = [dataclasses.replace(c, layer=choice) for choice in choices for c in configs]
        extra = [p for p in fits_on(sizes[0]).records
                 if p.layer not in choices and dataclasses.replace(p, layer="") in grid_points]
    grid_layers = choices if feats.layer_choices else [""]  # after the screen: the choices the grid runs on
    fitting = {layer: len(range(feats.X.shape[1])[feats.columns(layer)]) for layer in grid_layers}
    log.info("%d configurations on %d rows, the grid on layer choice(s) %s, %d classes; validation: %s%s",
             len(configs), len(feats.X), ", ".join(f"{layer or '+'.join(feats.layers)} ({width} features)"
                                                   for layer, width in fitting.items()),
             len(feats.classes), scheme.description,
             f"; successive halving over {' -> '.join(map(str, sizes))} training rows" if len(sizes) > 1 else "")

    def fit_rung(cs: List[Config], rows: int) -> Dict[Config, dict]:
        fits_on(rows).fit(cs, desc=f"sweep, {rows} rows" if rows < n_train else "sweep")
        return fits_on(rows).records

    alive, stopped = successive_halving(configs, sizes, fit_rung, cfg.metric)
    stopped.update({p: (fits_on(sizes[0]).records[p], sizes[0]) for p in extra})
    fits = fits_on(n_train)
    fits.fit(alive)
    final = [c for c in alive if c in fits.records]
    for c in configs:  # out of time at a later rung: its last record stays on the leaderboard, as a stopped one
        if c not in stopped and c not in fits.records:
            last = next(((rungs[r].records[c], r) for r in sorted(rungs, reverse=True) if c in rungs[r].records), None)
            if last is not None:
                stopped[c] = last
    out_of_time = deadline is not None and time.monotonic() > deadline
    ensemble = None if out_of_time or cfg.out_of_core else _ensemble(cfg, fits, final, feats.y)  # (no streaming)
    final += [ensemble] if ensemble is not None and ensemble in fits.records else []
    board, keys = _board(cfg, fits, final, stopped, rungs, "+".join(feats.layers), n_train)
    ok = board[board["status"] == "ok"]
    if ok.empty:
        if not final:
            raise FeatcacheError(f"the budget ({cfg.budget:.0f} s) ran out before any configuration was fitted; "
                                 "give a larger --budget")
        raise FeatcacheError(f"every configuration failed; the first error: {board['status'].iloc[0]}")
    # Candidates: every configuration validated on all the rows (the layer screen's fits on choices the grid left
    # out too, when the screen ran on all the rows), all of them records of ``fits``.
    whole = final + [c for c, (_, rows) in stopped.items() if rows == n_train and c not in final]
    by_id = {keys[c][:12]: c for c in whole}
    top = [by_id[i] for i in ok["config_id"].iloc[: cfg.test_top] if i in by_id]
    if not top:
        raise FeatcacheError("no configuration trained on all the rows succeeded (the budget ran out, or every "
                             "one failed); give a larger --budget, or --no-halving")
    temperatures = {c: fits.records[c]["temperature"] for c in top
                    if fits.records.get(c, {}).get("oof_kind") == "decision"}
    refits, refitted = _refit_top(cfg, top, feats, base, store, temperatures)
    for config, (_, test, _) in refits.items():
        if test:
            row = board.index[board["config_id"] == keys[config][:12]][0]
            for name, value in test.items():
                board.loc[row, f"test_{name}"] = value
    best_config = top[0]
    best, test_scores, test_pred = refits[best_config]
    skipped = sorted({c.label() for f in rungs.values() for c in f.skipped} - {c.label() for c in final})
    if skipped:
        log.warning("the budget ran out: %d configuration(s) not fitted (listed in sweep.json)", len(skipped))
    result = SweepResult(board, best, best_config, scheme.description, test_scores,
                         sum(f.n_fits for f in rungs.values()) + len(refitted),
                         sum(len(f.cached) for f in rungs.values()),
                         list(dict.fromkeys(c.label() for f in rungs.values() for c in f.fitted)), refitted, screen,
                         best_config.layer or "+".join(feats.layers), skipped=skipped,
                         standard_error=scheme.standard_error(float(ok[f"val_{cfg.metric}"].iloc[0]))
                         if cfg.metric == "accuracy" else None,  # (binomial: for accuracy only)
                         val_pred=np.asarray(fits.records[best_config]["pred"]),
                         crossfit_pred=_crossfit(fits, [c for c in whole if keys[c][:12] in set(ok["config_id"])],
                                                 feats.y, cfg.seed),
                         candidates=sum(keys[c][:12] in set(ok["config_id"]) for c in whole))
    if cfg.out is not None:
        result.out = Path(cfg.out).expanduser()
        result.files = _write(cfg, result, feats.for_layer(best_config.layer), scheme,
                              {c: fits.records[c] for c in dict.fromkeys(final + [best_config])}, test_pred)
    return result


def _crossfit(fits: Fits, candidates: List[Config], y: np.ndarray, seed: int) -> np.ndarray:
    """The rows every candidate validated, each predicted by the candidate most accurate on the other half of them
    (``selection.leaderboard.crossfit_pred``); -1 elsewhere."""
    preds = np.asarray([fits.records[c]["pred"] for c in candidates])
    out = np.full(len(y), -1, dtype=np.int64)
    rows = np.flatnonzero((preds >= 0).all(axis=0))
    if len(rows):
        out[rows] = crossfit_pred(preds[:, rows], y[rows], seed)
    return out


def _ensemble(cfg: SweepConfig, fits: Fits, final: List[Config], y: np.ndarray) -> Optional[Config]:
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


def _board(cfg: SweepConfig, fits: Fits, final: List[Config], stopped, rungs: Dict[int, Fits], layers: str,
           n_train: int):
    """The leaderboard over every configuration: those on all the rows, then those halving stopped earlier."""
    records = {**{c: rec for c, (rec, _) in stopped.items()}, **{c: fits.records[c] for c in final}}
    keys = {c: rungs[rows].keys[c] for c, (_, rows) in stopped.items()}
    keys.update({c: fits.keys[c] for c in final})
    cached = {c for c in records if any(c in f.cached for f in rungs.values())}
    rows = {**{c: r for c, (_, r) in stopped.items()}, **{c: n_train for c in final}}
    order = final + [c for c in stopped if c not in final]
    return leaderboard(order, records, cached, keys, cfg.metric, layers, rows), keys


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
        raise FeatcacheError(f"--out-of-core trains only {', '.join(streaming.STREAMING_CLASSIFIERS)} with preprocess "
                             f"{' / '.join(streaming.STREAMING_PREPROCESS)} (chained with '+'); not {bad[0]}"
                             + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
    return configs


def _refit_top(cfg: SweepConfig, top: List[Config], feats: Features, base: dict, store: ResultStore,
               temperatures: Dict[Config, float]):
    """Refit the top configurations on the whole pool, score test once; reuse stored refits. A configuration with
    decision scores only (``temperatures``) is refitted inside a one-member :class:`SoftVoting` with its temperature,
    so the saved model's probabilities are the calibrated ones its log-loss was measured on."""
    names = np.asarray(feats.classes, dtype=object)
    y_names = names[feats.y]
    has_test = feats.X_test is not None
    out, refitted = {}, []
    everything = feats
    for config in top:
        feats = everything.for_layer(config.layer)
        calibrated = {"temperature": temperatures[config]} if config in temperatures else {}
        key = config_key(base, config, {"kind": "refit", **calibrated})
        record, path = store.get(key), store.model_path(key)
        if record is not None and path is not None and path.is_file():
            try:
                out[config] = (load_model(path).pipeline, record.get("test"), record.get("test_pred"))
                continue
            except Exception as e:  # damaged, or pickled by another version whose classes moved
                log.warning("refitting %s: the stored model could not be used (%s: %s)", config.label(),
                            type(e).__name__, e)
        log.info("refitting %s on %d rows", config.label(), len(feats.y))
        X, y = views.training_rows(feats.X, feats.V, y_names, np.arange(len(y_names)))
        if config in temperatures and isinstance(X, np.ndarray):  # (streamed rows: the plain fit, which streams)
            from sklearn.pipeline import Pipeline

            from ..learn.ensemble import SoftVoting

            pipe = Pipeline([("clf", SoftVoting([("m0", config.pipeline(cfg.seed, min(X.shape)))], weights=[1.0],
                                                temperatures=[temperatures[config]]))]).fit(X, y)
        else:
            (pipe, _, _), = fit_configs([config], X, y, cfg.seed, min(X.shape))
        refitted.append(config.label())
        test, test_pred = None, None
        if has_test:
            pred, proba = views.predict(scorer(pipe, feats.X_test), feats.X_test, feats.V_test if cfg.tta else None,
                                        feats.classes)
            test, test_pred = metrics.scores(feats.y_test, pred, proba, len(feats.classes)), pred.tolist()
        out[config] = (pipe, test, test_pred)
        if path is not None:
            save_model(path, pipe, {"config": config.identity()})
            store.put(key, {"test": test, "test_pred": test_pred})
    return out, refitted


def _write(cfg: SweepConfig, result: SweepResult, feats: Features, scheme: Scheme, records, test_pred) -> List[Path]:
    """The sweep's outputs: leaderboard, ``best.skops`` with what predict needs, plots, ``sweep.json``."""
    best = result.best_config
    metadata = model_metadata(feats.meta, feats.path, feats.classes, feats.layer_dims, best.identity(),
                              result.leaderboard.iloc[0], scheme.description, cfg.metric, result.test_scores,
                              views=int(feats.V.shape[1]) if feats.V is not None else 0,  # trained with these views
                              tta=cfg.tta)  # predict averages over views made exactly as at extraction
    by_clf: Dict[str, List[dict]] = defaultdict(list)
    for c, r in records.items():
        if "scores" in r:
            by_clf[c.classifier].append({"params": c.params, "preprocess": c.preprocess,
                                         "score": r["scores"][cfg.metric]})
    if test_pred is not None:
        y_true, y_pred, on = feats.y_test, np.asarray(test_pred), "test"
    else:
        pred = np.asarray(records[best]["pred"])
        seen = pred >= 0
        y_true, y_pred, on = feats.y[seen], pred[seen], "validation" if scheme.kind != "cv" else "out-of-fold"
    summary = {"cache": str(feats.path), "fingerprint": feats.meta.fingerprint, "layers": feats.layers,
               "scheme": scheme.description, "metric": cfg.metric, "seed": cfg.seed, "best": best.identity(),
               "test": result.test_scores, "layer_screen": result.layer_screen,
               "n_configurations": len(result.leaderboard), "n_cached": result.n_cached, "n_fits": result.n_fits,
               "settings": settings_record(cfg), "standard_error": result.standard_error, "skipped": result.skipped}
    return write_outputs(result.out, result.leaderboard, result.best, metadata, summary, "sweep.json",
                         plots=cfg.plots, plot_rows=by_clf, metric=cfg.metric,
                         confusion=(y_true, y_pred, feats.classes, f"{best.label()}\n({on})"))
