"""Saved models: verified loading, prediction on new images with the training extractor, mismatches."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

import featcache
from featcache.cli.predict import main
from featcache.config import FeatcacheError
from featcache.prediction import predict
from featcache.selection.modelfile import load_model, read_metadata
from featcache.sweeping import sweep

COLOURS = ("red", "green", "blue")
SETTINGS = dict(model="resnet18", weights="none", image_size=32, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colour_images):
    """A sweep's best model on a real cache (train/val/test of 3 colours), and that cache."""
    root = tmp_path_factory.mktemp("predict")
    for split, n in {"train": 6, "val": 3, "test": 3}.items():
        colour_images(root / "data" / split, n, seed=100 * len(split))
    cache = featcache.extract(root / "data", cache_dir=root / "c", **SETTINGS)
    res = sweep(cache, grid={"logreg": {"preprocess": "standardize", "C": [0.1, 1.0]}}, layer="layer4",
                out=root / "out", results_dir=root / "r", progress=False)
    return {"model": root / "out" / "best.skops", "cache": cache, "root": root, "result": res}


def test_round_trip_on_new_labelled_images(trained, tmp_path, colour_images):
    new = colour_images(tmp_path / "new", 2, classes=("blue", "red"), seed=7)
    df = predict(trained["model"], new, out=tmp_path / "preds.csv", cache_dir=tmp_path / "c", progress=False)
    assert list(df.columns) == ["path", "prediction", "proba_blue", "proba_green", "proba_red"]
    assert len(df) == 4 and set(df["prediction"]) <= set(COLOURS)
    assert np.allclose(df.filter(like="proba_").sum(axis=1), 1, atol=1e-5)
    assert list(df.attrs["accuracy"]) == ["all"] and df.attrs["accuracy"]["all"] >= 0.75
    assert Path(df["path"][0]).is_file()
    assert pd.read_csv(tmp_path / "preds.csv").equals(pd.read_csv(tmp_path / "preds.csv"))  # a plain CSV


def test_stored_settings_reproduce_the_training_features(trained, tmp_path):
    """Re-extracting the training images with the model's settings is a cache hit on the same file."""
    df = predict(trained["model"], trained["root"] / "data", cache_dir=trained["root"] / "c", proba=False,
                 progress=False)
    assert list(df.columns) == ["path", "prediction", "split", "trained_on"]
    assert len(list((trained["root"] / "c").glob("*.h5"))) == 1  # no second cache was made
    # One accuracy per split, never pooled; the model was refitted on train+val, and says so per row.
    assert list(df.attrs["accuracy"]) == ["test", "val", "train"]
    assert df["trained_on"].tolist() == df["split"].isin(["train", "val"]).tolist()
    test_acc = trained["result"].test_scores["accuracy"]
    assert df.attrs["accuracy"]["test"] == pytest.approx(test_acc)


def test_unlabelled_images_and_existing_caches(trained, tmp_path, make_image):
    flat = tmp_path / "flat"
    for i in range(3):
        make_image(flat / f"{i}.png", i, i)
    df = predict(trained["model"], flat, cache_dir=tmp_path / "c", progress=False)
    assert "accuracy" not in df.attrs and len(df) == 3
    from_cache = predict(trained["model"], trained["cache"], progress=False)
    assert len(from_cache) == 36 and "accuracy" in from_cache.attrs


def test_features_of_another_kind_are_refused(trained, tmp_path):
    data = trained["root"] / "data"
    bigger = featcache.extract(data, cache_dir=tmp_path, **{**SETTINGS, "image_size": 48})
    with pytest.raises(FeatcacheError, match=r"do not match the model's training features: preprocess: .*"
                                             r"crop_size\": 48.* here, .*crop_size\": 32"):
        predict(trained["model"], bigger, progress=False)
    other_layer = featcache.extract(data, cache_dir=tmp_path, layers=["layer3"], **SETTINGS)
    with pytest.raises(FeatcacheError, match=r"layer\(s\) layer4 missing here \(has layer3\)"):
        predict(trained["model"], other_layer, progress=False)


