"""Cached augmented views: extraction (--views/--augment), training without leaks, test-time augmentation."""
from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import featcache
from featcache.cache import load
from featcache.learn import views
from featcache.sweeping import sweep

GRID = {"logreg": {"preprocess": "standardize", "C": [0.1, 1.0]}}


@pytest.fixture
def view_cache(split_folder, fast):
    """``split_folder`` (20 images, train/val/test) extracted with 3 augmented views per image."""
    return featcache.extract(split_folder, views=3, augment=["flip", "crop", "color"], **fast)


@pytest.mark.slow
def test_views_are_stored_beside_unchanged_clean_features(split_folder, fast, view_cache):
    fs = load(view_cache)
    layer = fs.layers[-1]  # X is the last layer
    assert set(fs.views) == set(fs.layers)  # every layer gets its views
    assert fs.views[layer].shape == (len(fs), 3) + fs.X.shape[1:]
    assert fs.meta["key"]["views"]["n"] == 3 and fs.meta["config"]["augment"] == ["flip", "crop", "color"]
    plain = load(featcache.extract(split_folder, **fast))
    assert plain.path != fs.path and not plain.views  # views are part of the key; a plain cache has none
    np.testing.assert_allclose(fs.X, plain.X, rtol=1e-5, atol=1e-5)  # the clean rows do not change
    v = fs.views[layer]
    assert not np.allclose(v[:, 0], fs.X) and not np.allclose(v[:, 0], v[:, 1])  # views really differ


@pytest.mark.slow
def test_views_are_reproducible_across_runs_workers_and_batches(split_folder, fast, view_cache, tmp_path):
    again = featcache.extract(split_folder, views=3, augment=["flip", "crop", "color"],
                              **dict(fast, cache_dir=tmp_path / "other", num_workers=2, batch_size=5))
    a, b = load(view_cache), load(again)
    np.testing.assert_allclose(a.views[a.layers[0]], b.views[b.layers[0]], rtol=1e-5, atol=1e-5)


def test_training_rows_only_add_views_of_the_given_rows():
    X = np.arange(5, dtype=float)[:, None]
    V = 100 + np.arange(5, dtype=float)[:, None, None] + np.array([0.1, 0.2])[None, :, None]  # (5, 2, 1)
    y = np.array([0, 1, 0, 1, 2])
    Xt, yt = views.training_rows(X, V, y, np.array([1, 3]))
    assert Xt[:, 0].tolist() == [1, 3, 101.1, 101.2, 103.1, 103.2]
    assert yt.tolist() == [1, 3 % 2, 1, 1, 1, 1]
    Xn, yn = views.training_rows(X, None, y, np.array([1, 3]))
    assert Xn[:, 0].tolist() == [1, 3] and yn.tolist() == [1, 1]


def _scramble_views(path, dst, split_names):
    """A copy of the cache whose views of the rows in ``split_names`` are replaced by noise."""
    shutil.copy(path, dst)
    with h5py.File(dst, "r+") as f:
        rows = np.flatnonzero(np.isin(f["split"].asstr()[:], split_names))
        for d in f["views"].values():
            d[rows] = np.random.default_rng(0).normal(0, 50, (len(rows),) + d.shape[1:]).astype(d.dtype)
    return dst


@pytest.mark.slow
def test_views_of_val_and_test_images_never_reach_training(view_cache, tmp_path):
    settings = dict(grid=GRID, reuse=False, progress=False, plots=False)
    base = sweep(view_cache, **settings)
    val_cols = [c for c in base.leaderboard.columns if c.startswith("val_")]
    test_cols = [c for c in base.leaderboard.columns if c.startswith("test_")]
    # Selection fits on train only, so val images' views cannot move a validation score...
    val = sweep(_scramble_views(view_cache, tmp_path / "val.h5", ["val"]), **settings)
    np.testing.assert_allclose(base.leaderboard[val_cols].to_numpy(float), val.leaderboard[val_cols].to_numpy(float))
    # ...and nothing ever fits on test images' views (the refit uses train+val).
    test = sweep(_scramble_views(view_cache, tmp_path / "test.h5", ["test"]), **settings)
    cols = val_cols + test_cols
    np.testing.assert_allclose(base.leaderboard[cols].to_numpy(float), test.leaderboard[cols].to_numpy(float))
    # Noise in the *training* images' views does change the fit: the views are really used.
    train = sweep(_scramble_views(view_cache, tmp_path / "train.h5", ["train"]), **settings)
    assert not np.allclose(base.best[-1].coef_, train.best[-1].coef_)
    unused = sweep(view_cache, use_views=False, **settings)
    assert not np.allclose(base.best[-1].coef_, unused.best[-1].coef_)


@pytest.mark.slow
def test_tta_scores_use_the_views_and_predict_repeats_them(split_folder, view_cache, tmp_path):
    res = sweep(view_cache, grid=GRID, tta=True, out=tmp_path / "run", results_dir=tmp_path / "r",
                progress=False, plots=False)
    plain = sweep(view_cache, grid=GRID, out=tmp_path / "run0", results_dir=tmp_path / "r", progress=False,
                  plots=False)
    assert res.leaderboard["val_log_loss"].tolist() != plain.leaderboard["val_log_loss"].tolist()
    model = tmp_path / "run" / "best.skops"
    from_cache = featcache.predict(model, view_cache, progress=False)
    # New images: featcache extracts clean features and the same views again, then averages.
    from_images = featcache.predict(model, split_folder / "test", cache_dir=tmp_path / "pc", progress=False)
    assert len(from_images) == 4
    same = from_cache.set_index("path").loc[from_images["path"]]
    assert same["prediction"].tolist() == from_images["prediction"].tolist()
    proba = [c for c in from_images.columns if c.startswith("proba_")]
    assert proba
    np.testing.assert_allclose(same[proba].to_numpy(), from_images[proba].to_numpy(), atol=1e-4)


def test_tta_without_views_is_a_clear_error(split_folder, fast, tmp_path):
    plain = featcache.extract(split_folder, **fast)
    with pytest.raises(featcache.FeatcacheError, match=r"^tta needs augmented views in the cache; extract with views K "
                                                       r"\(and without use_views=False\)"):
        sweep(plain, grid=GRID, tta=True, results_dir=tmp_path, progress=False)


@pytest.mark.parametrize("args, message", [
    (["--views", "-1"], "--views must be an int in the range [0, 64]; got -1"),
    (["--views", "2", "--augment", "flip,blur"], "--augment must be a list of (one of 'flip', 'crop', 'color')"),
    (["--views", "2", "--gpu-decode"], "--views are made with Pillow: drop --gpu-decode"),
])
def test_bad_view_flags_are_one_line_errors(split_folder, tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "featcache.extract", "--data", str(split_folder),
                           "--cache-dir", str(tmp_path), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
