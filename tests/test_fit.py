"""``featcache.fit``: images to the best model within a budget, on real images and real caches."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import featcache
from featcache.autofit import FINETUNE_FOLDS
from featcache.config import FeatcacheError

SMALL = dict(model="resnet18", weights="none", image_size=32)  # a real network, seeded weights, tiny inputs


pytestmark = pytest.mark.usefixtures("logs_reach_caplog")  # the fixture is in conftest.py


@pytest.mark.slow
def test_a_tiny_budget_still_returns_a_model_and_says_what_it_skipped(split_folder, tmp_path):
    out = tmp_path / "run"
    res = featcache.fit(split_folder, out, budget=0.01, cache_dir=tmp_path / "c", progress=False, **SMALL)
    assert res.model_path == out / "best.skops" and res.best_stage == "sweep"
    assert any(s.startswith("finetune: estimated") for s in res.skipped)  # no time left for fine-tuning
    assert any(s.startswith("views: estimated") for s in res.skipped)  # nor for augmented views
    assert any(s.startswith("scales: estimated") for s in res.skipped)  # nor for other scales
    # the sweep gets at least a second: on a warm machine every fit on these 20 rows may finish within it
    assert all(s.endswith("(out of time)") for s in res.skipped if s.startswith("sweep: "))
    assert res.test_scores is not None and set(res.leaderboard["stage"]) == {"sweep"}
    state = json.loads((out / "fit.json").read_text())
    assert state["skipped"] == res.skipped and set(state["stages"]) == {"image_size", "forecast", "extract", "sweep"}
    predictions = featcache.predict(out, split_folder, progress=False)
    assert len(predictions) == 20 and set(predictions["prediction"]) <= {"a", "b"}


@pytest.mark.slow
def test_a_second_run_reuses_the_cache_the_sweep_and_the_fine_tuned_model(split_folder, tmp_path, caplog):
    kw = dict(cache_dir=tmp_path / "c", progress=False, finetune="always", train_blocks=[1], views=1, **SMALL)
    first = featcache.fit(split_folder, tmp_path / "run", **kw)
    stages = first.stages
    assert stages["finetune"]["node"] == "layer3" and stages["sweep"]["n_fits"] > 0
    assert set(first.leaderboard["stage"]) == {"sweep", "scales", "views", "finetune"}
    scales = stages["scales"]["vs_best"]  # the same val rows, with and without the network at 2/3 of the size
    assert scales["rows"] == 4 and scales["against"].startswith("sweep: ") and stages["scales"]["scales"] == [1, 0.667]
    assert scales["winner"] == ("scales" if scales["new_only"] > scales["best_only"] else "sweep")
    views = stages["views"]["vs_best"]  # and again with views, against the better of those two
    assert views["rows"] == 4 and views["against"].startswith(scales["winner"] + ": ")
    assert views["winner"] == ("views" if views["new_only"] > views["best_only"] else scales["winner"])
    assert first.leaderboard["test_accuracy"].notna().sum() == 1  # the winner's test score, once
    state = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert state["best"]["test"] == first.test_scores  # ... and in fit.json only there
    assert not [name for name, stage in state["stages"].items() if "test" in stage]
    assert stages["sweep"]["best_of"] > 1 and 0 <= stages["sweep"]["crossfit_accuracy"] <= 1
    sweep_rows = first.leaderboard[first.leaderboard["stage"] == "sweep"]
    assert sweep_rows["val_note"].iloc[0].startswith(f"best of {stages['sweep']['best_of']} on these rows")
    duel = stages["finetune"]["vs_best"]  # both trained on the same rows, scored on the same other images
    folds = stages["finetune"]["validation"]["folds"]  # the rows that ranked it, then folds of its training rows
    assert duel["folds"] == len(folds) == 1 + FINETUNE_FOLDS and duel["train_rows"] == len(folds[0]["train_rows"])
    assert duel["rows"] == sum(len(f["rows"]) for f in folds)
    for fold in folds:  # never scored on a row it trained on
        assert fold["rows"] and not set(fold["rows"]) & set(fold["train_rows"])
    held = [r for f in folds[1:] for r in f["rows"]]
    assert sorted(held) == sorted(folds[0]["train_rows"])  # each of its training rows held out once
    tuned_row = first.leaderboard[first.leaderboard["stage"] == "finetune"].iloc[0]
    assert tuned_row["train_rows"] == len(folds[0]["train_rows"])
    lead = views["winner"]  # the best before fine-tuning, which it had to beat
    assert duel["winner"] == ("finetune" if duel["new_only"] > duel["best_only"] else lead)
    assert set(duel) - {"train_rows"} == set(views) == set(scales)  # one comparison, recorded alike at every stage
    assert duel["against"].startswith(lead + ": ")
    board = first.leaderboard
    assert board["stage"].iloc[0] == ("finetune" if duel["winner"] == "finetune" else lead)
    assert board["val_accuracy"].iloc[1:].is_monotonic_decreasing  # the others by their validation score
    caplog.clear()  # (the first run's records too, when another test left the logger at INFO)
    with caplog.at_level(logging.INFO, logger="featcache"):
        again = featcache.fit(split_folder, tmp_path / "run", **kw)
    assert again.stages["sweep"]["n_fits"] == 0 and again.stages["sweep"]["n_cached"] > 0
    assert again.stages["views"]["vs_best"] == views and again.stages["scales"]["vs_best"] == scales
    assert "refitting" not in caplog.text
    assert "fine-tuning reused" in caplog.text and again.stages["finetune"] == stages["finetune"]
    assert again.best_label == first.best_label and again.test_scores == first.test_scores
    assert (tmp_path / "run" / f"best{again.model_path.suffix}").is_file()
    assert len(list((tmp_path / "run").glob("best.*"))) == 2  # one model file and its sidecar, of one kind


def test_bad_input_is_a_clear_error(split_folder, tmp_path):
    with pytest.raises(FeatcacheError, match=r"The 'budget' parameter of FitConfig must be a float > 0 or a duration "
                                             r"such as '90s', '15m', '1h' or '1h30m'. Got -1"):
        featcache.fit(split_folder, tmp_path / "o", budget=-1)
    with pytest.raises(FeatcacheError, match=r"'budget' parameter of FitConfig must be .* Got '15x' instead"):
        featcache.fit(split_folder, tmp_path / "o", budget="15x")
    with pytest.raises(FeatcacheError, match=r"'scales' parameter of FitConfig must be each scale once"):
        featcache.fit(split_folder, tmp_path / "o", scales=[1, 1])
    with pytest.raises(FeatcacheError, match=r"'finetune' parameter of FitConfig must be one of"):
        featcache.fit(split_folder, tmp_path / "o", finetune="sometimes")
    cli = subprocess.run([sys.executable, "-m", "featcache.fit", "--data", str(split_folder), "--out",
                          str(tmp_path / "o"), "--budget", "soon"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "argument --budget: 'soon' is not a duration" in cli.stderr
