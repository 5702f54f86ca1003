"""``featcache prune``: delete the caches of a cache directory by age, disuse or size, like ``pip cache purge``.

Stage: commands. Imports ``cache`` (h5py) only.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Optional, Sequence

from .._util import human_size
from ..cache.catalog import describe_freed, remove_caches, remove_orphans, select_for_pruning
from ..config import CACHE_DIR_HELP, default_cache_dir
from . import Parser, add_run_flags, run_cli

__all__ = ["build_parser", "main", "parse_size"]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40}


def parse_size(text: str) -> int:
    """``500MB``, ``2G``, ``1024`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 500MB or 2GB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def build_parser() -> Parser:
    p = Parser(prog="featcache prune",
               description="Delete finished caches that match every criterion given, with their sweeps' result "
                           "stores, and the temporary files left by processes killed while publishing a cache. "
                           "Unfinished (partial) files are never touched: a run may still be writing them; nor is a "
                           "cache a running process uses (without --force). "
                           "A cache's last use is updated by every cache hit and load.",
               epilog="examples:\n"
                      "  featcache prune --unused-days 30            # not used for a month\n"
                      "  featcache prune --larger-than 2GB --dry-run  # what would go\n"
                      "  featcache prune --all",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", type=Path,
                   help=CACHE_DIR_HELP)
    p.add_argument("--older-than", type=float, metavar="DAYS", help="created more than DAYS days ago")
    p.add_argument("--unused-days", type=float, metavar="DAYS", help="not hit or loaded for DAYS days")
    p.add_argument("--larger-than", type=parse_size, metavar="SIZE", help="files larger than SIZE (e.g. 500MB)")
    p.add_argument("--all", action="store_true", help="every finished cache")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--force", action="store_true", help="remove caches a running sweep, fine-tuning or "
                   "extraction uses too (refused otherwise; the run then goes on without the result store)")
    add_run_flags(p)
    return p


def _main(args) -> int:
    cache_dir = args.cache_dir or default_cache_dir()
    chosen = select_for_pruning(cache_dir, args.older_than, args.unused_days,
                                args.larger_than, everything=args.all)
    for rec in chosen:
        print(f"{'would remove' if args.dry_run else 'removing'} {rec['path']} ({rec['size_mb']} MB, "
              f"last used {rec['last_used']})")
    freed = remove_caches([rec["path"] for rec in chosen], dry_run=args.dry_run, force=args.force)
    print(describe_freed(len(chosen), freed, args.dry_run))
    n, orphan_bytes = remove_orphans(cache_dir, dry_run=args.dry_run)
    if n:
        print(f"{'would remove' if args.dry_run else 'removed'} {n} temporary file(s) left by processes killed while "
              f"publishing, {human_size(orphan_bytes)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
