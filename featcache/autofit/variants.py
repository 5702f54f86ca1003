"""``fit``'s variant stages: the best so far again on other features of the same images.

Stage: commands (``fit``'s). A variant stage (``scales``: the network also at other sizes, features joined;
``views``: augmented views to train on, predicting with test-time augmentation) refits the best model so far on other
features of the same images, on the same folds; it replaces the best so far when it is right on more of the same rows
out of fold (:func:`featcache.autofit.comparison.paired_comparison`). One stage reads top to bottom: what it changes
and costs (``_plan``) → why it cannot run, before anything is extracted (``_refusal``) → extract and sweep → compare.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..config import FitConfig, plain_scales
from ..errors import FeatcacheError
from .comparison import Comparison, held_out, paired_comparison, trained_rows
from .stage import BestSoFar, StageReport

__all__ = ["variant_stage", "exact_kernel_rows", "fold_seconds"]

log = logging.getLogger("featcache")


@dataclass
class _Variant:
    """What a variant stage changes and what it costs: the extraction's changes, whether it predicts with TTA, how
    many times the lead's rows or columns its features have, the passes and fits it takes, and how to say it."""

    changes: dict
    tta: bool
    factor: int
    passes: float
    fits_s: float
    how: str
    undo: str


def variant_stage(name: str, cfg: FitConfig, lead: BestSoFar, pass_s: float, deadline: float,
                  out: Path) -> Tuple[Optional[BestSoFar], StageReport]:
    """The lead's best configuration(s) again on other features of the same images, on the same folds: ``scales``
    (the network also at other sizes, features joined) or ``views`` (augmented views to train on, predicting
    with test-time augmentation). The new best so far when it was tried (the lead when it lost), or None; the
    report's record says which was right on more rows out of fold (``vs_best``)."""
    report = StageReport(name)
    variant = _plan(name, cfg, lead)
    if isinstance(variant, str):
        return None, report.skip(variant)
    why = _refusal(name, cfg, lead, variant, pass_s, deadline)
    if why:
        return None, report.skip(why)
    t = time.monotonic()
    ran = _extract_and_sweep(name, cfg, lead, variant, deadline, out)
    if isinstance(ran, str):
        return None, report.skip(ran)
    vcache, extract_cfg, swept = ran
    comparison = _compare(name, lead, vcache, swept)
    report.record = {"seconds": round(time.monotonic() - t, 1), "cache": str(vcache),
                     **{k: list(v) if isinstance(v, tuple) else v for k, v in variant.changes.items()},
                     "best": swept.best_config.label(), "scheme": swept.scheme, "vs_best": comparison.record()}
    log.info("fit: with %s, out of fold on the same %d rows: %.4f vs the %s's %.4f (%d right only with, %d only "
             "without; one-sided McNemar p=%.3f): %s wins", variant.how, comparison.rows, comparison.new or 0.0,
             lead.stage, comparison.best or 0.0, comparison.new_only, comparison.best_only, comparison.p_value,
             comparison.winner)
    return BestSoFar(swept, Path(vcache), name, extract_cfg, variant.passes, variant.tta or lead.tta), report


def _plan(name: str, cfg: FitConfig, lead: BestSoFar):
    """What the stage changes and costs, or why it is not tried (as the user asked)."""
    best = lead.result.best_config
    if name == "scales":
        if plain_scales(cfg.scales):
            return "--scales 1"
        factor = len(cfg.scales)
        # compute grows with the pixels; a fit costs about the width of the rows: len(scales) times the features
        return _Variant({"scales": tuple(cfg.scales)}, False, factor, lead.passes * sum(s * s for s in cfg.scales),
                        factor * _fits_seconds(lead.result), f"the network at {factor} scales", "--scales 1 skips it")
    if not cfg.views:
        return "--views 0"
    factor = 1 + cfg.views
    # a kernel SVM's fit grows faster than the rows squared: on MNIST-5k's 20,000 rows with views, 616 s where
    # (1+K)^2 times the lead's fits said 250 s (measured, other jobs on the 2 cores); others grow with the rows
    svm = best.classifier == "svm" or any(m["classifier"] == "svm" for m in best.params.get("members", []))
    return _Variant({"views": cfg.views, "augment": tuple(cfg.extract.augment)}, True, factor, lead.passes * factor,
                    factor ** (2.5 if svm else 1.0) * _fits_seconds(lead.result),
                    f"{cfg.views} augmented views per image", "--views 0 skips it")


def _members(best) -> List[dict]:
    """The configurations the lead's best is made of (an ensemble's members, or itself)."""
    return best.params["members"] if best.classifier == "ensemble" else [
        {"classifier": best.classifier, "params": best.params, "preprocess": best.preprocess}]


