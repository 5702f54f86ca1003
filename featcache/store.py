"""The HDF5 feature cache: its key, its file layout, crash-safe writing, and reading it back.

A finished cache is one plain HDF5 file (layout in the README) that h5py alone can read.
While an extraction runs, rows go into ``<cache>.partial.h5`` whose datasets are allocated up
front, so later writes only fill raw data and the file stays readable if the process is killed;
a committed-rows counter says how far it got, and the finished file appears only through an
atomic rename.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from .config import FeatcacheError

FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".partial.h5"
REASON_BYTES = 200  # fixed width, so recording a failure never changes the file's structure
CHUNK_BYTES = 1 << 20  # aim for ~1 MiB chunks: large enough for fast I/O, small enough to read a few rows
MAP_CHUNK_BYTES = 64 << 10  # spatial maps: a chunk of one or a few images, for random minibatches (finetune)


# --- the cache key ------------------------------------------------------------------------------

def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_key(parts: dict) -> str:
    """The fingerprint: one hash over every part that can change the stored features."""
    return _sha256_json(parts)


def key_parts(source, manifest: dict, backbone, layers: Sequence[str], pooling: str, precision: str,
              dtype: str, decoder: str = "pillow", views: int = 0, augment: Sequence[str] = ()) -> dict:
    """What the features depend on, each part small enough to compare (files are hashed)."""
    import torch
    import torchvision

    parts = {
        "format_version": FORMAT_VERSION,
        "files": _sha256_json({"paths": source.paths, **manifest}),
        "labels": _sha256_json({"labels": source.labels.tolist(), "splits": source.splits,
                                "classes": source.class_names}),
        "n_files": len(source),
        "model": backbone.name,
        "weights_sha256": backbone.weights_sha256,
        "layers": list(layers),
        "pool": pooling,
        "preprocess": backbone.preprocess.to_dict(),
        "precision": precision,
        "dtype": dtype,
        "decoder": decoder,
        "versions": {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]},
    }
    if views:  # only then, so caches without views keep their keys
        parts["views"] = {"n": views, "augment": list(augment), "seeding": "blake2b(pixels, k)"}
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


# --- writing ------------------------------------------------------------------------------------

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
                 fingerprint: str, attrs: dict, reuse: Optional[Reuse] = None,
                 shard: Optional[Tuple[int, int]] = None):
        self.path, self.partial, self.shard = path, partial_path(path, shard), shard
        self.n = len(source)
        self.shapes, self.dtype = shapes, np.dtype(dtype)
        row_bytes = sum(int(np.prod(s)) for s in shapes.values()) * self.dtype.itemsize
        self.chunk_rows = rows_per_chunk(row_bytes, self.n, maps=any(len(s) > 1 for s in shapes.values()))
        self.fingerprint = fingerprint
        self.file = self._open_or_create(source, manifest, attrs, reuse)
        self.todo = self.file["progress/todo"][:]
        self.rows_done = int(self.file["progress/rows_done"][()])
        self.reused = len(_shard_rows(self.n, self.shard)) - len(self.todo)
        self._pending: List[RowBlock] = []
        self._pending_rows = 0

    @property
    def remaining(self) -> np.ndarray:
        """Row indices still to compute, in order."""
        return self.todo[self.rows_done:]

    def _open_or_create(self, source, manifest, attrs, reuse) -> h5py.File:
        if self.partial.exists():
            try:
                f = h5py.File(self.partial, "r+")
                if f.attrs.get("fingerprint") == self.fingerprint and "progress/rows_done" in f:
                    return f
                f.close()
            except (OSError, KeyError):
                pass  # unreadable leftovers of another run: start over
            self.partial.unlink()
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(self.partial, "w")
        try:
            self._create_layout(f, source, manifest, attrs, reuse)
        except BaseException:
            f.close()
            self.partial.unlink(missing_ok=True)
            raise
        return f

    def _create_layout(self, f: h5py.File, source, manifest, attrs: dict, reuse: Optional[Reuse]) -> None:
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["fingerprint"] = self.fingerprint
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["shard"] = json.dumps(self.shard)
        for name, shape in self.shapes.items():
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            # Allocate every chunk now: later writes then only touch raw data, never the index.
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            dcpl.set_chunk((self.chunk_rows,) + tuple(shape))
            space = h5py.h5s.create_simple((self.n,) + tuple(shape))
            group, layer = name.split("/", 1)
            grp = f.require_group(group)
            h5py.h5d.create(grp.id, layer.encode(), h5py.h5t.py_create(self.dtype), space, dcpl=dcpl)
        _write_source(f, source, manifest)
        ok = np.zeros(self.n, np.uint8)
        mine = np.zeros(self.n, bool)
        mine[_shard_rows(self.n, self.shard)] = True
        if reuse is not None:  # only the rows this shard owns
            keep = mine[reuse.rows]
            reuse = Reuse(reuse.path, reuse.rows[keep], reuse.old_rows[keep])
        if reuse is not None and len(reuse.rows):
            with h5py.File(reuse.path, "r") as old:
                for name in self.shapes:
                    _copy_rows(old[name], f[name], reuse.old_rows, self.chunk_rows, dst_rows=reuse.rows)
            ok[reuse.rows] = 1
        prog = f.create_group("progress")
        prog.create_dataset("todo", data=np.flatnonzero((ok == 0) & mine).astype(np.int64))
        prog.create_dataset("rows_done", data=np.int64(0))
        prog.create_dataset("ok", data=ok)
        prog.create_dataset("reasons", data=np.zeros(self.n, dtype=f"S{REASON_BYTES}"))
        f.flush()

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
        self.file["progress/ok"][where] = ok[:take]
        enc = np.array([r.encode("utf-8", "replace")[:REASON_BYTES] for r in reasons[:take]], dtype=f"S{REASON_BYTES}")
        self.file["progress/reasons"][where] = enc
        self.file.flush()  # rows first, then the counter that vouches for them
        self.rows_done += take
        self.file["progress/rows_done"][()] = self.rows_done
        self.file.flush()
        rest = n - take
        self._pending = [RowBlock({k: v[take:] for k, v in feats.items()}, ok[take:], reasons[take:])] if rest else []
        self._pending_rows = rest

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


def _shard_rows(n: int, shard: Optional[Tuple[int, int]]) -> np.ndarray:
    """Rows of one rank: every ``world``-th row from ``rank``, so each rank sees every kind of file."""
    return np.arange(n) if shard is None else np.arange(shard[0], n, shard[1])


def publish(path: Path, partials: List[Tuple[Path, Optional[Tuple[int, int]]]], created_attrs: dict,
            ) -> Tuple[int, List[Tuple[str, str]]]:
    """Merge finished partial files (one, or one per rank) into the final cache, renamed into place atomically.

    Failed rows are dropped (listed under ``failed/``). Returns the row count and the failures.
    """
    files = [(h5py.File(p, "r"), shard) for p, shard in partials]
    try:
        first = files[0][0]
        n = len(first["source/paths"])
        ok = np.zeros(n, bool)
        reasons = np.zeros(n, dtype=f"S{REASON_BYTES}")
        for f, shard in files:
            rows = _shard_rows(n, shard)
            ok[rows] = f["progress/ok"][:][rows].astype(bool)
            reasons[rows] = f["progress/reasons"][:][rows]
        all_paths = first["source/paths"].asstr()[:]
        failed = [(all_paths[i], reasons[i].decode("utf-8", "replace")) for i in np.flatnonzero(~ok)]
        keep = np.flatnonzero(ok)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            if len(keep) == 0:
                raise FeatcacheError(
                    f"no image could be decoded ({len(failed)} files failed, e.g. {failed[0][0]}: "
                    f"{failed[0][1]}); nothing was written")
            with h5py.File(tmp, "w") as out:
                for k, v in {**first.attrs, **created_attrs}.items():
                    if k != "shard":
                        out.attrs[k] = v
                first.copy(first["source"], out, "source")
                for name in _row_datasets(first):
                    src0 = first[name]
                    step = src0.chunks[0]
                    dst = out.create_dataset(name, shape=(len(keep),) + src0.shape[1:],
                                             dtype=src0.dtype, chunks=(min(len(keep), step),) + src0.shape[1:])
                    for f, shard in files:
                        rows = _shard_rows(n, shard)
                        mine = rows[ok[rows]]
                        if len(mine):
                            _copy_rows(f[name], dst, mine, step, dst_rows=np.searchsorted(keep, mine))
                src = first["source"]
                out.create_dataset("paths", data=all_paths[keep].astype(object), dtype=h5py.string_dtype())
                out.create_dataset("labels", data=src["labels"][:][keep])
                if "split" in src:
                    out.create_dataset("split", data=src["split"].asstr()[:][keep].astype(object),
                                       dtype=h5py.string_dtype())
                grp = out.create_group("failed")
                grp.create_dataset("paths", data=np.array([p for p, _ in failed], dtype=object),
                                   dtype=h5py.string_dtype())
                grp.create_dataset("reasons", data=np.array([r for _, r in failed], dtype=object),
                                   dtype=h5py.string_dtype())
                out.attrs["n_rows"] = len(keep)
                out.attrs["complete"] = True
            os.replace(tmp, path)
        except FeatcacheError:
            _close_all(files)
            for p, _ in partials:  # nothing decodable: there is nothing to resume either
                p.unlink(missing_ok=True)
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        _close_all(files)
    for p in partials_of(path):  # including leftovers of runs with another number of ranks
        p.unlink(missing_ok=True)
    return len(keep), failed


def _row_datasets(f: h5py.File) -> List[str]:
    """Paths of the per-row arrays: ``features/<layer>`` and, with augmented views, ``views/<layer>``."""
    return [f"{group}/{name}" for group in ("features", "views") if group in f for name in f[group]]


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
    grp = f.create_group("source")
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
                if not f.attrs.get("complete") or f.attrs.get("format_version") != FORMAT_VERSION:
                    continue
                old = json.loads(f.attrs["key"])
                if {k: v for k, v in old.items() if k not in ("files", "labels", "n_files")} != same_config:
                    continue
                if str(f.attrs.get("data_root", "")) != str(source.root) or "size" not in f["source"]:
                    continue
                src = f["source"]
                old_manifest = {"size": src["size"][:], "mtime_ns": src["mtime_ns"][:],
                                "sha256": src["sha256"].asstr()[:] if "sha256" in src else None}
                old_keys = _file_keys(src["paths"].asstr()[:], old_manifest)
                row_of = {p: i for i, p in enumerate(f["paths"].asstr()[:])}
        except (OSError, KeyError, ValueError):
            continue
        pairs = [(current[k], row_of[k[0]]) for k in old_keys if k in current and k[0] in row_of]
        if pairs and (best is None or len(pairs) > len(best.rows)):
            rows, old_rows = (np.array(x, dtype=np.int64) for x in zip(*sorted(pairs)))
            best = Reuse(path, rows, old_rows)
    return best


def _file_keys(paths, manifest: dict) -> List[tuple]:
    sha = manifest.get("sha256")
    return [(p, int(s), int(m), sha[i] if sha is not None and len(sha) else None)
            for i, (p, s, m) in enumerate(zip(paths, manifest["size"], manifest["mtime_ns"]))]


# --- reading ------------------------------------------------------------------------------------

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
    meta: dict
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
        return np.asarray(self.X[rows] if not isinstance(self.X, np.ndarray) else self.X[rows]), self.y[rows]

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
            shard = json.loads(f.attrs.get("shard", "null"))
            owned = len(_shard_rows(len(f["source/paths"]), shard))
            done = owned - (len(f["progress/todo"]) - int(f["progress/rows_done"][()]))
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
        version = f.attrs.get("format_version")
        if version is None or "features" not in f:
            raise FeatcacheError(f"{path} is not a featcache file (no format_version attribute)")
        if int(version) != FORMAT_VERSION:
            raise FeatcacheError(f"{path} was written in cache format {version}; this featcache reads format "
                                 f"{FORMAT_VERSION}. Re-extract it with this version (or use the featcache that wrote it)")
        if not f.attrs.get("complete", False):
            raise FeatcacheError(f"{path} is incomplete; rerun the same command to resume")
        features = {k: (f["features"][k] if lazy else f["features"][k][:]) for k in json.loads(f.attrs["layers"])}
        fs = FeatureSet(
            path=path,
            features=features,
            y=f["labels"][:],
            paths=f["paths"].asstr()[:],
            classes=json.loads(f.attrs["class_names"]),
            split=f["split"].asstr()[:] if "split" in f else None,
            meta={k: (json.loads(v) if k in ("config", "key", "versions") else v) for k, v in f.attrs.items()},
            failed=list(zip(f["failed/paths"].asstr()[:], f["failed/reasons"].asstr()[:])),
            views={k: (v if lazy else v[:]) for k, v in f["views"].items()} if "views" in f else {},
            _file=f if lazy else None,
        )
    except BaseException:
        f.close()
        raise
    if not lazy:
        f.close()
    return fs


def read_attrs(path: Path) -> dict:
    """The attributes of a finished cache (cheap: no dataset is read)."""
    with h5py.File(path, "r") as f:
        return {k: (json.loads(v) if k in ("config", "key", "versions") else v) for k, v in f.attrs.items()}


def is_hit(path: Path, fingerprint: str) -> bool:
    """True when ``path`` is a finished cache for exactly this fingerprint."""
    if not path.is_file():
        return False
    try:
        attrs = read_attrs(path)
    except (OSError, ValueError):
        return False
    return attrs.get("fingerprint") == fingerprint and bool(attrs.get("complete")) \
        and attrs.get("format_version") == FORMAT_VERSION


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
