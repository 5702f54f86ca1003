"""What fit's budget buys (featcache/autofit/budget.py): fine-tuning costed from a measured epoch, with a
one-configuration plan where the full grid does not fit, and no extra folds when the hold-out is large."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

import featcache
from featcache.autofit.budget import BIG_HOLDOUT, FULL_EPOCHS, MIN_EPOCHS, plan_finetune, train_seconds_per_row

pytestmark = pytest.mark.usefixtures("logs_reach_caplog")  # the fixture is in conftest.py


@pytest.mark.slow
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


@pytest.mark.slow
def test_fit_records_the_plan_it_ran(split_folder, tmp_path):
    res = featcache.fit(split_folder, tmp_path / "run", cache_dir=tmp_path / "c", progress=False, model="resnet18",
                        weights="none", image_size=32, views=0, scales=(1.0,), train_blocks=[1])
    plan = res.stages["finetune"]["plan"]
    assert plan["train_blocks"] == [1] and plan["epochs"] == FULL_EPOCHS and plan["folds"]
    assert plan["epoch_s"] > 0 and plan["estimate_s"] > plan["activation_s"]
    # The comparison with fine-tuning retrains the best so far once per fold: past the deadline no fold after the
    # first starts, and it counts the rows of the folds it did.
    from featcache.autofit.finetune_stage import _versus_best
    from featcache.autofit.stage import BestSoFar
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


@pytest.mark.slow
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
