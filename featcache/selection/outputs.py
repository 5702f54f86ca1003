"""A run's outputs, shared by ``sweep`` and ``finetune``: the leaderboard CSV, the best model with the metadata
``predict`` needs, the plots, and a JSON summary.

Stage: selection (outputs). Imports ``modelfile``, ``plots`` (matplotlib) and ``cache.layout``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .._util import atomic_write_text, now_iso
from ..cache.layout import CacheMeta, feature_identity
from ..learn import metrics
from .modelfile import save_model
from .store import result_versions

__all__ = ["model_metadata", "write_outputs", "settings_record"]


def _num(v) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def model_metadata(meta: CacheMeta, cache_path: Path, classes: Sequence[str], layer_dims: Dict[str, int],
                   config: dict, best_row, scheme: str, metric: str, test: Optional[dict], **extra) -> dict:
    """What a saved model carries so :mod:`featcache.predict` can reproduce and check its features.

    ``layer_dims`` lists the layers the model reads, in order, with their widths; ``best_row`` is its
    leaderboard row (validation scores); ``extra`` adds keys (``views``, ``tta``).
    """
    return {
        "classes": list(classes),
        "layers": list(layer_dims),
        "layer_dims": dict(layer_dims),
        "n_features": int(sum(layer_dims.values())),
        "feature_identity": feature_identity(meta),
        "feature_versions": meta.key.get("versions"),
        "extract_config": meta.config,
        "cache": {"path": str(cache_path), "fingerprint": meta.fingerprint, "dataset": meta.dataset},
        "config": config,
        **extra,
        "selection": {"scheme": scheme, "metric": metric,
                      "val": {m: _num(best_row[f"val_{m}"]) for m in metrics.METRICS}},
        "test": test,
        "versions": result_versions(),
        "created": now_iso(),
    }


def settings_record(cfg) -> dict:
    """A config dataclass as JSON-ready values (paths as strings), for the run's summary."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}


def write_outputs(out: Path, board, model: Any, metadata: dict, summary: dict, summary_name: str, *,
                  plots: bool, plot_rows: Dict[str, List[dict]], metric: str,
                  confusion: Optional[tuple] = None) -> List[Path]:
    """Write ``leaderboard.csv``, ``best.joblib`` (+ sidecar), ``plots/*.png`` and ``summary_name`` into ``out``.

    ``plot_rows``: per classifier, the ``params``/``preprocess``/``score`` of each configuration;
    ``confusion``: ``(y_true, y_pred, class names, title)`` of the best model's predictions.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "leaderboard.csv"]
    board.to_csv(files[0], index=False)
    files.append(save_model(out / "best.joblib", model, metadata))
    if plots:
        from . import plots as plotting

        files += plotting.plot_all(plot_rows, metric, out / "plots")
        if confusion is not None:
            y_true, y_pred, classes, title = confusion
            path = out / "plots" / "confusion_matrix.png"
            plotting.confusion_plot(y_true, np.asarray(y_pred), list(classes), title, path)
            files.append(path)
    files.append(atomic_write_text(out / summary_name, json.dumps(summary, indent=2, default=str)))
    return files
