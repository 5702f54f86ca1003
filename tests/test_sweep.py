"""Sweeps on real caches of tiny images: classifiers, validation schemes, the result store, errors, CLI."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featcache
from featcache.cli.sweep import main
from featcache.config import FeatcacheError
from featcache.selection.grids import CLASSIFIERS, DEFAULT_GRID
from featcache.sweeping import sweep

COLOURS = ("red", "green", "blue")
EVERY_CLASSIFIER = {
    "logreg": {"preprocess": "standardize", "C": 1.0},
    "linsvm": {"preprocess": "l2", "C": 1.0},
    "ridge": {"preprocess": "standardize", "alpha": 1.0},
    "sgd": {"preprocess": "standardize", "loss": "log_loss"},
    "knn": {"preprocess": "pca:8", "n_neighbors": 3},
    "dense": {"preprocess": "standardize", "epochs": 5, "lr": 0.01},
    "svm": {"preprocess": "l2", "C": 10.0},
}
TINY = {"logreg": {"preprocess": "standardize", "C": [0.01, 1.0]}, "knn": {"n_neighbors": 3}}


pytestmark = pytest.mark.usefixtures("logs_reach_caplog")  # the fixture is in conftest.py


def _images(root: Path, make_image, counts: dict, classes=COLOURS) -> Path:
    """``root/[split/]class/i.png``; ``counts`` maps split (or None) to images per class (int or list)."""
    for s, (split, n) in enumerate(counts.items()):
        for k, cls in enumerate(classes):
            per_class = n[k] if isinstance(n, (list, tuple)) else n
            for i in range(per_class):
                where = root / split / cls if split else root / cls
                make_image(where / f"{i}.png", k, i, seed=1000 * k + 100 * s + i)
    return root


def _extract(folder: Path, cache_dir: Path, **kw) -> Path:
    return featcache.extract(folder, model="resnet18", weights="none", image_size=32, cache_dir=cache_dir,
                             progress=False, **kw)


@pytest.fixture(scope="module")
def caches(tmp_path_factory, make_image):
    """Real caches of one layer: with train/val/test, without splits, with train/test only; with two layers;
    and with the default layers (the last three stages)."""
    root = tmp_path_factory.mktemp("sweep")
    split = _images(root / "split", make_image, {"train": 8, "val": 4, "test": 4})
    one = {"layers": ["layer4"]}
    return {
        "split": _extract(split, root / "c", **one),
        "flat": _extract(_images(root / "flat", make_image, {None: [6, 6, 3]}), root / "c", **one),
        "train_test": _extract(_images(root / "tt", make_image, {"train": 6, "test": 2}), root / "c", **one),
        "two_layers": _extract(split, root / "c", layers=["layer3", "layer4"]),
        "default": _extract(split, root / "c"),
    }


@pytest.mark.slow
def test_every_classifier_on_a_real_cache(caches, tmp_path):
    res = sweep(caches["split"], grid=EVERY_CLASSIFIER, out=tmp_path / "out", results_dir=tmp_path / "r",
                progress=False)
    board = res.leaderboard
    # Every classifier (and an ensemble when greedy selection keeps two or more), validated like the others.
    assert set(board["classifier"]) - {"ensemble"} == set(CLASSIFIERS) - {"ensemble"}
    assert (board["status"] == "ok").all()
    assert list(board["val_accuracy"]) == sorted(board["val_accuracy"], reverse=True)
    assert board["val_accuracy"].iloc[0] >= 0.9
    # decision scores only (linsvm, ridge, svm): a log-loss all the same, from their calibrated out-of-fold scores
    assert board["val_log_loss"].notna().all()
    scored = board["test_accuracy"].notna()
    assert scored.iloc[0] and scored.sum() == 1  # test is scored once, for the best
    assert res.test_scores["accuracy"] == board["test_accuracy"].iloc[0]
    assert set(res.best.predict(featcache.load(caches["split"]).X)) <= set(COLOURS)
    for name in ["leaderboard.csv", "best.skops", "best.skops.json", "sweep.json", "plots/confusion_matrix.png"]:
        assert (tmp_path / "out" / name).is_file(), name
    saved = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(saved["classifier"]) == list(board["classifier"])


def test_val_split_selects_on_val_and_refits_on_train_plus_val(caches, tmp_path):
    res = sweep(caches["split"], grid={"knn": {"n_neighbors": [1, 3]}}, results_dir=tmp_path, progress=False)
    assert "val split (12 rows)" in res.scheme
    assert res.best[-1].n_samples_fit_ == 36  # 8 train + 4 val per class
    assert res.test_scores is not None and res.out is None


@pytest.mark.slow
def test_cv_without_splits_falls_back_for_small_classes(caches, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="featcache"):
        res = sweep(caches["flat"], grid=TINY, results_dir=tmp_path, progress=False, ensemble=0)
    assert "class blue has only 3 labelled rows, too few for 5-fold CV; using 3-fold CV" in caplog.text
    assert res.scheme.startswith("3-fold stratified CV on all labelled rows")
    assert "15 rows < 1000: every row validates once" in res.scheme  # 5-fold was chosen for the size, then fell back
    assert "val_accuracy_std" in res.leaderboard and res.test_scores is None
    assert res.n_fits == 3 * 3 + 1  # 3 configs x 3 folds, then the refit of the best
    held = sweep(caches["flat"], grid=TINY, val_fraction=0.3, results_dir=tmp_path, progress=False)
    assert held.scheme.startswith("a 30% stratified hold-out of all labelled rows")


def test_cache_without_val_uses_cv_inside_train(caches, tmp_path):
    res = sweep(caches["train_test"], grid=TINY, cv=3, results_dir=tmp_path, progress=False)
    assert res.scheme == "3-fold stratified CV on train (seed 0)"
    assert res.best[-1].classes_.size == 3 and res.test_scores is not None


@pytest.mark.slow
def test_a_class_with_one_image_falls_back_to_plain_kfold(tmp_path, make_image, caplog):
    cache = _extract(_images(tmp_path / "d", make_image, {None: [5, 5, 1]}), tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="featcache"):
        res = sweep(cache, grid=TINY, results_dir=tmp_path / "r", progress=False)
    assert "class blue has a single labelled row" in caplog.text
    assert res.scheme.startswith("5-fold CV") and (res.leaderboard["status"] == "ok").all()
    held = sweep(cache, grid=TINY, val_fraction=0.3, results_dir=tmp_path / "r", progress=False, ensemble=0)
    assert held.scheme.startswith("a 30% random hold-out")  # (not "stratified": it could not be)


def test_rerun_fits_nothing_and_a_new_point_fits_only_itself(caches, tmp_path, caplog):
    args = dict(results_dir=tmp_path / "r", progress=False, ensemble=0)  # (the ensemble's reuse: test_ensemble_...)
    first = sweep(caches["split"], grid=TINY, **args)
    assert len(first.fitted) == 3 and len(first.refitted) == 1
    with caplog.at_level(logging.INFO, logger="featcache"):
        again = sweep(caches["split"], grid=TINY, out=tmp_path / "out", **args)
    assert again.n_fits == 0 and again.fitted == [] and again.refitted == [] and again.n_cached == 3
    assert "fitted 0 configuration(s) (0 fits)" in caplog.text
    assert again.leaderboard.drop(columns="from_cache").equals(first.leaderboard.drop(columns="from_cache"))
    assert (tmp_path / "out" / "best.skops").is_file()  # outputs are written from stored results
    grown = {**TINY, "logreg": {**TINY["logreg"], "C": [0.01, 0.1, 1.0]}}
    more = sweep(caches["split"], grid=grown, **args)
    assert more.fitted == ["logreg(C=0.1) on standardize"] and more.n_cached == 3
    other_seed = sweep(caches["split"], grid=TINY, seed=1, **args)
    assert len(other_seed.fitted) == 3  # the seed is part of the key
    fresh = sweep(caches["split"], grid=TINY, reuse=False, progress=False, ensemble=0)
    assert len(fresh.fitted) == 3 and not (Path(caches["split"]).parent / "sweep-results").exists()


@pytest.mark.slow
def test_parallel_workers_give_the_same_leaderboard(caches, tmp_path):
    grid = {"logreg": {"preprocess": "standardize", "C": [0.01, 1.0]}, "ridge": {"alpha": [1.0, 10.0]}}
    one = sweep(caches["split"], grid=grid, reuse=False, progress=False).leaderboard
    two = sweep(caches["split"], grid=grid, reuse=False, n_jobs=2, progress=False).leaderboard
    cols = ["classifier", "params", "val_accuracy", "val_log_loss"]
    one, two = (b[cols].sort_values(["classifier", "params"]).reset_index(drop=True) for b in (one, two))
    pd.testing.assert_frame_equal(one, two, atol=1e-4)


def test_layers_are_picked_or_concatenated(caches, tmp_path):
    grid = {"logreg": {"C": 1.0}}
    first = sweep(caches["two_layers"], grid=grid, layer="layer3", results_dir=tmp_path, progress=False)
    assert first.best[-1].n_features_in_ == 256 and set(first.leaderboard["layer"]) == {"layer3"}
    both = sweep(caches["two_layers"], grid=grid, layer="layer3+layer4", results_dir=tmp_path, progress=False)
    assert both.best[-1].n_features_in_ == 256 + 512 and both.fitted  # other features, other results
    with pytest.raises(FeatcacheError, match=r"^layer 'layer5' is not in this cache; it has layer3, layer4"):
        sweep(caches["two_layers"], grid=grid, layer="layer5", results_dir=tmp_path)


def test_sweep_tries_each_layer_and_their_concatenation(caches, tmp_path, caplog):
    """A cache with several layers and no --layer: a layer dimension in the grid, and a reported winner."""
    from featcache.selection.leaderboard import best_per_layer
    from featcache.selection.modelfile import load_model

    grid = {"logreg": {"C": [0.01, 1.0]}, "knn": {"n_neighbors": 3}}
    with caplog.at_level(logging.INFO, logger="featcache"):
        res = sweep(caches["two_layers"], grid=grid, results_dir=tmp_path / "r", out=tmp_path / "out",
                    plots=False, progress=False, screen_layers=0, ensemble=0)
    assert "trying layer3, layer4, layer3+layer4" in caplog.text and not res.layer_screen
    board = res.leaderboard
    assert len(board) == 3 * 3 and list(board.columns[:5]) == ["rank", "classifier", "params", "preprocess", "layer"]
    assert sorted(board.groupby("layer").size().items()) == [("layer3", 3), ("layer3+layer4", 3), ("layer4", 3)]
    assert res.best_config.layer == board["layer"].iloc[0] and f"[{res.best_config.layer}]" in res.best_config.label()
    assert list(best_per_layer(board))[0] == res.best_config.layer
    # The refitted model sees exactly its layers' columns, and its metadata says which layers they are.
    widths = {"layer3": 256, "layer4": 512, "layer3+layer4": 768}
    assert res.best[-1].n_features_in_ == widths[res.best_config.layer]
    meta = load_model(tmp_path / "out" / "best.skops").metadata
    assert "+".join(meta["layers"]) == res.best_config.layer and meta["n_features"] == widths[res.best_config.layer]
    assert featcache.predict(tmp_path / "out" / "best.skops", caches["two_layers"], progress=False).shape[0] == 48
    # The layer choice is part of every result key: a rerun fits nothing, a pinned layer reuses its results.
    again = sweep(caches["two_layers"], grid=grid, results_dir=tmp_path / "r", progress=False, screen_layers=0,
                  ensemble=0)
    assert again.n_fits == 0 and again.leaderboard["val_accuracy"].tolist() == board["val_accuracy"].tolist()
    chosen = sweep(caches["two_layers"], grid=grid, layer="layer4,layer3+layer4", results_dir=tmp_path / "r",
                   progress=False, ensemble=0)
    assert not chosen.fitted and set(chosen.leaderboard["layer"]) == {"layer4", "layer3+layer4"}


def test_the_layer_screen_runs_the_grid_on_the_best_choices_only(caches, tmp_path, caplog):
    """Default layers, no --layer: a cheap screen ranks the 6 layer choices, the grid runs on the best 2."""
    from featcache.selection.fitting import SCREEN_GRID
    from featcache.selection.leaderboard import best_per_layer

    fs = featcache.load(caches["default"])
    assert fs.layers == ["layer2", "layer3", "layer4"] and fs.X.shape[1] == 512  # X: the last layer
    grid = {"knn": {"n_neighbors": 3}, "ridge": {"preprocess": "standardize", "alpha": 1000.0}}
    with caplog.at_level(logging.INFO, logger="featcache"):
        res = sweep(caches["default"], grid=grid, results_dir=tmp_path / "r", progress=False, ensemble=0)
    assert "layer screen" in caplog.text
    screen = res.layer_screen
    choices = ["layer2", "layer3", "layer4", "layer2+layer3", "layer3+layer4", "layer2+layer3+layer4"]
    assert sorted(screen) == sorted(choices) and list(screen.values()) == sorted(screen.values(), reverse=True)
    kept = list(screen)[:2]
    board = res.leaderboard
    assert set(board[board["classifier"] == "knn"]["layer"]) == set(kept)  # the grid: only on the kept choices
    # The screen's ridge(alpha=1000) is also a grid point: its fits on every choice are kept, the logistic and
    # SVM ones (not in the grid) are not shown.
    assert set(board[board["classifier"] == "ridge"]["layer"]) == set(choices)
    assert not {"logreg", "svm"} & set(board["classifier"])
    # The screen's scores are the screen configurations' own validation scores, found again by a full sweep.
    full = sweep(caches["default"], grid=SCREEN_GRID, results_dir=tmp_path / "r", progress=False, screen_layers=0,
                 ensemble=0)
    assert not full.fitted  # every screen fit came from the result store
    assert best_per_layer(full.leaderboard) == pytest.approx(screen)
    # --screen-layers 0 fits the grid on every choice; a pinned --layer never screens.
    every = sweep(caches["default"], grid=grid, results_dir=tmp_path / "r", progress=False, screen_layers=0,
                  ensemble=0)
    assert set(every.leaderboard["layer"]) == set(choices) and not every.layer_screen
    pinned = sweep(caches["default"], grid=grid, layer="layer2,layer4", results_dir=tmp_path / "r", progress=False,
                   ensemble=0)
    assert set(pinned.leaderboard["layer"]) == {"layer2", "layer4"} and not pinned.layer_screen
    with pytest.raises(FeatcacheError, match="'screen_layers' parameter of SweepConfig must be an int >= 0. Got -1"):
        sweep(caches["default"], grid=grid, screen_layers=-1, progress=False)
    # Out of core one layer choice streams: without --layer, the last layer (what FeatureSet.X is).
    streamed = sweep(caches["default"], grid={"sgd": {"max_iter": 2}}, out_of_core=True, reuse=False, progress=False)
    assert set(streamed.leaderboard["layer"]) == {"layer4"} and not streamed.layer_screen


def test_a_failing_configuration_is_reported_not_fatal(caches, tmp_path):
    res = sweep(caches["split"], grid={"knn": {"n_neighbors": [3, 500]}}, results_dir=tmp_path, progress=False)
    board = res.leaderboard
    assert board["status"].iloc[0] == "ok"
    assert board["status"].iloc[1].startswith("failed: ValueError: Expected n_neighbors <= n_samples_fit")


# --- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid, match", [
    ({"logreggg": {"C": 1.0}}, r"unknown classifier \(grid table\) 'logreggg' \(did you mean logreg\?\); "
                               r"valid: dense, ensemble, knn, linsvm, logreg, ridge, sgd, svm, preprocess"),
    ({"logreg": {"Cc": [1.0]}}, r"unknown hyperparameter of \[logreg\] \(LogisticRegression\) 'Cc' "
                                r"\(did you mean C\?\); valid: C, class_weight, "),
    ({"logreg": {"C": [-1.0]}}, r"grid \[logreg\] C=-1.0: The 'C' parameter of LogisticRegression must be"),
    ({"dense": {"dropout": [2.0]}}, r"grid \[dense\] dropout=2.0: The 'dropout' parameter of DenseHead"),
    ({"knn": {"preprocess": "whiten"}}, r"unknown preprocess step 'whiten' in 'whiten'; valid: none, standardize"),
    ({"knn": {"n_neighbors": []}}, r"grid \[knn\] n_neighbors = \[\]: give at least one value"),
    ({"preprocess": "l2"}, r"the grid has no classifier to fit"),
    ({"ensemble": {"members": []}}, r"grid \[ensemble\]: the sweep builds ensembles from its best configurations"),
    ({"svm": {"C": 1.0, "max_rows": "many"}}, r"grid max_rows = 'many': give a number of rows"),
    ({"knn": {"preprocess": "rbf:x"}}, r"preprocess 'rbf:x': rbf takes a positive number of components"),
])
def test_bad_grids_are_clear_errors(caches, grid, match):
    with pytest.raises(FeatcacheError, match=match):
        sweep(caches["split"], grid=grid)


def test_bad_grid_files(caches, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[logreg]\nC = [0.1, \n", encoding="utf-8")
    with pytest.raises(FeatcacheError, match=r"^grid .*bad.toml is not valid TOML"):
        sweep(caches["split"], grid=bad)
    with pytest.raises(FeatcacheError, match=r"^grid .*missing.toml: no such file"):
        sweep(caches["split"], grid=tmp_path / "missing.toml")
    good = tmp_path / "grid.yaml"
    good.write_text("knn:\n  n_neighbors: [1, 3]\n", encoding="utf-8")
    assert len(sweep(caches["split"], grid=good, reuse=False, progress=False).leaderboard) == 2


@pytest.mark.slow
def test_caches_without_labels_or_with_one_class(tmp_path, make_image):
    unlabelled = tmp_path / "u"
    for i in range(4):
        make_image(unlabelled / f"{i}.png", i % 2, i)
    with pytest.raises(FeatcacheError, match=r"has no labels \(every row is unlabelled\)"):
        sweep(_extract(unlabelled, tmp_path / "c"), grid=TINY)
    one = _images(tmp_path / "one", make_image, {None: 3}, classes=("red",))
    with pytest.raises(FeatcacheError, match=r"the training rows hold only one class \(red\); a classifier needs"):
        sweep(_extract(one, tmp_path / "c"), grid=TINY)


@pytest.mark.parametrize("settings, match", [
    ({"cv": 1}, "'cv' parameter of SweepConfig must be None or an int >= 2. Got 1"),
    ({"cv": 3, "val_fraction": 0.2}, "use either cv or val_fraction"),
    ({"metric": "auc"}, "'metric' parameter of SweepConfig must be one of 'accuracy', 'balanced_accuracy', 'f1_macro', "
                        "'log_loss'. Got 'auc'"),
    ({"n_jobs": 0}, "'n_jobs' parameter of SweepConfig must be None, an int >= 1 or -1. Got 0"),
])
def test_bad_settings(caches, settings, match):
    with pytest.raises(FeatcacheError, match=match):
        sweep(caches["split"], grid=TINY, **settings)


# --- command line -------------------------------------------------------------------------------------

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "featcache.sweep", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cli_success_and_errors(caches, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[knn]\nn_neighbors = [1, 3]\npreprocess = ["none", "l2"]\n', encoding="utf-8")
    out = tmp_path / "out"
    ok = _cli(caches["split"], "--grid", grid, "--out", out, "--results-dir", tmp_path / "r", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert lines[-1] == str(out) and lines[0].split()[:3] == ["rank", "classifier", "params"]
    assert (out / "plots" / "knn.png").is_file()

    bad = _cli(caches["split"], "--classifiers", "logreg,svmm")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [("featcache: error: unknown classifier 'svmm' (did you mean svm, "
                                                 "linsvm?); valid: dense, ensemble, knn, linsvm, logreg, ridge, sgd, "
                                                 "svm")]


def test_cli_in_process(tmp_path, capsys):
    assert main([str(tmp_path / "nope.h5"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"featcache: error: no cache at {tmp_path / 'nope.h5'}\n"
    assert main(["--print-grid"]) == 0 and capsys.readouterr().out == DEFAULT_GRID
    assert main(["--list-classifiers"]) == 0
    assert "knn      sklearn.neighbors.KNeighborsClassifier" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--val-fraction VAL_FRACTION" in capsys.readouterr().out


def test_outputs_are_checked_before_any_fit(caches, tmp_path):
    (tmp_path / "file").write_text("x")
    for out, match in [(tmp_path / "file", "is a file; pass a folder"),
                       (tmp_path / "file" / "sub", "cannot write to out ")]:
        with pytest.raises(FeatcacheError, match=match):
            sweep(caches["split"], grid=TINY, out=out, results_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # nothing was fitted
    grid = tmp_path / "grid.toml"
    grid.write_text("[knn]\nn_neighbors = 3\n", encoding="utf-8")
    cli = _cli(caches["split"], "--grid", grid, "--out", tmp_path / "file", "--no-progress")
    assert cli.returncode == 2 and cli.stderr.strip().count("\n") == 0 and "is a file" in cli.stderr


def test_an_earlier_run_is_refused_unless_overwrite(caches, tmp_path):
    out = tmp_path / "run"
    sweep(caches["split"], grid=TINY, out=out, results_dir=tmp_path / "r", progress=False)
    (out / "plots" / "stale.png").write_bytes(b"")  # a plot the earlier run left
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FeatcacheError, match=r"holds an earlier run \(leaderboard.csv, best.skops.*pass overwrite"):
        sweep(caches["split"], grid=TINY, out=out, results_dir=tmp_path / "r", progress=False)
    sweep(caches["split"], grid=TINY, out=out, results_dir=tmp_path / "r", progress=False, overwrite=True)
    assert (out / "best.skops").is_file() and not (out / "plots" / "stale.png").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not the run's: kept


def test_summaries_are_strict_json_and_a_readonly_store_still_sweeps(caches, tmp_path, caplog):
    """Ridge has no probabilities: its log-loss comes from its calibrated validation scores, and the summaries are
    strict JSON (no NaN literal), which any JSON reader takes. A result store that cannot be written (here a path
    under a file) warns, names --results-dir, and the sweep runs."""
    (tmp_path / "file").write_text("x")
    res = sweep(caches["split"], grid={"ridge": {"alpha": [1.0]}}, out=tmp_path / "o", results_dir=tmp_path / "file",
                progress=False)
    assert res.leaderboard["status"].tolist() == ["ok"] and "pass --results-dir DIR" in caplog.text

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    for name in ("sweep.json", "best.skops.json"):
        data = json.loads((tmp_path / "o" / name).read_text(), parse_constant=refuse)
        assert data
    meta = json.loads((tmp_path / "o" / "best.skops.json").read_text())["metadata"]
    assert meta["selection"]["val"]["log_loss"] > 0


def test_the_log_names_the_layer_choices_the_grid_runs_on(caches, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="featcache"):
        sweep(caches["two_layers"], grid=TINY, layer="layer3,layer4", results_dir=tmp_path / "r", progress=False)
    line = next(r.getMessage() for r in caplog.records if "configurations on" in r.getMessage())
    assert "layer choice(s) layer3 (256 features), layer4 (512 features)" in line


# --- the default path: validation sized to the data, successive halving, the ensemble, the budget ----------------

HALVING_GRID = {"logreg": {"preprocess": "standardize", "C": [1e-7, 1e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1e-2, 1.0]},
                "knn": {"n_neighbors": [1, 15, 50]}}


@pytest.fixture(scope="module")
def big_cache(tmp_path_factory, feature_cache):
    """10,000 rows of 32 overlapping Gaussian features, train and test only (8,500 / 1,500)."""
    return feature_cache(tmp_path_factory.mktemp("big") / "big.h5", n=10000, splits=(0.85, 0.0))


@pytest.mark.slow
def test_halving_finds_the_full_grids_best_with_fewer_fits(big_cache, tmp_path):
    kw = dict(grid=HALVING_GRID, reuse=False, progress=False, ensemble=0)
    full = sweep(big_cache, halving=False, **kw)
    halved = sweep(big_cache, **kw)
    assert halved.best_config == full.best_config  # the answer the whole grid gives
    assert halved.test_scores == full.test_scores
    rows = halved.leaderboard["train_rows"]
    assert rows.max() == 6800 and set(rows) == {2267, 6800}  # 20% hold-out of 8,500, then a third of the rest
    assert (rows == 6800).sum() == 4 and list(rows) == sorted(rows, reverse=True)  # survivors rank first
    assert len(halved.leaderboard) == len(full.leaderboard) == 12
    # Rows trained on, in all: 12 configurations on 2,267 rows and the best 4 on 6,800, vs 12 on 6,800.
    assert 12 * 2267 + 4 * 6800 < 0.7 * 12 * 6800 and halved.n_fits == 12 + 4 + 1
    assert len(halved.fitted) == 12  # each configuration once, whatever the rungs it was fitted at


def test_validation_is_sized_to_the_rows_and_never_sees_test_rows(big_cache):
    from featcache.selection.features import load_features
    from featcache.selection.halving import rung_scheme
    from featcache.selection.schemes import auto_validation, make_scheme

    assert [auto_validation(n)[:2] for n in (999, 1000, 4999, 5000, 100000)] == [
        (5, None), (3, None), (3, None), (None, 0.2), (None, 0.1)]
    feats = load_features(big_cache)
    assert len(feats.y) == 8500 and set(feats.pool_split) == {"train"} and len(feats.y_test) == 1500
    scheme = make_scheme(feats.y, feats.pool_split, feats.classes, None, None, 0)
    (train, val), = scheme.folds
    assert scheme.kind == "holdout" and len(val) == 1700 and not set(train) & set(val)
    assert max(train.max(), val.max()) < 8500  # pool rows only: the test rows are never indexed
    assert "chosen as 8500 rows >= 5000" in scheme.description
    assert abs(scheme.standard_error(0.9) - (0.9 * 0.1 / 1700) ** 0.5) < 1e-12
    (sub, same_val), = rung_scheme(scheme, feats.y, 2267, 0).folds
    assert set(sub) <= set(train) and len(sub) == pytest.approx(2267, abs=4) and same_val is val


def test_the_ensemble_is_chosen_on_out_of_fold_scores_refitted_on_the_pool_and_used_by_predict(feature_cache,
                                                                                                    tmp_path):
    """Members calibrated and weighted greedily on their out-of-fold log-loss (no fit of its own); refitted on the
    pool when it wins; predict gives the saved model's predictions."""
    from featcache.selection.modelfile import load_model

    cache = feature_cache(tmp_path / "noisy.h5", n=1500)  # overlapping classes: val accuracy about 0.93
    grid = {"logreg": {"preprocess": "standardize", "C": 0.01}, "knn": {"n_neighbors": 25},
            "svm": {"preprocess": "standardize"}}
    res = sweep(cache, grid=grid, out=tmp_path / "out", results_dir=tmp_path / "r", progress=False)
    board = res.leaderboard
    assert board["classifier"].iloc[0] == "ensemble" and board["status"].eq("ok").all()  # (measured: it wins here)
    params = res.best_config.params
    assert abs(sum(params["weights"]) - 1) < 1e-3 and len(params["weights"]) >= 2 and all(params["temperatures"])
    assert board["val_log_loss"].iloc[0] <= board["val_log_loss"].iloc[1:].min()  # the lowest log-loss of all
    assert board["params"].iloc[0].startswith(f"{params['weights'][0]:g} ")  # "0.625 logreg(C=0.01) on ..."
    vote = res.best[-1]
    names = {"svm": "SVC", "logreg": "LogisticRegression", "knn": "KNeighborsClassifier"}
    assert [type(m[-1]).__name__ for m in vote.estimators_] == [names[m["classifier"]] for m in params["members"]]
    assert all(len(m[-1].classes_) == 4 for m in vote.estimators_)
    proba = vote.predict_proba(featcache.load(cache).X[:5])  # each member's own preprocessing inside it
    assert np.allclose(proba.sum(axis=1), 1) and proba.shape == (5, 4)
    saved = load_model(tmp_path / "out" / "best.skops")  # loads with the trusted types only, no pickle
    fs = featcache.load(cache)
    predicted = featcache.predict(tmp_path / "out", cache, progress=False)
    assert list(predicted["prediction"]) == list(saved.pipeline.predict(fs.X))
    assert res.test_scores["accuracy"] == pytest.approx(
        (predicted["prediction"][fs.split == "test"] == np.array(fs.classes)[fs.y[fs.split == "test"]]).mean())
    again = sweep(cache, grid=grid, results_dir=tmp_path / "r", progress=False)
    assert again.n_fits == 0 and again.best_config == res.best_config  # made again from the stored scores


