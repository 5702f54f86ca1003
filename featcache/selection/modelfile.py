"""Model files: a fitted model with its metadata, saved by ``sweep``/``finetune`` and loaded by ``predict``.

Stage: selection (outputs). Loading a featcache model file never runs code from the file, whoever wrote it:
scikit-learn pipelines (and :class:`~featcache.DenseHead`, whose network is stored as arrays) are written with
``skops.io`` and loaded with an explicit list of trusted types; a fine-tuned :class:`~featcache.TopClassifier`
is its weights (``safetensors``) plus JSON, its layers rebuilt from the network the metadata names. Metadata
that decides what code runs (a ``package.module:factory`` model) needs ``trust_model_code``. ``MODEL.json``
beside every file holds a marker, the file's SHA-256 and the metadata (classes, feature layers, extractor
settings, the training cache's fingerprint); a file without it, or whose bytes no longer match, is refused.
Pickles written by featcache 0.1 are refused, with how to convert one you trust (:func:`convert_pickle`).
"""
from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from .._util import atomic_path, file_sha256, json_text
from ..errors import FeatcacheError

__all__ = ["save_model", "load_model", "read_metadata", "SavedModel", "sidecar_path", "convert_pickle",
           "needs_trust", "find_model", "MARKER", "MODEL_FORMAT", "TRUSTED_TYPES"]

MARKER = "featcache-model"
MODEL_FORMAT = 2  # 1: a joblib pickle (featcache 0.1): refused, since loading it could run any code it holds
# Types a skops model file may hold beyond those skops trusts itself (scikit-learn's estimators, numpy).
TRUSTED_TYPES = ("featcache.learn.dense.DenseHead", "featcache.learn.ensemble.SoftVoting",
                 "featcache.learn.kernel.RBFFeatures")
SUFFIXES = {"skops": ".skops", "top": ".safetensors"}


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _kind(model) -> str:
    return "top" if type(model).__name__ == "TopClassifier" else "skops"


def save_model(path, model, metadata: dict) -> Path:
    """Write ``model`` to ``path`` (its suffix is set by the kind: ``.skops`` or ``.safetensors``) and its
    verifying sidecar ``path.json``; returns the path written."""
    kind = _kind(model)
    path = Path(path).with_suffix(SUFFIXES[kind])
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    # The model first, then its sidecar: a crash between the two leaves a sidecar that no longer matches,
    # which load_model refuses, rather than a model that loads with another model's metadata.
    with atomic_path(path) as tmp:
        if kind == "top":
            from safetensors.torch import save_file

            from ..learn.top import export_state

            tensors, extra["top"] = export_state(model)
            save_file(tensors, str(tmp))
        else:
            import skops.io as sio

            sio.dump(model, tmp)
        side = {"marker": MARKER, "format": MODEL_FORMAT, "kind": kind, "file": path.name,
                "sha256": file_sha256(tmp), "size": tmp.stat().st_size, "metadata": metadata, **extra}
    with atomic_path(sidecar_path(path)) as tmp:
        tmp.write_text(json_text(side, indent=1), encoding="utf-8")
    return path


def find_model(path: Path) -> Path:
    """``path``, or the model file inside a run folder."""
    if path.is_dir():
        inside = [path / f"best{s}" for s in SUFFIXES.values() if (path / f"best{s}").is_file()]
        if inside:
            return inside[0]
        raise FeatcacheError(f"{path} is a folder holding no model file (best.skops or best.safetensors, written "
                             f"by sweep or finetune)")
    return path


def _sidecar(path) -> dict:
    path = Path(path).expanduser()
    side = sidecar_path(path)
    if path.suffix == ".h5":
        raise FeatcacheError(f"{path} is a feature cache, not a model file: fit a model on it first "
                             f"(python -m featcache.sweep {path} --out runs/x) and pass runs/x/best.skops")
    if not path.is_file():
        raise FeatcacheError(f"no model file at {path}")
    if not side.is_file():
        raise FeatcacheError(f"refusing to load {path}: it has no {side.name} written by featcache next to it; "
                             f"featcache only loads the model files it wrote and can verify")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FeatcacheError(f"refusing to load {path}: {side.name} is not readable JSON ({e})") from e
    if not isinstance(info, dict) or info.get("marker") != MARKER:
        raise FeatcacheError(f"refusing to load {path}: {side.name} was not written by featcache")
    if info.get("sha256") != file_sha256(path):
        raise FeatcacheError(f"refusing to load {path}: its contents changed since featcache wrote it "
                             f"(SHA-256 differs from {side.name}); rerun the sweep to write it again")
    if info.get("format") == 1:
        raise FeatcacheError(f"refusing to load {path}: it is a pickle written by featcache 0.1, and loading a "
                             f"pickle can run any code it holds. If you trust where it came from, convert it once: "
                             f"python -m featcache convert {path}; or rerun the sweep")
    if info.get("format") != MODEL_FORMAT or info.get("kind") not in SUFFIXES:
        raise FeatcacheError(f"{path} is model format {info.get('format')}; this featcache reads format "
                             f"{MODEL_FORMAT}. Rerun the sweep with this version")
    return info


