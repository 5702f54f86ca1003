"""From images to the best model featcache can give within a time budget: ``featcache.fit(DATA, OUT)``.

Stage: commands (``fit``'s). Cheapest first, so a small budget still returns a good model: the input size
(:mod:`.sizing`) → extract the default layers (a cache hit when done before) → the default sweep (layer screen,
measured grid, successive halving, ensemble), given what is left of the budget → the best so far again with the
network also at other scales, then on augmented views with test-time augmentation (:mod:`.variants`) → fine-tune the
top blocks from cached activations (:mod:`.finetune_stage`); each extra stage only when the budget left covers its
estimate, and it replaces the best so far only when right on more of the same held-out images, trained on the same
rows (:mod:`.comparison`) → one leaderboard across the stages; the winner's test score is reported once and its
model copied to ``OUT/best.*``, which ``featcache.predict`` uses. Each stage returns a :class:`StageReport`;
``OUT/fit.json`` keeps them: each stage, its time, how the stages compared and what was skipped and why.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .._malloc import tune_allocator
from .._util import atomic_write_text, human_size, json_text, now_iso
from ..config import ExtractConfig, FitConfig
from ..config.fit import FIT_EXTRACT_FIELDS
from ..learn import metrics
from ..selection.modelfile import SUFFIXES, find_model, read_metadata, sidecar_path
from ..selection.outputs import prepare_out
from .budget import forecast
from .comparison import held_out, pool_truth, trained_rows
from .finetune_stage import finetune_stage, finetune_test
from .sizing import choose_image_size
from .stage import BestSoFar, StageReport
from .variants import variant_stage

__all__ = ["fit", "run_fit", "FitResult", "STATE_FORMAT"]

log = logging.getLogger("featcache")

STATE_FORMAT = 3  # OUT/fit.json: 3 records every comparison alike (vs_best); 2 is still read, its comparison redone


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

    ``settings`` are :class:`FitConfig` fields and the extraction's (``model=``, ``cache_dir=``...), e.g.
    ``fit("photos/", "runs/best", budget="15m")``.
    """
    return run_fit(FitConfig.from_settings(data=data, out=Path(out).expanduser(), **settings))


def run_fit(cfg: FitConfig) -> FitResult:
    """The whole path for one :class:`FitConfig` (what :func:`fit` and the CLI call)."""
    cfg.validate()
    tune_allocator()
    start = time.monotonic()
    deadline = start + cfg.budget_s
    out = Path(cfg.out).expanduser()
    earlier = _read_state(out)
    prepare_out(out, overwrite=cfg.overwrite or earlier is not None)  # fit's own folder: a rerun reuses it
    size, record = choose_image_size(cfg, out, (earlier or {}).get("stages", {}).get("image_size"))
    extract_cfg = cfg.extract.replace(image_size=size)
    reports = [StageReport("image_size", record), _announce(cfg, extract_cfg, deadline)]
    cache, pass_s, report = _extract_stage(extract_cfg)
    reports.append(report)
    lead, rows, report = _sweep_stage(cfg, extract_cfg, cache, deadline, out)
    reports.append(report)
    tests = {"sweep": lead.result.test_scores}  # each stage's best on test: only the winner's is reported
    for name in ("scales", "views"):  # cheapest first
        variant, report = variant_stage(name, cfg, lead, pass_s, deadline, out)
        reports.append(report)
        if variant is not None:
            tests[name] = variant.result.test_scores
            wins = report.record["vs_best"]["winner"] == name
            rows.insert(0 if wins else 1, _variant_row(cfg, name, variant, lead))
            lead = variant if wins else lead
    tuned, report = finetune_stage(cfg, extract_cfg, pass_s, deadline, earlier, out, cache, lead)
    reports.append(report)
    if tuned is not None:  # first when it beats the best so far on the same rows
        rows.insert(0 if (report.record.get("vs_best") or {}).get("winner") == "finetune" else 1, tuned)
        tests["finetune"] = finetune_test(out)
    return _finish(cfg, rows, tests, reports, cache, out, start)


def _extract_stage(extract_cfg: ExtractConfig) -> Tuple[Path, float, StageReport]:
    """The features of the default layers (a cache hit when done before): the cache, what one pass of the network
    over the images took, and the report."""
    from ..extraction import extract

    t = time.monotonic()
    cache = Path(extract(config=extract_cfg))
    extract_s = time.monotonic() - t
    pass_s = _pass_seconds(cache)
    log.info("fit: features in %s (%.0f s)", cache, extract_s)
    return cache, pass_s, StageReport("extract", {"seconds": round(extract_s, 1), "pass_seconds": round(pass_s, 1),
                                                  "cache": str(cache)})


