"""``fit``'s input size from the data (featcache/autofit/sizing.py): small images screened at a few sizes on a
sample of the training images (never test), large ones kept at the model's own size; the choice recorded and used."""
from __future__ import annotations

import json

import pytest

import featcache
from featcache.autofit.sizing import candidate_sizes

SMALL = dict(model="resnet18", weights="none", finetune="never", views=0, scales=(1.0,), progress=False)


def test_candidate_sizes_stay_below_the_models_own():
    assert candidate_sizes(28, 224) == [48, 64, 96, 128]  # MNIST's 28 px, at least 48
    assert candidate_sizes(8, 224) == [48, 64, 96, 128]
    assert candidate_sizes(100, 224) == [64, 96, 128]
    assert candidate_sizes(150, 224) == [64, 96, 128, 144]
    assert candidate_sizes(100, 112) == [64, 96]


@pytest.mark.slow
def test_small_images_get_the_size_that_validates_best(split_folder, tmp_path):
    """24-px images: each candidate is screened on the 16 train/val images; the winner is what the cache holds."""
    out = tmp_path / "run"
    res = featcache.fit(split_folder, out, budget=600, cache_dir=tmp_path / "c", **SMALL)
    record = res.stages["image_size"]
    assert record["native"] == 24 and record["model"] == 224
    assert set(record["screened"]) == {"48", "64", "96", "128"} and record["rows"] == 16  # never a test image
    best = max(record["screened"].values())
    assert record["chosen"] == min(int(s) for s, v in record["screened"].items() if v == best)  # a tie: the smaller
    with featcache.load(res.cache, lazy=True) as fs:
        assert fs.meta.config["preprocess"]["crop_size"] == record["chosen"]
    assert json.loads((out / "fit.json").read_text())["stages"]["image_size"]["chosen"] == record["chosen"]
    again = featcache.fit(split_folder, out, budget=600, cache_dir=tmp_path / "c", **SMALL)  # reused, not screened
    assert again.stages["image_size"] == record and again.cache == res.cache


@pytest.mark.slow
def test_images_as_large_as_the_models_input_keep_its_size(tmp_path, make_image):
    for k, cls in enumerate(("a", "b")):
        for i in range(4):
            make_image(tmp_path / "big" / cls / f"{i}.png", k, i, size=(240, 200))
    res = featcache.fit(tmp_path / "big", tmp_path / "run", budget=600, cache_dir=tmp_path / "c", **SMALL)
    record = res.stages["image_size"]
    assert record["chosen"] is None and "screened" not in record and "200 px" in record["how"]
    with featcache.load(res.cache, lazy=True) as fs:
        assert fs.meta.config["preprocess"]["crop_size"] == 224
