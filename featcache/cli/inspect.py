"""``python -m featcache.inspect CACHE.h5 --out report/``: the inspect command's flags and its main.

Stage: commands. Imports ``config`` at load; ``featcache.insight`` (scikit-learn, pandas, never
torch) inside ``_main``, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..config import InspectConfig
from . import Parser, add_config_flags, add_run_flags, config_from_args, run_cli

__all__ = ["build_parser", "main"]

def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.inspect",
        description="Look at a dataset through its cached features, on a CPU: duplicates and near-duplicates "
                    "(feature neighbours proposed, pixels confirmed, byte-identical files by hash) and LEAKS across "
                    "train/val/test; likely label errors (out-of-fold probabilities, confident learning; cleanlab "
                    "when installed); outliers (far from their k nearest neighbours); which classes overlap; a 2-D "
                    "map. Writes OUT/index.html (one self-contained page: summary, map, galleries), "
                    "duplicates.csv, duplicate_clusters.csv, label_issues.csv, outliers.csv, confusion.csv, "
                    "map.csv, map.png, confusion.png and summary.json; prints a short summary, and OUT/index.html "
                    "as the last line.",
        epilog="findings (--only): duplicates, labels, outliers, confusion, map. A cache without labels gets\n"
               "duplicates, outliers and the map. The original image files are read for the pixel check and the\n"
               "thumbnails; missing files are reported, never fatal.\n\n"
               "examples:\n"
               "  python -m featcache.inspect CACHE.h5 --out report/\n"
               "  python -m featcache.inspect CACHE.h5 --out report/ --only duplicates,labels\n"
               "  python -m featcache.inspect CACHE.h5 --out report/ --threshold 0.99   # looser copies\n"
               "  open report/index.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", type=Path, help="a feature cache (.h5) written by featcache.extract")
    p.add_argument("--out", type=Path, help="report folder (default: <cache name>-inspect in the current folder)")
    add_config_flags(p, InspectConfig)
    add_run_flags(p, quiet=" and the last line")
    return p


def _main(args) -> int:
    from ..insight import run_inspect, summary_lines

    out = args.out or Path(f"{args.cache.stem}-inspect")
    cfg = config_from_args(InspectConfig, args, out=out, progress=not (args.no_progress or args.quiet))
    res = run_inspect(cfg)
    if not args.quiet:
        for line in summary_lines(res.summary):
            print(line)
        print(f"inspected in {res.summary['seconds']:.1f} s; tables and plots in {out}")
    print(out / "index.html")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
