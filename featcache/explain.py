"""``python -m featcache.explain``: say why a run would (not) hit the cache, part by part.

It builds the same cache key ``extract`` would (same flags), then compares it with the nearest
existing cache: which files were added, removed or changed, and which settings differ.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import h5py

from . import store
from .cli import Parser, add_extract_arguments, config_from_args, run_cli
from .pipeline import plan_extraction


def _candidates(cache_dir: Path) -> List[tuple]:
    found = []
    for path in sorted(cache_dir.glob("*.h5")) if cache_dir.is_dir() else []:
        if path.name.endswith(store.PARTIAL_SUFFIX):
            continue
        try:
            attrs = store.read_attrs(path)
        except (OSError, ValueError):
            continue
        if "key" in attrs:
            found.append((path, attrs))
    return found


def _file_changes(path: Path, source, manifest: dict, limit: int = 5) -> List[str]:
    """Which input files differ between the cache at ``path`` and the current ``source``."""
    with h5py.File(path, "r") as f:
        grp = f["source"]
        old = {p: (s, m) for p, s, m in zip(grp["paths"].asstr()[:], grp["size"][:], grp["mtime_ns"][:])} \
            if "size" in grp else {p: None for p in grp["paths"].asstr()[:]}
    new = {p: (s, m) for p, s, m in zip(source.paths, manifest.get("size") or [None] * len(source),
                                        manifest.get("mtime_ns") or [None] * len(source))}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(p for p in set(new) & set(old) if old[p] is not None and tuple(old[p]) != tuple(new[p]))
    lines = []
    for what, items in (("added", added), ("removed", removed), ("changed (size or mtime)", changed)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"  files {what}: {len(items)}: {', '.join(items[:limit])}{more}")
    return lines or ["  files: same paths, sizes and mtimes (content hashes or labels differ)"]


def explain(cfg) -> List[str]:
    """Human-readable lines: a cache hit, or how the nearest cache differs from this config."""
    plan = plan_extraction(cfg)
    source, manifest, parts, fingerprint = plan.source, plan.manifest, plan.parts, plan.fingerprint
    candidates = _candidates(cfg.resolved_cache_dir())
    for path, attrs in candidates:
        if attrs.get("fingerprint") == fingerprint:
            return [f"cache hit: {path}"]
    if not candidates:
        return [f"cache miss: no caches in {cfg.resolved_cache_dir()}"]

    def distance(item):
        old = json.loads(item[1]["key"]) if isinstance(item[1]["key"], str) else item[1]["key"]
        return (item[1].get("dataset") != source.name, sum(old.get(k) != v for k, v in parts.items()))

    path, attrs = min(candidates, key=distance)
    old = attrs["key"] if isinstance(attrs["key"], dict) else json.loads(attrs["key"])
    lines = [f"cache miss; nearest cache: {path}"]
    for k, v in parts.items():
        if old.get(k) == v:
            continue
        if k == "files":
            lines.extend(_file_changes(path, source, manifest))
        elif k == "labels":
            lines.append("  labels, splits or class names differ")
        else:
            lines.append(f"  {k}: cached {json.dumps(old.get(k))} -> now {json.dumps(v)}")
    return lines


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.explain",
        description="Explain whether `featcache.extract` with the same flags would hit the cache, and if "
                    "not, which part of the key differs from the nearest existing cache.")
    add_extract_arguments(p)
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _main(args) -> int:
    for line in explain(config_from_args(args)):
        print(line)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
