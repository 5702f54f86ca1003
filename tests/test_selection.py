"""The selection stage's parts on their own (featcache/selection/): grids, layer choices, the leaderboard, plots, the
order of fits under a budget, the refit reserve, cross-fitted comparisons, result keys."""
from __future__ import annotations

import numpy as np
import pytest

from featcache.config import FeatcacheError
from featcache.selection.grids import expand_grid, read_grid


def test_the_rows_that_compare_stages_are_predicted_by_a_configuration_ranked_on_other_rows():
    """Each half of the ranking rows is predicted by the configuration more accurate on the other half: the best
    configuration's own predictions would flatter fine-tuning on the rows where it was picked (the winner's curse)."""
    from sklearn.model_selection import StratifiedKFold

    from featcache.selection.leaderboard import crossfit_pred

    y = np.repeat([0, 1], 20)
    (h1, h2), _ = StratifiedKFold(2, shuffle=True, random_state=0).split(y, y)  # the halves it uses
    a, b = 1 - y, 1 - y  # both wrong everywhere, then right on:
    a[h1] = y[h1]  # A: all of the first half and 4 of the 20 rows of the second
    a[h2[:4]] = y[h2[:4]]
    b[h1[:10]] = y[h1[:10]]  # B: half of the first half and all of the second
    b[h2] = y[h2]
    assert (b == y).mean() == 0.75 > (a == y).mean() == 0.6  # B ranks first on all the rows
    crossed = crossfit_pred([a, b], y, seed=0)
    np.testing.assert_array_equal(crossed[h2], a[h2])  # A won the first half, so it predicts the second
    np.testing.assert_array_equal(crossed[h1], b[h1])  # and B, which won the second, the first
    assert (crossed == y).mean() == 14 / 40  # not B's 0.75
    np.testing.assert_array_equal(crossfit_pred([a], y, seed=0), a)  # one configuration: its own


def test_a_budgeted_sweep_keeps_time_to_refit_its_best():
    """The best so far (by the metric, not the slowest) decides the reserve: one fold's fit, scaled to the refit."""
    from featcache.selection.fitting import refit_reserve

    records = {"fast, best": {"scores": {"accuracy": 0.9}, "fit_s": 10.0},
               "slow, worse": {"scores": {"accuracy": 0.8}, "fit_s": 100.0},
               "failed": {"error": "ValueError: x", "fit_s": 0.0}}
    assert refit_reserve(records, "accuracy", 5, 1.5625) == 2.0 * 1.5625  # 10 s over 5 folds; (5/4 rows)^2
    assert refit_reserve({}, "accuracy", 5, 1.0) == 0.0


def test_layer_choices():
    from featcache.selection.features import layer_choices

    assert layer_choices(["a"]) == [["a"]]
    assert layer_choices(["a", "b", "c"]) == [["a"], ["b"], ["c"], ["a", "b"], ["b", "c"], ["a", "b", "c"]]
    assert layer_choices(list("abcd")) == [["a"], ["b"], ["c"], ["d"], ["a", "b", "c", "d"]]


def test_default_grid_is_valid_and_sized_to_the_rows():
    configs = expand_grid(read_grid(None))
    assert {c.classifier for c in configs} == {"svm", "logreg", "ridge", "knn", "dense"} and 10 <= len(configs) <= 20
    small, large = expand_grid(read_grid(None), n_rows=20000), expand_grid(read_grid(None), n_rows=20001)
    assert any(c.classifier == "svm" for c in small) and not any("rbf" in c.preprocess for c in small)
    assert not any(c.classifier == "svm" for c in large) and any(c.preprocess == "l2+rbf:2000" for c in large)
    with pytest.raises(FeatcacheError, match=r"unknown classifier 'svmm' \(did you mean svm, linsvm\?\); valid: "):
        expand_grid(read_grid(None), only=["svmm"])


def test_terminal_leaderboard_shows_swept_values_in_full():
    import pandas as pd

    from featcache.selection.leaderboard import format_leaderboard, swept_params

    board = pd.DataFrame({"rank": [1, 2, 3], "classifier": ["finetune"] * 3,
                          "params": ["train_blocks=all, lr=0.0001, head_lr=0.001",
                                     "train_blocks=1, lr=0.0001, head_lr=0.003",
                                     "train_blocks=0, lr=0.0001, head_lr=0.001"],
                          "preprocess": ["none"] * 3, "layer": ["l"] * 3, "val_accuracy": [0.9, 0.8, 0.7],
                          "val_log_loss": [0.3, 0.4, 0.5], "fit_s": [1.0, 1.0, 1.0], "note": [""] * 3})
    assert swept_params(board) == ["train_blocks=all, head_lr=0.001", "train_blocks=1, head_lr=0.003",
                                   "train_blocks=0, head_lr=0.001"]
    text = format_leaderboard(board, limit=2)
    assert "head_lr=0.003" in text and "lr=0.0001" not in text and "1 more rows in leaderboard.csv" in text


def test_plots_call_the_smallest_loss_best():
    from featcache.selection.plots import best_per_value

    x, scores = [1.0, 1.0, 2.0], [0.5, 0.3, 0.9]
    assert best_per_value(x, scores, "log_loss") == {1.0: 0.3, 2.0: 0.9}
    assert best_per_value(x, scores, "accuracy") == {1.0: 0.5, 2.0: 0.9}


def test_under_a_budget_the_unit_that_always_runs_is_the_callers_first():
    from featcache.selection.fitting import _tasks
    from featcache.selection.grids import expand_grid

    configs = expand_grid({"dense": {"hidden_layer_sizes": [64]}, "knn": {"n_neighbors": [5, 15]},
                           "logreg": {"preprocess": "l2", "C": [1.0, 10.0]}})
    knn15 = next(c for c in configs if c.classifier == "knn" and c.params["n_neighbors"] == 15)
    assert _tasks(configs, 2)[0][0][0].classifier == "dense"  # no budget: slow units first
    assert [t[0] for t in _tasks(configs, 2, lead=knn15)[:2]] == [[knn15], [knn15]]  # both folds of the lead


def test_a_result_key_changes_with_scipy_whose_solvers_fit_the_models():
    """lbfgs (logistic regression, the dense head's calibration) is scipy's: a stored result fitted under another
    scipy release is not reused."""
    from importlib import metadata

    from featcache.selection.store import result_versions

    assert result_versions()["scipy"] == metadata.version("scipy")