def _sweep_stage(cfg: FitConfig, extract_cfg: ExtractConfig, cache: Path, deadline: float,
                 out: Path) -> Tuple[BestSoFar, List[dict], StageReport]:
    """The default sweep with what is left of the budget: the best so far, the sweep's rows for fit's leaderboard,
    and the report (the best is the best of many on the same rows: it says so, with its cross-fitted accuracy)."""
    from ..sweeping import sweep

    t = time.monotonic()
    swept = sweep(cache, out=out / "sweep", overwrite=True, budget=max(deadline - time.monotonic(), 1.0),
                  seed=cfg.seed, n_jobs=cfg.n_jobs, metric=cfg.metric, progress=cfg.progress)
    trained = trained_rows(swept)
    # not the ones successive halving stopped early
    whole = trained[trained["train_rows"] == trained["train_rows"].max()]
    rows = [_sweep_row(r, cfg.metric) for _, r in whole.head(cfg.sweep_rows).iterrows()]
    held, truth = held_out(swept), pool_truth(cache)
    crossfit = float((held[held >= 0] == truth[held >= 0]).mean()) if (held >= 0).any() else None
    if rows:
        rows[0]["val_note"] = f"best of {swept.candidates} on these rows" + (
            f"; cross-fitted accuracy {crossfit:.4f}" if crossfit is not None else "")
    log.info("fit: the sweep's best validates at %s %.4f, the best of %d configurations on the same rows "
             "(cross-fitted, each half predicted by the best on the other: accuracy %s)", cfg.metric,
             rows[0][f"val_{cfg.metric}"] if rows else float("nan"), swept.candidates,
             f"{crossfit:.4f}" if crossfit is not None else "-")
    report = StageReport("sweep", {"seconds": round(time.monotonic() - t, 1), "scheme": swept.scheme,
                                   "best": swept.best_config.label(), "n_fits": swept.n_fits,
                                   "n_cached": swept.n_cached, "skipped": swept.skipped, "best_of": swept.candidates,
                                   "crossfit_accuracy": crossfit})
    report.skipped += [f"sweep: {label} (out of time)" for label in swept.skipped]
    return BestSoFar(swept, cache, "sweep", extract_cfg), rows, report


def _variant_row(cfg: FitConfig, name: str, variant: BestSoFar, lead: BestSoFar) -> dict:
    """The variant's best as a row of fit's leaderboard, saying what it added to the lead it was compared with."""
    row = dict(_sweep_row(trained_rows(variant.result).iloc[0], cfg.metric), stage=name)
    row["model"] += (f" + {cfg.views} views, TTA" if name == "views" else "") + (
        f" at scales {' '.join(f'{s:g}' for s in cfg.scales)}" if "scales" in (name, lead.stage) else "")
    return row


def _finish(cfg: FitConfig, rows: List[dict], tests: Dict[str, Optional[dict]], reports: List[StageReport],
            cache: Path, out: Path, start: float) -> FitResult:
    """One leaderboard, the winner first and the others by their validation score (each stage's own rows: see
    same_rows, fit.json); the winner's model copied to ``OUT/best.*``; ``OUT/leaderboard.csv`` and ``OUT/fit.json``."""
    import pandas as pd

    rows[1:] = sorted(rows[1:], key=lambda r: -metrics.sort_key(cfg.metric, r[f"val_{cfg.metric}"]))
    board = pd.DataFrame(rows)
    board.insert(0, "rank", range(1, len(board) + 1))
    winner = board.iloc[0]
    test = tests.get(winner["stage"])
    if test:
        board.loc[0, f"test_{cfg.metric}"] = test.get(cfg.metric)
    model_path = _publish(find_model(out / winner["stage"]), out)
    board.to_csv(out / "leaderboard.csv", index=False)
    stages = {r.name: r.record for r in reports if r.record is not None}
    skipped = [line for r in reports for line in r.skipped]
    result = FitResult(board, winner["stage"], winner["model"], test, model_path, cache, stages, skipped, out)
    state = {"format": STATE_FORMAT, "written": now_iso(), "data": str(cfg.extract.data), "cache": str(cache),
             "budget_s": cfg.budget_s, "seconds": round(time.monotonic() - start, 1),
             "best": {"stage": result.best_stage, "model": result.best_label, "test": test},
             "stages": stages, "skipped": skipped, "settings": _settings(cfg)}
    atomic_write_text(out / "fit.json", json_text(state, indent=2))
    return result


def _announce(cfg: FitConfig, extract_cfg: ExtractConfig, deadline: float) -> StageReport:
    """Before extracting features that are not cached: say how long that will take and what the budget then buys
    (the report's record is the forecast; none for a cache hit)."""
    from ..cache.hit import find_hit

    found, source, _ = find_hit(extract_cfg)
    if found is not None:
        return StageReport("forecast")
    if source is None:
        from ..sources import open_source

        source = open_source(extract_cfg.data)
    left = deadline - time.monotonic()
    f = forecast(extract_cfg, len(source), left, cfg.scales, cfg.views, cfg.n_jobs)
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
    return StageReport("forecast", f)


def _settings(cfg: FitConfig) -> dict:
    """The run's settings as fit.json shows them: the extraction's that fit takes, then fit's own."""
    given = {k: getattr(cfg.extract, k) for k in FIT_EXTRACT_FIELDS}
    own = {k: v for k, v in vars(cfg).items() if k != "extract"}
    return {k: str(v) for k, v in {**given, **own}.items()}


def _sweep_row(r, metric: str) -> dict:
    """A row of the sweep's leaderboard as a row of fit's."""
    what = (f"ensemble of {r['params']}" if r["classifier"] == "ensemble"
            else f"{r['classifier']}({r['params']}) on {r['preprocess']}")
    return {"stage": "sweep", "model": f"{what} [{r['layer']}]", f"val_{metric}": r[f"val_{metric}"],
            "val_log_loss": r["val_log_loss"], "fit_s": r["fit_s"], "train_rows": r["train_rows"]}


def _pass_seconds(cache: Path) -> float:
    """What one pass of the model over every image of ``cache`` took when it was extracted (its timings)."""
    from ..cache import load

    with load(cache, lazy=True) as fs:
        timings, n = fs.meta.timings or {}, len(fs)
    rows, seconds = timings.get("rows") or 0, timings.get("total_s") or 0.0
    return seconds * n / rows if rows else seconds


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
    return state if state.get("format") in (2, STATE_FORMAT) else None  # 1: fine-tuning kept no validation rows
