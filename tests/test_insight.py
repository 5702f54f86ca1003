"""``featcache.inspect``: planted copies and leaks are found and clean data has none; label issues come from
out-of-fold models only; the block-wise neighbour search equals brute force; bad input gets a clear message; the
CLI writes a report that a real browser renders (tests/test_inspect_browser.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import FAST_SETTINGS
from PIL import Image, ImageEnhance

import featcache
from featcache.errors import FeatcacheError
from featcache.insight import inspect
from featcache.insight.align import aligned_residual
from featcache.insight.data import thumbnails
from featcache.insight.duplicates import DEFAULT_THRESHOLD, RESIDUAL
from featcache.insight.labels import confident_learning, have_cleanlab, out_of_fold
from featcache.insight.neighbours import brute_force_knn, exact_knn, knn

REPO = Path(__file__).resolve().parents[1]
EDITS = ("resize", "jpeg", "crop", "brightness")


def plant_copies(root: Path) -> set:
    """Copy four test images into train/ after an edit each, and one train image byte for byte within train; the
    expected leak pairs, as frozensets of paths relative to ``root``."""
    tests = sorted((root / "test").rglob("*.png"))[::15][:4]
    leaks = set()
    for edit, src in zip(EDITS, tests):
        img = Image.open(src)
        w, h = img.size
        cls = src.parent.name
        dst = root / "train" / cls / f"copy_{edit}_{src.stem}.{'jpg' if edit == 'jpeg' else 'png'}"
        if edit == "resize":
            img = img.resize((w * 3 // 2, h * 3 // 2), Image.BILINEAR)
        elif edit == "crop":
            img = img.crop((round(0.07 * w), round(0.07 * h), w, h))
        elif edit == "brightness":
            img = ImageEnhance.Brightness(img).enhance(1.15)
        img.save(dst, **({"quality": 70} if edit == "jpeg" else {}))
        leaks.add(frozenset((src.relative_to(root).as_posix(), dst.relative_to(root).as_posix())))
    twin = sorted((root / "train").rglob("*.png"))[7]
    shutil.copyfile(twin, twin.with_name("twin_" + twin.name))
    return leaks


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The demo digits (real images) twice, extracted with a small model: as shipped, and with planted copies."""
    base = tmp_path_factory.mktemp("inspect")
    clean, planted = base / "clean", base / "planted"
    shutil.copytree(REPO / "data" / "digits", clean, ignore=shutil.ignore_patterns("*.md"))
    shutil.copytree(clean, planted)
    leaks = plant_copies(planted)
    settings = dict(FAST_SETTINGS, cache_dir=base / "cache")
    return {"clean": featcache.extract(clean, **settings), "planted": featcache.extract(planted, **settings),
            "planted_root": planted, "leaks": leaks, "base": base}


def _rel(paths, root):
    return [Path(p).relative_to(root).as_posix() for p in paths]


@pytest.mark.slow
def test_planted_copies_and_leaks_are_found(digits):
    res = featcache.inspect(digits["planted"], only="duplicates", progress=False)
    root = digits["planted_root"]
    found = {frozenset(_rel(pair, root)) for pair in zip(res.leaks["path_a"], res.leaks["path_b"])}
    assert found == digits["leaks"]  # every edited copy, and nothing else across splits
    exact = res.duplicates[res.duplicates["exact"]]
    assert len(exact) == 1 and not exact["leak"].any()
    assert any(Path(p).name.startswith("twin_") for p in exact[["path_a", "path_b"]].iloc[0])
    copy = (res.duplicates["similarity"] >= DEFAULT_THRESHOLD) | (res.duplicates["residual"] <= RESIDUAL)
    assert (copy | res.duplicates["exact"]).all()
    assert res.summary["leaks"]["pairs"] == 4 and res.summary["leaks"]["by_splits"] == {"test-train": 4}
    assert len(res.clusters) == 5 and set(res.clusters["size"]) == {2}


@pytest.mark.slow
def test_clean_data_has_no_copies(digits):
    res = featcache.inspect(digits["clean"], only=["duplicates", "outliers"], progress=False)
    assert len(res.duplicates) == 0 and len(res.leaks) == 0 and len(res.clusters) == 0
    assert len(res.outliers) == 300 and res.outliers["score"].is_monotonic_decreasing
    # a lower threshold than measured finds different digits that merely look alike: the default is what keeps
    # them out
    loose = featcache.inspect(digits["clean"], only="duplicates", threshold=0.9, progress=False)
    assert len(loose.duplicates) > 0


