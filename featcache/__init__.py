"""featcache: run a frozen pretrained network once, cache its features in HDF5, train many classifiers on them.

The public API. Names that need torch or scikit-learn are imported on first use (PEP 562), so
``import featcache; featcache.load(path)`` reads a cache with h5py alone. ``featcache.extract``, ``sweep``,
``predict``, ``finetune``, ``fit`` and ``inspect`` are both functions to call and ``python -m`` modules: each is its
module, made callable (``featcache._util.make_callable``); loading them lazily also keeps ``python -m featcache.sweep``
from finding its module imported before it runs. The layers of the package: docs/architecture.md.
"""
import importlib

from ._util import featcache_version
from .cache import FeatureSet, load
from .config import ExtractConfig, FinetuneConfig, FitConfig, SweepConfig
from .errors import FeatcacheError

__version__ = featcache_version()

_LAZY = {  # name -> (module, attribute; None = the module itself)
    "extract": ("extract", None), "sweep": ("sweep", None), "predict": ("predict", None),
    "finetune": ("finetune", None), "SweepResult": ("sweeping", "SweepResult"),
    "FinetuneResult": ("finetuning", "FinetuneResult"), "load_model": ("selection.modelfile", "load_model"),
    "DenseHead": ("learn.dense", "DenseHead"), "TopClassifier": ("learn.top", "TopClassifier"),
    "logistic_path": ("learn.logistic", "logistic_path"), "inspect": ("inspect", None),
    "InspectResult": ("insight", "InspectResult"), "fit": ("fit", None), "FitResult": ("autofit", "FitResult"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'featcache' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    return module if attr is None else getattr(module, attr)


__all__ = ["__version__", "DenseHead", "extract", "ExtractConfig", "FeatcacheError", "FeatureSet", "finetune",
           "FinetuneConfig", "FinetuneResult", "fit", "FitConfig", "FitResult", "inspect", "InspectResult", "load",
           "load_model", "logistic_path", "predict", "sweep", "SweepConfig", "SweepResult", "TopClassifier"]