def read_metadata(path) -> dict:
    """The metadata of a featcache model file (or run folder), from its sidecar checked against the file's bytes;
    nothing is loaded from the model file itself."""
    return _sidecar(find_model(Path(path).expanduser()))["metadata"]


def needs_trust(metadata: dict) -> str:
    """The model spec whose code loading or re-extracting would import and run (a ``package.module:factory``),
    or ``""`` for models featcache builds itself (its built-in, torchvision names, ``timm:NAME``)."""
    model = str((metadata.get("extract_config") or {}).get("model", ""))
    return model if ":" in model and not model.startswith("timm:") else ""


@dataclass
class SavedModel:
    """A verified model file: the fitted model and what it was trained on."""

    path: Path
    pipeline: Any
    metadata: dict

    @property
    def classes(self) -> List[str]:
        return list(self.metadata["classes"])


def load_model(path, trust_model_code: bool = False) -> SavedModel:
    """Verify ``path`` (a model file or a run folder) against its sidecar, then load it without running code
    from it: skops with the trusted types only, or safetensors weights into layers featcache builds."""
    path = find_model(Path(path).expanduser())
    info = _sidecar(path)
    metadata = info["metadata"]
    if info["kind"] == "top":
        return SavedModel(path, _load_top(path, info, trust_model_code), metadata)
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as e:  # not a skops file at all
        raise FeatcacheError(f"refusing to load {path}: not a readable skops file ({type(e).__name__}: {e})") from e
    foreign = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if foreign:
        raise FeatcacheError(f"refusing to load {path}: it holds types featcache does not trust "
                             f"({', '.join(foreign[:5])}); featcache writes only scikit-learn and featcache types")
    try:
        model = sio.load(path, trusted=list(untrusted))
    except (ValueError, TypeError, KeyError) as e:  # e.g. weights that are not the shapes the model declares
        raise FeatcacheError(f"refusing to load {path}: {e}") from e
    return SavedModel(path, model, metadata)


def _load_top(path: Path, info: dict, trust_model_code: bool):
    """A fine-tuned top: its layers rebuilt from the network its metadata names (random weights: every weight is
    then replaced by the file's), its trained weights from the safetensors file."""
    from safetensors.torch import load_file

    from .. import models
    from ..config import ExtractConfig
    from ..learn.top import import_state

    metadata = info["metadata"]
    spec = needs_trust(metadata)
    if spec and not trust_model_code:
        raise FeatcacheError(f"{path} names the model {spec}: rebuilding it imports and runs that code. If you "
                             f"trust it, pass {{trust_model_code}}")
    backbone = models.load_backbone(ExtractConfig.from_record(metadata["extract_config"], weights="none"))
    nodes = models.graph_node_names(backbone.module)
    top = models.split_top(backbone.module, metadata["config"]["from_layer"],
                           models.default_layer(backbone.module, nodes))
    try:
        return import_state(load_file(str(path)), info["top"], top)
    except (RuntimeError, KeyError) as e:
        raise FeatcacheError(f"{path}: its weights do not fit the layers of {backbone.name} after "
                             f"{metadata['config']['from_layer']} ({str(e).splitlines()[0]})") from e


def convert_pickle(path) -> Path:
    """Convert a featcache 0.1 model file (a joblib pickle you trust: this runs any code it holds) to this
    version's format beside it; returns the new file's path."""
    import joblib

    path = Path(path).expanduser()
    side = sidecar_path(path)
    info = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
    if info.get("marker") != MARKER or info.get("format") != 1:
        raise FeatcacheError(f"{path} is not a featcache 0.1 model file (its {side.name} says format "
                             f"{info.get('format')})")
    # 0.1 kept DenseHead in featcache.heads; the classes moved, the pickle names the old module.
    sys.modules.setdefault("featcache.heads", importlib.import_module("featcache.learn.dense"))
    payload = joblib.load(path)
    if not isinstance(payload, dict) or payload.get("marker") != MARKER:
        raise FeatcacheError(f"{path} is not a featcache model file")
    return save_model(path, payload["pipeline"], payload["metadata"])
