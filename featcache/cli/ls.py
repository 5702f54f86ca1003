"""``python -m featcache.ls``: list the caches in a cache directory, finished and unfinished.

Stage: commands. Imports ``cache`` (h5py) only: never torch or scikit-learn.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..cache import list_caches
from ..config import CACHE_DIR_HELP, default_cache_dir
from . import Parser, add_run_flags, run_cli

__all__ = ["build_parser", "main", "format_table"]


def build_parser() -> Parser:
    p = Parser(prog="python -m featcache.ls",
               description="List feature caches: what tells them apart (dataset, model, weights: RANDOM for "
                           "--weights none, layers, pool, precision with the engine for int8 and OpenVINO's bf16, "
                           "dtype, views, scales), rows (N), feature size (D), file "
                           "size, creation date and last use. Remove caches with featcache rm or featcache prune.")
    p.add_argument("--cache-dir", type=Path,
                   help=CACHE_DIR_HELP)
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
    print(format_table(records, LS_COLUMNS))
    if any(r.get("weights") == "RANDOM" for r in records):
        print("RANDOM: extracted with --weights none (random init): fine for tests, meaningless as features",
              file=sys.stderr)
    return 0


LS_COLUMNS = ["dataset", "model", "weights", "layers", "pool", "precision", "dtype", "views", "scales", "rows", "dims",
              "size_mb", "created", "last_used", "status", "path"]


def format_table(records, cols) -> str:
    """Records as left-aligned columns (a column only when some record has it)."""
    cols = [c for c in cols if any(c in r for r in records)]
    table = [[str(r.get(c, "")) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [cols] + table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
