"""Train many classifiers on cached features and keep the best: ``featcache.sweep(CACHE)`` (orchestration).

The path of the data: the chosen layer(s) are read from the cache once (``selection.features``) → the grid is
expanded into configurations (``selection.grids``) and the validation scheme into folds (``selection.schemes``)
→ every (configuration, fold) the result store lacks is fitted in joblib workers (``selection.fitting``,
``selection.backends``) → the leaderboard ranks configurations on validation → the best is refitted on
train(+val), scored once on test, saved with its metadata as ``best.skops`` → plots (``selection.outputs``).

Results are stored per (cache fingerprint, layers, configuration, validation scheme, seed, library
versions), so rerunning a sweep fits nothing and adding a grid point fits only that point. The command
line is ``featcache.cli.sweep``; ``python -m featcache.sweep`` runs it.
"""
from ._sweep import SweepResult, run, sweep

__all__ = ["SweepResult", "run", "sweep"]
