"""``python -m featcache.sweep CACHE.h5``: the sweep command's flags and its main.

Stage: commands. Imports ``config`` and ``selection.grids`` (no scikit-learn) at load; the sweep itself
inside ``_main``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path
from typing import Optional, Sequence

from ..config import BACKENDS, METRICS, SweepConfig
from ..errors import FeatcacheError
from ..selection import grids
from . import Parser, add_output_flags, add_run_flags, config_from_args, duration_arg, run_cli

__all__ = ["build_parser", "main"]


def _names(text: str):
    return [c.strip() for c in text.split(",") if c.strip()]


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
    p.add_argument("--grid", type=Path,
                   help="TOML (or YAML) grid file: a table per classifier; lists are swept, scalars fixed "
                        "(default: the built-in grid, see --print-grid)")
    p.add_argument("--classifiers", type=_names, help=f"comma-separated subset of the grid's classifiers "
                                         f"({','.join(grids.CLASSIFIERS)}) (default: all in the grid)")
    p.add_argument("--layer", help="cache layer to use, several joined with '+' to concatenate them, or "
                                   "comma-separated choices to try (e.g. layer3,layer4,layer3+layer4) (default: "
                                   "the cache's layer; with several, each alone, adjacent runs and all of them "
                                   "concatenated are tried, as a 'layer' column of the leaderboard)")
    p.add_argument("--screen-layers", type=int, default=2, metavar="N",
                   help="when the sweep tries several layer choices on its own (no --layer), first rank them "
                        "with a cheap screen (ridge and an l2 logistic path on each) and fit the whole grid on "
                        "the N best only; 0 = the whole grid on every choice (default: 2)")
    p.add_argument("--no-views", dest="views", action="store_false",
                   help="ignore the cache's augmented views (extract --views K); by default every training "
                        "image's views join training as extra rows with its label (views of validation and "
                        "test images never do)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: score validation and test rows (and predict new images) by "
                        "averaging over each image's clean features and its cached views")
    p.add_argument("--cv", type=int, help="k-fold cross-validation (default, when the cache has no val split: "
                                          "sized to the rows, see below; given with a val split, CV runs on "
                                          "train+val)")
    p.add_argument("--val-fraction", type=float, help="score on a random stratified hold-out of this fraction "
                                                      "instead of CV (e.g. 0.2)")
    p.add_argument("--no-halving", dest="halving", action="store_false",
                   help="fit every configuration on all the training rows; by default, from 6,000 training rows, "
                        "successive halving fits them all on a third of the rows (a ninth, ...) and only the best "
                        "third goes on to three times as many")
    p.add_argument("--ensemble", type=int, default=3, metavar="N",
                   help="add a soft vote of the N best configurations (the best of each classifier, on the best "
                        "layer choice) as one more leaderboard entry, validated like the others; 0 (or 1) = none "
                        "(default: 3)")
    p.add_argument("--budget", type=duration_arg, metavar="TIME",
                   help="stop starting fits after this long (90s, 15m, 1h): the best of what finished is refitted "
                        "and saved, the rest listed as skipped (default: no limit)")
    p.add_argument("--metric", default="accuracy", choices=METRICS,
                   help="selection metric (default: accuracy; ties go to the lower log-loss, then the faster fit)")
    p.add_argument("--seed", type=int, default=0, help="seed for folds, hold-outs and estimators (default: 0)")
    p.add_argument("--n-jobs", type=int,
                   help="parallel tasks, -1 = one per core; locally BLAS/torch threads are split between them "
                        "(default: a worker per core with loky once the features hold 2M values or more, else 1, "
                        "which uses every core inside each fit; 1 with threading; every core of the cluster with "
                        "ray/dask)")
    p.add_argument("--backend", default="loky", choices=BACKENDS,
                   help="where the fits run: loky (worker processes) or threading on this machine, or a Ray or "
                        "Dask cluster (pip install 'featcache[ray]' / 'featcache[dask]'), which gets the "
                        "features once, not once per fit (default: loky)")
    p.add_argument("--address", help="the ray/dask cluster to join: ray.init address (auto, ray://HEAD:10001) or "
                                     "Dask scheduler (tcp://HOST:8786) (default: $RAY_ADDRESS or "
                                     "$DASK_SCHEDULER_ADDRESS, else start a local cluster of --n-jobs workers)")
    p.add_argument("--out-of-core", action="store_true",
                   help="leave the features in the cache and stream them in blocks: for caches larger than "
                        "memory; trains sgd and dense (none/standardize/l2), the default grid keeps those")
    p.add_argument("--block-rows", type=int, metavar="N",
                   help="with --out-of-core, rows read at once (default: whole HDF5 chunks, about 4 MiB)")
    p.add_argument("--test-top", type=int, default=1,
                   help="refit this many of the best configurations and score them on test; the first is "
                        "saved as best.skops (default: 1)")
    p.add_argument("--results-dir", type=Path,
                   help="where per-configuration results are stored (default: sweep-results/ next to the cache)")
    p.add_argument("--no-reuse", dest="reuse", action="store_false",
                   help="neither read nor write stored results: fit everything")
    add_output_flags(p)
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
