"""The outputs of a fine-tuning run (stage: orchestration): leaderboard, ``best.safetensors``, plots,
``finetune.json`` (``selection.outputs`` writes them)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import List

import numpy as np

from ..cache import FeatureSet
from ..config import FinetuneConfig
from ..selection.outputs import model_metadata, settings_record, write_outputs
from ._result import FinetuneResult


def write(cfg: FinetuneConfig, result: FinetuneResult, fs: FeatureSet, node: str, records, truth) -> List[Path]:
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
