"""Writing a cache: rows streamed into a partial file, resumable after a crash, then handed to ``publish``.

Stage: cache (writing, above ``publish``). Imports ``layout``, ``key``, ``publish`` and the shared helpers; never
torch. While an extraction runs, rows go into ``<cache>.partial.h5`` whose datasets are allocated up front, so
later writes only fill raw data and the file stays readable if the process is killed; a committed-rows counter
(``progress/rows_done``) says how far it got, and the finished file appears only through an atomic rename
(:func:`featcache.cache.publish.publish`). Exports :class:`CacheWriter`, its :class:`RowBlock` and
:class:`Reuse`, :func:`find_reusable` (an earlier cache's rows to copy) and :func:`rows_per_chunk`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np

from .._util import create_new, refuse_link
from ..errors import FeatcacheError
from .key import partial_path
from .layout import (
    FORMAT_VERSION,
    OK,
    PARTIAL_SUFFIX,
    PATHS,
    REASON_BYTES,
    REASONS,
    ROWS_DONE,
    SOURCE,
    TODO,
    CacheMeta,
    shard_rows,
)
from .publish import copy_rows, publish

__all__ = ["RowBlock", "Reuse", "CacheWriter", "find_reusable", "rows_per_chunk"]

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
                    copy_rows(old[name], f[name], reuse.old_rows, self.chunk_rows, dst_rows=reuse.rows)
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


def _fsync(f: h5py.File) -> None:
    f.flush()
    os.fsync(f.id.get_vfd_handle())


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
