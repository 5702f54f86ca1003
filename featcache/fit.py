"""From images to the best model featcache can give within a time budget: ``featcache.fit(DATA, OUT)``.

Cheapest first, so a small budget still returns a good model: extract the default layers (a cache hit when
done before) → the default sweep (layer screen, measured grid, successive halving, ensemble), given what is
left of the budget → the best so far again with the network also at other scales (features joined) → again on
augmented views with test-time augmentation → fine-tune the top
blocks from cached activations at the penultimate stage output (a stored earlier run is reused); each extra stage
only when the budget left covers its estimate, and it replaces the best so far only when right on more of the same
held-out images, trained on the same rows → one leaderboard across the stages; the winner's test score is
reported once and its model copied to ``OUT/best.*``, which ``featcache.predict`` uses. ``OUT/fit.json`` records
each stage, its time, how the stages compared and what was skipped and why.
The command line is ``featcache.cli.fit``; ``python -m featcache.fit`` runs it.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ._malloc import tune_allocator
from ._util import atomic_write_text, human_size, json_text, make_callable, now_iso
from .budget import FOLDS, forecast, plan_finetune, train_seconds_per_row
from .config import ExtractConfig, FitConfig
from .errors import FeatcacheError
from .learn import metrics
from .selection.modelfile import SUFFIXES, find_model, read_metadata, sidecar_path
from .selection.outputs import prepare_out
from .sizing import choose_image_size
from .variants import Lead, fold_seconds, held_out, ok_rows, paired, pool_truth, variant_stage

__all__ = ["fit", "run", "FitConfig", "FitResult", "FINETUNE_FOLDS"]

log = logging.getLogger("featcache")

# Fine-tuning's training rows fall in this many folds, each predicted by its best configuration trained without
# them, to compare it with the best so far on most of the pool rather than on one small hold-out.
FINETUNE_FOLDS = FOLDS


@dataclass
class FitResult:
    """What :func:`fit` returns: the cross-stage leaderboard (best first), the winner and its test scores."""

    leaderboard: Any  # pandas DataFrame: stage, model, val_<metric>, train rows; test only for the winner
    best_stage: str  # "sweep", "scales", "views" or "finetune"
    best_label: str
    test_scores: Optional[Dict[str, float]]
    model_path: Path  # OUT/best.skops or OUT/best.safetensors
    cache: Path
    stages: Dict[str, dict] = field(default_factory=dict)  # per stage: seconds, status, what it found
    skipped: List[str] = field(default_factory=list)  # what was not tried, and why
    out: Optional[Path] = None


def fit(data, out, **settings) -> FitResult:
    """Extract, sweep and (budget allowing) fine-tune; keep the best on validation in ``out``.

    ``settings`` are :class:`FitConfig` fields, e.g. ``fit("photos/", "runs/best", budget="15m")``.
    """
    return run(FitConfig.from_settings(data=data, out=Path(out).expanduser(), **settings))


def run(cfg: FitConfig) -> FitResult:
    """The whole path for one :class:`FitConfig` (what :func:`fit` and the CLI call)."""
    import pandas as pd

    from .extraction import extract
    from .sweeping import sweep

    cfg.validate()
    tune_allocator()
    start = time.monotonic()
    deadline = start + cfg.budget_s
    out = Path(cfg.out).expanduser()
    earlier = _read_state(out)
    prepare_out(out, overwrite=cfg.overwrite or earlier is not None)  # fit's own folder: a rerun reuses it
    stages: Dict[str, dict] = {}
    skipped: List[str] = []
    image_size, stages["image_size"] = choose_image_size(cfg, out, (earlier or {}).get("stages", {}).get("image_size"))
    extract_cfg = cfg.extract.replace(image_size=image_size)

    _announce(cfg, extract_cfg, deadline, stages)
    t = time.monotonic()
    cache = extract(config=extract_cfg)
    extract_s = time.monotonic() - t
    pass_s = _pass_seconds(cache)
    stages["extract"] = {"seconds": round(extract_s, 1), "pass_seconds": round(pass_s, 1), "cache": str(cache)}
    log.info("fit: features in %s (%.0f s)", cache, extract_s)

    t = time.monotonic()
    swept = sweep(cache, out=out / "sweep", overwrite=True, budget=max(deadline - time.monotonic(), 1.0),
                  seed=cfg.seed, n_jobs=cfg.n_jobs, metric=cfg.metric, progress=cfg.progress)
    board = swept.leaderboard
    ok = board[board["status"] == "ok"]
    whole = ok[ok["train_rows"] == ok["train_rows"].max()]  # not the ones successive halving stopped early
    rows = [_sweep_row(r, cfg.metric) for _, r in whole.head(cfg.sweep_rows).iterrows()]
    held = held_out(swept)
    truth = pool_truth(Path(cache))
    crossfit = float((held[held >= 0] == truth[held >= 0]).mean()) if (held >= 0).any() else None
    stages["sweep"] = {"seconds": round(time.monotonic() - t, 1), "scheme": swept.scheme,
                       "best": swept.best_config.label(), "n_fits": swept.n_fits, "n_cached": swept.n_cached,
                       "skipped": swept.skipped, "best_of": swept.candidates, "crossfit_accuracy": crossfit}
    if rows:  # the best's validation score is the best of many on the same rows: say so, and what cross-fitting gives
        rows[0]["val_note"] = f"best of {swept.candidates} on these rows" + (
            f"; cross-fitted accuracy {crossfit:.4f}" if crossfit is not None else "")
    log.info("fit: the sweep's best validates at %s %.4f, the best of %d configurations on the same rows "
             "(cross-fitted, each half predicted by the best on the other: accuracy %s)", cfg.metric,
             rows[0][f"val_{cfg.metric}"] if rows else float("nan"), swept.candidates,
             f"{crossfit:.4f}" if crossfit is not None else "-")
    skipped += [f"sweep: {label} (out of time)" for label in swept.skipped]

    lead = Lead(swept, Path(cache), "sweep", extract_cfg)  # what the next stage must beat
    tests = {"sweep": swept.test_scores}  # each stage's best on test: only the winner's is reported
    for name in ("scales", "views"):  # cheapest first
        variant = variant_stage(name, cfg, lead, pass_s, deadline, out, stages, skipped)
        if variant is None:
            continue
        tests[name] = variant.result.test_scores
        vrow = dict(_sweep_row(ok_rows(variant.result).iloc[0], cfg.metric), stage=name)
        vrow["model"] += (f" + {cfg.views} views, TTA" if name == "views" else "") + (
            f" at scales {' '.join(f'{s:g}' for s in cfg.scales)}" if "scales" in (name, lead.stage) else "")
        wins = stages[name]["vs_best"]["winner"] == name
        rows.insert(0 if wins else 1, vrow)
        lead = variant if wins else lead

    # Fine-tuning's plan leaves time for the comparison's first fold (one fit of the best so far), which always runs.
    tuned = _finetune_stage(cfg, extract_cfg, pass_s, deadline - fold_seconds(lead.result), earlier, out, stages,
                            skipped)
    # What fine-tuning was compared with, down to the cache: a stored comparison is reused only against the same.
    against = f"{lead.stage}: {lead.result.best_config.label()} ({lead.cache.name})"
    duel = (stages.get("finetune") or {}).get("vs_sweep")  # a reused fine-tuning run keeps its comparison
    if tuned is not None and (duel or {}).get("against") != against:
        duel = _duel(lead.cache, lead.result, lead.tta, stages.get("finetune"), cfg.seed, deadline)
        duel = None if duel is None else dict(duel, against=against)
    if tuned is not None and duel is not None:
        stages["finetune"]["vs_sweep"] = duel
        tuned = dict(tuned, same_rows=f"{duel['finetune']:.4f} vs the {lead.stage}'s {duel['sweep']:.4f} on "
                                      f"{duel['rows']}")
        log.info("fit: on %d held-out rows (%d folds), the fine-tuned top %.4f vs the %s's best trained on the same "
                 "rows %.4f (%d right only by fine-tuning, %d only by the other; McNemar p=%.3f): %s", duel["rows"],
                 duel.get("folds", 1), duel["finetune"], lead.stage, duel["sweep"], duel["finetune_only"],
                 duel["sweep_only"], duel["p_value"], f"{duel['winner']} wins".replace("sweep", lead.stage))
    if tuned is not None:  # first when it beats the best so far on the same rows
        rows.insert(0 if duel is not None and duel["winner"] == "finetune" else 1, tuned)
    # The winner first, the others by their validation score (each stage's own rows: see same_rows, fit.json).
    rows[1:] = sorted(rows[1:], key=lambda r: -metrics.sort_key(cfg.metric, r[f"val_{cfg.metric}"]))
    board = pd.DataFrame(rows)
    board.insert(0, "rank", range(1, len(board) + 1))
    winner = board.iloc[0]
    source = out / winner["stage"]
    test = tests.get(winner["stage"]) if winner["stage"] != "finetune" else _finetune_test(out)
    if test:
        board.loc[0, f"test_{cfg.metric}"] = test.get(cfg.metric)
    model_path = _publish(find_model(source), out)
    board.to_csv(out / "leaderboard.csv", index=False)
    result = FitResult(board, winner["stage"], winner["model"], test, model_path, Path(cache), stages, skipped, out)
    state = {"format": 2, "written": now_iso(), "data": str(cfg.extract.data), "cache": str(cache),
             "budget_s": cfg.budget_s,
             "seconds": round(time.monotonic() - start, 1), "best": {"stage": result.best_stage,
                                                                    "model": result.best_label, "test": test},
             "stages": stages, "skipped": skipped, "settings": {k: str(v) for k, v in vars(cfg).items()}}
    atomic_write_text(out / "fit.json", json_text(state, indent=2))
    return result


def _announce(cfg: FitConfig, extract_cfg: ExtractConfig, deadline: float, stages: Dict[str, dict]) -> None:
    """Before extracting features that are not cached: say how long that will take and what the budget then buys."""
    from .cache.hit import find_hit

    found, source, _ = find_hit(extract_cfg)
    if found is not None:
        return
    if source is None:
        from .sources import open_source

        source = open_source(extract_cfg.data)
    left = deadline - time.monotonic()
    f = forecast(extract_cfg, len(source), left, cfg.scales, cfg.views, cfg.n_jobs)
    stages["forecast"] = f
    parts = ["the sweep: what is left after it"]
    memory = f["memory_available"]
    for name in ("scales", "views"):
        cost, need = f[f"{name}_passes_s"], f[f"{name}_memory"]
        if not cost:
            continue
        why = ("will not fit in the time" if cost > f["left_s"] else
               f"will not fit in memory: about {human_size(need)}, {human_size(memory)} available"
               if memory is not None and need > memory else "")
        parts.append(f"{name}: {cost:.0f} s of network passes" + (f" ({why})" if why else ""))
    log.info("fit: extracting %d images at %d px will take about %.0f s (timed on one batch in torch; a CPU engine "
             "is faster), leaving %.0f s of the %.0f s budget for %s; fine-tuning is costed once the features "
             "exist", f["images"], f["size"], f["extract_s"], max(f["left_s"], 0), cfg.budget_s, "; ".join(parts))
    if f["left_s"] <= 0:
        log.warning("fit: the extraction alone is estimated at %.0f s, over the budget (%.0f s): it runs anyway (no "
                    "model without features), and the stages after it are skipped", f["extract_s"], cfg.budget_s)


def _sweep_row(r, metric: str) -> dict:
    """A row of the sweep's leaderboard as a row of fit's."""
    what = (f"ensemble of {r['params']}" if r["classifier"] == "ensemble"
            else f"{r['classifier']}({r['params']}) on {r['preprocess']}")
    return {"stage": "sweep", "model": f"{what} [{r['layer']}]", f"val_{metric}": r[f"val_{metric}"],
            "val_log_loss": r["val_log_loss"], "fit_s": r["fit_s"], "train_rows": r["train_rows"]}


def _finetune_stage(cfg: FitConfig, extract_cfg: ExtractConfig, pass_s: float, deadline: float,
                    earlier: Optional[dict], out: Path, stages: Dict[str, dict], skipped: List[str]) -> Optional[dict]:
    """Fine-tune the top blocks after the penultimate stage output, or say why not; the row for the leaderboard."""
    if cfg.finetune == "never":
        skipped.append("finetune: --finetune never")
        return None
    previous = (earlier or {}).get("stages", {}).get("finetune", {})
    # What a stored run depends on (the cache path holds the data's fingerprint), and how it was done.
    signature = {"data": str(cfg.extract.data), "model": str(cfg.extract.model), "weights": cfg.extract.weights,
                 "image_size": extract_cfg.image_size,
                 "train_blocks": [str(b) for b in cfg.train_blocks], "seed": cfg.seed, "metric": cfg.metric,
                 "refit": True, "compare": f"cross-fitted, {FINETUNE_FOLDS} folds", "cache": stages["extract"]["cache"]}
    reusable = (previous.get("status") == "done" and previous.get("signature") == signature
                and (out / "finetune" / "finetune.json").is_file())
    if reusable:
        stages["finetune"] = previous
        log.info("fit: fine-tuning reused from %s", out / "finetune")
        return previous["row"]
    from . import models
    from .extraction import extract
    from .finetuning import finetune

    t = time.monotonic()
    try:
        backbone = models.load_backbone(extract_cfg)
        node = models.stage_outputs(backbone)[-2].name
        plan = _finetune_plan(cfg, backbone, node, Path(stages["extract"]["cache"]), pass_s, deadline)
        if isinstance(plan, str):
            skipped.append(f"finetune: {plan} (--budget; --finetune always)")
            return None
        log.info("fit: fine-tuning plan: %s (estimated %.0f s of the %.0f s left)", plan.what, plan.estimate_s,
                 deadline - time.monotonic())
        activations = extract(config=extract_cfg.replace(layers=[node], pool="none", dtype="float16"))
        tuned = finetune(activations, node, out=out / "finetune", overwrite=True, train_blocks=plan.train_blocks,
                         epochs=plan.epochs, budget=max(deadline - time.monotonic(), 1.0), seed=cfg.seed,
                         metric=cfg.metric, device=cfg.extract.device, progress=cfg.progress)
    except FeatcacheError as e:  # the sweep's model is kept: fine-tuning is an extra, not a condition
        log.warning("fit: fine-tuning failed (%s); keeping the best model so far", e)
        skipped.append(f"finetune: failed ({e})")
        return None
    skipped += [f"finetune: {label} (out of time)" for label in tuned.skipped]
    best = tuned.leaderboard.iloc[0]
    folds = _finetune_folds(activations, node, tuned, cfg, deadline, float(best.get("fit_s") or 0.0), plan.folds)
    validation = {"cache": str(activations), "folds": folds}
    row = {"stage": "finetune", "model": f"top after {node}, {tuned.best_params}",
           f"val_{cfg.metric}": best[f"val_{cfg.metric}"], "val_log_loss": best.get("val_log_loss"),
           "fit_s": best.get("fit_s"), "train_rows": best.get("train_rows")}
    stages["finetune"] = {"status": "done", "seconds": round(time.monotonic() - t, 1), "node": node,
                          "signature": signature, "scheme": tuned.scheme, "row": row, "plan": plan.record(),
                          "validation": validation}
    return row


def _finetune_plan(cfg: FitConfig, backbone, node: str, cache: Path, pass_s: float, deadline: float):
    """What fine-tuning can do in the budget left (:func:`featcache.budget.plan_finetune`, its epoch cost measured
    here), or why not, as a string; ``--finetune always`` runs the full grid whatever the estimate."""
    from .cache import load
    from .selection.features import pool_and_test

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

    from .cache import load
    from .finetuning import held_out_predictions
    from .selection.features import pool_and_test

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


def _duel(cache: Path, side, tta: bool, tuned: Optional[dict], seed: int, deadline: float) -> Optional[dict]:
    """The best configuration of ``side`` (a sweep of ``cache``; with its views and TTA when ``tta``) against the
    fine-tuned top, fold by fold of :func:`_finetune_folds`: trained on the same rows, scored on the same others
    (matched by path); no fold after the first starts past ``deadline`` (the comparison then counts the folds done).
    None: the caches share no such rows."""
    from .cache import load
    from .learn import views
    from .selection.fitting import fit_configs

    folds = ((tuned or {}).get("validation") or {}).get("folds")
    if not folds:
        return None
    with load(tuned["validation"]["cache"], lazy=True) as fs:
        tuned_paths = fs.paths
    with load(cache, lazy=True) as fs:
        row_of = {p: i for i, p in enumerate(fs.paths)}
        mapped = [[np.asarray([row_of.get(tuned_paths[r], -1) for r in f[key]], dtype=int)
                   for key in ("train_rows", "rows")] for f in folds]
        if min(min(a.min(initial=0), b.min(initial=0)) for a, b in mapped) < 0:
            return None
        X, y, classes = fs.matrix(side.best_layer), fs.y, list(fs.classes)
        V = np.concatenate([np.asarray(fs.views[n][:], dtype=np.float32).reshape(len(fs), fs.views[n].shape[1], -1)
                            for n in side.best_layer.split("+")], axis=2) if tta else None
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
    done = len(side_right)
    side_right, tuned_right = np.concatenate(side_right), np.concatenate(tuned_right)
    f_only, s_only, p = paired(tuned_right, side_right)
    return {"rows": len(side_right), "folds": done, "train_rows": len(mapped[0][0]),
            "sweep": float(side_right.mean()), "finetune": float(tuned_right.mean()), "finetune_only": f_only,
            "sweep_only": s_only, "p_value": p, "winner": "finetune" if f_only > s_only else "sweep"}


def _pass_seconds(cache: Path) -> float:
    """What one pass of the model over every image of ``cache`` took when it was extracted (its timings)."""
    from .cache import load

    with load(cache, lazy=True) as fs:
        timings, n = fs.meta.timings or {}, len(fs)
    rows, seconds = timings.get("rows") or 0, timings.get("total_s") or 0.0
    return seconds * n / rows if rows else seconds


def _finetune_test(out: Path) -> Optional[dict]:
    """The fine-tuned top's test scores, from its own run's record (fit.json keeps only the winner's)."""
    try:
        return json.loads((out / "finetune" / "finetune.json").read_text(encoding="utf-8")).get("test")
    except (OSError, ValueError):
        return None


def _publish(model: Path, out: Path) -> Path:
    """Copy the winner's model file and sidecar to ``out/best.*``, removing another format's stale ``best.*``."""
    for suffix in SUFFIXES.values():
        if suffix != model.suffix:
            for stale in (out / f"best{suffix}", sidecar_path(out / f"best{suffix}")):
                stale.unlink(missing_ok=True)
    target = out / model.name
    shutil.copyfile(model, target)
    shutil.copyfile(sidecar_path(model), sidecar_path(target))
    read_metadata(target)  # the copy reads back
    return target


def _read_state(out: Path) -> Optional[dict]:
    try:
        state = json.loads((out / "fit.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if state.get("format") == 2 else None  # 1: fine-tuning kept no validation rows


make_callable(__name__, fit)

if __name__ == "__main__":
    from featcache.cli.fit import main

    sys.exit(main())