def test_a_rerun_from_stored_results_scores_and_ensembles_exactly_as_the_run_that_stored_them(feature_cache,
                                                                                                 tmp_path):
    """The store keeps out-of-fold scores in float16; a fresh fit uses them at that precision too, so every
    calibrated log-loss and the ensemble (members, weights, temperatures) are the same when read back (they differed
    in the 6th decimal, enough to tip a greedy ensemble on a close call)."""
    from featcache.selection.store import as_stored

    cache = feature_cache(tmp_path / "noisy.h5", n=1500)
    grid = {"logreg": {"preprocess": "standardize", "C": [0.01, 1.0]}, "knn": {"n_neighbors": 25},
            "svm": {"preprocess": "standardize"}, "ridge": {"alpha": 10.0}}
    first = sweep(cache, grid=grid, results_dir=tmp_path / "r", progress=False)
    again = sweep(cache, grid=grid, results_dir=tmp_path / "r", progress=False)
    assert first.n_fits > 0 and again.n_fits == 0 and again.n_cached >= 5
    assert again.best_config == first.best_config
    key = ["classifier", "params"]
    one, two = (b.set_index(key).sort_index()["val_log_loss"] for b in (first.leaderboard, again.leaderboard))
    assert list(one.index) == list(two.index)
    np.testing.assert_array_equal(one.to_numpy(), two.to_numpy())
    x = np.array([0.1234567, 12.345678, -3.3333333], dtype=np.float32)
    assert np.array_equal(as_stored(as_stored(x)), as_stored(x)) and not np.array_equal(as_stored(x), x)


