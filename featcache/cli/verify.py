"""``python -m featcache.verify CACHE.h5``: check a cache end to end and say what is wrong.

Stage: commands. Imports ``cache`` (h5py) only: never torch or scikit-learn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..cache import verify
from . import Parser, add_run_flags, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.verify",
        description="Check a feature cache end to end: structure, format version, row counts, the checksum of "
                    "every chunk of features (damaged bytes), NaN/Inf in the features, the fingerprint, and whether "
                    "the input files still match. Exit 0 if sound, 1 if not.")
    p.add_argument("cache", type=Path, help="the .h5 cache file")
    p.add_argument("--no-files", action="store_true", help="skip comparing with the input files on disk")
    add_run_flags(p)
    return p


def _main(args) -> int:
    problems = verify(args.cache, check_files=not args.no_files)
    for line in problems:
        print(f"problem: {line}")
    print(f"{args.cache}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