def test_edited_copies_of_an_8x8_image_match_once_aligned_and_lookalikes_do_not(tmp_path):
    """scikit-learn's digits 1585 and 1648, two different 1s drawn alike, correlate as much as a resized or cropped
    and brightened copy of one of them (16x16 thumbnails); aligned at native resolution, from files on disk, the
    copies match and the other 1 does not."""
    from sklearn.datasets import load_digits

    d = load_digits()
    one, other = (Image.fromarray(np.round(d.images[i] * 255 / 16).astype(np.uint8)) for i in (1585, 1648))
    images = {"one": one, "other": other,
              "resized": ImageEnhance.Brightness(one.resize((12, 12), Image.BILINEAR)).enhance(1.3),
              "cropped": ImageEnhance.Brightness(one.crop((1, 1, 8, 8))).enhance(1.3)}
    paths = {}
    for name, img in images.items():
        paths[name] = str(tmp_path / f"{name}.png")
        img.save(paths[name])
    thumbs = thumbnails(list(paths.values()))

    def corr(a, b):
        return max((thumbs[paths[b]] @ thumbs[paths[a]][0]).max(), (thumbs[paths[a]] @ thumbs[paths[b]][0]).max())

    assert corr("one", "other") > max(corr("one", "resized"), corr("one", "cropped")) > 0.95
    res = aligned_residual([paths["one"]] * 3, [paths["resized"], paths["cropped"], paths["other"]])
    assert res[0] <= RESIDUAL and res[1] <= RESIDUAL and res[2] > 2 * RESIDUAL
    assert aligned_residual([paths["one"]], [str(tmp_path / "gone.png")])[0] == np.inf


def test_blockwise_neighbours_equal_brute_force(tmp_path, feature_cache):
    path = feature_cache(tmp_path / "f.h5", n=700, dim=24, chunk_rows=32, seed=3)
    X = featcache.load(path).X
    want_i, want_s = brute_force_knn(X, 7)
    for memory in (1 << 30, 1):  # database held in memory, and read again from the file per query block
        got = exact_knn(path, "synthetic", 7, block_rows=96, memory_bytes=memory)
        np.testing.assert_allclose(got.similarity, want_s, atol=1e-5)
        agree = np.mean([set(a) == set(b) for a, b in zip(got.index, want_i)])
        assert agree > 0.99, agree  # ties aside, the same neighbours
        assert not (got.index == np.arange(len(X))[:, None]).any()  # never itself


@pytest.mark.skipif(not any(__import__("importlib").util.find_spec(m) for m in ("faiss", "hnswlib")),
                    reason="no approximate index installed (pip install 'featcache[inspect]' brings faiss-cpu)")
def test_approximate_index_reports_its_measured_recall(tmp_path, feature_cache):
    path = feature_cache(tmp_path / "f.h5", n=1500, dim=16)
    method = "faiss" if __import__("importlib").util.find_spec("faiss") else "hnswlib"
    found = knn(path, "synthetic", 10, method=method)
    assert found.method == method and found.recall is not None and found.recall > 0.9


class Spy:
    """A classifier that records the row ids (column 0) it was fitted on and asked about, then predicts a fixed
    distribution, so the test sees exactly which labels reached which model."""

    fits: list = []

    def __init__(self):
        self.seen = None

    def get_params(self, deep=False):
        return {}

    def set_params(self, **params):
        return self

    def fit(self, X, y):
        self.seen = {int(i): int(label) for i, label in zip(X[:, 0], y)}
        self.classes_ = np.unique(y)
        Spy.fits.append(self)
        return self

    def predict_proba(self, X):
        self.asked = set(int(i) for i in X[:, 0])
        return np.full((len(X), len(self.classes_)), 1 / len(self.classes_))


def test_label_scores_come_from_models_that_never_saw_the_row():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    X = np.c_[np.arange(60), rng.normal(size=(60, 3))]
    Spy.fits = []
    proba, fold = out_of_fold(X, y, 3, n_folds=5, estimator=Spy())
    assert len(Spy.fits) == 5 and set(fold) == set(range(5))
    for model in Spy.fits:
        assert model.asked and not (model.asked & set(model.seen))  # scored rows: none of their labels seen
    assert sorted(i for m in Spy.fits for i in m.asked) == list(range(60))  # each row scored exactly once


def test_flipped_labels_rank_first(tmp_path, feature_cache):
    path = feature_cache(tmp_path / "f.h5", n=1200, dim=32, n_classes=4, seed=1)
    with h5py.File(path, "r+") as f:
        y = f["labels"][:]
        flip = np.random.default_rng(0).choice(len(y), 60, replace=False)
        y[flip] = (y[flip] + 1 + np.arange(60) % 3) % 4
        f["labels"][...] = y
    res = inspect(path, only="labels", progress=False, label_method="featcache")
    top = set(res.label_issues["row"].head(60))
    assert len(top & set(flip)) / 60 >= 0.6
    assert res.label_issues["score"].is_monotonic_increasing
    flagged = res.label_issues[res.label_issues["issue"]]
    assert len(flagged) and np.mean(np.isin(flagged["row"], flip)) >= 0.5
    assert (flagged["given_label"] != flagged["suggested_label"]).all()
    assert "featcache's implementation" in res.summary["label_method"]


