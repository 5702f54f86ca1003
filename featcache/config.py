"""The one dataclass that carries an extraction's settings from the CLI/API down to every stage."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

DEFAULT_MODEL = "efficientnet_lite0"
POOLS = ("avg", "max", "gem", "flatten", "cls", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = ("float32", "float16")
AUGMENTATIONS = ("flip", "crop", "color")
MAX_VIEWS = 64


class FeatcacheError(Exception):
    """An error the user can fix; the CLI prints it as one line, without a traceback."""


def default_cache_dir() -> Path:
    """``$FEATCACHE_DIR``, else ``$XDG_CACHE_HOME/featcache``, else ``~/.cache/featcache``."""
    if os.environ.get("FEATCACHE_DIR"):
        return Path(os.environ["FEATCACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "featcache"


@dataclass
class ExtractConfig:
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

    device: str = "auto"
    batch_size: Union[int, str] = 64  # or "auto": the largest that fits on a GPU, 64 on a CPU
    num_workers: Optional[int] = None  # None = chosen from the CPU count
    streams: Optional[int] = None  # batches in flight on the model at once; None = 2 on a CPU, 1 on a GPU
    cache_dir: Optional[Path] = None
    strict: bool = False  # decode every file first; refuse the dataset if any is bad
    decode_timeout: float = 60.0  # seconds one image may take to decode before it counts as failed
    progress: bool = True

    def replace(self, **changes: Any) -> "ExtractConfig":
        return dataclasses.replace(self, **changes)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def validate(self) -> None:
        """Reject bad values early, naming the flag and what is allowed."""
        if self.pool not in POOLS:
            raise FeatcacheError(f"--pool must be one of {', '.join(POOLS)}; got {self.pool!r}")
        if self.precision not in PRECISIONS:
            raise FeatcacheError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.dtype not in DTYPES:
            raise FeatcacheError(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise FeatcacheError(f"--device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if self.batch_size != "auto" and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise FeatcacheError(f"--batch-size must be a positive integer or auto; got {self.batch_size!r}")
        if self.decode_timeout < 0:
            raise FeatcacheError(f"--decode-timeout must be >= 0 seconds (0 = no limit); got {self.decode_timeout}")
        if self.streams is not None and (isinstance(self.streams, bool) or not isinstance(self.streams, int)
                                         or self.streams < 1):
            raise FeatcacheError(f"--streams must be a positive integer; got {self.streams!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise FeatcacheError(f"--num-workers must be >= 0; got {self.num_workers}")
        if not (isinstance(self.views, int) and 0 <= self.views <= MAX_VIEWS):
            raise FeatcacheError(f"--views must be an integer from 0 to {MAX_VIEWS}; got {self.views!r}")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown or (self.views and not self.augment):
            raise FeatcacheError(f"--augment takes a comma-separated list of {', '.join(AUGMENTATIONS)}; "
                                 f"got {','.join(self.augment) or 'nothing'}")
        if self.views and self.gpu_decode:
            raise FeatcacheError("--views makes its augmented views with Pillow; drop --gpu-decode to use it")
        for name in ("image_size", "resize_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FeatcacheError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise FeatcacheError(f"--{name} takes 3 numbers (R G B); got {list(value)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise FeatcacheError(f"--std values must be > 0; got {list(self.std)}")
