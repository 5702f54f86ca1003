"""``explain``: why a run would (not) hit the cache, part by part.

Stage: extraction. It builds the same cache key ``extract`` would (same flags, through :func:`plan_extraction`),
then compares it with the nearest existing cache: which files were added, removed or changed, and which
settings differ.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import h5py

from ..cache import PARTIAL_SUFFIX, read_meta
from ..cache.layout import PATHS, SOURCE
from .plan import plan_extraction

__all__ = ["explain"]


def _candidates(cache_dir: Path) -> List[tuple]:
    """``(path, CacheMeta)`` of every finished cache in ``cache_dir``."""
    found = []
    for path in sorted(cache_dir.glob("*.h5")) if cache_dir.is_dir() else []:
        if path.name.endswith(PARTIAL_SUFFIX):
            continue
        try:
            meta = read_meta(path)
        except (OSError, ValueError):
            continue
        if meta.key:
            found.append((path, meta))
    return found


def _file_changes(path: Path, source, manifest: dict, limit: int = 5) -> List[str]:
    """Which input files differ between the cache at ``path`` and the current ``source``: by content hash with
    ``--hash-content`` (a touched file with the same bytes is unchanged), else by size and modification time."""
    by_hash = bool(manifest.get("sha256"))
    with h5py.File(path, "r") as f:
        grp = f[SOURCE]
        paths = grp[PATHS].asstr()[:]
        if by_hash and "sha256" in grp:
            old = dict(zip(paths, grp["sha256"].asstr()[:]))
        elif "size" in grp:
            old = {p: (int(s), int(m)) for p, s, m in zip(paths, grp["size"][:], grp["mtime_ns"][:])}
        else:
            old = {p: None for p in paths}
    if by_hash:
        new = dict(zip(source.paths, manifest["sha256"]))
    else:
        new = {p: (s, m) for p, s, m in zip(source.paths, manifest.get("size") or [None] * len(source),
                                            manifest.get("mtime_ns") or [None] * len(source))}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(p for p in set(new) & set(old) if old[p] is not None and old[p] != new[p])
    lines = []
    for what, items in (("added", added), ("removed", removed),
                        ("changed (content)" if by_hash else "changed (size or mtime)", changed)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"  files {what}: {len(items)}: {', '.join(items[:limit])}{more}")
    return lines or ["  files: the same files (labels, splits or how files are compared differ)"]


def explain(cfg) -> List[str]:
    """Human-readable lines: a cache hit, or how the nearest cache differs from this config."""
    plan = plan_extraction(cfg)
    source, manifest, parts, fingerprint = plan.source, plan.manifest, plan.parts, plan.fingerprint
    candidates = _candidates(cfg.resolved_cache_dir())
    for path, meta in candidates:
        if meta.fingerprint == fingerprint:
            return [f"cache hit: {path}"]
    if not candidates:
        return [f"cache miss: no caches in {cfg.resolved_cache_dir()}"]

    def distance(item):
        meta = item[1]
        return (meta.dataset != source.name, sum(meta.key.get(k) != parts.get(k) for k in {*parts, *meta.key}))

    path, meta = min(candidates, key=distance)
    old = meta.key
    lines = [f"cache miss; nearest cache: {path}"]
    for k in [*parts, *(k for k in old if k not in parts)]:  # a part only one side has (views, scales) differs too
        v = parts.get(k)
        if old.get(k) == v:
            continue
        if k == "files":
            lines.extend(_file_changes(path, source, manifest))
        elif k == "labels":
            lines.append("  labels, splits or class names differ")
        else:
            lines.append(f"  {k}: cached {json.dumps(old.get(k))} -> now {json.dumps(v)}")
    return lines