@pytest.mark.skipif(not have_cleanlab(), reason="cleanlab is not installed (pip install 'featcache[inspect]')")
def test_our_confident_learning_agrees_with_cleanlab():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 800)
    logits = rng.normal(size=(800, 4)) + 3 * np.eye(4)[y]
    y[:40] = (y[:40] + 1) % 4
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ours = confident_learning(y, proba)
    from cleanlab.filter import find_label_issues

    theirs = find_label_issues(y, proba, filter_by="prune_by_noise_rate")
    assert (ours & theirs).sum() / max(1, (ours | theirs).sum()) > 0.9


@pytest.mark.slow
def test_a_cache_without_labels_gets_duplicates_and_outliers_only(unlabelled_folder, fast):
    cache = featcache.extract(unlabelled_folder, **fast)
    res = inspect(cache, progress=False)
    assert len(res.label_issues) == 0 and len(res.outliers) == 5 and "map" in res.summary["findings"]
    assert any("has no labels" in n and "only duplicates, outliers and the map ran" in n for n in res.summary["notes"])
    with pytest.raises(FeatcacheError, match="has no labels.*drop labels from only"):
        inspect(cache, only="labels", progress=False)


@pytest.mark.slow
def test_one_class_and_bad_flags_get_clear_messages(class_folder, fast, tmp_path):
    shutil.rmtree(class_folder / "dog")
    shutil.rmtree(class_folder / "bird")
    cache = featcache.extract(class_folder, **fast)
    res = inspect(cache, progress=False)
    assert any("one class" in n for n in res.summary["notes"])
    with pytest.raises(FeatcacheError, match="one class"):
        inspect(cache, only="confusion", progress=False)
    with pytest.raises(FeatcacheError, match="The 'only' parameter of InspectConfig must be a comma-separated list "
                                             "of duplicates, labels, outliers, confusion, map. Got 'dupes'"):
        inspect(cache, only="dupes", progress=False)
    with pytest.raises(FeatcacheError, match=r"'threshold' parameter of InspectConfig must be None or a float in the "
                                             r"range \(0, 1\]. Got 2"):
        inspect(cache, threshold=2, progress=False)
    run = subprocess.run([sys.executable, "-m", "featcache", "inspect", str(cache), "--out", str(tmp_path / "r"),
                          "--only", "labels"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2 and "one class" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    folder = subprocess.run([sys.executable, "-m", "featcache.inspect", str(class_folder)], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert folder.returncode == 2 and "image folder, not a feature cache" in folder.stderr


@pytest.mark.slow
def test_missing_files_are_reported_not_fatal(split_folder, fast):
    cache = featcache.extract(split_folder, **fast)
    gone = sorted(split_folder.rglob("*.png"))[:3]
    for p in gone:
        p.unlink()
    res = inspect(cache, only="duplicates", progress=False)
    assert any("3 of 20 image files are missing" in n for n in res.summary["notes"])


@pytest.mark.slow
def test_report_folder_holds_the_tables_and_refuses_to_overwrite(digits, tmp_path):
    out = tmp_path / "report"
    res = featcache.inspect(digits["planted"], out=out, progress=False)
    for name in ("index.html", "summary.json", "duplicates.csv", "duplicate_clusters.csv", "label_issues.csv",
                 "outliers.csv", "confusion.csv", "map.csv", "map.png", "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    import pandas as pd

    dup = pd.read_csv(out / "duplicates.csv")
    assert list(dup.columns[:6]) == ["path_a", "path_b", "split_a", "split_b", "similarity", "exact"]
    assert dup["leak"].sum() == 4 and len(res.embedding) == len(featcache.load(digits["planted"]))
    with pytest.raises(FeatcacheError, match="pass overwrite to replace it, or another out"):
        featcache.inspect(digits["planted"], out=out, progress=False)


def test_report_folder_is_checked_before_any_work_as_a_sweeps_out_is(tmp_path, feature_cache):
    """inspect checks --out with the sweep's helper (selection.outputs.prepare_out) before any work, once the cache
    opened: a cache that cannot be read leaves no report folder behind."""
    with pytest.raises(FeatcacheError):
        featcache.inspect(tmp_path / "missing.h5", out=tmp_path / "report", progress=False)
    assert not (tmp_path / "report").exists()
    cache = feature_cache(tmp_path / "c.h5", n=100, dim=8)  # a real cache; the report never starts
    (tmp_path / "file").write_text("x")
    with pytest.raises(FeatcacheError, match="is a file; pass a folder"):
        featcache.inspect(cache, out=tmp_path / "file", progress=False)
    with pytest.raises(FeatcacheError, match="cannot write to out "):
        featcache.inspect(cache, out=tmp_path / "file" / "sub", progress=False)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    with pytest.raises(FeatcacheError, match=r"holds a report \(summary.json\); pass overwrite"):
        featcache.inspect(cache, out=tmp_path / "old", progress=False)
    (tmp_path / "old" / "best.skops").write_text("")  # a sweep's files are not a report: only the report's count
    with pytest.raises(FeatcacheError, match=r"holds a report \(summary.json\)"):
        featcache.inspect(cache, out=tmp_path / "old", progress=False)
