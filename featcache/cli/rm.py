"""``featcache rm CACHE...``: delete caches (and their default sweep result stores).

Stage: commands. Imports ``cache`` (h5py) only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..cache.catalog import describe_freed, remove_caches
from . import Parser, add_run_flags, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(prog="featcache rm",
               description="Delete feature cache files (finished ones, as featcache ls lists them) with the result "
                           "store of their sweeps (sweep-results/<fingerprint> beside them). Run folders (--out of "
                           "sweep/finetune) are yours and are never touched. A cache a running process uses is refused "
                           "(--force removes it anyway).")
    p.add_argument("caches", nargs="+", type=Path, help="cache files (.h5) to delete")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.add_argument("--force", action="store_true", help="remove a cache that a running sweep, fine-tuning or "
                   "extraction uses (refused otherwise; the run then goes on without the result store)")
    add_run_flags(p)
    return p


def _main(args) -> int:
    freed = remove_caches(args.caches, dry_run=args.dry_run, force=args.force)
    for path in args.caches:
        print(f"{'would remove' if args.dry_run else 'removed'} {path}")
    print(describe_freed(len(args.caches), freed, args.dry_run))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
