"""Publishing a cache: finished partial files become the cache under its final name, atomically.

Stage: cache (publishing, below ``write``). Imports ``layout``, ``key`` and the shared helpers; never torch.
Exports :func:`publish` (merge one partial file, or one per rank, into the cache: dropping failed rows, or
finishing a whole single file in place; fsynced, then one atomic rename), :func:`recover_finished` (rename a
partial that was finished when its run was killed before the rename) and :func:`copy_rows` (rows copied between
HDF5 datasets a block at a time, also used by the writer to reuse an earlier cache's rows). Leftover partials of
other runs are removed only when their writer is provably gone.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

import h5py
import numpy as np
from filelock import FileLock, Timeout

from .._util import atomic_path, fsync_dir, refuse_link
from ..errors import FeatcacheError
from .key import lock_path, partial_path, partials_of
from .layout import (
    FAILED_PATHS,
    FAILED_REASONS,
    FEATURES,
    LABELS,
    OK,
    PARTIAL_SUFFIX,
    PATHS,
    REASON_BYTES,
    REASONS,
    SOURCE,
    SPLIT,
    VIEWS,
    CacheMeta,
    shard_rows,
)

log = logging.getLogger("featcache")

__all__ = ["publish", "recover_finished", "copy_rows"]


def publish(path: Path, partials: List[Tuple[Path, Optional[Tuple[int, int]]]], created_attrs: dict,
            ) -> Tuple[int, List[Tuple[str, str]]]:
    """Merge finished partial files (one, or one per rank) into the final cache, renamed into place atomically.

    Failed rows are dropped (listed under ``failed/``). Returns the row count and the failures.
    """
    files = [(h5py.File(p, "r"), shard) for p, shard in partials]
    try:
        first = files[0][0]
        n = len(first[f"{SOURCE}/paths"])
        ok = np.zeros(n, bool)
        reasons = np.zeros(n, dtype=f"S{REASON_BYTES}")
        for f, shard in files:
            rows = shard_rows(n, shard)
            ok[rows] = f[OK][:][rows].astype(bool)
            reasons[rows] = f[REASONS][:][rows]
        all_paths = first[f"{SOURCE}/paths"].asstr()[:]
        failed = [(all_paths[i], reasons[i].decode("utf-8", "replace")) for i in np.flatnonzero(~ok)]
        keep = np.flatnonzero(ok)
        if len(keep) == 0:
            _close_all(files)
            for p, _ in partials:  # nothing decodable: there is nothing to resume either
                p.unlink(missing_ok=True)
            raise FeatcacheError(
                f"no image could be decoded ({len(failed)} files failed, e.g. {failed[0][0]}: "
                f"{failed[0][1]}); nothing was written")
        if len(files) == 1 and files[0][1] is None and ok.all():  # nothing to drop or merge: finish it in place
            _close_all(files)
            _finish_in_place(path, partials[0][0], all_paths, keep, created_attrs)
        else:
            with atomic_path(path) as tmp, h5py.File(tmp, "w") as out:
                for k, v in {**first.attrs, **created_attrs}.items():
                    if k != "shard":
                        out.attrs[k] = v
                first.copy(first[SOURCE], out, SOURCE)
                for name in _row_datasets(first):
                    src0 = first[name]
                    step = src0.chunks[0]
                    dst = out.create_dataset(name, shape=(len(keep),) + src0.shape[1:], fletcher32=True,
                                             dtype=src0.dtype, chunks=(min(len(keep), step),) + src0.shape[1:])
                    for f, shard in files:
                        rows = shard_rows(n, shard)
                        mine = rows[ok[rows]]
                        if len(mine):
                            copy_rows(f[name], dst, mine, step, dst_rows=np.searchsorted(keep, mine))
                _write_listing(out, all_paths, keep, failed)
    finally:
        _close_all(files)
    _remove_partials(path, [p for p, _ in partials])
    return len(keep), failed


def _write_listing(out: h5py.File, all_paths, keep: np.ndarray, failed) -> None:
    """The finished cache's row listing (paths, labels, splits of the kept rows), its failures, and the marks that
    make it a finished cache."""
    src = out[SOURCE]
    for name in (PATHS, LABELS, SPLIT, FAILED_PATHS, FAILED_REASONS):  # a finish interrupted before: write again
        if name in out:
            del out[name]
    out.create_dataset(PATHS, data=all_paths[keep].astype(object), dtype=h5py.string_dtype())
    out.create_dataset(LABELS, data=src[LABELS][:][keep], fletcher32=True)
    if SPLIT in src:
        out.create_dataset(SPLIT, data=src[SPLIT].asstr()[:][keep].astype(object), dtype=h5py.string_dtype())
    out.create_dataset(FAILED_PATHS, data=np.array([p for p, _ in failed], dtype=object), dtype=h5py.string_dtype())
    out.create_dataset(FAILED_REASONS, data=np.array([r for _, r in failed], dtype=object),
                       dtype=h5py.string_dtype())
    out.attrs["n_rows"] = len(keep)
    out.attrs["complete"] = True


def _finish_in_place(path: Path, partial: Path, all_paths, keep: np.ndarray, created_attrs: dict) -> None:
    """Make a partial file holding every row the finished cache (listing, attributes, no resume state) and rename
    it into place: its features are never copied, so a 100 GB cache is written once, not twice. It is marked
    complete before its resume state goes, so a finish killed half-way is completed by :func:`recover_finished`."""
    with h5py.File(partial, "r+") as f:
        for k, v in created_attrs.items():
            f.attrs[k] = v
        _write_listing(f, all_paths, keep, [])
        f.flush()
        del f["progress"]  # its bytes stay unused inside the file (HDF5 does not shrink): ~0.2 KB per row
    refuse_link(partial)
    with open(partial, "rb+") as raw:
        os.fsync(raw.fileno())
    os.replace(partial, path)
    fsync_dir(path.parent)


def recover_finished(path: Path, fingerprint: str) -> bool:
    """Rename into place a partial file that was completely finished when its run was killed before the rename;
    True when it did. (Call it holding the cache's lock.)"""
    partial = partial_path(path)
    try:
        with h5py.File(partial, "r") as f:
            meta = CacheMeta.from_attrs(f.attrs)
            whole = all(name in f for name in (PATHS, LABELS, FAILED_PATHS, FAILED_REASONS)) \
                and meta.n_rows is not None and len(f[PATHS]) == len(f[LABELS]) == int(meta.n_rows)
    except (OSError, ValueError, KeyError):
        return False
    if not (meta.complete and meta.fingerprint == fingerprint and whole):
        return False
    refuse_link(partial)
    with open(partial, "rb+") as raw:
        os.fsync(raw.fileno())
    os.replace(partial, path)
    fsync_dir(path.parent)
    return True


def _remove_partials(path: Path, merged: List[Path]) -> None:
    """Delete the partial files just merged, and leftovers of runs with another number of ranks whose writer is
    provably gone: the caller holds the cache's lock (so no single-process run or rank 0 is writing), and a rank's
    own lock is free. A partial a live rank may still be writing is left, and said so."""
    for p in partials_of(path):
        match = re.search(r"\.rank(\d+)of\d+" + re.escape(PARTIAL_SUFFIX) + "$", p.name)
        rank = int(match.group(1)) if match else 0
        if p in merged or rank == 0:
            p.unlink(missing_ok=True)
            continue
        lock = FileLock(str(lock_path(path)) + f".rank{rank}")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("left %s: rank %d of another run may still be writing it", p, rank)
            continue
        try:
            p.unlink(missing_ok=True)
        finally:
            lock.release()


def _row_datasets(f: h5py.File) -> List[str]:
    """Paths of the per-row arrays: ``features/<layer>`` and, with augmented views, ``views/<layer>``."""
    return [f"{group}/{name}" for group in (FEATURES, VIEWS) if group in f for name in f[group]]


def _close_all(files) -> None:
    for f, _ in files:
        if f.id.valid:
            f.close()


def copy_rows(src: h5py.Dataset, dst: h5py.Dataset, src_rows: np.ndarray, step: int,
               dst_rows: Optional[np.ndarray] = None) -> None:
    """``dst[dst_rows] = src[src_rows]`` a block at a time, never all in memory.

    ``dst_rows`` (default ``0..n``) must be increasing, as h5py requires; ``src_rows`` may be in any order.
    """
    step = max(step, 1)
    for start in range(0, len(src_rows), step):
        idx = src_rows[start:start + step]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if hi - lo <= 4 * len(idx):  # one contiguous read
            block = src[lo:hi][idx - lo]
        else:
            uniq = np.unique(idx)
            block = src[uniq][np.searchsorted(uniq, idx)]
        where = slice(start, start + len(idx)) if dst_rows is None else dst_rows[start:start + step]
        dst[where] = block
