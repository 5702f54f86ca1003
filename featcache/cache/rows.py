"""A cache's rows read lazily in blocks, for data larger than memory: :class:`Rows`.

Stage: cache (reading). Imports h5py, numpy and ``rowsource``. :class:`Rows` is a view of some rows of a cache's
feature layer(s), read in blocks of whole HDF5 chunks: the HDF5 implementation of
:class:`featcache.rowsource.RowSource`, the protocol training (``featcache.learn``) reads rows through.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import h5py
import numpy as np

from ..rowsource import BUFFER_BLOCKS
from .layout import FEATURES, CacheMeta

__all__ = ["Rows", "BLOCK_BYTES"]

BLOCK_BYTES = 4 << 20  # rows read at once: whole HDF5 chunks adding up to about 4 MiB of float32
# rows are shuffled within at least BUFFER_BLOCKS blocks (the blocks come in a shuffled order) ...
BUFFER_BYTES = 8 * BLOCK_BYTES  # ... and at least this much float32: smaller blocks mix more places of the file


class Rows:
    """Rows ``index`` of the feature layer(s) ``layers`` of the cache at ``path``, read lazily (a
    :class:`~featcache.rowsource.RowSource`).

    It looks like a 2-D array to the sweep (``len``, ``shape``; ``rows[idx]`` is another lazy view)
    and pickles as its path and row numbers, so joblib workers open the file themselves. Reads are
    ``block_rows`` rows, aligned to the file's chunks (default: whole chunks, about 4 MiB). With
    ``maps=True`` (one layer) rows keep their stored shape, e.g. (C, H, W) activations for fine-tuning.
    """

    def __init__(self, path, layers: Optional[Sequence[str]] = None, index=None, block_rows: Optional[int] = None,
                 maps: bool = False):
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            # default: the last layer, as FeatureSet.X
            self.layers = list(layers or CacheMeta.from_attrs(f.attrs).layers[-1:])
            datasets = [f[FEATURES][name] for name in self.layers]
            n_file = datasets[0].shape[0]
            self.n_features = sum(int(np.prod(d.shape[1:])) for d in datasets)
            chunk = datasets[0].chunks[0] if datasets[0].chunks else 1
            self.row_shape = tuple(datasets[0].shape[1:]) if maps else (self.n_features,)
        if maps and len(self.layers) != 1:
            raise ValueError(f"maps=True reads one layer; got {self.layers}")
        if block_rows is not None and (not isinstance(block_rows, int) or block_rows < 1):
            raise ValueError(f"block_rows must be a positive integer; got {block_rows!r}")
        self.block_rows = block_rows or chunk * max(1, BLOCK_BYTES // (chunk * 4 * self.n_features))
        self.index = np.arange(n_file) if index is None else np.asarray(index, dtype=np.int64)
        self.transform = None
        self._file: Optional[h5py.File] = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self.index),) + self.row_shape

    def __getitem__(self, rows) -> "Rows":
        view = copy.copy(self)
        view.index, view._file = self.index[rows], None
        return view

    def with_transform(self, transform) -> "Rows":
        """The same rows, each block passed through ``transform`` (a fitted preprocessing step) after reading."""
        view = self[:]
        view.transform = transform
        return view

    def __getstate__(self):
        return {**self.__dict__, "_file": None}

    def _datasets(self):
        if self._file is None or not self._file.id.valid:
            self._file = h5py.File(self.path, "r")
        return [self._file[FEATURES][name] for name in self.layers]

    def blocks(self, rng: Optional[np.random.Generator] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """``(positions, X)`` per block of ``block_rows`` file rows; in file order, or shuffled with ``rng``.

        ``positions`` index this view (``0 .. len - 1``); ``X`` is float32 (rows of ``row_shape``), transformed
        when a transform is set.
        """
        order = np.argsort(self.index, kind="stable")
        rows = self.index[order]
        block = rows // self.block_rows
        starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]]) if len(rows) else np.array([], int)
        bounds = np.stack([starts, np.r_[starts[1:], len(rows)]], axis=1).astype(np.int64)
        if rng is not None:
            bounds = bounds[rng.permutation(len(bounds))]
        datasets = self._datasets()
        for a, b in bounds:
            lo, hi = int(rows[a]), int(rows[b - 1]) + 1
            parts = [d[lo:hi].reshape(hi - lo, -1) for d in datasets]
            X = (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))[rows[a:b] - lo]
            X = X.astype(np.float32, copy=False).reshape((b - a,) + self.row_shape)
            yield order[a:b], (self.transform(X) if self.transform is not None else X)

    def batches(self, batch_size: int, rng: Optional[np.random.Generator] = None
                ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """``(positions, X)`` minibatches; with ``rng``, from shuffled blocks, rows shuffled within a buffer of
        blocks."""
        row_bytes = 4 * int(np.prod(self.row_shape))
        limit = (max(batch_size, BUFFER_BLOCKS * self.block_rows, BUFFER_BYTES // row_bytes) if rng is not None
                 else batch_size)
        held_pos, held_X, held = [], [], 0
        for pos, X in self.blocks(rng):
            held_pos.append(pos)
            held_X.append(X)
            held += len(pos)
            if held >= limit:
                pos, X = np.concatenate(held_pos), np.concatenate(held_X)
                if rng is not None:
                    perm = rng.permutation(len(pos))
                    pos, X = pos[perm], X[perm]
                stop = len(pos) - len(pos) % batch_size
                for start in range(0, stop, batch_size):
                    yield pos[start:start + batch_size], X[start:start + batch_size]
                held_pos, held_X, held = [pos[stop:]], [X[stop:]], len(pos) - stop
        if held:
            pos, X = np.concatenate(held_pos), np.concatenate(held_X)
            if rng is not None:
                perm = rng.permutation(len(pos))
                pos, X = pos[perm], X[perm]
            for start in range(0, len(pos), batch_size):
                yield pos[start:start + batch_size], X[start:start + batch_size]
