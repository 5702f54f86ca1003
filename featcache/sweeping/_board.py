"""The leaderboard of a sweep (stage: orchestration): every configuration ranked on validation, and the
candidates for the refit (those validated on all the rows, best first)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from ..config import SweepConfig
from ..errors import FeatcacheError
from ..selection.fitting import Fits
from ..selection.grids import Config
from ..selection.leaderboard import leaderboard
from ._problem import Problem
from ._search import Rungs


@dataclass
class Ranking:
    """The leaderboard and what the refit draws from it."""

    board: Any  # pandas DataFrame, best first; the refit adds the test scores
    keys: Dict[Config, str]  # each configuration's result key (its first 12 characters: the board's config_id)
    ok: Any  # the board's rows whose fits succeeded
    whole: List[Config]  # the configurations validated on all the rows
    top: List[Config]  # the best ``cfg.test_top`` of them, the best first


def rank(cfg: SweepConfig, problem: Problem, rungs: Rungs, final: List[Config], stopped) -> Ranking:
    """The leaderboard over ``final`` (fitted on all the rows) and ``stopped``, and the top candidates; an error
    when nothing was fitted, every configuration failed, or none trained on all the rows succeeded."""
    fits, n_train = rungs.on(problem.n_train), problem.n_train
    board, keys = _board(cfg, fits, final, stopped, rungs.fits, "+".join(problem.feats.layers), n_train)
    ok = board[board["status"] == "ok"]
    if ok.empty:
        if not final:
            raise FeatcacheError(f"the budget ({cfg.budget_s:.0f} s) ran out before any configuration was fitted; "
                                 "give a larger {budget}")
        raise FeatcacheError(f"every configuration failed; the first error: {board['status'].iloc[0]}")
    # Candidates: every configuration validated on all the rows (the layer screen's fits on choices the grid left
    # out too, when the screen ran on all the rows), all of them records of ``fits``.
    whole = final + [c for c, (_, rows) in stopped.items() if rows == n_train and c not in final]
    by_id = {keys[c][:12]: c for c in whole}
    top = [by_id[i] for i in ok["config_id"].iloc[: cfg.test_top] if i in by_id]
    if not top:
        raise FeatcacheError("no configuration trained on all the rows succeeded (the budget ran out, or every "
                             "one failed); give a larger {budget}, or {halving=False}")
    return Ranking(board, keys, ok, whole, top)


def _board(cfg: SweepConfig, fits: Fits, final: List[Config], stopped, rungs: Dict[int, Fits], layers: str,
           n_train: int):
    """The leaderboard over every configuration: those on all the rows, then those halving stopped earlier."""
    records = {**{c: rec for c, (rec, _) in stopped.items()}, **{c: fits.records[c] for c in final}}
    keys = {c: rungs[rows].keys[c] for c, (_, rows) in stopped.items()}
    keys.update({c: fits.keys[c] for c in final})
    cached = {c for c in records if any(c in f.cached for f in rungs.values())}
    rows = {**{c: r for c, (_, r) in stopped.items()}, **{c: n_train for c in final}}
    order = final + [c for c in stopped if c not in final]
    return leaderboard(order, records, cached, keys, cfg.metric, layers, rows), keys
