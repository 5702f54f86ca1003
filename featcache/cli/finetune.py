"""``python -m featcache.finetune CACHE.h5 --from-layer NODE``: the fine-tuning command's flags and its main.

Stage: commands. Imports ``config`` at load; the run (torch) inside ``_main``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path
from typing import Optional, Sequence

from ..config import FinetuneConfig
from . import Parser, add_config_flags, add_print_flags, add_run_flags, config_from_args, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.finetune",
        description="Fine-tune a network's top blocks from a cache of activations, without running the frozen "
                    "bottom again: the cache must hold the spatial activations at --from-layer (extract with "
                    "--layer NODE --pool none; --dtype float16 halves the file). featcache rebuilds the layers after "
                    "NODE with their pretrained weights, adds a new linear head, and trains each configuration of a "
                    "small grid (the last --train-blocks blocks at --lr, the head at --head-lr; AdamW with weight "
                    "decay; early stopping on the val rows). BatchNorm keeps its pretrained statistics. Writes "
                    "OUT/leaderboard.csv (best first), OUT/best.safetensors (+ .json sidecar) for featcache.predict, "
                    "OUT/plots/*.png and OUT/finetune.json; prints the leaderboard, and OUT as the last line.",
        epilog="validation: the cache's val split when it has one, else a stratified --val-fraction (default 0.2)\n"
               "of train; test rows are scored once, with the best configuration.\n\n"
               "examples:\n"
               "  CACHE=$(python -m featcache.extract --data photos/ --layer _blocks.10.add --pool none \\\n"
               "          --dtype float16 | tail -n1)\n"
               "  python -m featcache.finetune $CACHE --from-layer _blocks.10.add --out runs/ft\n"
               "  python -m featcache.finetune $CACHE --from-layer _blocks.10.add --train-blocks 1 2 all \\\n"
               "         --lr 1e-4 3e-4 --augment\n"
               "  python -m featcache.predict runs/ft/best.safetensors --data new_photos/ --out preds.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", type=Path, help="a cache (.h5) holding spatial activations at --from-layer")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<dataset>-finetune-<date-time>)")
    add_config_flags(p, FinetuneConfig)
    add_print_flags(p)
    add_run_flags(p, quiet=", and the output folder")
    return p


def _main(args: argparse.Namespace) -> int:
    from ..finetuning import run_finetune
    from ..selection.leaderboard import format_leaderboard

    out = args.out or Path("runs") / f"{args.cache.stem.split('__')[0]}-finetune-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    cfg = config_from_args(FinetuneConfig, args, out=out, progress=not (args.no_progress or args.quiet))
    result = run_finetune(cfg)
    if not args.quiet:
        print(format_leaderboard(result.leaderboard, args.top, cfg.metric))
        test = f"; test {cfg.metric} {result.test_scores[cfg.metric]:.4f}" if result.test_scores else ""
        val = result.leaderboard[f"val_{cfg.metric}"].iloc[0]
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
        print(f"best: {params}: val {cfg.metric} {val:.4f}{test}")
    print(result.out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
