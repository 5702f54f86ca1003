"""Learning on cached features: the estimators and what they share.

Stage: learning, below selection, above models and ``rowsource``: an estimator knows arrays and the
:class:`~featcache.rowsource.RowSource` protocol, never the HDF5 cache (tests/test_architecture.py checks it).
Submodules are imported on use (PEP 562), so ``featcache.learn.metrics`` does not bring in torch.

- ``dense``: :class:`DenseHead`, a torch MLP as a scikit-learn classifier
- ``logistic``: :func:`logistic_path`, a warm-started L2 logistic regression path
- ``top``: :class:`TopClassifier`, a network's top blocks + a new head trained on cached activations
- ``training``: early stopping, the hold-out split, AdamW, tensors from arrays (shared by both torch models)
- ``streaming``: fitting pipelines on rows streamed from a ``RowSource`` (the cache's ``Rows``); ``views``:
  augmented views and TTA
- ``metrics``: the scores every leaderboard shows
"""
import importlib

__all__ = ["DenseHead", "TopClassifier", "logistic_path"]

_WHERE = {"DenseHead": "dense", "TopClassifier": "top", "logistic_path": "logistic"}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'featcache.learn' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
