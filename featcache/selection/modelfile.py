"""Model files: a fitted model with its metadata, saved by ``sweep``/``finetune`` and loaded by ``predict``.

Stage: selection (outputs). A model file is a joblib pickle, and unpickling runs code: only load files from a
source you trust. featcache writes ``MODEL.json`` next to every model it saves, holding a marker, the SHA-256
of the model file, and the metadata (classes, feature layers, the extractor settings and the training cache's
fingerprint). :func:`load_model` refuses a file without that sidecar or whose bytes no longer match it,
before unpickling. This guards against using a wrong or damaged file, not against someone who can rewrite
both files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from .._util import atomic_path, file_sha256, json_text
from ..errors import FeatcacheError

__all__ = ["save_model", "load_model", "read_metadata", "SavedModel", "sidecar_path", "MARKER", "MODEL_FORMAT"]

MARKER = "featcache-model"
MODEL_FORMAT = 1


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def save_model(path, pipeline, metadata: dict) -> Path:
    """Write ``pipeline`` with ``metadata`` to ``path`` (joblib) and its verifying sidecar ``path.json``."""
    import joblib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The model first, then its sidecar: a crash between the two leaves a sidecar that no longer matches,
    # which load_model refuses, rather than a model that loads with another model's metadata.
    with atomic_path(path) as tmp:
        joblib.dump({"marker": MARKER, "format": MODEL_FORMAT, "metadata": metadata, "pipeline": pipeline}, tmp)
        side = {"marker": MARKER, "format": MODEL_FORMAT, "file": path.name, "sha256": file_sha256(tmp),
                "size": tmp.stat().st_size, "metadata": metadata}
    with atomic_path(sidecar_path(path)) as tmp:
        tmp.write_text(json_text(side, indent=1), encoding="utf-8")
    return path


def read_metadata(path) -> dict:
    """The sidecar of a featcache model file, checked against the file's bytes (nothing is unpickled)."""
    path = Path(path).expanduser()
    side = sidecar_path(path)
    if path.is_dir():
        inside = path / "best.joblib"
        raise FeatcacheError(f"{path} is a run folder, not a model file; pass {inside}" if inside.is_file() else
                             f"{path} is a folder, not a model file (best.joblib, written by sweep or finetune)")
    if path.suffix == ".h5":
        raise FeatcacheError(f"{path} is a feature cache, not a model file: fit a model on it first "
                             f"(python -m featcache.sweep {path} --out runs/x) and pass runs/x/best.joblib")
    if not path.is_file():
        raise FeatcacheError(f"no model file at {path}")
    if not side.is_file():
        raise FeatcacheError(f"refusing to load {path}: it has no {side.name} written by featcache next to it. "
                             f"Model files are pickles that can run code when loaded; featcache only loads "
                             f"the ones it wrote and can verify")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FeatcacheError(f"refusing to load {path}: {side.name} is not readable JSON ({e})") from e
    if not isinstance(info, dict) or info.get("marker") != MARKER:
        raise FeatcacheError(f"refusing to load {path}: {side.name} was not written by featcache")
    if info.get("format") != MODEL_FORMAT:
        raise FeatcacheError(f"{path} is model format {info.get('format')}; this featcache reads format "
                             f"{MODEL_FORMAT}. Rerun the sweep with this version")
    if info.get("sha256") != file_sha256(path):
        raise FeatcacheError(f"refusing to load {path}: its contents changed since featcache wrote it "
                             f"(SHA-256 differs from {side.name}); rerun the sweep to write it again")
    return info["metadata"]


@dataclass
class SavedModel:
    """A verified model file: the fitted sklearn pipeline and what it was trained on."""

    path: Path
    pipeline: Any
    metadata: dict

    @property
    def classes(self) -> List[str]:
        return list(self.metadata["classes"])


def load_model(path) -> SavedModel:
    """Verify ``path`` against its sidecar, then unpickle it. Only load files from a trusted source."""
    import joblib

    path = Path(path).expanduser()
    metadata = read_metadata(path)
    payload = joblib.load(path)
    if not isinstance(payload, dict) or payload.get("marker") != MARKER:
        raise FeatcacheError(f"{path} is not a featcache model file")
    return SavedModel(path, payload["pipeline"], metadata)
