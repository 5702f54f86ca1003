"""``python -m featcache.inspect CACHE.h5 --out report/``: the inspect command's flags and its main.

Stage: commands. Imports the standard library at load; ``featcache.insight`` (scikit-learn, pandas, never
torch) inside ``_main``, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from . import Parser, add_run_flags, run_cli

__all__ = ["build_parser", "main"]

FINDINGS = ("duplicates", "labels", "outliers", "confusion", "map")  # as featcache.insight.FINDINGS


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
    p.add_argument("--only", help=f"comma-separated findings to run: {','.join(FINDINGS)} (default: all)")
    p.add_argument("--threshold", type=float,
                   help="pixel similarity (correlation of 16x16 grey thumbnails, best over small crops) at or above "
                        "which a candidate pair is a copy (default: 0.996, measured on MNIST: resized, re-encoded, "
                        "cropped and brightened copies score >= 0.997, different digits of one class <= 0.995). A "
                        "pair that correlates >= 0.97 and matches at native resolution once aligned (crop, scale, "
                        "brightness with clipping; residual <= 0.02 of its contrast) is a copy whatever the "
                        "threshold: on 8x8 digits such copies leave <= 0.002, different digits >= 0.07")
    p.add_argument("--layer", help="the cache layer whose features are used (default: the cache's last layer)")
    p.add_argument("--k", type=int, default=20, help="nearest neighbours per row: an outlier's score is its mean "
                                                     "distance to them; copies are looked for among them "
                                                     "(default: 20)")
    p.add_argument("--neighbours", default="auto", choices=("auto", "exact", "faiss", "hnswlib"),
                   help="neighbour search: exact (block-wise from the file), or an approximate index (pip install "
                        "'featcache[inspect]'); auto = exact up to 100,000 rows, approximate beyond when installed "
                        "(default: auto)")
    p.add_argument("--label-method", choices=("cleanlab", "featcache"),
                   help="who flags label issues: cleanlab's find_label_issues, or featcache's implementation of "
                        "the same confident-learning method (default: cleanlab when installed)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the label model (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for folds, PCA and the map (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    add_run_flags(p, quiet=" and the last line")
    return p


def _main(args) -> int:
    from ..insight import inspect, summary_lines

    out = args.out or Path(f"{args.cache.stem}-inspect")
    if args.folds < 2:
        from ..errors import FeatcacheError

        raise FeatcacheError(f"--folds must be at least 2; got {args.folds}")
    res = inspect(args.cache, out=out, only=args.only, threshold=args.threshold, layer=args.layer, k=args.k,
                  neighbours=args.neighbours, label_method=args.label_method, folds=args.folds, seed=args.seed,
                  overwrite=args.overwrite, progress=not (args.no_progress or args.quiet))
    if not args.quiet:
        for line in summary_lines(res.summary):
            print(line)
        print(f"inspected in {res.summary['seconds']:.1f} s; tables and plots in {out}")
    print(out / "index.html")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
