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

__all__ = ["FeatureSet", "load", "read_meta", "is_hit", "incomplete_message", "used_stamp"]


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

    def rows(self, split: Optional[str] = None) -> np.ndarray:
        """Row indices of one split (``train``, ``val`` or ``test``), or of every row."""
        if split is None:
            return np.arange(len(self))
        if self.split is None:
            raise FeatcacheError(f"{self.path} has no splits (its images were not in train/, val/, test/ folders "
                                 f"or a split column); use every row")
        return np.flatnonzero(self.split == split)

    def matrix(self, layer=None, split: Optional[str] = None) -> np.ndarray:
        """Features as one float32 matrix: ``layer`` is a layer name, ``"a+b"`` or ``["a", "b"]`` (side by side,
        in that order, as a sweep joins them; a sweep's ``res.best_layer``), default the layer of :attr:`X`;
        the rows of ``split``, default all."""
        names = self._layer_names(layer)
        missing = [n for n in names if n not in self.features]
        if missing:
            raise FeatcacheError(f"layer {missing[0]!r} is not in {self.path}; it has {', '.join(self.layers)}")
        rows = self.rows(split)
        return np.concatenate([np.asarray(self.features[n][rows] if split else self.features[n][:], dtype=np.float32)
                               .reshape(len(rows), -1) for n in names], axis=1)

    def view_matrix(self, layer=None) -> np.ndarray:
        """The augmented views (``extract --views K``) as one float32 array (rows, K, features): ``layer`` as for
        :meth:`matrix`, each view's layers side by side in that order, as :meth:`matrix` lays out the clean rows.
        The one place a view matrix is built (sweep, predict and fit all use it)."""
        names = self._layer_names(layer)
        missing = [n for n in names if n not in self.views]
        if missing:
            raise FeatcacheError(f"{self.path} has no augmented views of layer {missing[0]!r} (extract with {{views}})")
        blocks = [np.asarray(self.views[n][:], dtype=np.float32).reshape(len(self), self.views[n].shape[1], -1)
                  for n in names]
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=2)

    def _layer_names(self, layer) -> List[str]:
        """``"a+b"``, ``["a", "b"]`` or None (the layer of :attr:`X`) as a list of layer names."""
        return layer.split("+") if isinstance(layer, str) else list(layer or self.layers[-1:])

    def labels(self, split: Optional[str] = None) -> np.ndarray:
        """Class names of the rows of ``split`` (default all; ``""`` for unlabelled rows): what a fitted
        model's ``predict`` returns, so ``(model.predict(X) == fs.labels("test")).mean()`` is an accuracy."""
        names = np.asarray(list(self.classes) + [""], dtype=object)
        return names[self.y[self.rows(split)]]

    def subset(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of one split: the features of :attr:`X` and class indices."""
        rows = self.rows(split)
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
    if path.is_dir():
        raise FeatcacheError(folder_message(path))
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
    except OSError as e:  # h5py could not read a dataset: damaged bytes (a checksum mismatch) or a cut file
        f.close()
        raise FeatcacheError(f"{path} is damaged ({str(e).splitlines()[0]}); python -m featcache verify {path} "
                             f"says where; extract it again") from e
    except BaseException:
        f.close()
        raise
    if not lazy:
        f.close()
    _mark_used(path)
    return fs


def folder_message(path: Path) -> str:
    """What to do when a folder is given where a cache file is expected."""
    from ..sources import is_image_file

    if any(is_image_file(p) for p in path.rglob("*")):
        return (f"{path} is an image folder, not a feature cache: run python -m featcache.extract --data {path} "
                f"first; it prints the cache file's path")
    caches = sorted(path.glob("*.h5"))
    if caches:
        return (f"{path} is a folder of caches; pass one cache file, e.g. {caches[0]} "
                f"(python -m featcache.ls lists them)")
    return f"{path} is a folder, not a feature cache (.h5 file written by featcache.extract)"


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
    hit = meta.fingerprint == fingerprint and meta.complete and meta.format_version == FORMAT_VERSION
    if hit:
        _mark_used(path)
    return hit


def used_stamp(path: Path) -> Path:
    """The file whose modification time is the cache's last use (a hit or a load), for ``prune --unused-days``.
    Not the cache's own access time: listing or verifying a cache reads it too, and is no use of it."""
    return Path(path).parent / ".used" / Path(path).name


def _mark_used(path: Path) -> None:
    stamp = used_stamp(path)
    try:
        stamp.parent.mkdir(exist_ok=True)
        stamp.touch()
    except OSError:
        pass  # a read-only cache folder: its caches keep their last recorded use
