""":class:`FitConfig`: what ``featcache.fit`` does from images to the best model (stage: none).

It holds an :class:`~featcache.config.ExtractConfig` for what the network is and where the images and caches are,
and adds the budget and the stages: the input size policy, the scales and views stages, fine-tuning.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .._validation import Interval, Options
from .._validation import Sequence as ListOf
from ..errors import ParameterError
from ._base import (
    AUGMENTATIONS,
    DURATION,
    MAX_SCALE,
    MAX_VIEWS,
    METRICS,
    POSITIVE_INT,
    Config,
    blocks,
    duration,
    int_or_auto,
    setting,
)
from .extract import ExtractConfig
from .finetune import TRAIN_BLOCKS

__all__ = ["FitConfig", "FIT_EXTRACT_FIELDS"]

# The ExtractConfig fields fit takes from its caller (the rest are fit's to choose: the input size, the scales and
# views of its stages).
FIT_EXTRACT_FIELDS = ("data", "model", "weights", "cache_dir", "device", "augment", "progress")


@dataclass
class FitConfig(Config):
    """What ``featcache.fit`` does from images to the best model: the extraction, the budget, the stages."""

    NESTED_FIELDS = FIT_EXTRACT_FIELDS  # flat settings that go into ``extract`` (:meth:`from_settings`)

    extract: ExtractConfig = dataclasses.field(default_factory=ExtractConfig)
    out: Optional[Path] = setting(None, "the run folder (rerun with the same one to reuse it)", type=Path,
                                  required=True)
    budget: Union[float, str] = setting(900.0, "time for the whole run: 90s, 15m, 1h (default: 15m); no stage or fit "
                                               "starts after it, and the best model so far is kept", type=duration,
                                        metavar="TIME")
    image_size: Union[int, str, None] = setting(
        "auto", "crop size fed to the network; auto = from the images: when they are smaller than the model's input "
                "(224 px for the default), a stratified sample of the training images is extracted at 64, 96, 128 px "
                "and their own size, and the size whose probe (an RBF SVM, 3-fold CV) validates best is kept, within "
                "a tenth of --budget; larger images keep the model's own", type=int_or_auto, metavar="PX|auto")
    scales: Sequence[float] = setting(
        (1.0, 0.667), "the scales stage: the network also runs on each image resized by these factors (up to 2) and "
                      "the layers' features are joined; small images upscaled to the crop (digits, scans, thumbnails) "
                      "gain most; 1 skips it", type=float, nargs="+", metavar="S")
    views: int = setting(4, "augmented views per image for the views + TTA stage; 0 skips it", type=int, metavar="K")
    finetune: str = setting("auto", "the fine-tuning stage: auto = when the budget left covers its estimate")
    train_blocks: Sequence[Any] = setting((1, "all"), "fine-tuning: how many of the top's last blocks train, each a "
                                                      "configuration", type=blocks, nargs="+", metavar="K")
    metric: str = setting("accuracy", "selection metric")
    seed: int = setting(0, "seed for splits and estimators", type=int)
    n_jobs: Optional[int] = setting(None, "parallel sweep tasks, -1 = one per core (default: a worker per core once "
                                          "the features are large enough)", type=int)
    sweep_rows: int = setting(10, "rows of the sweep's leaderboard carried into fit's", type=int, metavar="N")
    overwrite: bool = setting(False, "write into an --out holding another command's run (a folder fit wrote is "
                                     "reused anyway)")

    _parameter_constraints = {
        "out": [str, os.PathLike],
        "budget": [Interval(Real, 0, None, "neither"), DURATION],
        "image_size": [None, POSITIVE_INT, Options(("auto",))],
        "scales": [ListOf((Interval(Real, 0, MAX_SCALE, "right"),), 1)],
        "views": [Interval(Integral, 0, MAX_VIEWS)],
        "finetune": [Options(("auto", "always", "never"))],
        "train_blocks": TRAIN_BLOCKS,
        "metric": [Options(METRICS)],
        "seed": [Integral],
        "n_jobs": [None, POSITIVE_INT, Options((-1,))],
        "sweep_rows": [POSITIVE_INT],
        "overwrite": [bool],
    }

    @classmethod
    def from_settings(cls, **settings: Any) -> "FitConfig":
        """A FitConfig from flat settings (``data=``, ``model=``, ``budget=``...): the extraction's go into
        ``extract``."""
        extract = {k: settings.pop(k) for k in FIT_EXTRACT_FIELDS if k in settings}
        base = settings.pop("extract", None) or ExtractConfig()
        return cls(extract=base.replace(**extract), **settings)

    @property
    def progress(self) -> bool:
        return self.extract.progress

    def validate(self) -> None:
        super().validate()
        self.extract.validate()

    def _check_combinations(self) -> None:
        if len(set(self.scales)) < len(self.scales):
            self._refuse("scales", "each scale once")
        if self.views and not self.extract.augment:
            raise ParameterError(type(self).__name__, "augment", f"a non-empty list of {', '.join(AUGMENTATIONS)} "
                                 f"when views > 0", self.extract.augment)
