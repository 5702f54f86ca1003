"""Selection: fitting many configurations on cached features and keeping the best, shared by sweep and finetune.

Stage: selection, below the commands, above learning and the cache. No module here imports another stage
above it; this package imports nothing on its own, so ``featcache.selection.grids`` loads without torch.

- ``grids``: classifiers by name, preprocessing, grid files -> :class:`~featcache.selection.grids.Config`
- ``features``: the layers a sweep reads, pool and test rows, the layer dimension
- ``schemes``: validation folds from labels and splits (arrays in)
- ``store``: the result store; ``fitting``: fits in joblib workers and the layer screen; ``backends``: where
  the fits run (joblib's local backends, or a Ray or Dask cluster)
- ``leaderboard``, ``outputs``, ``modelfile``, ``plots``: ranking and what a run writes
"""
__all__ = ["backends", "features", "fitting", "grids", "leaderboard", "modelfile", "outputs", "plots", "schemes",
           "store"]
