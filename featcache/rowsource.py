"""What an estimator reads rows from: the :class:`RowSource` protocol, :func:`minibatches` over one (or over an
array), and the memory probe (:func:`available_memory`) that decides whether rows are read into memory at all.

Stage: runtime (below cache and learning). Imports numpy and the standard library only. ``featcache.learn`` knows
arrays and this protocol, never the HDF5 cache: :class:`featcache.cache.Rows` is the implementation (rows of a
cache file read lazily in chunk-aligned blocks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

__all__ = ["RowSource", "minibatches", "available_memory", "cgroup_available", "BUFFER_BLOCKS"]

BUFFER_BLOCKS = 8  # a shuffled stream mixes rows within at least this many blocks (the blocks come shuffled)


@runtime_checkable
class RowSource(Protocol):
    """Rows too large for memory, read a block at a time: what the estimators use of :class:`featcache.cache.Rows`.

    It looks like a 2-D array (``len``, ``shape``; ``source[idx]`` is another lazy view of those rows); each row
    has ``row_shape`` (``(n_features,)``, or e.g. ``(C, H, W)`` for activation maps). Reads come in blocks of
    ``block_rows`` rows; ``transform`` (None or a fitted preprocessing step) is applied to each block read.
    """

    block_rows: int
    row_shape: Tuple[int, ...]
    transform: Optional[Callable[[np.ndarray], np.ndarray]]

    @property
    def shape(self) -> Tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, rows) -> "RowSource": ...

    def with_transform(self, transform) -> "RowSource":
        """The same rows, each block passed through ``transform`` after reading."""
        ...

    def blocks(self, rng: Optional[np.random.Generator] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """``(positions, X)`` per block: ``positions`` index this view; in storage order, or shuffled with ``rng``."""
        ...

    def batches(self, batch_size: int, rng: Optional[np.random.Generator] = None
                ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """``(positions, X)`` minibatches; with ``rng``, rows shuffled within a buffer of shuffled blocks."""
        ...


def minibatches(X, rows: np.ndarray, batch_size: int, rng=None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(rows, X[rows])`` minibatches of ``rows``, shuffled with ``rng`` (a numpy Generator or RandomState).

    A :class:`RowSource` is read in its blocks (:meth:`RowSource.batches`); anything else indexable by
    increasing rows (an array, a tensor, an h5py dataset) a batch at a time, each batch's rows sorted.
    """
    if isinstance(X, RowSource):
        for pos, block in X[rows].batches(batch_size, rng):
            yield rows[pos], block
        return
    order = rows[rng.permutation(len(rows))] if rng is not None else rows
    for start in range(0, len(order), batch_size):
        batch = np.sort(order[start:start + batch_size])  # sorted rows read faster from memmaps and HDF5
        yield batch, X[batch]


def cgroup_available(root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")
                     ) -> Optional[int]:
    """Bytes left under this process's cgroup memory limit (a container's ``memory.max`` minus
    ``memory.current``; cgroup v1's ``memory.limit_in_bytes`` minus usage), or None without a limit."""
    v2, v1 = "/", "/"
    try:
        for line in self_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                v2 = path
            elif "memory" in controllers.split(","):
                v1 = path
    except (OSError, ValueError):
        pass
    v1_dir = root / "memory" / v1.lstrip("/")
    candidates = [(root / v2.lstrip("/") / "memory.max", root / v2.lstrip("/") / "memory.current"),
                  (v1_dir / "memory.limit_in_bytes", v1_dir / "memory.usage_in_bytes")]
    for limit_file, usage_file in candidates:
        try:
            limit = limit_file.read_text().strip()
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" (v2) or a huge number (v1): no limit
            return max(0, int(limit) - usage)
    return None


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate: MemAvailable, lowered by a container's cgroup limit and an RLIMIT_DATA
    cap; None if unknown."""
    import resource

    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    in_cgroup = cgroup_available()
    if in_cgroup is not None:
        avail = min(avail, in_cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
        except (OSError, StopIteration, ValueError):
            used = 0
        avail = min(avail, soft - used)
    return avail
