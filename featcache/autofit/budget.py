"""What ``fit``'s budget buys, from costs measured on this machine rather than constants.

Stage: commands (``fit``'s). Fine-tuning's cost is its activation pass (about one pass of the network, which the
default extraction just timed) plus its training epochs, whose cost per row is measured before anything is committed
by one epoch of the real top on a small batch of activations of the real shape. With that, :func:`plan_finetune`
picks the plan the budget left can complete: today's grid (``--train-blocks``, up to 10 epochs each, with extra folds
to compare it with the best so far), else one configuration (every block after the split, fewer epochs, early
stopping on its hold-out, and no extra folds when the hold-out has :data:`BIG_HOLDOUT` rows or more: enough to
compare two models on), else nothing, saying what each would have cost.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..cache import available_memory
from ..selection.features import copies_at_most

__all__ = ["FinetunePlan", "plan_finetune", "train_seconds_per_row", "forecast", "BIG_HOLDOUT", "FULL_EPOCHS",
           "MIN_EPOCHS", "FOLDS"]

log = logging.getLogger("featcache")

FULL_EPOCHS = 10  # fine-tuning's epochs per configuration (early stopping may end sooner)
MIN_EPOCHS = 2  # fewer than this is not worth the activation pass
BIG_HOLDOUT = 2000  # hold-out rows enough to compare two models on without extra folds
FOLDS = 4  # extra folds of the training rows, each trained without it, when the hold-out is small
HOLDOUT_FRACTION = 0.2  # fine-tuning's hold-out when the data has no val split (finetune's val_fraction)
_PROBE_ROWS = 64


@dataclass
class FinetunePlan:
    """What fine-tuning will do within the budget left, and what that was estimated to cost."""

    train_blocks: Tuple
    epochs: int
    folds: bool  # extra folds of the training rows to compare it with the best so far
    estimate_s: float
    epoch_s: float  # one epoch over the training rows (measured per row, times the rows)
    activation_s: float
    what: str

    def record(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def train_seconds_per_row(backbone, node: str, crop: int, device: str = "auto", seed: int = 0) -> float:
    """Seconds per training row of one epoch of the top after ``node``: one real epoch over :data:`_PROBE_ROWS`
    random activations of the node's shape (every block training: the dearest plan)."""
    import torch

    from .. import models
    from ..learn.top import TopClassifier

    nodes = models.graph_node_names(backbone.module)
    top = models.split_top(backbone.module, node, models.default_layer(backbone.module, nodes))
    with torch.inference_mode():
        shape = tuple(models.FeatureExtractor(backbone, [node], "none")(
            torch.zeros(2, 3, crop, crop, dtype=torch.uint8))[node].shape[1:])
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((_PROBE_ROWS, *shape)).astype(np.float32)
    y = np.arange(_PROBE_ROWS) % 2
    est = TopClassifier(top=top, train_blocks="all", epochs=1, early_stopping=False, random_state=seed, device=device)
    t = time.perf_counter()
    est.fit(X, y)
    return (time.perf_counter() - t) / _PROBE_ROWS


def plan_finetune(train_blocks: Sequence, pool_rows: int, holdout_rows: Optional[int], pass_s: float,
                  per_row_s: float, left_s: float) -> Tuple[Optional[FinetunePlan], str]:
    """The plan the budget left (``left_s``) can complete, or ``(None, why not)``. ``pool_rows``: the images it may
    train and validate on; ``holdout_rows``: its validation rows (``None``: a fifth of the pool)."""
    holdout = holdout_rows if holdout_rows is not None else int(HOLDOUT_FRACTION * pool_rows)
    train = max(pool_rows - holdout, 1)
    epoch_s = per_row_s * train
    activation_s = 1.1 * pass_s  # the network up to the split, its maps written as float16
    folds = holdout < BIG_HOLDOUT

    def cost(configs: int, epochs: int, with_folds: bool) -> float:
        refit = epochs * per_row_s * pool_rows  # the best again on every pool row
        extra = FOLDS * epochs * per_row_s * (pool_rows - train / FOLDS) if with_folds else 0.0
        return activation_s + configs * epochs * epoch_s + refit + extra

    full = cost(len(train_blocks), FULL_EPOCHS, folds)
    if full <= left_s:
        return FinetunePlan(tuple(train_blocks), FULL_EPOCHS, folds, full, epoch_s, activation_s,
                            f"{len(train_blocks)} configuration(s), up to {FULL_EPOCHS} epochs"), ""
    for epochs in range(FULL_EPOCHS - 1, MIN_EPOCHS - 1, -1):
        one = cost(1, epochs, folds)
        if one <= left_s:
            return FinetunePlan(("all",), epochs, folds, one, epoch_s, activation_s,
                                f"one configuration (every block after the split), up to {epochs} epochs"), ""
    least = cost(1, MIN_EPOCHS, folds)
    return None, (f"estimated {least:.0f} s at the least (the activation pass {activation_s:.0f} s, then "
                  f"{MIN_EPOCHS} epochs of {epoch_s:.0f} s each over {train} rows, measured, and the refit"
                  f"{', and extra folds' if folds else ''}), {max(left_s, 0):.0f} s of the budget left; "
                  f"{full:.0f} s for the full grid")


def forecast(extract_cfg, n_images: int, budget_s: float, scales: Sequence[float], views: int,
             n_jobs: Optional[int] = None) -> dict:
    """Before a cold extraction: how long it will take, from one timed batch of the network as torch runs it (an
    upper bound: a CPU engine, when one runs, is faster), and what the budget left after it buys: the scales and
    views stages cost passes of the network over the images (their fits come on top), and memory for the copies
    of their wider or (1+K)x features that their sweeps hold (``*_memory``, against ``memory_available``)."""
    import torch

    from .. import models
    from ..runtime import autocast, resolve_precision

    backbone = models.load_backbone(extract_cfg.replace(weights="none"))  # the speed does not depend on weights
    layers = models.default_layers(backbone, models.graph_node_names(backbone.module))
    fx = models.FeatureExtractor(backbone, layers, "avg").eval()
    crop = backbone.preprocess.crop_size
    batch = torch.zeros(32, 3, crop, crop, dtype=torch.uint8)
    precision = resolve_precision("auto", torch.device("cpu"))
    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        fx(batch)  # warm-up
        t = time.perf_counter()
        out = fx(batch)
        per_image = (time.perf_counter() - t) / len(batch)
    extract_s = n_images * per_image
    left = budget_s - extract_s
    scales_s = extract_s * sum(s * s for s in scales) if len(scales) > 1 else 0.0
    views_s = extract_s * (1 + views) if views else 0.0
    # every layer side by side, the widest choice a sweep can make; its copies as selection.features counts them
    row_bytes = 4 * sum(int(v[0].numel()) for v in out.values())
    copies = copies_at_most(len(layers) > 1, n_jobs)
    return {"images": n_images, "size": crop, "extract_s": round(extract_s, 3), "left_s": round(left, 1),
            "scales_passes_s": round(scales_s, 3), "views_passes_s": round(views_s, 3),
            "scales_memory": n_images * row_bytes * len(scales) * copies if len(scales) > 1 else 0,
            "views_memory": n_images * row_bytes * (1 + views) * copies if views else 0,
            "memory_available": available_memory()}
