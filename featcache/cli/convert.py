"""``featcache convert MODEL.joblib``: turn a featcache 0.1 model file (a pickle) into this version's format.

Stage: commands. Converting loads the pickle, which can run any code it holds: only for files you trust.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from . import Parser, add_run_flags, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(prog="featcache convert",
               description="Convert model files written by featcache 0.1 (joblib pickles, which this version refuses "
                           "to load because a pickle can run any code it holds) into this version's format beside "
                           "them (best.skops or best.safetensors, with a new sidecar). Converting loads the pickle: "
                           "do it only for files you trust.")
    p.add_argument("models", nargs="+", type=Path, help="0.1 model files (best.joblib) to convert")
    add_run_flags(p)
    return p


def _main(args) -> int:
    from ..selection.modelfile import convert_pickle

    for path in args.models:
        print(convert_pickle(path))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
