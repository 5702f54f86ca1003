"""The caches in a cache directory, finished and unfinished: :func:`list_caches` (what ``ls`` prints).

Stage: cache. Imports h5py only.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import h5py

from ..errors import FeatcacheError
from .layout import FEATURES, PARTIAL_SUFFIX, CacheMeta
from .read import incomplete_message

__all__ = ["list_caches"]


def list_caches(cache_dir: Path) -> List[dict]:
    """One record per ``.h5`` file in ``cache_dir``: dataset, model, layers, rows, dims, size, date."""
    if not cache_dir.is_dir():
        raise FeatcacheError(f"no cache directory at {cache_dir} (pass --cache-dir or set FEATCACHE_DIR)")
    records = []
    for path in sorted(cache_dir.glob("*.h5")):
        rec = {"path": str(path), "size_mb": round(path.stat().st_size / 2**20, 2)}
        if path.name.endswith(PARTIAL_SUFFIX):
            rec.update(status=incomplete_message(path))
            records.append(rec)
            continue
        try:
            with h5py.File(path, "r") as f:
                meta = CacheMeta.from_attrs(f.attrs)
                rec.update(
                    status="complete" if meta.complete else "incomplete",
                    dataset=meta.dataset, model=meta.model, layers="+".join(meta.layers), rows=int(meta.n_rows or 0),
                    dims="+".join(str(int(f[FEATURES][k].size // max(1, f[FEATURES][k].shape[0])))
                                  for k in meta.layers),
                    created=meta.created)
        except (OSError, KeyError, ValueError) as e:
            rec.update(status=f"unreadable ({e})")
        records.append(rec)
    return records
