"""``python -m featcache.fit --data DATA --out OUT``: from images to the best model, within a time budget.

Stage: commands. Imports ``config`` at load; the run (torch, scikit-learn) inside ``_main``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..config import AUGMENTATIONS, DEFAULT_MODEL, METRICS, FitConfig
from . import CACHE_DIR_HELP, Parser, add_run_flags, blocks_arg, config_from_args, duration_arg, int_or_auto, run_cli

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
                    "images, both sides cross-fitted (a tie keeps the cheaper; the log gives an exact McNemar p). One "
                    "leaderboard across the stages; the sweep's best says it is the best of N on those rows; the "
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
    p.add_argument("--data", required=True, help="image folder (class folders, optionally under train/val/test) "
                                                 "or a CSV file (path,label[,split])")
    p.add_argument("--out", type=Path, required=True, help="the run folder (rerun with the same one to reuse it)")
    p.add_argument("--budget", type=duration_arg, default=900.0, metavar="TIME",
                   help="time for the whole run: 90s, 15m, 1h (default: 15m); no stage or fit starts after it, "
                        "and the best model so far is kept")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the frozen network (default: {DEFAULT_MODEL}; see "
                                                          f"python -m featcache.extract --help)")
    p.add_argument("--weights", default="DEFAULT", help="DEFAULT, none, or a checkpoint file (default: DEFAULT)")
    p.add_argument("--image-size", type=int_or_auto, default="auto", metavar="PX|auto",
                   help="crop size fed to the network; auto = from the images: when they are smaller than the model's "
                        "input (224 px for the default), a stratified sample of the training images is extracted at "
                        "64, 96, 128 px and their own size, and the size whose probe (an RBF SVM, 3-fold CV) validates "
                        "best is kept, within a tenth of --budget; larger images keep the model's own (default: auto)")
    p.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.667], metavar="S",
                   help="the scales stage: the network also runs on each image resized by these factors (up to 2) "
                        "and the layers' features are joined; small images upscaled to the crop (digits, scans, "
                        "thumbnails) gain most; 1 skips it (default: 1 0.667)")
    p.add_argument("--views", type=int, default=4, metavar="K",
                   help="augmented views per image for the views + TTA stage; 0 skips it (default: 4)")
    p.add_argument("--augment", nargs="+", choices=AUGMENTATIONS, default=["flip", "crop"],
                   help="how the views are made (default: flip crop; drop flip for text or digits)")
    p.add_argument("--finetune", choices=("auto", "always", "never"), default="auto",
                   help="the fine-tuning stage: auto = when the budget left covers its estimate (default: auto)")
    p.add_argument("--train-blocks", type=blocks_arg, nargs="+", default=[1, "all"], metavar="K",
                   help="fine-tuning: how many of the top's last blocks train, each a configuration (default: 1 all)")
    p.add_argument("--metric", default="accuracy", choices=METRICS, help="selection metric (default: accuracy)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits and estimators (default: 0)")
    p.add_argument("--n-jobs", type=int, help="parallel sweep tasks, -1 = one per core (default: a worker per core "
                                              "once the features are large enough)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--top", type=int, default=10, metavar="N",
                   help="rows of the sweep's leaderboard carried into fit's (default: 10)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out holding another command's run (a folder fit wrote is reused anyway)")
    add_run_flags(p, quiet=", and the output folder")
    return p


def _main(args: argparse.Namespace) -> int:
    from ..fit import run

    cfg = config_from_args(FitConfig, args, progress=not (args.no_progress or args.quiet))
    result = run(cfg)
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
