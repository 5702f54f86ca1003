"""featcache: run a frozen pretrained network once, cache its features in HDF5, train many classifiers on them."""
__version__ = "0.1.0"

from .config import ExtractConfig, FeatcacheError
from .store import FeatureSet, load


def extract(data=None, **settings):
    """Extract (or find cached) features for ``data``; returns the cache path. See :func:`featcache.extract.extract`."""
    from .extract import extract as _extract

    return _extract(data, **settings)


__all__ = ["ExtractConfig", "FeatcacheError", "FeatureSet", "extract", "load", "__version__"]
