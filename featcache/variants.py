"""``fit``'s variant stages and how two stages are compared on the same held-out rows.

Stage: commands (``fit``'s). A variant stage (``scales``: the network also at other sizes, features joined;
``views``: augmented views to train on, predicting with test-time augmentation) refits the best model so far on other
features of the same images, on the same folds; it replaces the best so far when it is right on more of the same rows
out of fold. Both sides' predictions are cross-fitted (``selection.leaderboard.crossfit_pred``), so the best so far,
picked among many configurations on these very rows, is not flattered by them.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ._util import plain_scales
from .config import ExtractConfig, FitConfig
from .errors import FeatcacheError

__all__ = ["Lead", "variant_stage", "held_out", "ok_rows", "paired", "p_better", "pool_truth", "exact_kernel_rows",
           "fold_seconds"]

log = logging.getLogger("featcache")


@dataclass
class Lead:
    """The best model so far: a sweep's result, the cache it ran on, the stage that made it, how that cache was
    extracted and what one extraction with those settings costs, in passes of the plain model."""

    result: Any  # SweepResult
    cache: Path
    stage: str
    extract_cfg: ExtractConfig
    passes: float = 1.0
    tta: bool = False


def variant_stage(name: str, cfg: FitConfig, lead: Lead, pass_s: float, deadline: float, out: Path,
                   stages: Dict[str, dict], skipped: List[str]) -> Optional[Lead]:
    """The lead's best configuration(s) again on other features of the same images, on the same folds: ``scales``
    (the network also at other sizes, features joined) or ``views`` (augmented views to train on, predicting
    with test-time augmentation). The variant's lead, or None when not tried; ``stages[name]["vs_best"]`` says
    which was right on more rows out of fold."""
    from .cache import load
    from .extraction import extract
    from .selection.features import pool_and_test
    from .sweeping import sweep

    best = lead.result.best_config
    if name == "scales":
        if plain_scales(cfg.scales):
            skipped.append("scales: --scales 1")
            return None
        changes, tta, factor = {"scales": tuple(cfg.scales)}, False, len(cfg.scales)
        passes = lead.passes * sum(s * s for s in cfg.scales)  # compute grows with the pixels
        how, undo = f"the network at {len(cfg.scales)} scales", "--scales 1 skips it"
        # a fit costs about the width of the rows: len(scales) times the features
        fits_s = factor * _fits_seconds(lead.result)
    else:
        if not cfg.views:
            skipped.append("views: --views 0")
            return None
        changes, tta, factor = {"views": cfg.views, "augment": tuple(cfg.extract.augment)}, True, 1 + cfg.views
        passes = lead.passes * factor
        how, undo = f"{cfg.views} augmented views per image", "--views 0 skips it"
        # a kernel SVM's fit grows faster than the rows squared: on MNIST-5k's 20,000 rows with views, 616 s where
        # (1+K)^2 times the lead's fits said 250 s (measured; a busy machine); others grow with the rows
        svm = best.classifier == "svm" or any(m["classifier"] == "svm" for m in best.params.get("members", []))
        fits_s = factor ** (2.5 if svm else 1.0) * _fits_seconds(lead.result)
    members = best.params["members"] if best.classifier == "ensemble" else [
        {"classifier": best.classifier, "params": best.params, "preprocess": best.preprocess}]
    grid: Dict[str, list] = {}
    for m in members:  # one value per parameter, each as a one-item list (a list value is itself swept)
        grid.setdefault(m["classifier"], []).append({"preprocess": m["preprocess"],
                                                     **{k: [v] for k, v in m["params"].items()}})
    rows = int(factor * (np.asarray(lead.result.val_pred) >= 0).sum() if name == "views" else 0)
    if any(m["classifier"] == "svm" for m in members) and rows > exact_kernel_rows():
        skipped.append(f"views: an exact kernel SVM on {rows} rows (every pool image and its views; its fit time grows "
                       f"with the rows squared, and the default grid stops it at {exact_kernel_rows()}); {undo}")
        return None
    short = _memory_short(lead, factor, cfg.n_jobs)
    if short:
        skipped.append(f"{name}: {short} ({undo})")
        return None
    estimate = passes * pass_s + fits_s
    left = deadline - time.monotonic()
    if left < estimate:
        skipped.append(f"{name}: estimated {estimate:.0f} s ({passes:.2g} passes over the images at {pass_s:.0f} s "
                       f"and the best configuration's fits with {how}), {max(left, 0):.0f} s of the budget left "
                       f"(--budget; {undo})")
        return None
    t = time.monotonic()
    extract_cfg = lead.extract_cfg.replace(**changes)
    try:
        vcache = extract(config=extract_cfg)
        left = deadline - time.monotonic()
        if left < fits_s:  # the extraction took longer than its estimate: no fits that would overrun the budget
            skipped.append(f"{name}: its features were extracted in {time.monotonic() - t:.0f} s, after which the "
                           f"best configuration's fits (estimated {fits_s:.0f} s) no longer fit the {max(left, 0):.0f} "
                           f"s of the budget left (--budget; {undo})")
            return None
        variant = sweep(vcache, out=out / name, overwrite=True, grid=grid, layer=lead.result.best_layer, tta=tta,
                        halving=False, screen_layers=0, ensemble=len(members) if len(members) > 1 else 0,
                        budget=max(deadline - time.monotonic(), 1.0), seed=cfg.seed, n_jobs=cfg.n_jobs,
                        metric=cfg.metric, progress=cfg.progress)
    except FeatcacheError as e:  # an extra, like fine-tuning
        log.warning("fit: the %s stage failed (%s); keeping the %s's model", name, e, lead.stage)
        skipped.append(f"{name}: failed ({e})")
        return None
    with load(lead.cache, lazy=True) as a, load(vcache, lazy=True) as b:
        same = np.array_equal(a.paths, b.paths)  # the same images in the same order: the same folds
        truth = a.y[pool_and_test(a)[0]]
    # Each side cross-fitted (selection.leaderboard.crossfit_pred): the lead's best was picked among many on these
    # very rows, and its own predictions would flatter it.
    old, new = held_out(lead.result), held_out(variant)
    both = (old >= 0) & (new >= 0) & same
    truth = truth[both]
    new_right, old_right = new[both] == truth, old[both] == truth
    n_only, b_only, p = paired(new_right, old_right)
    duel = {"rows": int(both.sum()), "against": f"{lead.stage}: {best.label()}",
            "new": float(new_right.mean()) if both.any() else None,
            "best": float(old_right.mean()) if both.any() else None, "new_only": n_only, "best_only": b_only,
            "p_value": p, "winner": name if n_only > b_only else lead.stage}
    stages[name] = {"seconds": round(time.monotonic() - t, 1), "cache": str(vcache),
                    **{k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()},
                    "best": variant.best_config.label(), "scheme": variant.scheme, "vs_best": duel}
    log.info("fit: with %s, out of fold on the same %d rows: %.4f vs the %s's %.4f (%d right only with, %d only "
             "without; McNemar p=%.3f): %s wins", how, duel["rows"], duel["new"] or 0.0, lead.stage,
             duel["best"] or 0.0, n_only, b_only, p, duel["winner"])
    return Lead(variant, Path(vcache), name, extract_cfg, passes, tta or lead.tta)


def _memory_short(lead: Lead, factor: int, n_jobs) -> str:
    """Why the variant's sweep would not fit in memory (its features are ``factor`` times the lead's: more columns
    or more rows), before anything is extracted; "" when it fits or memory is unknown."""
    from ._util import human_size
    from .cache import available_memory, load
    from .selection.features import copies_at_most

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
    return float(ok_rows(result)["fit_s"].iloc[0]) / _folds(result)


def _folds(result) -> int:
    folds = re.match(r"(\d+)-fold", result.scheme or "")
    return int(folds.group(1)) if folds else 1


def exact_kernel_rows() -> int:
    """The most training rows the default grid gives an exact kernel SVM (its ``max_rows``; beyond, Nystroem)."""
    from .selection.grids import read_grid

    return int(read_grid(None)["svm"][0]["max_rows"])


def held_out(result) -> np.ndarray:
    """A sweep's out-of-fold predictions, cross-fitted over its candidates (its best's own when there is one)."""
    return result.crossfit_pred if result.crossfit_pred is not None else result.val_pred


def ok_rows(result):
    """The rows of a sweep's leaderboard that trained."""
    return result.leaderboard[result.leaderboard["status"] == "ok"]


def paired(new_right: np.ndarray, old_right: np.ndarray):
    """On the same rows: how many only the new model gets right, how many only the old one, and :func:`p_better`."""
    new_only, old_only = int((new_right & ~old_right).sum()), int((old_right & ~new_right).sum())
    return new_only, old_only, p_better(new_only, old_only)


def p_better(only_new: int, only_old: int) -> float:
    """One-sided exact McNemar test: how likely a model right on ``only_new`` rows where another is wrong, and
    wrong on ``only_old`` where it is right, would be at least this far ahead if both were equally good."""
    from scipy.stats import binomtest

    n = only_new + only_old
    return float(binomtest(only_new, n, 0.5, alternative="greater").pvalue) if n else 1.0


def pool_truth(cache: Path) -> np.ndarray:
    """The class index of every row of ``cache``'s pool (train and val rows, as the sweep validated them)."""
    from .cache import load
    from .selection.features import pool_and_test

    with load(cache, lazy=True) as fs:
        return fs.y[pool_and_test(fs)[0]]
