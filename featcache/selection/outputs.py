"""A run's outputs, shared by ``sweep`` and ``finetune``: the leaderboard CSV, the best model with the metadata
``predict`` needs, the plots, and a JSON summary.

Stage: selection (outputs). Imports ``modelfile``, ``plots`` (matplotlib) and ``cache.layout``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .._util import atomic_write_text, json_text, now_iso
from ..cache.layout import CacheMeta, feature_identity
from ..errors import FeatcacheError
from ..learn import metrics
from .modelfile import save_model, sidecar_path
from .store import result_versions

__all__ = ["model_metadata", "write_outputs", "settings_record", "prepare_out", "RUN_FILES"]


# What a run writes into --out: an earlier run's are refused, or removed with --overwrite; other files stay.
RUN_FILES = ("leaderboard.csv", "best.skops", "best.skops.json", "best.safetensors", "best.safetensors.json",
             "best.joblib", "best.joblib.json", "sweep.json", "finetune.json")


def prepare_out(out: Path, overwrite: bool, files: Sequence[str] = RUN_FILES, holds: str = "an earlier run") -> Path:
    """Check ``out`` before any work: a writable folder, holding no earlier run (any of ``files``; ``holds`` names
    it in the error: ``inspect`` passes its report's files) unless ``overwrite``. Nothing is removed here: the
    earlier run's files are replaced when the new run has written its own (:func:`write_outputs`), so a run that
    fails leaves the earlier one whole."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise FeatcacheError(f"{{out}} {out} is a file; pass a folder for the run's outputs")
    earlier = [name for name in files if (out / name).exists()]
    if earlier and not overwrite:
        raise FeatcacheError(f"{{out}} {out} holds {holds} ({', '.join(earlier)}); pass {{overwrite}} to replace "
                             f"it, or another {{out}}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".featcache-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FeatcacheError(f"cannot write to {{out}} {out}: {e.strerror or e}; pass a writable folder") from e
    return out


def _remove_stale(out: Path, written: List[Path]) -> None:
    """An earlier run's files this run did not write again (another model format, plots of other classifiers)."""
    keep = {Path(p).resolve() for p in written}
    stale = [out / name for name in RUN_FILES] + list((out / "plots").glob("*.png"))
    for path in stale:
        if path.exists() and path.resolve() not in keep:
            path.unlink()
    with contextlib.suppress(OSError):
        (out / "plots").rmdir()  # only when nothing is left in it


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
        "cache": {"path": str(Path(cache_path).resolve()), "fingerprint": meta.fingerprint, "dataset": meta.dataset},
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
    """Write ``leaderboard.csv``, ``best.skops`` or ``best.safetensors`` (+ sidecar), ``plots/*.png`` and
    ``summary_name`` into ``out``.

    ``plot_rows``: per classifier, the ``params``/``preprocess``/``score`` of each configuration;
    ``confusion``: ``(y_true, y_pred, class names, title)`` of the best model's predictions.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "leaderboard.csv"]
    board.to_csv(files[0], index=False)
    files.append(save_model(out / "best", model, metadata))
    if plots:
        from . import plots as plotting

        files += plotting.plot_all(plot_rows, metric, out / "plots")
        if confusion is not None:
            y_true, y_pred, classes, title = confusion
            path = out / "plots" / "confusion_matrix.png"
            plotting.confusion_plot(y_true, np.asarray(y_pred), list(classes), title, path)
            files.append(path)
    files.append(atomic_write_text(out / summary_name, json_text(summary, indent=2)))
    files.append(sidecar_path(files[1]))
    _remove_stale(out, files)
    return files[:-1]