def test_only_verified_featcache_files_are_unpickled(trained, tmp_path):
    model = tmp_path / "best.skops"
    shutil.copy(trained["model"], model)
    shutil.copy(trained["model"].with_name("best.skops.json"), tmp_path / "best.skops.json")
    assert load_model(model).classes == sorted(COLOURS)
    meta = read_metadata(model)
    assert meta["layers"] == ["layer4"] and meta["feature_identity"]["model"] == "resnet18"
    assert meta["extract_config"]["preprocess"]["crop_size"] == 32 and meta["test"]["accuracy"] >= 0

    with open(model, "r+b") as f:  # flip one byte
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(FeatcacheError, match=r"contents changed since featcache wrote it \(SHA-256 differs"):
        load_model(model)

    foreign = tmp_path / "foreign.joblib"
    joblib.dump({"anything": 1}, foreign)
    with pytest.raises(FeatcacheError, match=r"refusing to load .*foreign.joblib: it has no foreign.joblib.json"):
        load_model(foreign)
    (tmp_path / "foreign.joblib.json").write_text(json.dumps({"sha256": "x"}), encoding="utf-8")
    with pytest.raises(FeatcacheError, match=r"foreign.joblib.json was not written by featcache"):
        load_model(foreign)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "featcache.predict", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli(trained, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    ok = _cli(trained["model"], "--data", trained["cache"], "--out", out, "--no-progress")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["accuracy on test", "accuracy on val", "accuracy on train"]
    assert lines[3] == "27 image(s) trained the model (trained_on column): their accuracy is not a held-out score"
    assert len(pd.read_csv(out)) == 36
    assert main([str(trained["model"]), "--info"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == sorted(COLOURS)
    assert main([str(trained["model"]), "--data", str(trained["cache"]), "--no-proba", "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "path,prediction,split,trained_on" and len(printed) == 37
    lonely = tmp_path / "m.joblib"
    shutil.copy(trained["model"], lonely)
    bad = _cli(lonely, "--data", trained["cache"])
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith(f"featcache: error: refusing to load {lonely}: it has no m.joblib.json")


@pytest.mark.slow
def test_the_wrong_kind_of_file_is_named(trained, tmp_path):
    """A cache where a model is expected, a folder where a cache is: one line that says what to do."""
    with pytest.raises(FeatcacheError, match=r"is a feature cache, not a model file: fit a model on it first"):
        read_metadata(trained["cache"])
    assert read_metadata(trained["root"] / "out") == read_metadata(trained["model"])  # a run folder: its model
    with pytest.raises(FeatcacheError, match=r"is an image folder, not a feature cache: run python -m featcache"):
        featcache.load(trained["root"] / "data")
    r = subprocess.run([sys.executable, "-m", "featcache.sweep", str(trained["root"] / "data")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is an image folder" in r.stderr


class Booby:
    """A type no featcache model holds: loading a file that names it must not create it."""

    made = 0

    def __setstate__(self, state):
        Booby.made += 1
        self.__dict__.update(state)


def _forge(path: Path, obj, metadata: dict) -> Path:
    """A model file whose sidecar matches its bytes, as anyone who can write both files could make."""
    import skops.io as sio

    from featcache.selection.modelfile import MARKER, MODEL_FORMAT, sidecar_path

    sio.dump(obj, path)
    from featcache._util import file_sha256

    sidecar_path(path).write_text(json.dumps({"marker": MARKER, "format": MODEL_FORMAT, "kind": "skops",
                                              "sha256": file_sha256(path), "metadata": metadata}))
    return path


@pytest.mark.slow
def test_loading_a_model_file_never_runs_code_from_it(trained, tmp_path):
    """Whoever wrote both files: a skops file holding an untrusted type is refused before anything is created;
    a 0.1 pickle is refused with how to convert one you trust; a factory model needs --trust-model-code."""
    meta = read_metadata(trained["model"])
    forged = _forge(tmp_path / "forged.skops", [Booby()], meta)
    with pytest.raises(FeatcacheError, match=r"holds types featcache does not trust \(.*Booby"):
        load_model(forged)
    assert Booby.made == 0

    # featcache 0.1 wrote joblib pickles: refused, even with a matching sidecar, until converted on purpose.
    from featcache._util import file_sha256
    from featcache.selection.modelfile import MARKER

    old = tmp_path / "old" / "best.joblib"
    old.parent.mkdir()
    joblib.dump({"marker": MARKER, "format": 1, "metadata": meta, "pipeline": load_model(trained["model"]).pipeline},
                old)
    old.with_name("best.joblib.json").write_text(json.dumps({"marker": MARKER, "format": 1, "sha256": file_sha256(old),
                                                            "metadata": meta}))
    with pytest.raises(FeatcacheError, match=r"a pickle written by featcache 0.1.*python -m featcache convert"):
        load_model(old)
    converted = subprocess.run([sys.executable, "-m", "featcache", "convert", str(old)], capture_output=True,
                               text=True, timeout=120)
    assert converted.returncode == 0, converted.stderr
    assert load_model(converted.stdout.strip()).classes == sorted(COLOURS)

    # Metadata naming a factory: importing it would run its code. Refused unless trusted; nothing imported.
    marker = tmp_path / "ran"
    (tmp_path / "evil_models.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef net():\n    pass\n")
    evil = json.loads(json.dumps(meta))
    evil["extract_config"]["model"] = "evil_models:net"
    model = _forge(tmp_path / "evil.skops", load_model(trained["model"]).pipeline, evil)
    with pytest.raises(FeatcacheError, match=r"evil_models:net: extracting them imports and runs that code.*"
                                             r"set trust_model_code"):
        predict(model, trained["root"] / "data", cache_dir=tmp_path / "c", progress=False)
    assert not marker.exists()


def test_the_result_store_keeps_no_pickles(trained):
    refits = list((trained["root"] / "r").rglob("*.skops"))
    assert refits and not list((trained["root"] / "r").rglob("*.joblib"))
    for path in refits:
        assert load_model(path).pipeline is not None


def test_a_small_model_file_cannot_ask_for_a_huge_network(tmp_path):
    """A 10 KB model file whose DenseHead hyperparameters declare 131,072 inputs and hidden units (64 GiB of
    weights) once made loading build that network before any weight was compared: refused from the shapes alone,
    with nothing allocated (torch's meta device), and the peak memory of this process barely moves."""
    import resource

    from featcache.learn.dense import DenseHead

    rng = np.random.default_rng(0)
    head = DenseHead(hidden_layer_sizes=(8,), epochs=2).fit(rng.random((40, 4)).astype(np.float32),
                                                             np.arange(40) % 2)
    head.n_features_in_, head.hidden_layer_sizes = 131_072, (131_072,)  # the crafted hyperparameters
    forged = _forge(tmp_path / "huge.skops", head, {"classes": ["0", "1"]})
    assert forged.stat().st_size < 20_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FeatcacheError, match=r"refusing to load .*huge\.skops: DenseHead: the stored weights .* are "
                                             r"not the shapes its hyperparameters declare"):
        load_model(forged)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: under 200 MB more
