"""What every config shares: the allowed values, :func:`setting` (a field with its help and flag), and
:class:`Config` (``replace``, ``validate``, the cache-key fields). Stage: none (no torch, no sklearn).

A field made with :func:`setting` is one source for everything about it: its default, the help a user reads, and
whether it enters the cache key. ``featcache.cli`` builds each flag from it (:func:`featcache.cli.add_config_flags`),
so the command line repeats no default; the table ``_parameter_constraints`` checks its values.
"""
from __future__ import annotations

import dataclasses
import os
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Optional, Tuple

from .._util import parse_duration
from .._validation import Interval, Matches
from ..errors import ParameterError, register_parameters

__all__ = ["Config", "setting", "default_cache_dir", "DEFAULT_MODEL", "DEVICE", "POOLS", "plain_scales",
           "PRECISIONS", "ENGINES", "TRAIN_PRECISIONS", "DTYPES", "AUGMENTATIONS", "MAX_VIEWS", "MAX_SCALE",
           "METRICS", "BACKENDS", "CLUSTER_BACKENDS", "POSITIVE_INT", "FRACTION", "DURATION", "CACHE_DIR_HELP",
           "int_or", "duration", "blocks", "int_or_auto", "comma_list"]

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


def plain_scales(scales) -> bool:
    """Whether ``--scales`` is the plain single pass at the crop size (``1``): no extra sizes, no extra key part."""
    return [float(v) for v in scales] == [1.0]


DEVICE = Matches(r"auto|cpu|cuda(:\d+)?", "'auto', 'cpu', 'cuda' or 'cuda:N'")
POSITIVE_INT = Interval(Integral, 1, None)
FRACTION = Interval(Real, 0, 1, "neither")
# a positive duration: some digit other than 0 (``"0s"`` is refused, as the number 0 is)
DURATION = Matches(r"(?=.*[1-9])\s*(\d+(\.\d+)?\s*[hmsHMS]?\s*)+", "a duration such as '90s', '15m', '1h' or '1h30m'")
CACHE_DIR_HELP = "where caches live (default: $FEATCACHE_DIR, else $XDG_CACHE_HOME/featcache, else ~/.cache/featcache)"


def default_cache_dir() -> Path:
    """``$FEATCACHE_DIR``, else ``$XDG_CACHE_HOME/featcache``, else ``~/.cache/featcache``."""
    if os.environ.get("FEATCACHE_DIR"):
        return Path(os.environ["FEATCACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "featcache"


def setting(default: Any, help: Optional[str] = None, *, key: bool = False, flag: Optional[str] = None,
            **argparse_kwargs: Any):
    """A config field and everything about it: ``help`` (the flag's help; none = no flag), ``key`` (it changes the
    features, so it enters the cache key), ``flag`` (when not ``--the-name``, or ``--no-the-name`` for a bool that
    defaults to True) and the argparse keywords its flag needs (``type``, ``nargs``, ``metavar``...)."""
    meta = {"help": help, "key": key, "flag": flag, "argparse": argparse_kwargs}
    return dataclasses.field(default=default, metadata=meta)


class Config:
    """What the configs share: ``replace``, ``validate`` (the table, then the cross-parameter rules) and the fields
    that enter the cache key."""

    _parameter_constraints: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_parameters(*getattr(cls, "__annotations__", {}))  # its fields may be named in messages: {name}

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Reject bad values before any work, saying what was passed and what is allowed; never changes a field."""
        from .._validation import validate_params

        validate_params(self, self._parameter_constraints)
        self._check_combinations()

    def _check_combinations(self) -> None:
        pass

    def _refuse(self, param: str, allowed: str) -> None:
        raise ParameterError(type(self).__name__, param, allowed, getattr(self, param))

    @property
    def budget_s(self) -> Optional[float]:
        """``budget`` in seconds (given as 900 or as "15m"), or None for no limit."""
        budget = getattr(self, "budget", None)
        return None if budget is None else parse_duration(budget)

    @classmethod
    def key_fields(cls) -> Tuple[str, ...]:
        """The fields that change the features, and so enter the cache key (marked ``key=True``)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("key"))


def int_or(word: str, what: str):
    """A flag's type: ``word`` as it is, else an integer (its range is checked by the config's table)."""
    def parse(text: str):
        if text == word:
            return text
        try:
            return int(text)
        except ValueError:
            import argparse

            raise argparse.ArgumentTypeError(f"expected {what} or {word}, got {text!r}") from None
    parse.__name__ = f"int_or_{word}"
    return parse


def comma_list(text: str) -> list:
    """A flag's type for a comma-separated list (``--classifiers logreg,knn``): its items, stripped."""
    return [w.strip() for w in text.split(",") if w.strip()]


def duration(text: str) -> float:
    """A flag's type for ``--budget``: seconds from ``90``, ``90s``, ``15m``, ``1h30m``."""
    try:
        return parse_duration(text)
    except ValueError as e:
        import argparse

        raise argparse.ArgumentTypeError(str(e)) from None


blocks = int_or("all", "an integer >= 0")  # --train-blocks
int_or_auto = int_or("auto", "a positive integer")  # --batch-size, --image-size