def _refusal(name: str, cfg: FitConfig, lead: BestSoFar, variant: _Variant, pass_s: float, deadline: float) -> str:
    """Why the stage cannot run, checked before anything is extracted: too many rows for an exact kernel SVM, too
    little memory or too little time; "" when it can."""
    rows = int(variant.factor * (np.asarray(lead.result.val_pred) >= 0).sum() if name == "views" else 0)
    if any(m["classifier"] == "svm" for m in _members(lead.result.best_config)) and rows > exact_kernel_rows():
        return (f"an exact kernel SVM on {rows} rows (every pool image and its views; its fit time grows with the "
                f"rows squared, and the default grid stops it at {exact_kernel_rows()}); {variant.undo}")
    short = _memory_short(lead, variant.factor, cfg.n_jobs)
    if short:
        return f"{short} ({variant.undo})"
    estimate = variant.passes * pass_s + variant.fits_s
    left = deadline - time.monotonic()
    if left < estimate:
        return (f"estimated {estimate:.0f} s ({variant.passes:.2g} passes over the images at {pass_s:.0f} s and the "
                f"best configuration's fits with {variant.how}), {max(left, 0):.0f} s of the budget left (--budget; "
                f"{variant.undo})")
    return ""


def _extract_and_sweep(name: str, cfg: FitConfig, lead: BestSoFar, variant: _Variant, deadline: float, out: Path):
    """Extract the variant's features and sweep the lead's best configuration(s) on them: (cache, its extraction
    settings, the sweep's result), or why not (the fits no longer fit after extracting, or a failure)."""
    from ..extraction import extract
    from ..sweeping import sweep

    members = _members(lead.result.best_config)
    grid: Dict[str, list] = {}
    for m in members:  # one value per parameter, each as a one-item list (a list value is itself swept)
        grid.setdefault(m["classifier"], []).append({"preprocess": m["preprocess"],
                                                     **{k: [v] for k, v in m["params"].items()}})
    t = time.monotonic()
    extract_cfg = lead.extract_cfg.replace(**variant.changes)
    try:
        vcache = extract(config=extract_cfg)
        left = deadline - time.monotonic()
        if left < variant.fits_s:  # the extraction took longer than its estimate: no fits that would overrun
            return (f"its features were extracted in {time.monotonic() - t:.0f} s, after which the best "
                    f"configuration's fits (estimated {variant.fits_s:.0f} s) no longer fit the {max(left, 0):.0f} s "
                    f"of the budget left (--budget; {variant.undo})")
        swept = sweep(vcache, out=out / name, overwrite=True, grid=grid, layer=lead.result.best_layer,
                      tta=variant.tta, halving=False, screen_layers=0,
                      ensemble=len(members) if len(members) > 1 else 0, budget=max(deadline - time.monotonic(), 1.0),
                      seed=cfg.seed, n_jobs=cfg.n_jobs, metric=cfg.metric, progress=cfg.progress)
    except FeatcacheError as e:  # an extra, like fine-tuning
        log.warning("fit: the %s stage failed (%s); keeping the %s's model", name, e, lead.stage)
        return f"failed ({e})"
    return vcache, extract_cfg, swept


def _compare(name: str, lead: BestSoFar, vcache: Path, swept) -> Comparison:
    """The variant against the lead on the same pool rows, each side's predictions cross-fitted."""
    from ..cache import load
    from ..selection.features import pool_and_test

    with load(lead.cache, lazy=True) as a, load(vcache, lazy=True) as b:
        same = np.array_equal(a.paths, b.paths)  # the same images in the same order: the same folds
        truth = a.y[pool_and_test(a)[0]]
    old, new = held_out(lead.result), held_out(swept)
    both = (old >= 0) & (new >= 0) & same
    return paired_comparison(new[both] == truth[both], old[both] == truth[both], new=name, best=lead.stage,
                             against=f"{lead.stage}: {lead.result.best_config.label()}")


def _memory_short(lead: BestSoFar, factor: int, n_jobs) -> str:
    """Why the variant's sweep would not fit in memory (its features are ``factor`` times the lead's: more columns
    or more rows), before anything is extracted; "" when it fits or memory is unknown."""
    from .._util import human_size
    from ..cache import available_memory, load
    from ..selection.features import copies_at_most

    layers = lead.result.best_layer.split("+") if lead.result.best_layer else None
    with load(lead.cache, lazy=True) as fs:
        names = layers or [fs.layers[-1]]
        per_copy = factor * len(fs) * 4 * sum(int(np.prod(fs.features[n].shape[1:])) for n in names)
    copies = copies_at_most(len(names) > 1, n_jobs)
    available = available_memory()
    if available is None or per_copy * copies <= available:
        return ""
    return (f"its sweep would hold about {human_size(per_copy * copies)} ({copies} copies of {human_size(per_copy)} "
            f"of features), {human_size(available)} of memory is available")


def _fits_seconds(result) -> float:
    """What the best configuration's fits took in ``result`` (its folds, summed) plus its refit on every row: one
    fold's fit scaled by the rows (k/(k-1) of a fold's), or 1.25 times a hold-out's."""
    k = _folds(result)
    return fold_seconds(result) * (k + (k / (k - 1) if k > 1 else 1.25))


def fold_seconds(result) -> float:
    """What one fit of ``result``'s best configuration on one fold's training rows took (measured)."""
    return float(trained_rows(result)["fit_s"].iloc[0]) / _folds(result)


def _folds(result) -> int:
    folds = re.match(r"(\d+)-fold", result.scheme or "")
    return int(folds.group(1)) if folds else 1


def exact_kernel_rows() -> int:
    """The most training rows the default grid gives an exact kernel SVM (its ``max_rows``; beyond, Nystroem)."""
    from ..selection.grids import read_grid

    return int(read_grid(None)["svm"][0]["max_rows"])
