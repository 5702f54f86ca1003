""":class:`InspectConfig`: what ``featcache.inspect`` looks for in a cache and where the report goes (stage: none)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Optional, Sequence, Union

from .._validation import Interval, Options
from .._validation import Sequence as ListOf
from ._base import POSITIVE_INT, Config, comma_list, setting

__all__ = ["InspectConfig", "FINDINGS", "NEIGHBOURS", "LABEL_METHODS"]

FINDINGS = ("duplicates", "labels", "outliers", "confusion", "map")
NEIGHBOURS = ("auto", "exact", "faiss", "hnswlib")
LABEL_METHODS = ("cleanlab", "featcache")


@dataclass
class InspectConfig(Config):
    """What an inspection looks for, with which features and neighbours, and where its report goes."""

    cache: Path
    out: Optional[Path] = None  # the report folder; None: write nothing (the Python API still returns the result)
    only: Union[str, Sequence[str], None] = setting(None, f"comma-separated findings to run: {','.join(FINDINGS)} "
                                                          f"(default: all)", type=comma_list)
    threshold: Optional[float] = setting(
        None, "pixel similarity (correlation of 16x16 grey thumbnails, best over small crops) at or above which a "
              "candidate pair is a copy (default: 0.996, measured on MNIST: resized, re-encoded, cropped and "
              "brightened copies score >= 0.997, different digits of one class <= 0.995). A pair that correlates >= "
              "0.97 and matches at native resolution once aligned (crop, scale, brightness with clipping; residual <= "
              "0.02 of its contrast) is a copy whatever the threshold: on 8x8 digits such copies leave <= 0.002, "
              "different digits >= 0.07", type=float)
    layer: Optional[str] = setting(None, "the cache layer whose features are used (default: the cache's last layer)")
    k: int = setting(20, "nearest neighbours per row: an outlier's score is its mean distance to them; copies are "
                         "looked for among them", type=int)
    neighbours: str = setting("auto", "neighbour search: exact (block-wise from the file), or an approximate index "
                                      "(pip install 'featcache[inspect]'); auto = exact up to 100,000 rows, "
                                      "approximate beyond when installed")
    label_method: Optional[str] = setting(None, "who flags label issues: cleanlab's find_label_issues, or featcache's "
                                                "implementation of the same confident-learning method (default: "
                                                "cleanlab when installed)", choices=LABEL_METHODS)
    folds: int = setting(5, "cross-validation folds of the label model", type=int)
    seed: int = setting(0, "seed for folds, PCA and the map", type=int)
    overwrite: bool = setting(False, "replace an earlier report in --out")
    progress: bool = setting(True)  # the CLI's --no-progress and -q set it

    _parameter_constraints = {
        "cache": [str, os.PathLike],
        "out": [None, str, os.PathLike],
        "only": [None, str, ListOf((Options(FINDINGS),), 1)],
        "threshold": [None, Interval(Real, 0, 1, "right")],
        "layer": [None, str],
        "k": [POSITIVE_INT],
        "neighbours": [Options(NEIGHBOURS)],
        "label_method": [None, Options(LABEL_METHODS)],
        "folds": [Interval(Integral, 2, None)],
        "seed": [Integral],
        "overwrite": [bool],
        "progress": [bool],
    }

    def findings(self) -> list:
        """The findings to run, in their order: ``only`` as a list (it may be given as ``"a,b"``), else all."""
        if self.only is None:
            return list(FINDINGS)
        names = comma_list(self.only) if isinstance(self.only, str) else list(self.only)
        if not names or any(n not in FINDINGS for n in names):
            self._refuse("only", f"a comma-separated list of {', '.join(FINDINGS)}")
        return names
