"""The refit of a sweep (stage: orchestration): the top configurations refitted on every pool row (stored refits
reused), scored once on test; their test scores join the leaderboard."""
from __future__ import annotations

import logging
from typing import Dict, List, Tuple

import numpy as np

from ..config import SweepConfig
from ..learn import metrics, views
from ..selection.features import SweepRows
from ..selection.fitting import Fits, fit_configs, scorer
from ..selection.grids import Config
from ..selection.modelfile import load_model, save_model
from ..selection.store import ResultStore, config_key
from ._board import Ranking
from ._problem import Problem

log = logging.getLogger("featcache")


def refit(cfg: SweepConfig, problem: Problem, fits: Fits, ranking: Ranking) -> Tuple[Dict[Config, tuple], List[str]]:
    """``{configuration: (pipeline, test scores, test predictions)}`` for ``ranking.top``, and the labels of those
    refitted in this run (not reused); the test scores are written into ``ranking.board``."""
    top, board, keys = ranking.top, ranking.board, ranking.keys
    temperatures = {c: fits.records[c]["temperature"] for c in top
                    if fits.records.get(c, {}).get("oof_kind") == "decision"}
    refits, refitted = refit_top(cfg, top, problem.feats, problem.base, problem.store, temperatures)
    for config, (_, test, _) in refits.items():
        if test:
            row = board.index[board["config_id"] == keys[config][:12]][0]
            for name, value in test.items():
                board.loc[row, f"test_{name}"] = value
    return refits, refitted


def refit_top(cfg: SweepConfig, top: List[Config], feats: SweepRows, base: dict, store: ResultStore,
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
