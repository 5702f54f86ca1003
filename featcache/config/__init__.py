"""The settings of each command as one dataclass, validated from a table (stage: none; no torch, no sklearn).

:class:`ExtractConfig`, :class:`SweepConfig`, :class:`FinetuneConfig`, :class:`FitConfig`, :class:`PredictConfig`
and :class:`InspectConfig` carry a run's settings from the command line or the Python API down to every stage. Each
field is made with :func:`setting`, which holds its default, its help and whether it enters the cache key; the
command line builds its flags from them. Each class declares ``_parameter_constraints`` (checked by
:func:`featcache._validation.validate_params`) and checks rules across parameters in ``_check_combinations``.
Messages name the parameter (``n_jobs``); the CLI shows the flag (``--n-jobs``) instead.
"""
from ..errors import FeatcacheError
from ._base import (
                    AUGMENTATIONS,
                    BACKENDS,
                    CACHE_DIR_HELP,
                    CLUSTER_BACKENDS,
                    DEFAULT_MODEL,
                    DEVICE,
                    DTYPES,
                    ENGINES,
                    MAX_SCALE,
                    MAX_VIEWS,
                    METRICS,
                    POOLS,
                    PRECISIONS,
                    TRAIN_PRECISIONS,
                    Config,
                    default_cache_dir,
                    plain_scales,
                    setting,
)
from .extract import ExtractConfig
from .finetune import FinetuneConfig
from .fit import FitConfig
from .inspect import FINDINGS, InspectConfig
from .predict import PredictConfig
from .sweep import SweepConfig

__all__ = ["Config", "setting", "ExtractConfig", "SweepConfig", "FinetuneConfig", "FitConfig", "PredictConfig",
           "InspectConfig", "FINDINGS", "FeatcacheError",
           "default_cache_dir", "DEFAULT_MODEL", "DEVICE", "POOLS", "PRECISIONS", "TRAIN_PRECISIONS", "ENGINES",
           "DTYPES", "AUGMENTATIONS", "MAX_VIEWS", "MAX_SCALE", "plain_scales", "METRICS", "BACKENDS",
           "CLUSTER_BACKENDS", "CACHE_DIR_HELP"]
