"""The cache key: what the stored features depend on, hashed into a fingerprint, and the file names it gives.

Stage: cache. Imports ``layout``, ``_util`` and ``config`` (``plain_scales``); torch's and torchvision's versions
come from their installed metadata, so computing a key imports neither. Changing what enters the key changes every
fingerprint: bump ``FORMAT_VERSION`` or say why not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .._util import library_versions, package_versions, sha256_json
from ..config import plain_scales
from .layout import FORMAT_VERSION, PARTIAL_SUFFIX

__all__ = ["ModelIdentity", "cache_key", "key_parts", "files_fingerprint", "cache_path", "partial_path",
           "partials_of", "lock_path", "FEATURES_VERSION"]

# featcache's own code that changes feature values: decoding and RGB conversion (``decode``), resizing and
# cropping, normalisation and pooling (``models.extractor``), augmented views. Bump it with any change there, so
# no cache made by the old code is reused (tests/test_decode.py pins the decoded pixels of this version).
FEATURES_VERSION = 2


@dataclass
class ModelIdentity:
    """What the key knows of a model: its name, its weights' checksum, its preprocessing (``Preprocess.to_dict()``)
    and the versions of the code that builds it. ``models.Backbone.identity()`` makes one."""

    name: str
    weights_sha256: str
    preprocess: dict
    code: dict = field(default_factory=dict)


def cache_key(parts: dict) -> str:
    """The fingerprint: one hash over every part that can change the stored features."""
    return sha256_json(parts)


def files_fingerprint(paths, manifest: dict) -> str:
    """The key's ``files`` part: each path with its size and modification time, or, when the manifest holds
    content hashes (``--hash-content``), with its size and hash only, so a touched file with the same bytes
    is the same file."""
    if manifest.get("sha256"):
        manifest = {k: v for k, v in manifest.items() if k != "mtime_ns"}
    return sha256_json({"paths": list(paths), **manifest})


def key_parts(source, manifest: dict, model: ModelIdentity, layers: Sequence[str], pooling: str, precision: str,
              dtype: str, decoder: str = "pillow", views: int = 0, augment: Sequence[str] = (),
              scales: Sequence[float] = (1.0,), engine: Optional[dict] = None) -> dict:
    """What the features depend on, each part small enough to compare (files are hashed). ``engine`` is the part an
    engine adds when its features are its own (int8, OpenVINO's bf16); engines that agree with torch add nothing."""
    parts = {
        "format_version": FORMAT_VERSION,
        "files": files_fingerprint(source.paths, manifest),
        "labels": sha256_json({"labels": source.labels.tolist(), "splits": source.splits,
                                "classes": source.class_names}),
        "n_files": len(source),
        "model": model.name,
        "weights_sha256": model.weights_sha256,
        "layers": list(layers),
        "pool": pooling,
        "preprocess": dict(model.preprocess),
        "precision": precision,
        "dtype": dtype,
        "decoder": decoder,
        "versions": {**library_versions("torch", "torchvision"), **package_versions("pillow"),
                     **model.code, "featcache_features": FEATURES_VERSION},
    }
    if views:  # only then, so caches without views keep their keys
        parts["views"] = {"n": views, "augment": list(augment), "seeding": "blake2b(pixels, k)"}
    if not plain_scales(scales):  # likewise
        parts["scales"] = [float(s) for s in scales]
    if engine:
        parts["engine"] = dict(engine)
    return parts


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:limit] or "x"


def cache_path(cache_dir: Path, source_name: str, model: str, layers: Sequence[str], fingerprint: str) -> Path:
    """A readable name: ``<dataset>__<model>__<layers>__<hash12>.h5``."""
    name = "__".join([_slug(source_name), _slug(model), _slug("+".join(layers)), fingerprint[:12]])
    return Path(cache_dir) / f"{name}.h5"


def partial_path(path: Path, shard: Optional[Tuple[int, int]] = None) -> Path:
    """``<cache>.partial.h5``, or ``<cache>.rank<r>of<w>.partial.h5`` for one rank of a torchrun job."""
    middle = f".rank{shard[0]}of{shard[1]}" if shard else ""
    return path.with_name(path.name[: -len(".h5")] + middle + PARTIAL_SUFFIX)


def partials_of(path: Path) -> List[Path]:
    """Every partial file of the cache at ``path`` (single-process and per-rank)."""
    stem = path.name[: -len(".h5")]
    return sorted(p for p in path.parent.glob(stem + ".*" + PARTIAL_SUFFIX)) + \
        ([partial_path(path)] if partial_path(path).exists() else [])


def lock_path(path: Path) -> Path:
    return path.parent / ".locks" / (path.name + ".lock")
