""":class:`PredictConfig`: how ``featcache.predict`` gets the features of new images and what it writes (stage:
none). Which features is not a setting: they are extracted exactly as the model's were."""
from __future__ import annotations

import os
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, Optional, Union

from .._validation import Interval, Options
from ._base import CACHE_DIR_HELP, DEVICE, POSITIVE_INT, Config, int_or_auto, setting

__all__ = ["PredictConfig"]


@dataclass
class PredictConfig(Config):
    """A saved model, the images to predict, and how their features are extracted and the predictions written."""

    model: Path
    data: Any = setting(None, "image folder, CSV (path,label[,split]) or a featcache cache .h5 file")
    out: Optional[Path] = setting(None, "CSV file to write (default: print the CSV to stdout)", type=Path)
    proba: bool = setting(True, "leave out the per-class probability columns")
    trust_model_code: bool = setting(False, "allow a model whose network comes from a package.module:factory "
                                            "(extract --model): predicting imports and runs that code, so it is "
                                            "refused without this flag")
    cache_dir: Optional[Path] = setting(None, CACHE_DIR_HELP, type=Path)
    device: str = setting("auto", "for extraction: auto, cpu, cuda or cuda:N")
    batch_size: Union[int, str] = setting(64, "images per forward pass, or auto = the largest that fits on the GPU",
                                          type=int_or_auto)
    num_workers: Optional[int] = setting(None, "decode processes (default: chosen from the CPU count)", type=int)
    progress: bool = setting(True)  # the CLI's --no-progress and -q set it

    _parameter_constraints = {
        "model": [str, os.PathLike],
        "data": [str, os.PathLike, object],  # or a torch Dataset (Python API)
        "out": [None, str, os.PathLike],
        "proba": [bool],
        "trust_model_code": [bool],
        "cache_dir": [None, str, os.PathLike],
        "device": [DEVICE],
        "batch_size": [POSITIVE_INT, Options(("auto",))],
        "num_workers": [None, Interval(Integral, 0, None)],
        "progress": [bool],
    }
