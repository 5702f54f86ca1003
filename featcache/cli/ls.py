"""``python -m featcache.ls``: list the caches in a cache directory, finished and unfinished.

Stage: commands. Imports ``cache`` (h5py) only: never torch or scikit-learn.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..cache import list_caches
from ..config import default_cache_dir
from . import Parser, add_run_flags, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(prog="python -m featcache.ls",
               description="List feature caches: dataset, model, layers, rows (N), feature size (D), file size and "
                           "creation date.")
    p.add_argument("--cache-dir", type=Path,
                   help="default: $FEATCACHE_DIR, else $XDG_CACHE_HOME/featcache, else ~/.cache/featcache")
    p.add_argument("--json", action="store_true", help="one JSON record per line instead of a table")
    add_run_flags(p)
    return p


def _main(args) -> int:
    records = list_caches(args.cache_dir or default_cache_dir())
    if args.json:
        for r in records:
            print(json.dumps(r))
        return 0
    if not records:
        print("no caches", file=sys.stderr)
        return 0
    cols = ["dataset", "model", "layers", "rows", "dims", "size_mb", "created", "status", "path"]
    table = [[str(r.get(c, "")) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
