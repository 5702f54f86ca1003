"""The layer screen of a sweep (stage: orchestration): which of the cache's layer choices the grid runs on.

A cache with several layers gives the sweep a layer dimension: every grid point on every layer choice. When the
sweep chooses the layers itself (no ``--layer``) and ``--screen-layers N`` is below their number, a cheap screen
(``selection.fitting.screen_layers``, on the first rung's rows) ranks them first and the grid runs on the best N.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from ..config import SweepConfig
from ..selection.fitting import SCREEN_TEXT, screen_layers
from ..selection.grids import Config
from ._problem import Problem
from ._search import Rungs

log = logging.getLogger("featcache")


@dataclass
class Screened:
    """The configurations to search and the layer choices they run on, after the screen."""

    configs: List[Config]
    scores: Dict[str, float]  # each screened layer choice's best screen score, best first; empty: no screen
    extra: List[Config]  # screen fits of the layer choices the grid does not run on (they join the leaderboard)
    layers: List[str]  # the layer choices the grid runs on ("": the cache's layers, no layer dimension)


def screen_choices(cfg: SweepConfig, problem: Problem, rungs: Rungs) -> Screened:
    """The grid's configurations on the layer choices it runs on (screened, when the sweep chooses them)."""
    feats, configs, sizes = problem.feats, problem.configs, rungs.sizes
    screen: Dict[str, float] = {}
    extra: List[Config] = []  # screen fits of the layer choices the grid does not run on
    if not feats.layer_choices:
        return Screened(configs, screen, extra, [""])
    choices = list(feats.layer_choices)  # the layer dimension: every grid point on every (screened) layer choice
    if cfg.layer is None and 0 < cfg.screen_layers < len(choices):
        screen = screen_layers(rungs.on(sizes[0]), choices, problem.n_rows)
    if screen and all(np.isnan(v) for v in screen.values()):
        log.warning("the layer screen has no score (every screen fit failed); fitting the grid on every choice")
        screen = {}
    elif screen:
        choices = list(screen)[:cfg.screen_layers]
        log.info("layer screen (%s, val %s%s): %s -> the grid on %s (--screen-layers 0: on every choice)",
                 SCREEN_TEXT, cfg.metric, f", {sizes[0]} training rows" if len(sizes) > 1 else "",
                 ", ".join(f"{k} {v:.4f}" for k, v in screen.items()), ", ".join(choices))
    grid_points = set(configs)
    configs = [dataclasses.replace(c, layer=choice) for choice in choices for c in configs]
    extra = [p for p in rungs.on(sizes[0]).records
             if p.layer not in choices and dataclasses.replace(p, layer="") in grid_points]
    return Screened(configs, screen, extra, choices)
