"""The leaderboard: one row per configuration, best first, and its text forms for the terminal.

Stage: selection. Imports pandas (on use) and ``learn.metrics``.
"""
from __future__ import annotations

import re
from typing import Dict

import numpy as np

from ..learn import metrics

__all__ = ["leaderboard", "format_leaderboard", "swept_params", "best_per_layer", "by_layer_text", "crossfit_pred"]


def leaderboard(configs, records, cached, keys, metric: str, layers: str = "", train_rows=None):
    """One row per configuration, best first; ``fit_s`` sums all folds, failures sort last.

    ``train_rows``: per configuration, the training rows its score comes from (successive halving stops some
    early); fewer rows rank below more, whatever the score.
    """
    import pandas as pd

    rows = []
    for c in configs:
        r = records[c]
        row = {"classifier": c.classifier, "params": c.params_text(), "preprocess": c.preprocess,
               "layer": c.layer or layers, "train_rows": (train_rows or {}).get(c, 0)}
        for name, value in (r.get("scores") or {}).items():
            row[f"val_{name}"] = value
        row.update({"fit_s": round(r["fit_s"], 3), "note": r.get("note", ""), "from_cache": c in cached,
                    "status": "ok" if "error" not in r else f"failed: {r['error']}", "config_id": keys[c][:12]})
        rows.append(row)
    board = pd.DataFrame(rows)
    for name in metrics.METRICS:
        if f"val_{name}" not in board:
            board[f"val_{name}"] = np.nan
    # Best first; ties go to the lower validation log-loss, then to the faster fit.
    order = board.assign(_failed=board["status"] != "ok",
                         _key=board[f"val_{metric}"].map(lambda v: metrics.sort_key(metric, v)),
                         _tie=board["val_log_loss"].map(lambda v: metrics.sort_key("log_loss", v)))
    board = order.sort_values(["_failed", "train_rows", "_key", "_tie", "fit_s"],
                              ascending=[True, False, False, False, True],
                              kind="stable").drop(columns=["_failed", "_key", "_tie"])
    board.insert(0, "rank", range(1, len(board) + 1))
    first = ["rank", "classifier", "params", "preprocess", "layer"] + [f"val_{m}" for m in metrics.METRICS]
    return board[first + [c for c in board.columns if c not in first]].reset_index(drop=True)


def best_per_layer(board, metric: str = "accuracy") -> Dict[str, float]:
    """The best validation score of each layer choice, best first (the leaderboard is sorted)."""
    ok = board[board["status"] == "ok"]
    return {layer: float(score) for layer, score in ok.groupby("layer", sort=False)[f"val_{metric}"].first().items()}


def by_layer_text(board, metric: str = "accuracy") -> str:
    return ", ".join(f"{layer} {score:.4f}" for layer, score in best_per_layer(board, metric).items())


def swept_params(board) -> list:
    """Each row's ``params`` with only the hyperparameters its classifier's rows vary (the grid's fixed values
    are the same on every row: they live in leaderboard.csv and the grid, not in a terminal table)."""
    parsed = [dict(re.split(r"=", kv, maxsplit=1) for kv in re.split(r", (?=\w+=)", text) if "=" in kv)
              for text in board["params"].fillna("")]
    varying = {}
    for clf in set(board["classifier"]):
        rows = [p for p, c in zip(parsed, board["classifier"]) if c == clf]
        keys = {k for p in rows for k in p}
        varying[clf] = [k for k in dict.fromkeys(k for p in rows for k in p) if k in keys
                        and len({p.get(k) for p in rows}) > 1]
    return [text if c == "ensemble" else ", ".join(f"{k}={p[k]}" for k in varying[c] if k in p) or "-"
            for p, c, text in zip(parsed, board["classifier"], board["params"].fillna(""))]


def format_leaderboard(board, limit: int = 20, metric: str = "accuracy") -> str:
    """The leaderboard as a table that fits a terminal: the first ``limit`` rows, the swept values only, the
    selection metric (and log-loss, the tie-break) on validation and test; every value of every configuration,
    and every metric, is in leaderboard.csv."""
    several = "layer" in board and board["layer"].nunique() > 1  # the layer column only when it varies
    wanted = ["rank", "classifier", "params", "preprocess", "layer" if several else "", f"val_{metric}",
              "val_log_loss", f"test_{metric}", "fit_s", "note"]
    cols = [c for c in dict.fromkeys(wanted) if c in board]
    shown = board[cols].copy()
    shown["params"] = swept_params(board)
    shown = shown.head(limit)
    if shown["preprocess"].nunique() == 1 and shown["preprocess"].iloc[0] == "none":
        shown = shown.drop(columns="preprocess")
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")
    if len(board) > limit:
        text += f"\n... {len(board) - limit} more rows in leaderboard.csv (--top N shows more)"
    return text


def crossfit_pred(preds, y: np.ndarray, seed: int) -> np.ndarray:
    """Each row's prediction by the configuration most accurate (right on most rows, whatever the metric: ``fit``
    counts rows) on the other half of the rows (stratified halves). ``preds``: one row of class indices per
    configuration ranked on these rows. The best configuration's own predictions would flatter it on the rows where
    it was picked among several (the winner's curse), when ``fit`` compares it with another stage's model."""
    from sklearn.model_selection import StratifiedKFold

    preds = np.asarray(preds)
    if len(preds) == 1 or len(y) < 2:
        return preds[0] if len(preds) else np.zeros(0, dtype=int)
    counts = np.bincount(y)
    if counts[counts > 0].min() >= 2:
        halves = list(StratifiedKFold(2, shuffle=True, random_state=seed).split(y, y))
    else:
        a, b = np.array_split(np.random.default_rng(seed).permutation(len(y)), 2)
        halves = [(a, b), (b, a)]
    out = np.empty(len(y), dtype=preds.dtype)
    for rank_on, predict_on in halves:
        out[predict_on] = preds[int(np.argmax((preds[:, rank_on] == y[rank_on]).mean(axis=1)))][predict_on]
    return out
