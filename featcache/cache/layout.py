"""The cache file's layout: format version, dataset paths, and its attributes as a typed :class:`CacheMeta`.

Stage: cache (the file format). Imports numpy only (no h5py, no torch); every module that reads or
writes a cache names its datasets and attributes through here, never as string literals.
A finished cache is one plain HDF5 file that h5py alone can read (docs/cache-format.md).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["FORMAT_VERSION", "PARTIAL_SUFFIX", "REASON_BYTES", "FEATURES", "VIEWS", "LABELS", "PATHS", "SPLIT",
           "FAILED_PATHS", "FAILED_REASONS", "SOURCE", "TODO", "ROWS_DONE", "OK", "REASONS", "feature_path",
           "views_path", "shard_rows", "CacheMeta", "FEATURE_PARTS", "feature_identity"]

FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".partial.h5"
REASON_BYTES = 200  # fixed width, so recording a failure never changes the file's structure

# Datasets of a finished cache.
FEATURES = "features"  # group: features/<layer>, N x D (or N x C x H x W with --pool none)
VIEWS = "views"  # group: views/<layer>, N x K x D augmented views (extract --views K)
LABELS = "labels"
PATHS = "paths"
SPLIT = "split"
FAILED_PATHS = "failed/paths"
FAILED_REASONS = "failed/reasons"
SOURCE = "source"  # group: every input as listed: paths, labels, split, size, mtime_ns, sha256
# Datasets of a partial file only (resume state).
TODO = "progress/todo"
ROWS_DONE = "progress/rows_done"
OK = "progress/ok"
REASONS = "progress/reasons"


def shard_rows(n: int, shard: Optional[Tuple[int, int]]) -> np.ndarray:
    """Rows of one rank: every ``world``-th row from ``rank``, so each rank sees every kind of file."""
    return np.arange(n) if shard is None else np.arange(shard[0], n, shard[1])


def feature_path(layer: str) -> str:
    return f"{FEATURES}/{layer}"


def views_path(layer: str) -> str:
    return f"{VIEWS}/{layer}"


@dataclass(frozen=True)
class CacheMeta:
    """A cache's attributes, typed. Lists and dicts are stored as JSON strings (HDF5 attributes are flat).

    ``meta.get("config")`` and ``meta["key"]`` work as on a dict, for code written against the old dict.
    """

    fingerprint: str = ""
    format_version: Optional[int] = None
    complete: bool = False
    n_rows: Optional[int] = None
    dataset: str = ""
    data_root: str = ""
    model: str = ""
    created: str = ""
    layers: List[str] = field(default_factory=list)
    class_names: List[str] = field(default_factory=list)
    config: Dict[str, Any] = field(default_factory=dict)  # the extractor settings (for humans and predict)
    key: Dict[str, Any] = field(default_factory=dict)  # each part of the cache key
    versions: Dict[str, str] = field(default_factory=dict)
    timings: Dict[str, Any] = field(default_factory=dict)
    shard: Optional[List[int]] = None  # partial files of one torchrun rank: [rank, world]
    extra: Dict[str, Any] = field(default_factory=dict)  # attributes this version does not know

    @classmethod
    def from_attrs(cls, attrs) -> "CacheMeta":
        """Decode an HDF5 attribute mapping (JSON strings become lists/dicts; numpy scalars become Python)."""
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        values, extra = {}, {}
        for k, v in attrs.items():
            v = v.item() if hasattr(v, "item") else v
            if k not in known:
                extra[k] = v
            elif k in _JSON:
                values[k] = json.loads(v) if isinstance(v, (str, bytes)) else v
            else:
                values[k] = v
        return cls(**values, extra=extra)

    def to_attrs(self, only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """The attributes to write as the format stores them: every field that is not None, or just ``only``."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "extra":
                out.update(v if only is None else {})
            elif v is not None and (only is None or f.name in only):
                out[f.name] = json.dumps(v, sort_keys=True) if f.name in _JSON else v
        return out

    def get(self, name: str, default=None):
        return getattr(self, name, self.extra.get(name, default)) if name != "extra" else default

    def __getitem__(self, name: str):
        return self.get(name)


_JSON = ("layers", "class_names", "config", "key", "versions", "timings", "shard")

# Parts of a cache's key that decide what its features mean (the files and labels may differ).
FEATURE_PARTS = ("model", "weights_sha256", "pool", "preprocess", "precision", "dtype", "scales", "engine")


def feature_identity(meta: CacheMeta) -> Dict[str, Any]:
    """What the features of a cache mean, from its stored key (see ``cache.key.key_parts``)."""
    return {part: meta.key.get(part) for part in FEATURE_PARTS}
