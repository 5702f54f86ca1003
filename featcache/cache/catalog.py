"""The caches in a cache directory: listing them (``ls``), and removing them by name, age, size or disuse.

Stage: cache. Imports h5py and filelock. A cache's last use is recorded by every cache hit and load
(``read.used_stamp``, best effort: a read-only folder keeps the last one recorded); a cache never used since it
was made was last used when it was made.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import h5py

from .._util import human_size, orphans_in
from ..errors import FeatcacheError
from .layout import FEATURES, PARTIAL_SUFFIX, CacheMeta
from .read import incomplete_message, used_stamp
from .use import for_removal

__all__ = ["list_caches", "select_for_pruning", "remove_caches", "remove_orphans", "results_dir_of", "describe_freed",
           "last_used"]

DAY = 86400.0


def _cache_dir(cache_dir: Path) -> Path:
    cache_dir = Path(cache_dir).expanduser()
    if not cache_dir.is_dir():
        raise FeatcacheError(f"no cache directory at {cache_dir} (pass {{cache_dir}} or set FEATCACHE_DIR)")
    return cache_dir


def _weights(record: dict) -> str:
    """The weights a cache's features came from, in a word: random ones marked, since their features are noise."""
    weights = str(record.get("weights", ""))
    return "RANDOM" if weights.startswith("none") else ("pretrained" if weights else "?")


def _precision(key: dict) -> str:
    """The key's precision, with the engine whose own numbers they are (int8, OpenVINO's bf16)."""
    engine = (key or {}).get("engine")
    return str((key or {}).get("precision", "")) + (f" ({engine['name']})" if engine else "")


def list_caches(cache_dir: Path) -> List[dict]:
    """One record per ``.h5`` file in ``cache_dir``: what tells caches apart (dataset, model, weights, layers,
    pool, precision, dtype, views, scales), rows, dims, size, dates, and whether it is finished."""
    records = []
    cache_dir = _cache_dir(cache_dir)
    for path in sorted(cache_dir.glob("*.h5")):
        st = path.stat()
        rec = {"path": str(path), "size_mb": round(st.st_size / 2**20, 2),
               "last_used": time.strftime("%Y-%m-%d", time.localtime(last_used(path)))}
        if path.name.endswith(PARTIAL_SUFFIX):
            rec.update(status=incomplete_message(path))
            records.append(rec)
            continue
        try:
            with h5py.File(path, "r") as f:
                meta = CacheMeta.from_attrs(f.attrs)
                rec.update(
                    status="complete" if meta.complete else "incomplete",
                    dataset=meta.dataset, model=meta.model, weights=_weights(meta.config),
                    layers="+".join(meta.layers), pool=meta.config.get("pool", ""),
                    precision=_precision(meta.key),
                    dtype=meta.config.get("dtype", ""), views=int(meta.config.get("views", 0) or 0),
                    scales=" ".join(f"{float(s):g}" for s in meta.config.get("scales") or [1.0]),
                    rows=int(meta.n_rows or 0),
                    dims="+".join(str(int(f[FEATURES][k].size // max(1, f[FEATURES][k].shape[0])))
                                  for k in meta.layers),
                    created=meta.created, fingerprint=meta.fingerprint)
        except (OSError, KeyError, ValueError) as e:
            rec.update(status=f"unreadable ({e})")
        records.append(rec)
    for tmp in orphans_in(cache_dir):
        st = tmp.stat()
        records.append({"path": str(tmp), "size_mb": round(st.st_size / 2**20, 2),
                        "last_used": time.strftime("%Y-%m-%d", time.localtime(st.st_mtime)),
                        "status": "orphan: left by a process killed while publishing; featcache prune removes it"})
    return records


def remove_orphans(cache_dir: Path, dry_run: bool = False) -> Tuple[int, int]:
    """Delete the temporary files that processes killed while publishing left in ``cache_dir`` (their pid is
    gone, so no one finishes them); returns how many and their bytes."""
    n = freed = 0
    for tmp in orphans_in(_cache_dir(cache_dir)):
        try:
            size = tmp.stat().st_size
            if not dry_run:
                tmp.unlink()
        except FileNotFoundError:  # another prune, or the next run of that cache, was first
            continue
        n, freed = n + 1, freed + size
    return n, freed


def last_used(path: Path) -> float:
    """When the cache was last hit or loaded (its creation, if never), as a timestamp."""
    stamp = used_stamp(path)
    return max(stamp.stat().st_mtime if stamp.exists() else 0.0, Path(path).stat().st_mtime)


def results_dir_of(path: Path, fingerprint: str) -> Path:
    """The default result store of a cache's sweeps (``<cache folder>/sweep-results/<fingerprint[:16]>``)."""
    return Path(path).parent / "sweep-results" / fingerprint[:16]


def select_for_pruning(cache_dir: Path, older_than_days: Optional[float] = None,
                       unused_days: Optional[float] = None, larger_than: Optional[int] = None,
                       everything: bool = False) -> List[dict]:
    """The finished caches that match every criterion given (created before, unused for, larger than); with
    ``everything``, all of them. Unfinished (partial) files are never chosen: a run may still be writing them."""
    if not everything and older_than_days is None and unused_days is None and larger_than is None:
        raise FeatcacheError("say what to prune: --older-than DAYS, --unused-days DAYS, --larger-than SIZE or --all")
    now = time.time()
    chosen = []
    for rec in list_caches(cache_dir):
        if rec["status"] != "complete":
            continue
        st = Path(rec["path"]).stat()
        if older_than_days is not None and now - st.st_mtime < older_than_days * DAY:
            continue
        if unused_days is not None and now - last_used(Path(rec["path"])) < unused_days * DAY:
            continue
        if larger_than is not None and st.st_size <= larger_than:
            continue
        chosen.append(rec)
    return chosen


def remove_caches(paths: Sequence[Path], dry_run: bool = False, force: bool = False) -> int:
    """Delete finished caches (and their default result stores); returns the bytes freed (or that would be). A
    cache a running process uses (:mod:`.use`) is refused, and nothing removed, unless ``force``."""
    checked = []
    for path in map(Path, paths):  # every path first: a bad one removes nothing
        if path.name.endswith(PARTIAL_SUFFIX) or not path.is_file():
            raise FeatcacheError(f"{path} is not a finished cache file; nothing was removed")
        try:
            with h5py.File(path, "r") as f:
                meta = CacheMeta.from_attrs(f.attrs)
        except OSError as e:
            raise FeatcacheError(f"{path} is not an HDF5 cache file ({e}); nothing was removed") from e
        if not meta.fingerprint:
            raise FeatcacheError(f"{path} is not a featcache cache (no fingerprint attribute); nothing was removed")
        checked.append((path, meta))
    freed = 0
    with contextlib.nullcontext() if dry_run else for_removal([p for p, _ in checked], force):
        for path, meta in checked:
            store = results_dir_of(path, meta.fingerprint)
            size = path.stat().st_size + (sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
                                          if store.is_dir() else 0)
            freed += size
            if not dry_run:
                path.unlink()
                used_stamp(path).unlink(missing_ok=True)
                shutil.rmtree(store, ignore_errors=True)
    return freed


def describe_freed(n: int, freed: int, dry_run: bool) -> str:
    return f"{'would remove' if dry_run else 'removed'} {n} cache(s), {human_size(freed)}"
