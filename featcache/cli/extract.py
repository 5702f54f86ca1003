"""``python -m featcache.extract``: the extraction command's flags (shared with ``explain``) and its main.

Stage: commands. Imports argparse and ``config`` at load; the extraction library (torch) inside ``_main``.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from ..config import ExtractConfig
from ..errors import FeatcacheError
from . import Parser, add_config_flags, add_run_flags, config_from_args, run_cli

__all__ = ["add_extract_arguments", "build_parser", "main", "extract_config"]


def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``extract`` and ``explain`` (they must build the same cache key): the data, every field that
    enters the key, the engine, and where caches live."""
    add_config_flags(p, ExtractConfig, names=("data", "engine", "cache_dir", *ExtractConfig.key_fields()))


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.extract",
        description="Run a frozen pretrained model once over an image dataset and cache the features in "
                    "one HDF5 file. Rerunning with the same settings and unchanged files is a cache hit. "
                    "The last line printed to stdout is the cache file's path; logs go to stderr.",
        epilog="examples:\n"
               "  python -m featcache.extract --data data/digits\n"
               "  python -m featcache.extract --data photos/ --model resnet50 --layer layer3 layer4\n"
               "  python -m featcache.extract --data photos/ --layer last3   # the last 3 stage outputs; the\n"
               "                                                   # sweep then tries each and their concatenations\n"
               "  python -m featcache.extract --model resnet50 --list-layers\n"
               "  python -m featcache.extract --data photos/ --views 4 --augment flip,crop\n"
               "  python -m featcache.extract --data scans/ --image-size 96 --scales 1 0.667   # 96 and 64 px\n"
               "  python -m featcache.sweep $(python -m featcache.extract --data photos/ | tail -n1)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_extract_arguments(p)
    add_config_flags(p, ExtractConfig, names=("device", "batch_size", "num_workers", "streams", "strict",
                                              "decode_timeout"))
    p.add_argument("--list-layers", action="store_true",
                   help="print the model's layer names with output shapes and bytes per image, then exit")
    add_run_flags(p, quiet=" and the final path")
    return p


def extract_config(args: argparse.Namespace, **changes) -> ExtractConfig:
    """The :class:`ExtractConfig` the flags describe."""
    return config_from_args(ExtractConfig, args, **changes)


def _main(args: argparse.Namespace) -> int:
    import numpy as np

    cfg = extract_config(args, progress=not (args.no_progress or args.quiet))
    if args.list_layers:
        from ..extraction import list_layers

        rows = list_layers(cfg)
        itemsize = np.dtype(cfg.dtype).itemsize
        width = max(len(r["layer"]) for r in rows)
        print(f"{'layer':<{width}}  {'output shape':<18} {'--pool ' + cfg.pool:>14}  {'bytes/image':>11}  stage output")
        for r in rows:
            dim = r["dim"]
            line = (f"{r['layer']:<{width}}  {'x'.join(map(str, r['shape'])):<18} "
                    f"{dim if dim is not None else '-':>14}  {dim * itemsize if dim else '-':>11}  "
                    f"{r.get('stage', '')}")
            print(line.rstrip())
        if any(r.get("stage") for r in rows):
            print("stage outputs: the last node at each resolution that every path passes through; "
                  "--layer lastK takes the last K of them")
        return 0
    if not args.data:
        raise FeatcacheError("--data is required (an image folder or a CSV file); see --help")
    from ..cache.hit import accept_hit, find_hit

    found, source, manifest = find_hit(cfg)  # a hit found without torch: nothing else is imported
    if found is not None:
        path = accept_hit(cfg, found)
    else:
        from ..extraction.job import extract_missing

        path = extract_missing(cfg, source, manifest)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one path on stdout
        print(path)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())
