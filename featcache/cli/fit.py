"""``python -m featcache.fit --data DATA --out OUT``: from images to the best model, within a time budget.

Stage: commands. Imports ``config`` at load; the run (torch, scikit-learn) inside ``_main``.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..config import ExtractConfig, FitConfig
from ..config.fit import FIT_EXTRACT_FIELDS
from ..errors import FeatcacheError
from . import Parser, add_config_flags, add_run_flags, config_from_args, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.fit",
        description="One command from labelled images to the best classifier featcache can give within --budget. "
                    "Cheapest first, so a small budget still returns a good model: (1) the input size from the "
                    "images (--image-size auto: small images screened at a few sizes on a sample of the training "
                    "images); (2) extract the default layers (a cache hit when done before; otherwise it says first "
                    "how long that will take); (3) the default sweep (layer screen, measured grid, successive "
                    "halving, an ensemble weighted on out-of-fold log-loss), with what is left of the budget, "
                    "keeping time to refit its best; then, each when the budget left covers its estimate, (4) the "
                    "best so far again with the network also run at --scales (features joined), (5) again on --views "
                    "augmented views per image with test-time augmentation, both on the same folds; (6) fine-tune "
                    "the top blocks from cached activations at the penultimate stage output, costed from a measured "
                    "epoch: the full --train-blocks grid when it fits, else one configuration for as many epochs as "
                    "fit. A later stage replaces the best so far when it is right on more of the same held-out "
                    "images, both sides cross-fitted (a tie keeps the cheaper; the log gives an exact one-sided "
                    "McNemar p). One leaderboard across the stages; the sweep's best says it is the best of N on "
                    "those rows; the "
                    "winner alone is scored on test and copied to OUT/best.skops or OUT/best.safetensors for "
                    "featcache.predict. OUT/fit.json says what each stage took, how the stages compared and what was "
                    "skipped and why; OUT/sweep/, OUT/scales/, OUT/views/ and OUT/finetune/ hold each stage's own "
                    "outputs. A second run with the same --out reuses the input size, the caches, the sweeps' stored "
                    "results and the fine-tuned model.",
        epilog="examples:\n"
               "  python -m featcache.fit --data photos/ --out runs/best\n"
               "  python -m featcache.fit --data photos/ --out runs/best --budget 5m --finetune never\n"
               "  python -m featcache.fit --data scans/ --out runs/scans --views 8 --augment crop color\n"
               "  python -m featcache.predict runs/best --data new_photos/ --out predictions.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, ExtractConfig, names=FIT_EXTRACT_FIELDS)
    add_config_flags(p, FitConfig)
    add_run_flags(p, quiet=", and the output folder")
    return p


def _main(args: argparse.Namespace) -> int:
    from ..autofit import run_fit

    if not args.data:
        raise FeatcacheError("--data is required (an image folder or a CSV file); see --help")
    cfg = config_from_args(FitConfig, args, progress=not (args.no_progress or args.quiet))
    result = run_fit(cfg)
    if not args.quiet:
        board = result.leaderboard
        print(board.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", max_colwidth=70))
        for what in result.skipped:
            print(f"skipped: {what}")
        test = result.test_scores or {}
        score = f"; test {cfg.metric} {test[cfg.metric]:.4f}" if cfg.metric in test else " (no test split)"
        print(f"best ({result.best_stage}): {result.best_label}{score}")
    print(result.out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
