"""Train many classifiers on cached features and keep the best: ``featcache.sweep(CACHE)`` (stage: orchestration).

The path of the data: the chosen layer(s) are read from the cache once (``selection.features``) → the grid is
expanded into configurations (``selection.grids``) and the validation scheme into folds (``selection.schemes``)
→ every (configuration, fold) the result store lacks is fitted in joblib workers (``selection.fitting``,
``selection.backends``) → the leaderboard ranks configurations on validation → the best is refitted on
train(+val), scored once on test, saved with its metadata as ``best.skops`` → plots (``selection.outputs``).

The steps of ``run_sweep`` (``_sweep``), one module each: ``_problem`` (features, folds, configurations, result
store) → ``_screen`` (the layer choices the grid runs on) → ``_search`` (the plain grid, or successive halving;
then ``_ensemble``) → ``_board`` (the leaderboard, the candidates) → ``_refit`` (the best on every pool row, scored
on test) → ``_result`` (:class:`SweepResult`) → ``_write`` (the output folder).

Results are stored per (cache fingerprint, layers, configuration, validation scheme, seed, library
versions), so rerunning a sweep fits nothing and adding a grid point fits only that point. The command
line is ``featcache.cli.sweep``; ``python -m featcache.sweep`` runs it.
"""
from ._result import SweepResult
from ._sweep import run_sweep, sweep

__all__ = ["SweepResult", "run_sweep", "sweep"]
