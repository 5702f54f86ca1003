"""Writing a cache: rows streamed into a partial file, resumable after a crash, published by one atomic rename.

Stage: cache. Imports ``layout``, ``key`` and the shared helpers; never torch. While an extraction runs, rows
go into ``<cache>.partial.h5`` whose datasets are allocated up front, so later writes only fill raw data and
the file stays readable if the process is killed; a committed-rows counter (``progress/rows_done``) says how
far it got, and the finished file appears only through an atomic rename (:func:`publish`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
from filelock import FileLock, Timeout

from .._util import atomic_path, create_new, fsync_dir, refuse_link
from ..errors import FeatcacheError
from .key import lock_path, partial_path, partials_of
from .layout import (
    FAILED_PATHS,
    FAILED_REASONS,
    FEATURES,
    FORMAT_VERSION,
    LABELS,
    OK,
    PARTIAL_SUFFIX,
    PATHS,
    REASON_BYTES,
    REASONS,
    ROWS_DONE,
    SOURCE,
    SPLIT,
    TODO,
    VIEWS,
    CacheMeta,
    shard_rows,
)

log = logging.getLogger("featcache")

__all__ = ["RowBlock", "Reuse", "CacheWriter", "publish", "find_reusable", "rows_per_chunk", "recover_finished"]

CHUNK_BYTES = 1 << 20  # aim for ~1 MiB chunks: large enough for fast I/O, small enough to read a few rows
MAP_CHUNK_BYTES = 64 << 10  # spatial maps: a chunk of one or a few images, for random minibatches (finetune)


@dataclass
class RowBlock:
    """Features for the next rows to compute, with which images decoded (``ok``) and why others did not."""

    features: Dict[str, np.ndarray]  # dataset path ("features/<layer>", "views/<layer>") -> rows
    ok: np.ndarray
    reasons: List[str]


@dataclass
class Reuse:
    """Rows an earlier cache of the same extractor config already holds: ``rows[i]`` ← its ``old_rows[i]``."""

    path: Path
    rows: np.ndarray
    old_rows: np.ndarray


def rows_per_chunk(row_bytes: int, n_rows: int, maps: bool = False) -> int:
    """~1 MiB chunks of whole rows (~64 KiB for spatial ``maps``), but at least 16 per file, so progress
    is committed often."""
    target = MAP_CHUNK_BYTES if maps else CHUNK_BYTES
    return int(max(1, min(4096, target // max(1, row_bytes), -(-n_rows // 16))))


class CacheWriter:
    """Streams row blocks into the partial file; :meth:`finish` publishes the cache atomically.

    ``progress/todo`` lists the rows to compute (all rows, or those an earlier cache can't supply)
    and ``progress/rows_done`` how many of them are safely on disk: it only moves after the rows
    it vouches for are flushed. Rows are buffered up to whole chunks before each write.
    """

    def __init__(self, path: Path, source, manifest: dict, shapes: Dict[str, Tuple[int, ...]], dtype: str,
                 fingerprint: str, meta: CacheMeta, reuse: Optional[Reuse] = None,
                 shard: Optional[Tuple[int, int]] = None):
        self.path, self.partial, self.shard = path, partial_path(path, shard), shard
        self.n = len(source)
        self.shapes, self.dtype = shapes, np.dtype(dtype)
        row_bytes = sum(int(np.prod(s)) for s in shapes.values()) * self.dtype.itemsize
        self.chunk_rows = rows_per_chunk(row_bytes, self.n, maps=any(len(s) > 1 for s in shapes.values()))
        self.fingerprint = fingerprint
        self.file = self._open_or_create(source, manifest, meta, reuse)
        self.todo = self.file[TODO][:]
        self.rows_done = int(self.file[ROWS_DONE][()])
        self.reused = len(shard_rows(self.n, self.shard)) - len(self.todo)
        self._pending: List[RowBlock] = []
        self._pending_rows = 0

    @property
    def remaining(self) -> np.ndarray:
        """Row indices still to compute, in order."""
        return self.todo[self.rows_done:]

    def _open_or_create(self, source, manifest, meta: CacheMeta, reuse) -> h5py.File:
        refuse_link(self.partial)
        if self.partial.exists():
            try:
                f = h5py.File(self.partial, "r+")
                if f.attrs.get("fingerprint") == self.fingerprint and ROWS_DONE in f:
                    return f
                f.close()
            except (OSError, KeyError):
                pass  # unreadable leftovers of another run: start over
            self.partial.unlink()
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            create_new(self.partial)  # never through a link planted at this (predictable) name
        except FileExistsError as e:
            raise FeatcacheError(f"{self.partial} appeared while featcache was creating it (another program writes "
                                 "to this folder); run the command again") from e
        f = h5py.File(self.partial, "w")
        try:
            self._create_layout(f, source, manifest, meta, reuse)
        except BaseException:
            f.close()
            self.partial.unlink(missing_ok=True)
            raise
        return f

    def _create_layout(self, f: h5py.File, source, manifest, meta: CacheMeta, reuse: Optional[Reuse]) -> None:
        meta = dataclasses.replace(meta, fingerprint=self.fingerprint, format_version=FORMAT_VERSION,
                                   shard=list(self.shard) if self.shard else None)
        for k, v in meta.to_attrs().items():
            f.attrs[k] = v
        for name, shape in self.shapes.items():
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            # Allocate every chunk now: later writes then only touch raw data, never the index.
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            dcpl.set_chunk((self.chunk_rows,) + tuple(shape))
            dcpl.set_fletcher32()  # a checksum per chunk, checked on every read: verify finds any flipped byte
            space = h5py.h5s.create_simple((self.n,) + tuple(shape))
            group, layer = name.split("/", 1)
            grp = f.require_group(group)
            h5py.h5d.create(grp.id, layer.encode(), h5py.h5t.py_create(self.dtype), space, dcpl=dcpl)
        _write_source(f, source, manifest)
        ok = np.zeros(self.n, np.uint8)
        mine = np.zeros(self.n, bool)
        mine[shard_rows(self.n, self.shard)] = True
        if reuse is not None:  # only the rows this shard owns
            keep = mine[reuse.rows]
            reuse = Reuse(reuse.path, reuse.rows[keep], reuse.old_rows[keep])
        if reuse is not None and len(reuse.rows):
            with h5py.File(reuse.path, "r") as old:
                for name in self.shapes:
                    _copy_rows(old[name], f[name], reuse.old_rows, self.chunk_rows, dst_rows=reuse.rows)
            ok[reuse.rows] = 1
        f.create_dataset(TODO, data=np.flatnonzero((ok == 0) & mine).astype(np.int64))
        f.create_dataset(OK, data=ok)
        f.create_dataset(REASONS, data=np.zeros(self.n, dtype=f"S{REASON_BYTES}"))
        _fsync(f)  # the reused rows reach the disk before anything vouches for them
        f.create_dataset(ROWS_DONE, data=np.int64(0))  # last: its presence says the layout is whole
        _fsync(f)

    def append(self, block: RowBlock) -> None:
        self._pending.append(block)
        self._pending_rows += len(block.ok)
        if self._pending_rows >= self.chunk_rows:
            self._write(whole_chunks_only=True)

    def flush(self) -> None:
        if self._pending_rows:
            self._write(whole_chunks_only=False)

    def _write(self, whole_chunks_only: bool) -> None:
        feats = {k: np.concatenate([b.features[k] for b in self._pending]) for k in self.shapes}
        ok = np.concatenate([b.ok for b in self._pending])
        reasons = [r for b in self._pending for r in b.reasons]
        n = len(ok)
        take = (n // self.chunk_rows) * self.chunk_rows if whole_chunks_only else n
        if take <= 0:
            return
        if self.rows_done + take > len(self.todo):
            raise RuntimeError("more rows than the cache was sized for")
        rows = self.todo[self.rows_done:self.rows_done + take]
        # Contiguous runs (the usual case) are written as slices; scattered rows (after a reuse) by index.
        where = slice(int(rows[0]), int(rows[-1]) + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows
        for k in self.shapes:
            self.file[k][where] = feats[k][:take].astype(self.dtype, copy=False)
        self.file[OK][where] = ok[:take]
        enc = np.array([r.encode("utf-8", "replace")[:REASON_BYTES] for r in reasons[:take]], dtype=f"S{REASON_BYTES}")
        self.file[REASONS][where] = enc
        self._sync()  # rows on the disk first, then the counter that vouches for them
        self.rows_done += take
        self.file[ROWS_DONE][()] = self.rows_done
        self._sync()
        rest = n - take
        self._pending = [RowBlock({k: v[take:] for k, v in feats.items()}, ok[take:], reasons[take:])] if rest else []
        self._pending_rows = rest

    def _sync(self) -> None:
        """Flush HDF5's buffers and fsync the file: after a power cut the counter never vouches for rows the disk
        does not hold (a flush alone only reaches the operating system's cache)."""
        _fsync(self.file)

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()

    def complete(self) -> None:
        """Flush the last rows and close; the partial file then holds every row this writer owns."""
        self.flush()
        if self.rows_done != len(self.todo):
            raise RuntimeError(f"complete() with {self.rows_done} of {len(self.todo)} rows written")
        self.close()

    def finish(self, created_attrs: dict) -> Tuple[int, List[Tuple[str, str]]]:
        """:meth:`complete`, then :func:`publish` this single-process cache."""
        self.complete()
        return publish(self.path, [(self.partial, None)], created_attrs)


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
                            _copy_rows(f[name], dst, mine, step, dst_rows=np.searchsorted(keep, mine))
                _write_listing(out, all_paths, keep, failed)
    finally:
        _close_all(files)
    _remove_partials(path, [p for p, _ in partials])
    return len(keep), failed


def _fsync(f: h5py.File) -> None:
    f.flush()
    os.fsync(f.id.get_vfd_handle())


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


def _copy_rows(src: h5py.Dataset, dst: h5py.Dataset, src_rows: np.ndarray, step: int,
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


def _write_source(f: h5py.File, source, manifest: dict) -> None:
    """``source/*``: every input as listed (paths, labels, split) with its size/mtime/hash, for explain/reuse."""
    grp = f.create_group(SOURCE)
    grp.create_dataset("paths", data=np.array(source.paths, dtype=object), dtype=h5py.string_dtype())
    grp.create_dataset("labels", data=source.labels)
    if source.splits is not None:
        grp.create_dataset("split", data=np.array(source.splits, dtype=object), dtype=h5py.string_dtype())
    for k in ("size", "mtime_ns"):
        if manifest.get(k) is not None:
            grp.create_dataset(k, data=np.asarray(manifest[k], dtype=np.int64))
    if manifest.get("sha256"):
        grp.create_dataset("sha256", data=np.array(manifest["sha256"], dtype=object), dtype=h5py.string_dtype())


def find_reusable(cache_dir: Path, parts: dict, source, manifest: dict) -> Optional[Reuse]:
    """The finished cache of the same extractor config sharing the most unchanged files, if any.

    A file counts as unchanged when its path, size and mtime (and hash, with ``--hash-content``)
    match; its stored features are then copied instead of recomputed.
    """
    if source.root is None or not Path(cache_dir).is_dir():
        return None
    same_config = {k: v for k, v in parts.items() if k not in ("files", "labels", "n_files")}
    current = {key: i for i, key in enumerate(_file_keys(source.paths, manifest))}
    best: Optional[Reuse] = None
    for path in Path(cache_dir).glob("*.h5"):
        if path.name.endswith(PARTIAL_SUFFIX):
            continue
        try:
            with h5py.File(path, "r") as f:
                meta = CacheMeta.from_attrs(f.attrs)
                if not meta.complete or meta.format_version != FORMAT_VERSION:
                    continue
                if {k: v for k, v in meta.key.items() if k not in ("files", "labels", "n_files")} != same_config:
                    continue
                if meta.data_root != str(source.root) or "size" not in f[SOURCE]:
                    continue
                src = f[SOURCE]
                old_manifest = {"size": src["size"][:], "mtime_ns": src["mtime_ns"][:],
                                "sha256": src["sha256"].asstr()[:] if "sha256" in src else None}
                old_keys = _file_keys(src["paths"].asstr()[:], old_manifest)
                row_of = {p: i for i, p in enumerate(f[PATHS].asstr()[:])}
        except (OSError, KeyError, ValueError):
            continue
        pairs = [(current[k], row_of[k[0]]) for k in old_keys if k in current and k[0] in row_of]
        if pairs and (best is None or len(pairs) > len(best.rows)):
            rows, old_rows = (np.array(x, dtype=np.int64) for x in zip(*sorted(pairs)))
            best = Reuse(path, rows, old_rows)
    return best


def _file_keys(paths, manifest: dict) -> List[tuple]:
    """A key per file for reuse: (path, size, mtime), or (path, size, content hash) with ``--hash-content``."""
    sha = manifest.get("sha256")
    if sha is not None and len(sha):
        return [(p, int(s), None, sha[i]) for i, (p, s) in enumerate(zip(paths, manifest["size"]))]
    return [(p, int(s), int(m), None) for p, s, m in zip(paths, manifest["size"], manifest["mtime_ns"])]
