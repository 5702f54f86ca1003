"""``fit``'s fine-tuning stage: the top blocks after the penultimate stage output, trained from cached activations
within the budget left, then compared with the best so far on the same held-out rows.

Stage: commands (``fit``'s). The stage reads top to bottom: reuse a stored run with the same signature → plan from a
measured epoch (:func:`featcache.autofit.budget.plan_finetune`) → extract the activations and fine-tune → predict
folds of the training rows it did not train on (``_finetune_folds``) → the best so far retrained on the same rows
and compared (``_versus_best``, :func:`featcache.autofit.comparison.paired_comparison`).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..config import ExtractConfig, FitConfig
from ..errors import FeatcacheError
from .budget import FOLDS, plan_finetune, train_seconds_per_row
from .comparison import Comparison, paired_comparison
from .stage import BestSoFar, StageReport
from .variants import fold_seconds

__all__ = ["finetune_stage", "finetune_test", "FINETUNE_FOLDS"]

log = logging.getLogger("featcache")

# Fine-tuning's training rows fall in this many folds, each predicted by its best configuration trained without
# them, to compare it with the best so far on most of the pool rather than on one small hold-out.
FINETUNE_FOLDS = FOLDS


def finetune_stage(cfg: FitConfig, extract_cfg: ExtractConfig, pass_s: float, deadline: float,
                   earlier: Optional[dict], out: Path, cache: Path, lead: BestSoFar) -> Tuple[Optional[dict],
                                                                                             StageReport]:
    """Fine-tune (or reuse a stored run), then compare with ``lead``: the row for fit's leaderboard (None: not
    tried), and the report whose record holds the plan, the held-out folds and ``vs_best``."""
    report = StageReport("finetune")
    if cfg.finetune == "never":
        return None, report.skip("--finetune never")
    previous = (earlier or {}).get("stages", {}).get("finetune", {})
    # What a stored run depends on (the cache path holds the data's fingerprint), and how it was done.
    signature = {"data": str(cfg.extract.data), "model": str(cfg.extract.model), "weights": cfg.extract.weights,
                 "image_size": extract_cfg.image_size,
                 "train_blocks": [str(b) for b in cfg.train_blocks], "seed": cfg.seed, "metric": cfg.metric,
                 "refit": True, "compare": f"cross-fitted, {FINETUNE_FOLDS} folds", "cache": str(cache)}
    if (previous.get("status") == "done" and previous.get("signature") == signature
            and (out / "finetune" / "finetune.json").is_file()):
        log.info("fit: fine-tuning reused from %s", out / "finetune")
        # a copy without the comparison of an earlier format (vs_sweep), which is done again
        report.record, row = {k: v for k, v in previous.items() if k != "vs_sweep"}, previous["row"]
    else:
        # The plan leaves time for the comparison's first fold (one fit of the best so far), which always runs.
        row = _finetune(cfg, extract_cfg, pass_s, deadline - fold_seconds(lead.result), out, cache, report)
        if row is None:
            return None, report
        report.record["signature"] = signature
    # What fine-tuning was compared with, down to the cache: a stored comparison is reused only against the same.
    against = f"{lead.stage}: {lead.result.best_config.label()} ({lead.cache.name})"
    comparison = report.record.pop("vs_best", None)  # kept only when made against the same best so far
    if (comparison or {}).get("against") != against:
        found = _versus_best(lead, report.record, cfg.seed, deadline, against)
        comparison = None if found is None else found.record()
    if comparison is None:
        return row, report
    report.record["vs_best"] = comparison
    log.info("fit: on %d held-out rows (%d folds), the fine-tuned top %.4f vs the %s's best trained on the same "
             "rows %.4f (%d right only by fine-tuning, %d only by the other; one-sided McNemar p=%.3f): %s wins",
             comparison["rows"], comparison["folds"], comparison["new"], lead.stage, comparison["best"],
             comparison["new_only"], comparison["best_only"], comparison["p_value"], comparison["winner"])
    return dict(row, same_rows=f"{comparison['new']:.4f} vs the {lead.stage}'s {comparison['best']:.4f} on "
                               f"{comparison['rows']}"), report


def _finetune(cfg: FitConfig, extract_cfg: ExtractConfig, pass_s: float, deadline: float, out: Path, cache: Path,
              report: StageReport) -> Optional[dict]:
    """Plan, extract the activations, fine-tune and hold out its folds: the leaderboard row, with the report's
    record filled in; None (and why, in the report) when it did not run."""
    from .. import models
    from ..extraction import extract
    from ..finetuning import finetune

    t = time.monotonic()
    try:
        backbone = models.load_backbone(extract_cfg)
        node = models.stage_outputs(backbone)[-2].name
        plan = _finetune_plan(cfg, backbone, node, cache, pass_s, deadline)
        if isinstance(plan, str):
            report.skip(f"{plan} (--budget; --finetune always)")
            return None
        log.info("fit: fine-tuning plan: %s (estimated %.0f s of the %.0f s left)", plan.what, plan.estimate_s,
                 deadline - time.monotonic())
        activations = extract(config=extract_cfg.replace(layers=[node], pool="none", dtype="float16"))
        tuned = finetune(activations, node, out=out / "finetune", overwrite=True, train_blocks=plan.train_blocks,
                         epochs=plan.epochs, budget=max(deadline - time.monotonic(), 1.0), seed=cfg.seed,
                         metric=cfg.metric, device=cfg.extract.device, progress=cfg.progress)
    except FeatcacheError as e:  # the sweep's model is kept: fine-tuning is an extra, not a condition
        log.warning("fit: fine-tuning failed (%s); keeping the best model so far", e)
        report.skip(f"failed ({e})")
        return None
    report.skipped += [f"finetune: {label} (out of time)" for label in tuned.skipped]
    best = tuned.leaderboard.iloc[0]
    folds = _finetune_folds(activations, node, tuned, cfg, deadline, float(best.get("fit_s") or 0.0), plan.folds)
    row = {"stage": "finetune", "model": f"top after {node}, {tuned.best_params}",
           f"val_{cfg.metric}": best[f"val_{cfg.metric}"], "val_log_loss": best.get("val_log_loss"),
           "fit_s": best.get("fit_s"), "train_rows": best.get("train_rows")}
    report.record = {"status": "done", "seconds": round(time.monotonic() - t, 1), "node": node, "scheme": tuned.scheme,
                     "row": row, "plan": plan.record(), "validation": {"cache": str(activations), "folds": folds}}
    return row


def _finetune_plan(cfg: FitConfig, backbone, node: str, cache: Path, pass_s: float, deadline: float):
    """What fine-tuning can do in the budget left (:func:`featcache.budget.plan_finetune`, its epoch cost measured
    here), or why not, as a string; ``--finetune always`` runs the full grid whatever the estimate."""
    from ..cache import load
    from ..selection.features import pool_and_test

    with load(cache, lazy=True) as fs:
        pool = pool_and_test(fs)[0]
        split = fs.split
    holdout = int((split[pool] == "val").sum()) if split is not None and (split[pool] == "val").any() else None
    per_row = train_seconds_per_row(backbone, node, backbone.preprocess.crop_size, cfg.extract.device, cfg.seed)
    plan, why = plan_finetune(cfg.train_blocks, int(pool.sum()), holdout, pass_s, per_row,
                              deadline - time.monotonic())
    if plan is None and cfg.finetune == "always":
        plan, _ = plan_finetune(cfg.train_blocks, int(pool.sum()), holdout, pass_s, per_row, float("inf"))
    return plan if plan is not None else why


def _finetune_folds(activations: Path, node: str, tuned, cfg: FitConfig, deadline: float,
                    fold_s: float, extra: bool = True) -> List[dict]:
    """Fine-tuning's predictions on rows it did not train on, to compare it with the best so far: the rows that
    ranked its configurations (each by the configuration that won the other half), then, while the budget lasts,
    each of :data:`FINETUNE_FOLDS` folds of its training rows by the best configuration trained on every other row
    of the pool for its best epoch count. One hold-out alone is too few rows to tell two good models apart."""
    from sklearn.model_selection import KFold, StratifiedKFold

    from ..cache import load
    from ..finetuning import held_out_predictions
    from ..selection.features import pool_and_test

    folds = [{"train_rows": tuned.train_rows.tolist(), "rows": tuned.val_rows.tolist(),
              "pred": tuned.val_pred.tolist()}]
    train = np.asarray(tuned.train_rows)
    if not extra or len(train) < 2 * FINETUNE_FOLDS or not tuned.best_epochs:  # (a large hold-out is enough)
        return folds
    with load(activations, lazy=True) as fs:
        pool, y = np.flatnonzero(pool_and_test(fs)[0]), fs.y
    counts = np.bincount(y[train])
    splitter = (StratifiedKFold if counts[counts > 0].min() >= FINETUNE_FOLDS else KFold)(
        FINETUNE_FOLDS, shuffle=True, random_state=cfg.seed)
    pairs = [(np.setdiff1d(pool, train[held]), np.sort(train[held])) for _, held in splitter.split(train, y[train])]
    try:
        preds = held_out_predictions(activations, node, tuned.best_params, tuned.best_epochs, pairs, seed=cfg.seed,
                                     device=cfg.extract.device, deadline=deadline, fold_s=fold_s)
    except (FeatcacheError, ValueError, RuntimeError) as e:  # the ranking rows still compare the stages
        log.warning("fit: fine-tuning's extra folds failed (%s); comparing on its ranking rows only", e)
        return folds
    log.info("fit: fine-tuning held out %d more folds of its training rows (%d rows; %d folds out of time)",
             len(preds), sum(len(h) for _, h in pairs[: len(preds)]), len(pairs) - len(preds))
    return folds + [{"train_rows": t.tolist(), "rows": h.tolist(), "pred": p.tolist()}
                    for (t, h), p in zip(pairs, preds)]


def _versus_best(lead: BestSoFar, tuned: dict, seed: int, deadline: float, against: str) -> Optional[Comparison]:
    """The best configuration of ``lead`` (with its views and TTA when it has them) against the fine-tuned top, fold
    by fold of :func:`_finetune_folds`: trained on the same rows, scored on the same others (matched by path); no
    fold after the first starts past ``deadline`` (the comparison then counts the folds done). None: the caches
    share no such rows."""
    from ..cache import load
    from ..learn import views
    from ..selection.fitting import fit_configs

    folds = (tuned.get("validation") or {}).get("folds")
    if not folds:
        return None
    with load(tuned["validation"]["cache"], lazy=True) as fs:
        tuned_paths = fs.paths
    side = lead.result
    with load(lead.cache, lazy=True) as fs:
        row_of = {p: i for i, p in enumerate(fs.paths)}
        mapped = [[np.asarray([row_of.get(tuned_paths[r], -1) for r in f[key]], dtype=int)
                   for key in ("train_rows", "rows")] for f in folds]
        if min(min(a.min(initial=0), b.min(initial=0)) for a, b in mapped) < 0:
            return None
        X, y, classes = fs.matrix(side.best_layer), fs.y, list(fs.classes)
        V = fs.view_matrix(side.best_layer) if lead.tta else None
    side_right, tuned_right = [], []
    for (train, val), fold in zip(mapped, folds):
        if side_right and time.monotonic() > deadline:
            log.info("fit: the comparison with fine-tuning stops at %d of %d folds (the budget)", len(side_right),
                     len(folds))
            break
        X_train, y_train = views.training_rows(X, V, np.asarray(classes, dtype=object)[y], train)
        (pipe, _, _), = fit_configs([side.best_config], X_train, y_train, seed, min(X_train.shape))
        pred, _ = views.predict(pipe, X[val], None if V is None else V[val], classes)
        side_right.append(pred == y[val])
        tuned_right.append(np.asarray(fold["pred"]) == y[val])
    return paired_comparison(np.concatenate(tuned_right), np.concatenate(side_right), new="finetune", best=lead.stage,
                             against=against, folds=len(side_right), train_rows=len(mapped[0][0]))


def finetune_test(out: Path) -> Optional[dict]:
    """The fine-tuned top's test scores, from its own run's record (fit.json keeps only the winner's)."""
    try:
        return json.loads((out / "finetune" / "finetune.json").read_text(encoding="utf-8")).get("test")
    except (OSError, ValueError):
        return None
