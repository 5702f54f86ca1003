""":class:`ExtractConfig`: what decides the features an extraction produces and how it runs (stage: none).

Fields marked ``key=True`` change the features and enter the cache key (so do the data's files and labels); the
rest change only speed or where things go. :meth:`ExtractConfig.to_record` is what a cache stores of its settings;
:meth:`ExtractConfig.from_record` turns that record back into the settings that reproduce its features (``predict``,
``finetune`` and model files use it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .._validation import Interval, Options
from .._validation import Sequence as ListOf
from ..errors import ConflictError
from ._base import (
    AUGMENTATIONS,
    CACHE_DIR_HELP,
    DEFAULT_MODEL,
    DEVICE,
    DTYPES,
    ENGINES,
    MAX_SCALE,
    MAX_VIEWS,
    POOLS,
    POSITIVE_INT,
    PRECISIONS,
    Config,
    default_cache_dir,
    int_or_auto,
    plain_scales,
    setting,
)

__all__ = ["ExtractConfig"]


@dataclass
class ExtractConfig(Config):
    """Everything that decides what features an extraction produces and how it runs."""

    data: Any = setting(None, "image folder (class subfolders, optionally inside train/ val/ test/; or a flat folder "
                              "= unlabelled) or a CSV with columns path,label[,split]; the Python API also takes a "
                              "torch Dataset (its files and labels enter the cache key, not its path); required, but "
                              "for extract --list-layers")
    model: Any = setting(DEFAULT_MODEL, "torchvision model name (e.g. resnet50), timm:NAME, or package.module:factory "
                                        "(the default's ImageNet weights ship with the package: works offline); the "
                                        "Python API also takes an nn.Module", key=True)
    weights: str = setting("DEFAULT", "DEFAULT = the model's pretrained weights (torchvision downloads them once into "
                                      "the torch hub cache); none = random init; or a local checkpoint file (loaded "
                                      "with weights_only=True)", key=True)
    layers: Sequence[str] = setting(
        (), "graph node name(s) to store, as torchvision.models.feature_extraction names them, or presets: lastK = the "
            "outputs of the last K stages (e.g. last2, last3), stages = all of them; several are extracted in one "
            "pass, and a sweep then tries each layer and their concatenation (default: last3, the last three stage "
            "outputs, the deepest being the pooled penultimate features; for models without stages, such as ViTs, "
            "the penultimate features alone). See --list-layers", key=True, flag="--layer", nargs="+",
        metavar="NODE")
    pool: str = setting("avg", "how spatial maps (or ViT tokens) become vectors", key=True)
    image_size: Optional[int] = setting(None, "crop size fed to the model (default: the model's own)", key=True,
                                        type=int)
    resize_size: Optional[int] = setting(None, "shorter side before the centre crop (default: the model's "
                                               "crop/resize ratio)", key=True, type=int)
    mean: Optional[Sequence[float]] = setting(None, "normalisation mean, 0..1 (default: the model's)", key=True,
                                              type=float, nargs=3, metavar=("R", "G", "B"))
    std: Optional[Sequence[float]] = setting(None, "normalisation std, 0..1 (default: the model's)", key=True,
                                             type=float, nargs=3, metavar=("R", "G", "B"))
    precision: str = setting(
        "auto", "compute precision; auto = fp32 on a CPU with a CPU engine installed (exact; faster than torch's bf16 "
                "where measured), else bf16 on GPUs and CPUs that run it natively, fp16 on older GPUs, else fp32; int8 "
                "= quantised after training, calibrated on 128 of your images, on a CPU engine only (opt-in: its "
                "features drift from fp32's)", key=True)
    dtype: str = setting("float32", "storage type of the features; float16 halves the file", key=True)
    hash_content: bool = setting(False, "key the cache on each file's SHA-256 instead of its size and modification "
                                        "time (a FIFO or device is never opened; a read outlasting --decode-timeout "
                                        "is given up: that file fails)", key=True)
    gpu_decode: bool = setting(False, "decode JPEGs in batches on the model's device with torchvision.io (nvJPEG on a "
                                      "GPU) instead of Pillow in the workers; for GPU runs that are decode-bound",
                               key=True)
    views: int = setting(0, "also store K augmented views of every image under views/<layer>, so a classifier can "
                            "train with data augmentation (and predict with test-time augmentation) without rerunning "
                            "the model; costs K extra forward passes per image", key=True, type=int, metavar="K")
    augment: Sequence[str] = setting(
        ("flip", "crop"), f"how views are made: {', '.join(AUGMENTATIONS)} (random resized crop, horizontal flip, "
                          f"colour jitter), separated by commas or spaces", key=True, words=True, metavar="HOW")
    scales: Sequence[float] = setting(
        (1.0,), "also run the network on each crop resized by these factors (up to 2) and join each layer's pooled "
                "features over the scales, in order: e.g. --scales 1 0.667 at 96 px adds a 64-px pass (0.44x the "
                "compute). Small images upscaled to the model's size (scans, digits, thumbnails) gain most; "
                "featcache.fit tries it and keeps it only when it wins; not with --pool none", key=True, type=float,
        nargs="+", metavar="S")

    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    engine: str = setting(
        "auto", "what runs the network: torch, or on a CPU onnxruntime / openvino (pip install 'featcache[cpu-fast]'), "
                "exported to ONNX once and kept in the cache folder. Their fp32 features agree with torch's (checked "
                "on your images before any row is written; an engine that disagrees is not used) and share its cache "
                "key. auto = the fastest measured here, torch on a GPU or for runs too short to repay the export")
    batch_size: Union[int, str] = setting(64, "images per forward pass, or auto = the largest that fits on the GPU "
                                              "(64 on a CPU)", type=int_or_auto)
    num_workers: Optional[int] = setting(None, "decode processes (default: half the cores on CPU runs, cores-1 up to "
                                               "8 with a GPU)", type=int)
    streams: Optional[int] = setting(
        None, "batches run through the model at once, each by its own thread with an equal share of torch's intra-op "
              "threads; on a CPU two single-threaded streams lose less to the decode workers than one two-threaded "
              "stream (default: 2 on a CPU with 2+ threads, 1 on a GPU; always 1 with --num-workers 0)", type=int)
    cache_dir: Optional[Path] = setting(None, CACHE_DIR_HELP, type=Path)
    strict: bool = setting(False, "decode every file before extracting and refuse the dataset if any cannot be read "
                                  "(default: skip bad files, record them under failed/ in the cache); also refuse "
                                  "--precision bf16 on a CPU that only emulates it (default: a warning)")
    decode_timeout: float = setting(60.0, "an image taking longer than this to decode counts as failed; 0 = no limit",
                                    type=float, metavar="SECONDS")
    progress: bool = setting(True)  # the CLI's --no-progress and -q set it

    _parameter_constraints = {
        "pool": [Options(POOLS)],
        "image_size": [None, POSITIVE_INT],
        "resize_size": [None, POSITIVE_INT],
        "mean": [None, ListOf((Real,), 3, 3)],
        "std": [None, ListOf((Interval(Real, 0, None, "neither"),), 3, 3)],
        "precision": [Options(PRECISIONS)],
        "dtype": [Options(DTYPES)],
        "hash_content": [bool],
        "gpu_decode": [bool],
        "views": [Interval(Integral, 0, MAX_VIEWS)],
        "augment": [ListOf((Options(AUGMENTATIONS),))],
        "scales": [ListOf((Interval(Real, 0, MAX_SCALE, "right"),), 1)],
        "device": [DEVICE],
        "engine": [Options(ENGINES)],
        "batch_size": [POSITIVE_INT, Options(("auto",))],
        "num_workers": [None, Interval(Integral, 0, None)],
        "streams": [None, POSITIVE_INT],
        "cache_dir": [None, str, os.PathLike],
        "strict": [bool],
        "decode_timeout": [Interval(Real, 0, None)],
        "progress": [bool],
    }

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def _check_combinations(self) -> None:
        if self.views and not self.augment:
            self._refuse("augment", f"a non-empty list of {', '.join(AUGMENTATIONS)} when views > 0")
        if self.views and self.gpu_decode:
            raise ConflictError("{views} are made with Pillow: drop {gpu_decode} to extract views")
        if len(set(self.scales)) < len(self.scales):
            self._refuse("scales", "each scale once")
        if self.precision == "int8" and self.engine == "torch":
            raise ConflictError("{precision} int8 runs on a CPU engine (onnxruntime or openvino), not {engine} torch")
        if not plain_scales(self.scales) and self.pool == "none":
            raise ConflictError("{scales} joins pooled features (maps of different sizes cannot be joined, and "
                                "fine-tuning runs the network at its crop size): leave {scales} at 1 with {pool} none")

    def to_record(self, *, model: str, weights: str, weights_sha256: str, layers: Sequence[str], preprocess: dict,
                  precision: str, engine: str, engine_key: Optional[dict]) -> dict:
        """What a cache stores of its settings: these fields, with what planning resolved them to (the model's
        name and weights, the layers a preset named, the preprocessing, the precision and engine ``auto`` became)."""
        data = self.data
        return {
            "data": str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__,
            "model": model,
            "weights": weights,
            "weights_sha256": weights_sha256,
            "layers": list(layers),
            "pool": self.pool,
            "preprocess": preprocess,
            "precision": precision,
            "engine": engine,
            "engine_key": engine_key,
            "dtype": self.dtype,
            "hash_content": self.hash_content,
            "gpu_decode": self.gpu_decode,
            "views": self.views,
            "augment": list(self.augment) if self.views else [],
            "scales": [float(s) for s in self.scales],
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_record(cls, record: dict, with_views: bool = False, **changes: Any) -> "ExtractConfig":
        """The settings that reproduce a cache's features from its stored record (:meth:`to_record`), and with
        ``with_views`` its augmented views too; ``changes`` are set on top (``data=``, ``device=``...)."""
        pre = record.get("preprocess") or {}
        weights = str(record.get("weights", "DEFAULT"))
        if weights.startswith("none"):
            weights = "none"
        elif not Path(weights).expanduser().is_file():  # a description of default weights, e.g. "torchvision:..."
            weights = "DEFAULT"
        settings = {
            "model": record["model"], "weights": weights, "layers": list(record.get("layers") or []),
            "pool": record.get("pool", "avg"), "image_size": pre.get("crop_size"),
            "resize_size": pre.get("resize_size"), "mean": pre.get("mean"), "std": pre.get("std"),
            "precision": record.get("precision", "auto"), "dtype": record.get("dtype", "float32"),
            "hash_content": bool(record.get("hash_content", False)), "scales": tuple(record.get("scales") or (1.0,)),
        }
        if record.get("engine_key"):  # features only one engine makes (int8, OpenVINO's bf16) come from it again
            settings["engine"] = record["engine"]
        if with_views:
            settings.update(views=int(record.get("views", 0)), augment=tuple(record.get("augment") or ()))
        return cls(**{**settings, **changes})
