"""The settings of each command as one dataclass, validated from a table (stage: none; no torch, no sklearn).

:class:`ExtractConfig`, :class:`SweepConfig` and :class:`FinetuneConfig` carry a run's settings from the
command line or the Python API down to every stage. Each declares ``_parameter_constraints`` (checked by
:func:`featcache._validation.validate_params`) and checks rules across parameters in ``_check_combinations``.
Messages name the parameter (``n_jobs``); the CLI shows the flag (``--n-jobs``) instead.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ._util import parse_duration, plain_scales
from ._validation import Interval, Matches, Options, validate_params
from ._validation import Sequence as ListOf
from .errors import ConflictError, FeatcacheError, ParameterError

__all__ = ["ExtractConfig", "SweepConfig", "FinetuneConfig", "FitConfig", "FeatcacheError", "default_cache_dir",
           "DEFAULT_MODEL", "DEVICE", "POOLS", "PRECISIONS", "ENGINES", "DTYPES", "AUGMENTATIONS", "MAX_VIEWS",
           "MAX_SCALE", "METRICS", "BACKENDS", "CLUSTER_BACKENDS"]

DEFAULT_MODEL = "efficientnet_lite0"
POOLS = ("avg", "max", "gem", "flatten", "cls", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
ENGINES = ("auto", "torch", "onnxruntime", "openvino")
TRAIN_PRECISIONS = ("auto", "bf16", "fp32")
DTYPES = ("float32", "float16")
AUGMENTATIONS = ("flip", "crop", "color")
MAX_VIEWS = 64
MAX_SCALE = 2.0  # --scales: at most twice the crop (4x the compute of one pass)
METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "log_loss")
BACKENDS = ("loky", "threading", "ray", "dask")
CLUSTER_BACKENDS = ("ray", "dask")

DEVICE = Matches(r"auto|cpu|cuda(:\d+)?", "'auto', 'cpu', 'cuda' or 'cuda:N'")
_POSITIVE_INT = Interval(Integral, 1, None)
_FRACTION = Interval(Real, 0, 1, "neither")


def default_cache_dir() -> Path:
    """``$FEATCACHE_DIR``, else ``$XDG_CACHE_HOME/featcache``, else ``~/.cache/featcache``."""
    if os.environ.get("FEATCACHE_DIR"):
        return Path(os.environ["FEATCACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "featcache"


class _Config:
    """What the four configs share: ``replace`` and ``validate`` (the table, then the cross-parameter rules)."""

    _parameter_constraints: dict = {}

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Reject bad values before any work, saying what was passed and what is allowed."""
        if isinstance(getattr(self, "budget", None), str):  # "15m" from Python too, as on the command line
            try:
                self.budget = parse_duration(self.budget)
            except ValueError as e:
                raise FeatcacheError(f"budget: {e}") from None
        validate_params(self, self._parameter_constraints)
        self._check_combinations()

    def _check_combinations(self) -> None:
        pass

    def _refuse(self, param: str, allowed: str) -> None:
        raise ParameterError(type(self).__name__, param, allowed, getattr(self, param))


