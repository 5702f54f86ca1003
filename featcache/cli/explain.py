"""``python -m featcache.explain``: why ``extract`` with the same flags would (not) hit the cache.

Stage: commands. The extraction library (torch) is imported inside ``_main``, so ``--help`` stays instant.
"""
from __future__ import annotations

from typing import Optional, Sequence

from . import Parser, add_run_flags, run_cli
from .extract import add_extract_arguments, extract_config

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.explain",
        description="Explain whether `featcache.extract` with the same flags would hit the cache, and if "
                    "not, which part of the key differs from the nearest existing cache.")
    add_extract_arguments(p)
    add_run_flags(p)
    return p


def _main(args) -> int:
    from ..extraction import explain

    for line in explain(extract_config(args)):
        print(line)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
