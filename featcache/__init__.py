"""featcache: run a frozen pretrained network once, cache its features in HDF5, train many classifiers on them."""
__version__ = "0.1.0"

from .config import ExtractConfig, FeatcacheError
from .store import FeatureSet, load

# ``featcache.extract(...)`` is the API function; ``python -m featcache.extract`` is the CLI module,
# which stays callable too (see featcache/extract.py).
from .pipeline import extract  # noqa: E402

__all__ = ["ExtractConfig", "FeatcacheError", "FeatureSet", "extract", "load", "__version__"]
