""":class:`FinetuneConfig`: what a fine-tuning run trains, how it validates, and where results go (stage: none)."""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .._validation import Interval, Options
from .._validation import Sequence as ListOf
from ._base import (
    DEVICE,
    DURATION,
    FRACTION,
    METRICS,
    POSITIVE_INT,
    TRAIN_PRECISIONS,
    Config,
    blocks,
    duration,
    setting,
)

__all__ = ["FinetuneConfig", "TRAIN_BLOCKS"]

TRAIN_BLOCKS = [ListOf((Interval(Integral, 0, None), Options(("all",))), 1)]  # fit's fine-tuning grid too


@dataclass
class FinetuneConfig(Config):
    """Everything that decides what a fine-tuning run trains, how it validates, and where results go.

    ``train_blocks``, ``lr`` and ``head_lr`` are lists: every combination is one configuration
    (with ``train_blocks`` 0 only the head trains, so ``lr`` does not vary there).
    """

    cache: Path
    from_layer: Optional[str] = setting(
        None, "the graph node where the top starts: a layer of the cache extracted with --pool none, at a block "
              "boundary (a split across a skip connection is refused, naming the nearest valid nodes)",
        metavar="NODE", required=True)
    out: Optional[Path] = None  # None: write nothing (the Python API still returns the result)
    train_blocks: Sequence[Any] = setting((0, 1, "all"), "how many of the top's last blocks train, each a "
                                                         "configuration; 0 = only the head", type=blocks, nargs="+",
                                          metavar="K")
    lr: Sequence[float] = setting((1e-4,), "learning rate(s) of the pretrained blocks", type=float, nargs="+")
    head_lr: Sequence[float] = setting((1e-3,), "learning rate(s) of the new head", type=float, nargs="+")
    weight_decay: float = setting(1e-2, "AdamW weight decay", type=float)
    epochs: int = setting(10, "maximum epochs per configuration", type=int)
    patience: int = setting(3, "stop after this many epochs without a lower val loss; the best epoch is kept",
                            type=int)
    batch_size: int = setting(32, "activations per step", type=int)
    augment: bool = setting(False, "random horizontal flips and small shifts of the cached maps while training")
    dropout: float = setting(0.0, "dropout before the head", type=float)
    label_smoothing: float = setting(0.0, "spread this much of each training target over the other classes (0.1 is "
                                          "common): a softer loss for labels that are sometimes wrong", type=float)
    val_fraction: Optional[float] = setting(None, "hold out this stratified fraction of train+val for early stopping "
                                                  "and selection (default: the cache's val split, else 0.2)",
                                            type=float)
    budget: Union[float, str, None] = setting(None, "no configuration starts after this (90s, 15m, 1h; the first "
                                                    "always trains)", type=duration, metavar="TIME")
    refit: bool = setting(True, "keep the best configuration as trained on train alone (default: retrain it on "
                                "train+val for the epochs that were best, as the sweep refits its best, when --budget "
                                "allows)")
    metric: str = setting("accuracy", "selection metric (ties go to the lower log-loss)")
    seed: int = setting(0, "seed for the hold-out, the head's init and shuffling", type=int)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    precision: str = setting("auto", "compute precision of training (weights and optimiser stay float32; predictions "
                                     "are fp32); auto = bf16 where the device runs it fast")
    overwrite: bool = setting(False, "replace an earlier run's outputs in --out (its leaderboard, model, summary and "
                                     "plots); without it an --out holding a run is refused before any fit")
    plots: bool = setting(True, "skip the PNG plots")
    progress: bool = setting(True)  # the CLI's --no-progress and -q set it

    _parameter_constraints = {
        "from_layer": [None, str],
        "train_blocks": TRAIN_BLOCKS,
        "lr": [ListOf((Interval(Real, 0, None, "neither"),), 1)],
        "head_lr": [ListOf((Interval(Real, 0, None, "neither"),), 1)],
        "weight_decay": [Interval(Real, 0, None)],
        "epochs": [POSITIVE_INT],
        "patience": [POSITIVE_INT],
        "batch_size": [POSITIVE_INT],
        "augment": [bool],
        "dropout": [Interval(Real, 0, 1, "left")],
        "label_smoothing": [Interval(Real, 0, 1, "left")],
        "val_fraction": [None, FRACTION],
        "budget": [None, Interval(Real, 0, None, "neither"), DURATION],
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
        for blocks_ in dict.fromkeys(self.train_blocks):
            for lr in (self.lr[:1] if blocks_ == 0 else dict.fromkeys(self.lr)):
                for head_lr in dict.fromkeys(self.head_lr):
                    out.append({"train_blocks": blocks_, "lr": float(lr), "head_lr": float(head_lr)})
        return out
