"""What fit's budget buys (featcache/budget.py): fine-tuning costed from a measured epoch, with a one-configuration
plan where the full grid does not fit, and no extra folds when the hold-out is large."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featcache
from featcache.autofit.budget import BIG_HOLDOUT, FULL_EPOCHS, MIN_EPOCHS, plan_finetune, train_seconds_per_row


@pytest.fixture(autouse=True)
def logs_reach_caplog(monkeypatch):
    """The command line stops featcache's log at its own handler; tests run after a CLI test in this process."""
    monkeypatch.setattr(logging.getLogger("featcache"), "propagate", True)


def test_the_epoch_cost_is_measured_on_the_real_top():
    from featcache import models
    from featcache.config import ExtractConfig

    backbone = models.load_backbone(ExtractConfig(model="resnet18", weights="none", image_size=64))
    node = models.stage_outputs(backbone)[-2].name
    per_row = train_seconds_per_row(backbone, node, 64)
    assert 0 < per_row < 1.0  # one epoch of layer4 + head over 64 rows of 256x4x4 activations, per row


def test_a_large_pool_gets_one_configuration_and_no_extra_folds():
    """60,000 rows at 1 ms per training row and 60 s per pass: the grid of two configurations does not fit in 15
    minutes, one configuration for a few epochs does, and its 12,000-row hold-out needs no extra folds."""
    plan, _ = plan_finetune((1, "all"), 60_000, None, pass_s=60.0, per_row_s=1e-3, left_s=600.0)
    assert plan is not None and plan.train_blocks == ("all",) and not plan.folds
    assert MIN_EPOCHS <= plan.epochs < FULL_EPOCHS and plan.estimate_s <= 600.0
    assert abs(plan.epoch_s - 48.0) < 1e-9 and abs(plan.activation_s - 66.0) < 1e-9  # 48,000 training rows
    one_more = plan_finetune((1, "all"), 60_000, None, 60.0, 1e-3, plan.estimate_s + plan.epoch_s * 1.25 + 60)[0]
    assert one_more.epochs == plan.epochs + 1  # the budget buys epochs, one at a time


def test_a_small_pool_keeps_the_grid_and_its_folds():
    plan, _ = plan_finetune((1, "all"), 1_500, None, pass_s=3.0, per_row_s=1e-3, left_s=600.0)
    assert plan.train_blocks == (1, "all") and plan.epochs == FULL_EPOCHS and plan.folds  # a 300-row hold-out
    big_val, _ = plan_finetune((1, "all"), 10_000, BIG_HOLDOUT, pass_s=10.0, per_row_s=1e-4, left_s=600.0)
    assert not big_val.folds


def test_no_time_for_even_two_epochs_says_what_it_would_cost():
    plan, why = plan_finetune((1, "all"), 60_000, None, pass_s=60.0, per_row_s=1e-3, left_s=100.0)
    assert plan is None and "the activation pass 66 s" in why and "epochs of 48 s" in why


def test_fit_records_the_plan_it_ran(split_folder, tmp_path):
    res = featcache.fit(split_folder, tmp_path / "run", cache_dir=tmp_path / "c", progress=False, model="resnet18",
                        weights="none", image_size=32, views=0, scales=(1.0,), train_blocks=[1])
    plan = res.stages["finetune"]["plan"]
    assert plan["train_blocks"] == [1] and plan["epochs"] == FULL_EPOCHS and plan["folds"]
    assert plan["epoch_s"] > 0 and plan["estimate_s"] > plan["activation_s"]
    # The comparison with fine-tuning retrains the best so far once per fold: past the deadline no fold after the
    # first starts, and it counts the rows of the folds it did.
    from featcache.autofit.finetune_stage import _versus_best
    from featcache.autofit.variants import BestSoFar
    from featcache.config import ExtractConfig

    cache = Path(res.stages["extract"]["cache"])
    swept = featcache.sweep(cache, grid={"logreg": {"C": [1.0]}}, progress=False)
    lead = BestSoFar(swept, cache, "sweep", ExtractConfig())
    folds = res.stages["finetune"]["validation"]["folds"]
    assert len(folds) > 1
    late = _versus_best(lead, res.stages["finetune"], 0, time.monotonic() - 1, "sweep")
    full = _versus_best(lead, res.stages["finetune"], 0, time.monotonic() + 600, "sweep")
    assert late.folds == 1 and late.rows == len(folds[0]["rows"])
    assert full.folds == len(folds) and full.rows == sum(len(f["rows"]) for f in folds)


def test_views_never_give_an_exact_kernel_svm_more_rows_than_the_default_grid_does(tmp_path):
    """An RBF SVM's fit grows faster than its rows squared: the views stage refuses (1+K)x the pool beyond the
    default grid's exact-kernel limit, before extracting anything, and says why."""
    from featcache.autofit.variants import BestSoFar, exact_kernel_rows, variant_stage
    from featcache.config import ExtractConfig, FitConfig
    from featcache.selection.grids import Config
    from featcache.sweeping import SweepResult

    pool = exact_kernel_rows() // 5 + 1  # with 4 views: 5x the pool, just past the limit
    best = Config("svm", json.dumps({"C": 10.0}), "l2")
    board = pd.DataFrame({"status": ["ok"], "fit_s": [1.0]})
    result = SweepResult(board, None, best, "5-fold", None, 0, 0, val_pred=np.zeros(pool, dtype=int))
    cfg = FitConfig.from_settings(data=tmp_path, out=tmp_path / "out", views=4)
    lead = BestSoFar(result, tmp_path / "none.h5", "sweep", ExtractConfig(data=tmp_path))
    variant, report = variant_stage("views", cfg, lead, 1.0, time.monotonic() + 3600, tmp_path)
    assert variant is None
    assert report.skipped == [f"views: an exact kernel SVM on {5 * pool} rows (every pool image and its views; its fit "
                       f"time grows with the rows squared, and the default grid stops it at {exact_kernel_rows()}); "
                       "--views 0 skips it"]
    assert report.record is None and not (tmp_path / "views").exists()


