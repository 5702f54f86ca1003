"""``python -m featcache.finetune CACHE.h5 --from-layer NODE``: the fine-tuning command's flags and its main.

Stage: commands. Imports ``config`` at load; the run (torch) inside ``_main``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path
from typing import Optional, Sequence

from ..config import METRICS, TRAIN_PRECISIONS, FinetuneConfig
from . import Parser, add_output_flags, add_run_flags, blocks_arg, config_from_args, duration_arg, run_cli

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
    p.add_argument("--from-layer", required=True, metavar="NODE",
                   help="the graph node where the top starts: a layer of the cache extracted with --pool none, at a "
                        "block boundary (a split across a skip connection is refused, naming the nearest valid nodes)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<dataset>-finetune-<date-time>)")
    p.add_argument("--train-blocks", type=blocks_arg, nargs="+", default=[0, 1, "all"], metavar="K",
                   help="how many of the top's last blocks train, each a configuration; 0 = only the head "
                        "(default: 0 1 all)")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-4], help="learning rate(s) of the pretrained blocks "
                                                                        "(default: 1e-4)")
    p.add_argument("--head-lr", type=float, nargs="+", default=[1e-3], help="learning rate(s) of the new head "
                                                                             "(default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default: 0.01)")
    p.add_argument("--epochs", type=int, default=10, help="maximum epochs per configuration (default: 10)")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a lower val loss; the best epoch is kept (default: 3)")
    p.add_argument("--batch-size", type=int, default=32, help="activations per step (default: 32)")
    p.add_argument("--augment", action="store_true",
                   help="random horizontal flips and small shifts of the cached maps while training")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the head (default: 0)")
    p.add_argument("--val-fraction", type=float,
                   help="hold out this stratified fraction of train+val for early stopping and selection "
                        "(default: the cache's val split, else 0.2)")
    p.add_argument("--no-refit", dest="refit", action="store_false",
                   help="keep the best configuration as trained on train alone (default: retrain it on train+val "
                        "for the epochs that were best, as the sweep refits its best, when --budget allows)")
    p.add_argument("--budget", type=duration_arg, metavar="TIME",
                   help="no configuration starts after this (90s, 15m, 1h; the first always trains)")
    p.add_argument("--metric", default="accuracy", choices=METRICS,
                   help="selection metric (default: accuracy; ties go to the lower log-loss)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the hold-out, the head's init and shuffling (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--precision", default="auto", choices=TRAIN_PRECISIONS,
                   help="compute precision of training (weights and optimiser stay float32; predictions are fp32); "
                        "auto = bf16 where the device runs it fast (default: auto)")
    add_output_flags(p)
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
