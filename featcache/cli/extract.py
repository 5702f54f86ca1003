"""``python -m featcache.extract``: the extraction command's flags (shared with ``explain``) and its main.

Stage: commands. Imports argparse and ``config`` at load; the extraction library (torch) inside ``_main``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

from ..config import AUGMENTATIONS, DEFAULT_MODEL, DTYPES, ENGINES, POOLS, PRECISIONS, ExtractConfig
from ..errors import FeatcacheError
from . import CACHE_DIR_HELP, Parser, add_run_flags, config_from_args, int_or_auto, run_cli

__all__ = ["add_extract_arguments", "build_parser", "main", "extract_config"]


def _augmentations(text: str):
    return tuple(a.strip() for a in text.split(",") if a.strip())


def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``extract`` and ``explain`` (they must build the same cache key)."""
    p.add_argument("--data", help="image folder (class subfolders, optionally inside train/ val/ test/; "
                                  "or a flat folder = unlabelled) or a CSV with columns path,label[,split]")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"torchvision model name (e.g. resnet50), timm:NAME, or package.module:factory "
                        f"(default: {DEFAULT_MODEL}, ImageNet weights shipped with the package, works offline)")
    p.add_argument("--weights", default="DEFAULT",
                   help="DEFAULT = the model's pretrained weights (torchvision downloads them once into the "
                        "torch hub cache); none = random init; or a local checkpoint file (loaded with "
                        "weights_only=True) (default: DEFAULT)")
    p.add_argument("--layer", dest="layers", nargs="+", default=[], metavar="NODE",
                   help="graph node name(s) to store, as torchvision.models.feature_extraction names them, or "
                        "presets: lastK = the outputs of the last K stages (e.g. last2, last3), stages = all of "
                        "them; several are extracted in one pass, and a sweep then tries each layer and their "
                        "concatenation (default: last3, the last three stage outputs, the deepest being the pooled "
                        "penultimate features; for models without stages, such as ViTs, the penultimate features "
                        "alone). See --list-layers")
    p.add_argument("--pool", default="avg", choices=POOLS,
                   help="how spatial maps (or ViT tokens) become vectors (default: avg)")
    p.add_argument("--image-size", type=int, help="crop size fed to the model (default: the model's own)")
    p.add_argument("--resize-size", type=int,
                   help="shorter side before the centre crop (default: the model's crop/resize ratio)")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean, 0..1")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation std, 0..1")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="compute precision; auto = fp32 on a CPU with a CPU engine installed (exact; faster than "
                        "torch's bf16 where measured), else bf16 on GPUs and CPUs that run it natively, fp16 on older "
                        "GPUs, else fp32; int8 = quantised after training, calibrated on 128 of your images, on a CPU "
                        "engine only (opt-in: its features drift from fp32's) (part of the cache key) (default: auto)")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="what runs the network: torch, or on a CPU onnxruntime / openvino (pip install "
                        "'featcache[cpu-fast]'), exported to ONNX once and kept in the cache folder. Their fp32 "
                        "features agree with torch's (checked on your images before any row is written; an engine that "
                        "disagrees is not used) and share its cache key. auto = the fastest measured here, torch on a "
                        "GPU or for runs too short to repay the export (default: auto)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="storage type of the features; float16 halves the file (default: float32)")
    p.add_argument("--hash-content", action="store_true",
                   help="key the cache on each file's SHA-256 instead of its size and modification time (a FIFO "
                        "or device is never opened; a read outlasting --decode-timeout is given up: that file fails)")
    p.add_argument("--gpu-decode", action="store_true",
                   help="decode JPEGs in batches on the model's device with torchvision.io (nvJPEG on a GPU) "
                        "instead of Pillow in the workers; for GPU runs that are decode-bound (part of the key)")
    p.add_argument("--views", type=int, default=0, metavar="K",
                   help="also store K augmented views of every image under views/<layer>, so a classifier "
                        "can train with data augmentation (and predict with test-time augmentation) without "
                        "rerunning the model; costs K extra forward passes per image (default: 0)")
    p.add_argument("--augment", type=_augmentations, default=("flip", "crop"), metavar="LIST",
                   help=f"how --views are made, comma-separated: {', '.join(AUGMENTATIONS)} "
                        f"(random resized crop, horizontal flip, colour jitter) (default: flip,crop)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="S",
                   help="also run the network on each crop resized by these factors (up to 2) and join each "
                        "layer's pooled features over the scales, in order: e.g. --scales 1 0.667 at 96 px adds "
                        "a 64-px pass (0.44x the compute). Small images upscaled to the model's size (scans, "
                        "digits, thumbnails) gain most; featcache.fit tries it and keeps it only when it wins; "
                        "not with --pool none (part of the key) (default: 1)")
    p.add_argument("--cache-dir", type=Path,
                   help=CACHE_DIR_HELP)


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
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int_or_auto, default=64,
                   help="images per forward pass, or auto = the largest that fits on the GPU (64 on a CPU) "
                        "(default: 64)")
    p.add_argument("--num-workers", type=int,
                   help="decode processes (default: half the cores on CPU runs, cores-1 up to 8 with a GPU)")
    p.add_argument("--streams", type=int,
                   help="batches run through the model at once, each by its own thread with an equal share of "
                        "torch's intra-op threads; on a CPU two single-threaded streams lose less to the decode "
                        "workers than one two-threaded stream (default: 2 on a CPU with 2+ threads, 1 on a GPU; "
                        "always 1 with --num-workers 0)")
    p.add_argument("--strict", action="store_true",
                   help="decode every file before extracting and refuse the dataset if any cannot be read "
                        "(default: skip bad files, record them under failed/ in the cache); also refuse "
                        "--precision bf16 on a CPU that only emulates it (default: a warning)")
    p.add_argument("--decode-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="an image taking longer than this to decode counts as failed; 0 = no limit (default: 60)")
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
