""":class:`SweepConfig`: what decides what a sweep fits, how it validates, and where results go (stage: none)."""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .._validation import Interval, Options
from .._validation import Sequence as ListOf
from ..errors import ConflictError
from ._base import (
    BACKENDS,
    CLUSTER_BACKENDS,
    DURATION,
    FRACTION,
    METRICS,
    POSITIVE_INT,
    Config,
    comma_list,
    duration,
    setting,
)

__all__ = ["SweepConfig"]


@dataclass
class SweepConfig(Config):
    """Everything that decides what a sweep fits, how it validates, and where results go."""

    cache: Path
    out: Optional[Path] = None  # None: write nothing (the Python API still returns the result)
    grid: Any = setting(None, "TOML (or YAML) grid file: a table per classifier; lists are swept, scalars fixed "
                              "(default: the built-in grid, see --print-grid); the Python API also takes a dict",
                        type=Path)
    classifiers: Sequence[str] = setting((), "comma-separated subset of the grid's classifiers (default: all in the "
                                             "grid; see --list-classifiers)", type=comma_list)
    layer: Optional[str] = setting(
        None, "cache layer to use, several joined with '+' to concatenate them, or comma-separated choices to try "
              "(e.g. layer3,layer4,layer3+layer4) (default: the cache's layer; with several, each alone, adjacent "
              "runs and all of them concatenated are tried, as a 'layer' column of the leaderboard)")
    screen_layers: int = setting(2, "when the sweep tries several layer choices on its own (no --layer), first rank "
                                    "them with a cheap screen (ridge and an l2 logistic path on each) and fit the "
                                    "whole grid on the N best only; 0 = the whole grid on every choice", type=int,
                                 metavar="N")
    use_views: bool = setting(True, "ignore the cache's augmented views (extract --views K); by default every "
                                    "training image's views join training as extra rows with its label (views of "
                                    "validation and test images never do)", flag="--no-views")
    tta: bool = setting(False, "test-time augmentation: score validation and test rows (and predict new images) by "
                               "averaging over each image's clean features and its cached views")
    cv: Optional[int] = setting(None, "k-fold cross-validation (default, when the cache has no val split: sized to "
                                      "the rows, see below; given with a val split, CV runs on train+val)", type=int)
    val_fraction: Optional[float] = setting(None, "score on a random stratified hold-out of this fraction instead of "
                                                  "CV (e.g. 0.2)", type=float)
    halving: bool = setting(True, "fit every configuration on all the training rows; by default, from 6,000 training "
                                  "rows, successive halving fits them all on a third of the rows (a ninth, ...) and "
                                  "only the best third goes on to three times as many")
    ensemble: int = setting(3, "add a soft vote of the N best configurations (the best of each classifier, on the "
                               "best layer choice) as one more leaderboard entry, validated like the others; 0 (or "
                               "1) = none", type=int, metavar="N")
    budget: Union[float, str, None] = setting(
        None, "stop starting fits after this long (90s, 15m, 1h): the best of what finished is refitted and saved, "
              "the rest listed as skipped (default: no limit)", type=duration, metavar="TIME")
    metric: str = setting("accuracy", "selection metric (ties go to the lower log-loss, then the faster fit)")
    seed: int = setting(0, "seed for folds, hold-outs and estimators", type=int)
    n_jobs: Optional[int] = setting(
        None, "parallel tasks, -1 = one per core; locally BLAS/torch threads are split between them (default: a "
              "worker per core with loky once the features hold 2M values or more, else 1, which uses every core "
              "inside each fit; 1 with threading; every core of the cluster with ray/dask)", type=int)
    backend: str = setting("loky", "where the fits run: loky (worker processes) or threading on this machine, or a "
                                   "Ray or Dask cluster (pip install 'featcache[ray]' / 'featcache[dask]'), which "
                                   "gets the features once, not once per fit")
    address: Optional[str] = setting(
        None, "the ray/dask cluster to join: ray.init address (auto, ray://HEAD:10001) or Dask scheduler "
              "(tcp://HOST:8786) (default: $RAY_ADDRESS or $DASK_SCHEDULER_ADDRESS, else start a local cluster of "
              "--n-jobs workers)")
    out_of_core: bool = setting(False, "leave the features in the cache and stream them in blocks: for caches larger "
                                       "than memory; trains sgd and dense (none/standardize/l2), the default grid "
                                       "keeps those")
    block_rows: Optional[int] = setting(None, "with --out-of-core, rows read at once (default: whole HDF5 chunks, "
                                              "about 4 MiB)", type=int, metavar="N")
    test_top: int = setting(1, "refit this many of the best configurations and score them on test; the first is "
                               "saved as best.skops", type=int)
    results_dir: Optional[Path] = setting(None, "where per-configuration results are stored (default: sweep-results/ "
                                                "next to the cache)", type=Path)
    reuse: bool = setting(True, "neither read nor write stored results: fit everything")
    overwrite: bool = setting(False, "replace an earlier run's outputs in --out (its leaderboard, model, summary and "
                                     "plots); without it an --out holding a run is refused before any fit")
    plots: bool = setting(True, "skip the PNG plots")
    progress: bool = setting(True)  # the CLI's --no-progress and -q set it

    _parameter_constraints = {
        "classifiers": [ListOf((str,))],
        "layer": [None, str],
        "screen_layers": [Interval(Integral, 0, None)],
        "use_views": [bool],
        "tta": [bool],
        "cv": [None, Interval(Integral, 2, None)],
        "val_fraction": [None, FRACTION],
        "halving": [bool],
        "ensemble": [Interval(Integral, 0, None)],
        "budget": [None, Interval(Real, 0, None, "neither"), DURATION],
        "metric": [Options(METRICS)],
        "seed": [Integral],
        "n_jobs": [None, POSITIVE_INT, Options((-1,))],
        "backend": [Options(BACKENDS)],
        "address": [None, str],
        "out_of_core": [bool],
        "block_rows": [None, POSITIVE_INT],
        "test_top": [POSITIVE_INT],
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