def test_a_budgeted_sweep_keeps_time_to_refit_its_best():
    """The best so far (by the metric, not the slowest) decides the reserve: one fold's fit, scaled to the refit."""
    from featcache.selection.fitting import refit_reserve

    records = {"fast, best": {"scores": {"accuracy": 0.9}, "fit_s": 10.0},
               "slow, worse": {"scores": {"accuracy": 0.8}, "fit_s": 100.0},
               "failed": {"error": "ValueError: x", "fit_s": 0.0}}
    assert refit_reserve(records, "accuracy", 5, 1.5625) == 2.0 * 1.5625  # 10 s over 5 folds; (5/4 rows)^2
    assert refit_reserve({}, "accuracy", 5, 1.0) == 0.0


def test_before_a_cold_extraction_fit_says_how_long_it_will_take(split_folder, tmp_path, caplog):
    kw = dict(cache_dir=tmp_path / "c", progress=False, model="resnet18", weights="none", image_size=32,
              finetune="never", scales=(1.0,), views=2)
    with caplog.at_level(logging.INFO, logger="featcache"):
        first = featcache.fit(split_folder, tmp_path / "run", **kw)
    f = first.stages["forecast"]
    assert f["images"] == 20 and f["size"] == 32 and f["extract_s"] > 0 and f["views_passes_s"] > f["extract_s"]
    # resnet18's default layers (layer2-4: 128 + 256 + 512 floats a row), 3x the rows with 2 views, in copies
    assert f["views_memory"] % (20 * 3 * 4 * 896) == 0 and f["views_memory"] > 0 and f["memory_available"] > 0
    assert "fit: extracting 20 images at 32 px will take about" in caplog.text
    again = featcache.fit(split_folder, tmp_path / "run", **kw)  # the features are cached: nothing to forecast
    assert "forecast" not in again.stages


def test_a_variant_whose_sweep_cannot_fit_in_memory_is_skipped_before_extracting(tmp_path, feature_cache,
                                                                                 monkeypatch):
    """At 60,000 rows, 4 views made 3.2 GB of features that the sweep then refused for memory (3 minutes of
    extraction wasted): the copies the variant's sweep would hold are checked first. The machine's memory cannot
    be made smaller in a test, so the probe of available memory is patched."""
    import featcache.cache
    from featcache.autofit.variants import BestSoFar, variant_stage
    from featcache.config import ExtractConfig, FitConfig
    from featcache.selection.grids import Config
    from featcache.sweeping import SweepResult

    cache = feature_cache(tmp_path / "lead.h5", n=1000, dim=32)  # 128 KB of features
    best = Config("logreg", json.dumps({"C": 1.0}), "standardize")
    board = pd.DataFrame({"status": ["ok"], "fit_s": [1.0]})
    result = SweepResult(board, None, best, "5-fold CV", None, 0, 0, best_layer="synthetic",
                         val_pred=np.zeros(850, dtype=int))
    lead = BestSoFar(result, cache, "sweep", ExtractConfig(data=tmp_path))
    monkeypatch.setattr(featcache.cache, "available_memory", lambda: 2_000_000)  # 2 MB
    cfg = FitConfig.from_settings(data=tmp_path, out=tmp_path / "out", views=4, n_jobs=1)
    variant, report = variant_stage("views", cfg, lead, 1.0, time.monotonic() + 3600, tmp_path)
    assert variant is None
    assert report.skipped == ["views: its sweep would hold about 3.1 MB (5 copies of 625.0 KB of features), 1.9 MB of "
                       "memory is available (--views 0 skips it)"]
    assert report.record is None and not (tmp_path / "views").exists()


def test_after_extracting_a_variants_fits_start_only_if_they_still_fit(split_folder, fast, tmp_path):
    """The estimate before extracting covered the variant (no time for its passes is counted here: pass_s 0), but the
    extraction itself took the time the fits needed: they are not started, and the log says why."""
    from featcache.autofit.variants import BestSoFar, _fits_seconds, variant_stage
    from featcache.config import ExtractConfig, FitConfig

    extract_cfg = ExtractConfig(data=split_folder, **fast)
    cache = featcache.extract(config=extract_cfg)
    swept = featcache.sweep(cache, grid={"logreg": {"C": [1.0]}}, progress=False)
    lead = BestSoFar(swept, cache, "sweep", extract_cfg)
    fits_s = 3 * _fits_seconds(swept)  # views 2: three times the rows
    cfg = FitConfig.from_settings(data=split_folder, out=tmp_path / "out", views=2, augment=("flip",))
    deadline = time.monotonic() + fits_s + 0.1  # the checks before take milliseconds; extracting, far longer
    variant, report = variant_stage("views", cfg, lead, 0.0, deadline, tmp_path)
    skipped = report.skipped
    assert variant is None and len(skipped) == 1 and skipped[0].startswith("views: its features were extracted in ")
    assert "no longer fit the" in skipped[0] and report.record is None and not (tmp_path / "views").exists()
