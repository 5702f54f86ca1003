"""``python -m featcache.sweep CACHE.h5``: the sweep command's flags and its main.

Stage: commands. Imports ``config`` and ``selection.grids`` (no scikit-learn) at load; the sweep itself
inside ``_main``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path
from typing import Optional, Sequence

from ..config import SweepConfig
from ..errors import FeatcacheError
from ..selection import grids
from . import Parser, add_config_flags, add_print_flags, add_run_flags, config_from_args, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.sweep",
        description="Fit a grid of classifiers on cached features, rank them on validation data, refit the "
                    "best on train(+val) and score it once on test. Writes OUT/leaderboard.csv (best first), "
                    "OUT/best.skops (+ .json sidecar) for featcache.predict, OUT/plots/*.png and OUT/sweep.json; "
                    "prints the leaderboard, and OUT as the last line. Results are stored per configuration, "
                    "so a rerun fits nothing and a new grid point fits only itself.",
        epilog="validation: the cache's val split when it has one; else, inside train (or all labelled rows),\n"
               "--cv K or a --val-fraction hold-out, by default sized to the rows: 5-fold CV below 1,000 rows,\n"
               "3-fold below 5,000, one stratified 20% hold-out (at most 10,000 rows) from 5,000. The log says\n"
               "which and why; the best score is printed with its standard error. Test rows are never used\n"
               "for selection.\n\n"
               "examples:\n"
               "  python -m featcache.sweep CACHE.h5 --out runs/exp1\n"
               "  python -m featcache.sweep CACHE.h5 --grid grid.toml --n-jobs 2\n"
               "  python -m featcache.sweep CACHE.h5 --classifiers logreg,knn --layer layer3+layer4 --cv 10\n"
               "  python -m featcache.sweep --print-grid > grid.toml     # the default grid, to edit\n"
               "  python -m featcache.sweep CACHE.h5 --backend dask --address tcp://HOST:8786\n"
               "  RAY_ADDRESS=auto python -m featcache.sweep CACHE.h5 --backend ray\n"
               "  python -m featcache.sweep BIG.h5 --out-of-core             # features larger than memory",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", nargs="?", type=Path, help="a feature cache (.h5) written by featcache.extract")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<dataset>-<date-time>)")
    add_config_flags(p, SweepConfig)
    add_print_flags(p)
    p.add_argument("--print-grid", action="store_true", help="print the default grid (TOML) and exit")
    p.add_argument("--list-classifiers", action="store_true",
                   help="list the classifiers and the hyperparameters a grid may set, and exit")
    add_run_flags(p, quiet=", and the output folder")
    return p


def _main(args: argparse.Namespace) -> int:
    if args.print_grid:
        print(grids.DEFAULT_GRID, end="")
        return 0
    if args.list_classifiers:
        print(grids.describe_classifiers())
        return 0
    if args.cache is None:
        raise FeatcacheError("give a cache file: python -m featcache.sweep CACHE.h5 (see --help)")
    from ..selection.leaderboard import by_layer_text, format_leaderboard
    from ..sweeping import run_sweep

    out = args.out or Path("runs") / f"{args.cache.stem.split('__')[0]}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    cfg = config_from_args(SweepConfig, args, out=out, progress=not (args.no_progress or args.quiet))
    result = run_sweep(cfg)
    if not args.quiet:
        print(format_leaderboard(result.leaderboard, args.top, cfg.metric))
        best = result.leaderboard.iloc[0]
        test = f"; test {cfg.metric} {result.test_scores[cfg.metric]:.4f}" if result.test_scores else ""
        se = f" ± {result.standard_error:.4f}" if result.standard_error is not None else ""
        print(f"best: {result.best_config.label()}: val {cfg.metric} {best[f'val_{cfg.metric}']:.4f}{se}{test}")
        if result.skipped:
            print(f"budget: {len(result.skipped)} configuration(s) not fitted in time (listed in sweep.json)")
        if result.layer_screen:
            print("layer screen: " + ", ".join(f"{k} {v:.4f}" for k, v in result.layer_screen.items())
                  + f" (the whole grid ran on the best {cfg.screen_layers})")
        if result.leaderboard["layer"].nunique() > 1:
            print("best per layer: " + by_layer_text(result.leaderboard, cfg.metric))
    print(result.out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
