"""``python -m featcache.predict MODEL --data DIR``: the prediction command's flags and its main.

Stage: commands. ``--info`` reads the model's sidecar only (nothing loaded from the model, no torch); prediction
imports the library inside ``_main``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..config import PredictConfig
from ..errors import FeatcacheError
from . import Parser, add_config_flags, add_run_flags, config_from_args, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.predict",
        description="Predict classes for new images with a model saved by featcache sweep or finetune. Features "
                    "are extracted with exactly the settings the model was trained on (a cache hit when done "
                    "before); features of another kind are refused. Writes path,prediction[,split][,trained_on]"
                    "[,proba_<class>...] as CSV (to --out, else stdout); with labelled images it also prints the "
                    "accuracy per split. Loading a model file runs no code from it (skops with trusted types, or "
                    "safetensors weights); its SHA-256 must match MODEL.json.",
        epilog="examples:\n"
               "  python -m featcache.predict runs/exp1/best.skops --data new_photos/ --out preds.csv\n"
               "  python -m featcache.predict runs/exp1/best.skops --data labelled.csv --no-proba\n"
               "  python -m featcache.predict runs/exp1/best.skops --data CACHE.h5   # features already extracted\n"
               "  python -m featcache.predict runs/exp1/best.skops --info",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path,
                   help="a model file written by sweep or finetune (OUT/best.skops, OUT/best.safetensors), or its "
                        "run folder OUT")
    p.add_argument("--info", action="store_true",
                   help="print the model's metadata (from its sidecar, nothing loaded from the model file) and exit")
    add_config_flags(p, PredictConfig)
    add_run_flags(p, quiet=" (and the CSV when printed)")
    return p


def _main(args: argparse.Namespace) -> int:
    from ..selection.modelfile import read_metadata

    if args.info:
        print(json.dumps(read_metadata(args.model), indent=2, sort_keys=True, default=str))
        return 0
    if not args.data:
        raise FeatcacheError("--data is required (an image folder, a CSV file or a cache .h5); see --help")
    from ..prediction import run_predict

    cfg = config_from_args(PredictConfig, args, progress=not (args.no_progress or args.quiet))
    df = run_predict(cfg)
    if args.out is None:
        df.to_csv(sys.stdout, index=False)
    if "accuracy" in df.attrs and not args.quiet:  # one line per split: never one number over seen and unseen rows
        for group, value in df.attrs["accuracy"].items():
            print(f"accuracy on {group}: {value:.4f}", file=sys.stderr if args.out is None else sys.stdout)
        if "trained_on" in df and df["trained_on"].any():
            print(f"{int(df['trained_on'].sum())} image(s) trained the model (trained_on column): their accuracy is "
                  f"not a held-out score", file=sys.stderr if args.out is None else sys.stdout)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
