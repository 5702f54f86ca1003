"""fit's variant stages (featcache/autofit/variants.py): views skipped before extracting when their sweep cannot
fit the time or the memory; how likely a win on the same rows is chance (featcache/autofit/comparison.py)."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

import featcache
from featcache.autofit.comparison import p_better

pytestmark = pytest.mark.usefixtures("logs_reach_caplog")


def test_the_log_says_how_likely_a_win_on_the_same_rows_is_chance():
    assert p_better(12, 2) < 0.05 < p_better(4, 0)  # 4 of 4 discordant rows: p = 1/16
    assert p_better(0, 0) == 1.0 and p_better(2, 5) > 0.5


def test_views_never_give_an_exact_kernel_svm_more_rows_than_the_default_grid_does(tmp_path):
    """An RBF SVM's fit grows faster than its rows squared: the views stage refuses (1+K)x the pool beyond the
    default grid's exact-kernel limit, before extracting anything, and says why."""
    from featcache.autofit.stage import BestSoFar
    from featcache.autofit.variants import exact_kernel_rows, variant_stage
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


def test_a_variant_whose_sweep_cannot_fit_in_memory_is_skipped_before_extracting(tmp_path, feature_cache,
                                                                                 monkeypatch):
    """At 60,000 rows, 4 views made 3.2 GB of features that the sweep then refused for memory (3 minutes of
    extraction wasted): the copies the variant's sweep would hold are checked first. The machine's memory cannot
    be made smaller in a test, so the probe of available memory is patched."""
    import featcache.cache
    from featcache.autofit.stage import BestSoFar
    from featcache.autofit.variants import variant_stage
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


@pytest.mark.slow
def test_after_extracting_a_variants_fits_start_only_if_they_still_fit(split_folder, fast, tmp_path):
    """The estimate before extracting covered the variant (no time for its passes is counted here: pass_s 0), but the
    extraction itself took the time the fits needed: they are not started, and the log says why."""
    from featcache.autofit.stage import BestSoFar
    from featcache.autofit.variants import _fits_seconds, variant_stage
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