def test_a_budget_stops_new_fits_and_keeps_the_best_so_far(big_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="featcache"):
        res = sweep(big_cache, grid=HALVING_GRID, budget=0.01, reuse=False, progress=False)
    assert len(res.leaderboard) >= 1 and res.best is not None and res.test_scores is not None
    assert res.skipped and len(res.skipped) + len(res.leaderboard) >= 12
    assert "the budget ran out" in caplog.text


@pytest.mark.slow
def test_a_configuration_out_of_time_at_a_later_rung_keeps_its_earlier_record(big_cache, tmp_path):
    kw = dict(grid=HALVING_GRID, results_dir=tmp_path / "r", progress=False, ensemble=0)
    sweep(big_cache, **kw)  # every first-rung record is stored; the final rung only for accuracy's best 4
    res = sweep(big_cache, metric="log_loss", budget=0.01, **kw)  # log-loss's best 4 differ: refits, out of time
    board = res.leaderboard
    late = board[board["train_rows"] == 2267]
    assert res.skipped and set(res.skipped) <= set(late["classifier"] + "(" + late["params"] + ") on "
                                                   + late["preprocess"])
    assert len(board) == 12  # nobody vanished: the skipped ones rank below, with their first-rung scores


def test_the_best_is_compared_cross_fitted_and_says_how_many_it_was_picked_from(feature_cache, tmp_path):
    """The rows the sweep validated, each predicted by the configuration most accurate on the other half of them: the
    best's own predictions would flatter it where it was picked among ``candidates`` (fit compares stages on them)."""
    import numpy as np

    from featcache.selection.leaderboard import crossfit_pred

    cache = feature_cache(tmp_path / "c.h5", n=600)
    res = sweep(cache, classifiers=["logreg"], cv=3, halving=False, ensemble=0, reuse=False, progress=False)
    board = res.leaderboard
    assert res.candidates == int(((board["status"] == "ok") & (board["train_rows"] == board["train_rows"].max())).sum())
    assert res.candidates > 1
    np.testing.assert_array_equal(res.crossfit_pred >= 0, res.val_pred >= 0)
    with featcache.load(cache, lazy=True) as fs:
        from featcache.selection.features import pool_and_test

        y = fs.y[pool_and_test(fs)[0]]
    rows = res.val_pred >= 0
    crossed, own = (res.crossfit_pred[rows] == y[rows]).mean(), (res.val_pred[rows] == y[rows]).mean()
    # cross-fitted <= the most accurate candidate's own (up to a row: the best is ranked on fold means)
    assert crossed <= own + 1 / rows.sum()
    assert crossfit_pred([res.val_pred[rows]], y[rows], seed=0).tolist() == res.val_pred[rows].tolist()


def test_log_loss_can_pick_a_kernel_svm_from_its_calibrated_scores(caches, tmp_path):
    """An SVM's decision scores, calibrated by a temperature out of fold, have a log-loss: ranked by it like the
    probabilistic classifiers, it can win (with a NaN it could never be best)."""
    grid = {"svm": {"preprocess": "l2", "C": [10.0]}, "logreg": {"preprocess": "standardize", "C": [1e-4]}}
    res = sweep(caches["split"], grid=grid, metric="log_loss", results_dir=tmp_path / "r", ensemble=0,
                progress=False)
    board = res.leaderboard.set_index("classifier")
    assert np.isfinite(board.loc["svm", "val_log_loss"]) and 0 < board.loc["svm", "val_log_loss"]
    assert res.best_config.classifier == "svm"  # logistic regression this regularised is close to uniform
    assert board.loc["svm", "val_log_loss"] < board.loc["logreg", "val_log_loss"]
