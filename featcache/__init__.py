"""featcache: run a frozen pretrained network once, cache its features in HDF5, train many classifiers on them."""
__version__ = "0.1.0"

from .config import ExtractConfig, FeatcacheError
from .store import FeatureSet, load

# ``featcache.extract(...)`` is the API function; ``python -m featcache.extract`` is the CLI module,
# which stays callable too (see featcache/extract.py).
from .pipeline import extract  # noqa: E402

from .heads import DenseHead, logistic_path  # noqa: E402

# ``featcache.sweep``, ``predict`` and ``finetune`` are callable modules, like ``extract``. They are imported on
# first use (PEP 562), so that ``python -m featcache.sweep`` does not find its module already imported.
_LAZY = {"sweep": ("sweep", None), "predict": ("predict", None), "SweepConfig": ("sweep", "SweepConfig"),
         "SweepResult": ("sweep", "SweepResult"), "load_model": ("predict", "load_model"),
         "finetune": ("finetune", None), "TopClassifier": ("finetune", "TopClassifier")}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'featcache' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    return module if attr is None else getattr(module, attr)

__all__ = ["ExtractConfig", "FeatcacheError", "FeatureSet", "extract", "load", "sweep", "predict", "SweepConfig",
           "SweepResult", "DenseHead", "logistic_path", "load_model", "finetune", "TopClassifier", "__version__"]
