"""Reading a cache: :func:`load` opens a finished file as a :class:`FeatureSet`; :func:`is_hit` decides reuse.

Stage: cache. Imports h5py and numpy, never torch or scikit-learn, so ``featcache.load`` and the ``ls`` and
``verify`` commands start fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np

from ..errors import FeatcacheError
from .key import partials_of
from .layout import (
    FAILED_PATHS,
    FAILED_REASONS,
    FEATURES,
    FORMAT_VERSION,
    LABELS,
    PARTIAL_SUFFIX,
    PATHS,
    ROWS_DONE,
    SOURCE,
    SPLIT,
    TODO,
    VIEWS,
    CacheMeta,
    shard_rows,
)

__all__ = ["FeatureSet", "load", "read_meta", "is_hit", "incomplete_message"]


@dataclass
class FeatureSet:
    """A cache opened for use: ``X`` (the last layer), ``y``, ``paths``, ``classes``, ``split``, ``meta``.

    With ``lazy=True`` the feature arrays are h5py datasets read on demand (close it afterwards,
    or use it as a context manager); otherwise they are numpy arrays in memory.
    """

    path: Path
    features: Dict[str, object]
    y: np.ndarray
    paths: np.ndarray
    classes: List[str]
    split: Optional[np.ndarray]
    meta: CacheMeta
    failed: List[Tuple[str, str]] = field(default_factory=list)
    views: Dict[str, object] = field(default_factory=dict)  # layer -> (N, K, D) augmented views, if extracted
    _file: Optional[h5py.File] = None

    @property
    def layers(self) -> List[str]:
        return list(self.features)

    @property
    def X(self):
        """The last layer's features (the deepest, for the default layers); ``features[name]`` has every layer."""
        return self.features[self.layers[-1]]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of one split (``train``, ``val`` or ``test``)."""
        if self.split is None:
            raise FeatcacheError(f"{self.path} has no splits")
        rows = np.flatnonzero(self.split == split)
        return np.asarray(self.X[rows]), self.y[rows]

    def close(self) -> None:
        if self._file is not None and self._file.id.valid:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def incomplete_message(partial: Path) -> str:
    try:
        with h5py.File(partial, "r") as f:
            shard = CacheMeta.from_attrs(f.attrs).shard
            owned = len(shard_rows(len(f[f"{SOURCE}/{PATHS}"]), shard))
            done = owned - (len(f[TODO]) - int(f[ROWS_DONE][()]))
        who = f" (rank {shard[0]} of {shard[1]})" if shard else ""
        return f"incomplete{who}: {done:,} of {owned:,} rows; rerun the same command to resume"
    except (OSError, KeyError):
        return "incomplete and unreadable; rerun the same command to start it again"


def load(path, lazy: bool = False) -> FeatureSet:
    """Open a finished cache; a clear error for missing, partial or other-version files."""
    path = Path(path).expanduser()
    if path.name.endswith(PARTIAL_SUFFIX):
        raise FeatcacheError(f"{path} is {incomplete_message(path)}")
    if not path.exists():
        if partials_of(path):
            raise FeatcacheError(f"{path} is {incomplete_message(partials_of(path)[0])}")
        raise FeatcacheError(f"no cache at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FeatcacheError(f"{path} is not a readable HDF5 file ({e})") from e
    try:
        meta = CacheMeta.from_attrs(f.attrs)
        version = meta.format_version
        if version is None or FEATURES not in f:
            raise FeatcacheError(f"{path} is not a featcache file (no format_version attribute)")
        if int(version) != FORMAT_VERSION:
            raise FeatcacheError(f"{path} was written in cache format {version}; this featcache reads format "
                                 f"{FORMAT_VERSION}. Re-extract it with this version (or use the featcache that "
                                 f"wrote it)")
        if not meta.complete:
            raise FeatcacheError(f"{path} is incomplete; rerun the same command to resume")
        features = {k: (f[FEATURES][k] if lazy else f[FEATURES][k][:]) for k in meta.layers}
        fs = FeatureSet(
            path=path,
            features=features,
            y=f[LABELS][:],
            paths=f[PATHS].asstr()[:],
            classes=list(meta.class_names),
            split=f[SPLIT].asstr()[:] if SPLIT in f else None,
            meta=meta,
            failed=list(zip(f[FAILED_PATHS].asstr()[:], f[FAILED_REASONS].asstr()[:])),
            views={k: (v if lazy else v[:]) for k, v in f[VIEWS].items()} if VIEWS in f else {},
            _file=f if lazy else None,
        )
    except BaseException:
        f.close()
        raise
    if not lazy:
        f.close()
    return fs


def read_meta(path: Path) -> CacheMeta:
    """The attributes of a cache (cheap: no dataset is read)."""
    with h5py.File(path, "r") as f:
        return CacheMeta.from_attrs(f.attrs)


def is_hit(path: Path, fingerprint: str) -> bool:
    """True when ``path`` is a finished cache for exactly this fingerprint."""
    if not path.is_file():
        return False
    try:
        meta = read_meta(path)
    except (OSError, ValueError):
        return False
    return meta.fingerprint == fingerprint and meta.complete and meta.format_version == FORMAT_VERSION
