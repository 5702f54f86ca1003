"""End to end: folders → features in HDF5, cache hits without a forward pass, every kind of miss (the command
line: test_cli_extract.py)."""
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import featcache
from featcache import FeatcacheError, load

REPO = Path(__file__).resolve().parents[1]


def _counting_resnet():
    """A real ResNet-18 whose stem counts the images it sees (forward hook on a submodule)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.seen = 0

    def hook(module, args):
        model.seen += args[0].shape[0]

    model.conv1.register_forward_pre_hook(hook)
    return model


def test_class_folder_end_to_end(class_folder, fast):
    path = featcache.extract(class_folder, **fast)
    fs = load(path)
    assert fs.X.shape == (12, 512) and fs.X.dtype == np.float32
    assert fs.classes == ["bird", "cat", "dog"] and fs.split is None
    assert list(fs.paths) == sorted(fs.paths) and "cat/same.png" in fs.paths and "dog/same.png" in fs.paths
    assert np.isfinite(fs.X).all() and fs.X.std() > 0
    assert path.name.startswith("class_folder__resnet18__layer2-layer3-layer4__")  # default: the last 3 stages
    assert fs.layers == ["layer2", "layer3", "layer4"] and fs.features["layer2"].shape == (12, 128)


def test_csv_and_unlabelled_inputs(csv_dataset, unlabelled_folder, fast):
    fs = load(featcache.extract(csv_dataset, **fast))
    assert len(fs) == 24 and fs.classes == ["blue", "green", "red"] and set(fs.split) == {"train", "val", "test"}
    fs = load(featcache.extract(unlabelled_folder, **fast))
    assert len(fs) == 5 and (fs.y == -1).all() and fs.classes == []


def test_torch_dataset_input(fast):
    class Tiny(torch.utils.data.Dataset):
        reads = 0

        def __len__(self):
            return 6

        def __getitem__(self, i):
            Tiny.reads += 1
            return torch.full((3, 20, 20), 30 * i, dtype=torch.uint8), i % 3

    path = featcache.extract(Tiny(), **{**fast, "num_workers": 0})
    fs = load(path)
    assert fs.X.shape == (6, 512) and fs.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert Tiny.reads == 12  # one pass for labels and the key, one to extract: never a second pass for the key
    Tiny.reads = 0
    assert featcache.extract(Tiny(), **{**fast, "num_workers": 0}) == path and Tiny.reads == 6  # a hit: one pass


def test_features_match_the_model_run_by_hand(split_folder, fast):
    """The stored row is exactly what the model gives for that image (no row shuffled or shifted)."""
    from featcache.decode import open_rgb, resize_center_crop

    model = _counting_resnet()
    fs = load(featcache.extract(split_folder, **{**fast, "model": model}))
    # resnet18: resize 256 -> crop 224, the same ratio at 32 px
    img = resize_center_crop(open_rgb(split_folder / fs.paths[5], 37), 37, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(img)[None].float() / 255 - mean) / std
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = model.eval()(x)[0].numpy()
    np.testing.assert_allclose(fs.X[5], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_scales_join_each_layer_over_the_model_run_at_other_sizes(split_folder, fast, tmp_path):
    """--scales 1 0.5: the first half of each row is the plain features, the second the model on the same crop
    resized to half (antialiased bilinear), run by hand; predict re-extracts at both scales."""
    from featcache.decode import open_rgb, resize_center_crop

    model = _counting_resnet()
    fs = load(featcache.extract(split_folder, **{**fast, "model": model, "scales": [1.0, 0.5]}))
    plain = load(featcache.extract(split_folder, **{**fast, "model": model}))
    assert fs.path != plain.path and fs.meta["key"]["scales"] == [1.0, 0.5] and "scales" not in plain.meta["key"]
    assert fs.X.shape == (20, 1024)
    np.testing.assert_array_equal(fs.X[:, :512], plain.X)
    img = resize_center_crop(open_rgb(split_folder / fs.paths[5], 37), 37, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(img)[None].float() / 255 - mean) / std
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = model.eval()(x)[0].numpy()
    np.testing.assert_allclose(fs.X[5, 512:], expected, rtol=1e-4, atol=1e-4)

    named = load(featcache.extract(split_folder, **{**fast, "scales": [1.0, 0.5]}))  # predict can rebuild it
    res = featcache.sweep(named.path, out=tmp_path / "s", grid={"logreg": {"preprocess": "l2", "C": [1.0]}},
                          progress=False)
    pred = featcache.predict(tmp_path / "s", split_folder, cache_dir=tmp_path / "new", progress=False)
    assert list(pred["prediction"]) == list(res.best.predict(named.X))  # the same 1024 features, re-extracted

    with pytest.raises(FeatcacheError, match=r"scales joins pooled features.*leave scales at 1 with pool none"):
        featcache.extract(split_folder, **{**fast, "scales": [1.0, 0.5], "pool": "none"})
    with pytest.raises(FeatcacheError, match=r"'scales' parameter of ExtractConfig must be each scale once"):
        featcache.extract(split_folder, **{**fast, "scales": [1.0, 1.0]})
    with pytest.raises(FeatcacheError, match=r"'scales' parameter of ExtractConfig must be a list of at least 1"):
        featcache.extract(split_folder, **{**fast, "scales": [1.0, 3.0]})


def test_cache_hit_runs_no_forward_pass(split_folder, fast):
    model = _counting_resnet()
    first = featcache.extract(split_folder, **{**fast, "model": model})
    assert model.seen >= 20
    model.seen = 0
    again = featcache.extract(split_folder, **{**fast, "model": model, "batch_size": 3, "num_workers": 1})
    assert again == first and model.seen == 1  # no batch: only the one dummy image that finds the stage outputs
    model.seen = 0
    pinned = featcache.extract(split_folder, **{**fast, "model": model, "layers": ["layer2", "layer3", "layer4"]})
    assert pinned == first and model.seen == 0  # named layers: the cache is found without running the model


@pytest.mark.slow
def test_every_change_that_alters_features_is_a_miss(split_folder, fast, make_image):
    base = featcache.extract(split_folder, **fast)
    variants = {
        "layer": dict(layers=["layer3"]),
        "pool": dict(layers=["layer3"], pool="max"),
        "image size": dict(image_size=40),
        "mean": dict(mean=[0.5, 0.5, 0.5]),
        "dtype": dict(dtype="float16"),
        "precision": dict(precision="bf16"),
        "model": dict(model="resnet34"),
        "hash mode": dict(hash_content=True),
        "scales": dict(scales=[1.0, 0.5]),
    }
    seen = {base}
    for what, change in variants.items():
        path = featcache.extract(split_folder, **{**fast, **change})
        assert path not in seen, what
        seen.add(path)
    # weights: a local checkpoint with other values
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18().state_dict(), split_folder.parent / "w.pt")
    assert featcache.extract(split_folder, **{**fast, "weights": str(split_folder.parent / "w.pt")}) not in seen
    # files: one touched (new mtime), one added
    f = next((split_folder / "train" / "a").iterdir())
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched = featcache.extract(split_folder, **fast)
    assert touched != base
    make_image(split_folder / "train" / "a" / "new.png", 0, 77)
    added = featcache.extract(split_folder, **fast)
    assert added not in (base, touched) and len(load(added)) == 21


def test_wrong_layer_fails_before_any_batch(split_folder, fast):
    model = _counting_resnet()
    with pytest.raises(FeatcacheError, match="closest: layer4"):
        featcache.extract(split_folder, **{**fast, "model": model, "layers": ["layer44"]})
    assert model.seen == 0
    assert not any(fast["cache_dir"].glob("*.h5")) if fast["cache_dir"].exists() else True


def test_broken_files_are_skipped_and_recorded(broken_images, fast):
    fs = load(featcache.extract(broken_images.root, **fast))
    assert len(fs) == 3
    assert sorted(Path(p).name for p, _ in fs.failed) == sorted(broken_images.bad_names)
    assert all(reason for _, reason in fs.failed)


def test_features_feed_scikit_learn_directly(split_folder, fast):
    from sklearn.linear_model import LogisticRegression

    fs = load(featcache.extract(split_folder, **fast))
    X, y = fs.subset("train")
    clf = LogisticRegression(max_iter=500).fit(X, y)
    assert clf.score(*fs.subset("test")) == 1.0  # the fixture's two classes differ in colour and stripes


def test_layer_preset_resolves_before_the_cache_key(split_folder, fast):
    path = featcache.extract(split_folder, layers=["last2"], **fast)
    assert featcache.load(path).layers == ["layer3", "layer4"]
    assert featcache.extract(split_folder, layers=["layer3", "layer4"], **fast) == path  # the same cache


def test_ls_and_explain(split_folder, fast, make_image):
    from featcache.cache import list_caches
    from featcache.config import ExtractConfig
    from featcache.extraction import explain

    path = featcache.extract(split_folder, **fast)
    records = list_caches(fast["cache_dir"])
    assert records[0]["rows"] == 20 and records[0]["dims"] == "128+256+512" and records[0]["status"] == "complete"
    cfg = ExtractConfig(data=split_folder, **fast)
    assert explain(cfg) == [f"cache hit: {path}"]
    make_image(split_folder / "val" / "b" / "extra.png", 1, 5)
    lines = explain(cfg.replace(layers=["layer3"]))
    text = "\n".join(lines)
    assert "files added: 1: val/b/extra.png" in text and "layers" in text and "layer3" in text
