"""The outputs of a sweep (stage: orchestration): leaderboard, ``best.skops`` with what predict needs, plots,
``sweep.json`` (``selection.outputs`` writes them)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..config import SweepConfig
from ..selection.features import SweepRows
from ..selection.outputs import model_metadata, settings_record, write_outputs
from ..selection.schemes import Scheme
from ._result import SweepResult


def write(cfg: SweepConfig, result: SweepResult, feats: SweepRows, scheme: Scheme, records, test_pred) -> List[Path]:
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