@dataclass
class ExtractConfig(_Config):
    """Everything that decides what features an extraction produces and how it runs.

    Fields above ``device`` change the features and so enter the cache key; the rest only
    change speed or where things go.
    """

    data: Any = None  # folder, CSV file, or a torch Dataset (Python API only)
    model: Any = DEFAULT_MODEL  # name, "timm:NAME", "pkg.mod:callable", or an nn.Module (API)
    weights: str = "DEFAULT"  # DEFAULT | none | path to a local checkpoint
    layers: Sequence[str] = ()  # graph node names or presets; empty = the last 3 stage outputs (default_layers)
    pool: str = "avg"
    image_size: Optional[int] = None  # crop size; None = the model's own
    resize_size: Optional[int] = None  # shorter side before the centre crop; None = the model's ratio
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    precision: str = "auto"
    dtype: str = "float32"  # storage dtype of the features
    hash_content: bool = False  # hash file bytes instead of trusting size + mtime
    gpu_decode: bool = False  # decode JPEGs with torchvision.io on the model's device (for GPU runs)
    views: int = 0  # augmented views per image, stored under views/<layer> beside the clean features
    augment: Sequence[str] = ("flip", "crop")  # how views are made: any of AUGMENTATIONS
    scales: Sequence[float] = (1.0,)  # the network also runs on the crop resized by each; features concatenated

    device: str = "auto"
    # what runs the network: torch, or a CPU engine (ONNX Runtime, OpenVINO) whose fp32 features agree with torch's
    # and share its key; auto = the fastest measured here (extraction.engine)
    engine: str = "auto"
    batch_size: Union[int, str] = 64  # or "auto": the largest that fits on a GPU, 64 on a CPU
    num_workers: Optional[int] = None  # None = chosen from the CPU count
    streams: Optional[int] = None  # batches in flight on the model at once; None = 2 on a CPU, 1 on a GPU
    cache_dir: Optional[Path] = None
    strict: bool = False  # decode every file first; refuse the dataset if any is bad
    decode_timeout: float = 60.0  # seconds one image may take to decode before it counts as failed
    progress: bool = True

    _parameter_constraints = {
        "pool": [Options(POOLS)],
        "image_size": [None, _POSITIVE_INT],
        "resize_size": [None, _POSITIVE_INT],
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
        "batch_size": [_POSITIVE_INT, Options(("auto",))],
        "num_workers": [None, Interval(Integral, 0, None)],
        "streams": [None, _POSITIVE_INT],
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


@dataclass
class SweepConfig(_Config):
    """Everything that decides what a sweep fits, how it validates, and where results go."""

    cache: Path
    out: Optional[Path] = None  # None: write nothing (the Python API still returns the result)
    grid: Any = None  # None = the default grid; a .toml/.yaml path; or a dict of the same shape
    classifiers: Sequence[str] = ()  # restrict the grid to these classifiers
    layer: Optional[str] = None  # "a", "a+b" (concatenated), "a,b,a+b" (try these); None = every choice
    screen_layers: int = 2  # with layer=None: the whole grid on the N best choices of a cheap screen; 0 = on all
    views: bool = True  # train on the cache's augmented views (extract --views) when it has them
    tta: bool = False  # average predictions over each row's views (test-time augmentation)
    cv: Optional[int] = None  # k-fold CV (default: sized to the rows, see selection.schemes.auto_validation)
    val_fraction: Optional[float] = None  # a random stratified hold-out instead of CV
    halving: bool = True  # successive halving over training rows when the data is large enough to repay it
    ensemble: int = 3  # soft-vote the best N configurations (one per classifier) as one more entry; 0 = none
    budget: Optional[float] = None  # seconds ("15m" too): start no fit after this (refitting the best still runs)
    metric: str = "accuracy"
    seed: int = 0
    n_jobs: Optional[int] = None  # parallel tasks; None = a worker per core (loky, unless tiny data) or cluster core
    backend: str = "loky"  # where fits run: loky, threading (this machine), ray or dask (a cluster)
    address: Optional[str] = None  # cluster to join (default: $RAY_ADDRESS / $DASK_SCHEDULER_ADDRESS, else a local one)
    out_of_core: bool = False  # stream features from the cache in blocks instead of loading them (sgd and dense)
    block_rows: Optional[int] = None  # rows per read when out of core (default: whole HDF5 chunks, ~4 MiB)
    test_top: int = 1  # how many of the best configurations are refitted and scored on test
    results_dir: Optional[Path] = None  # default: <cache folder>/sweep-results
    reuse: bool = True  # read and write the result store
    overwrite: bool = False  # replace an earlier run's outputs in ``out``
    plots: bool = True
    progress: bool = True

    _parameter_constraints = {
        "classifiers": [ListOf((str,))],
        "layer": [None, str],
        "screen_layers": [Interval(Integral, 0, None)],
        "views": [bool],
        "tta": [bool],
        "cv": [None, Interval(Integral, 2, None)],
        "val_fraction": [None, _FRACTION],
        "halving": [bool],
        "ensemble": [Interval(Integral, 0, None)],
        "budget": [None, Interval(Real, 0, None, "neither")],
        "metric": [Options(METRICS)],
        "seed": [Integral],
        "n_jobs": [None, _POSITIVE_INT, Options((-1,))],
        "backend": [Options(BACKENDS)],
        "address": [None, str],
        "out_of_core": [bool],
        "block_rows": [None, _POSITIVE_INT],
        "test_top": [_POSITIVE_INT],
        "reuse": [bool],
        "overwrite": [bool],
        "plots": [bool],
        "progress": [bool],
    }

    def _check_combinations(self) -> None:
        if self.cv is not None and self.val_fraction is not None:
            raise ConflictError("use either {cv} or {val_fraction}, not both")
        if self.address and self.backend not in CLUSTER_BACKENDS:
            raise ConflictError(f"{{address}} is for {{backend}} ray or dask, not {self.backend}")
        if self.block_rows is not None and not self.out_of_core:
            raise ConflictError("{block_rows} only applies with {out_of_core}")


@dataclass
class FitConfig(_Config):
    """What ``featcache.fit`` does from images to the best model: extraction settings, the budget, the stages."""

    data: Any = None  # image folder or CSV file
    out: Optional[Path] = None  # the run folder: best.*, leaderboard.csv, fit.json, and sweep/ and finetune/
    budget: float = 900.0  # seconds for the whole run: no stage or fit starts after it
    model: Any = DEFAULT_MODEL
    weights: str = "DEFAULT"
    # "auto": from the images (featcache.sizing: small images screened at a few sizes); None: the model's own
    image_size: Union[int, str, None] = "auto"
    cache_dir: Optional[Path] = None
    scales: Sequence[float] = (1.0, 0.667)  # the scales stage: the network also at 2/3 of the size (1: skip it)
    views: int = 4  # augmented views per image for the views + TTA stage (0: skip it)
    augment: Sequence[str] = ("flip", "crop")  # how those views are made
    finetune: str = "auto"  # auto: when the budget left covers its estimate; always; never
    train_blocks: Sequence[Any] = (1, "all")  # the fine-tuning grid: blocks of the top that train
    metric: str = "accuracy"
    seed: int = 0
    n_jobs: Optional[int] = None
    device: str = "auto"
    top: int = 10  # rows of the sweep's leaderboard carried into fit's
    overwrite: bool = False
    progress: bool = True

    _parameter_constraints = {
        "out": [str, os.PathLike],
        "budget": [Interval(Real, 0, None, "neither")],
        "image_size": [None, _POSITIVE_INT, Options(("auto",))],
        "cache_dir": [None, str, os.PathLike],
        "scales": [ListOf((Interval(Real, 0, MAX_SCALE, "right"),), 1)],
        "views": [Interval(Integral, 0, MAX_VIEWS)],
        "augment": [ListOf((Options(AUGMENTATIONS),), 1)],
        "finetune": [Options(("auto", "always", "never"))],
        "train_blocks": [ListOf((Interval(Integral, 0, None), Options(("all",))), 1)],
        "metric": [Options(METRICS)],
        "seed": [Integral],
        "n_jobs": [None, _POSITIVE_INT, Options((-1,))],
        "device": [DEVICE],
        "top": [_POSITIVE_INT],
        "overwrite": [bool],
        "progress": [bool],
    }

    def _check_combinations(self) -> None:
        if len(set(self.scales)) < len(self.scales):
            self._refuse("scales", "each scale once")


@dataclass
class FinetuneConfig(_Config):
    """Everything that decides what a fine-tuning run trains, how it validates, and where results go.

    ``train_blocks``, ``lr`` and ``head_lr`` are lists: every combination is one configuration
    (with ``train_blocks`` 0 only the head trains, so ``lr`` does not vary there).
    """

    cache: Path
    from_layer: Optional[str] = None
    out: Optional[Path] = None  # None: write nothing (the Python API still returns the result)
    train_blocks: Sequence[Any] = (0, 1, "all")
    lr: Sequence[float] = (1e-4,)
    head_lr: Sequence[float] = (1e-3,)
    weight_decay: float = 1e-2
    epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    augment: bool = False
    dropout: float = 0.0
    val_fraction: Optional[float] = None  # a stratified hold-out of train when the cache has no val split (0.2)
    budget: Optional[float] = None  # seconds: start no configuration after this (the first always trains)
    refit: bool = True  # retrain the best on every train+val row for its best epoch count, as the sweep refits
    metric: str = "accuracy"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # training compute precision: auto (bf16 where fast), bf16 or fp32
    overwrite: bool = False  # replace an earlier run's outputs in ``out``
    plots: bool = True
    progress: bool = True

    _parameter_constraints = {
        "from_layer": [None, str],
        "train_blocks": [ListOf((Interval(Integral, 0, None), Options(("all",))), 1)],
        "lr": [ListOf((Interval(Real, 0, None, "neither"),), 1)],
        "head_lr": [ListOf((Interval(Real, 0, None, "neither"),), 1)],
        "weight_decay": [Interval(Real, 0, None)],
        "epochs": [_POSITIVE_INT],
        "patience": [_POSITIVE_INT],
        "batch_size": [_POSITIVE_INT],
        "augment": [bool],
        "dropout": [Interval(Real, 0, 1, "left")],
        "val_fraction": [None, _FRACTION],
        "budget": [None, Interval(Real, 0, None, "neither")],
        "refit": [bool],
        "metric": [Options(METRICS)],
        "seed": [Integral],
        "device": [DEVICE],
        "precision": [Options(TRAIN_PRECISIONS)],
        "overwrite": [bool],
        "plots": [bool],
        "progress": [bool],
    }

    def grid(self) -> list:
        """One dict of TopClassifier parameters per configuration, in a stable order."""
        out = []
        for blocks in dict.fromkeys(self.train_blocks):
            for lr in (self.lr[:1] if blocks == 0 else dict.fromkeys(self.lr)):
                for head_lr in dict.fromkeys(self.head_lr):
                    out.append({"train_blocks": blocks, "lr": float(lr), "head_lr": float(head_lr)})
        return out
