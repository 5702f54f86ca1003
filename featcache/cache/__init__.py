"""The HDF5 feature cache: its layout, its key, writing it crash-safely, and reading it back.

Stage: cache, below extraction and above nothing but the shared helpers. No module here imports torch
or scikit-learn (torch's version enters the key through ``key_parts``, imported there on use), so
``featcache.load``, ``ls`` and ``verify`` start in a fraction of a second.

- ``layout``: format version, dataset paths, the typed :class:`CacheMeta` of the file's attributes
- ``key``: :func:`key_parts` / :func:`cache_key` (the fingerprint) and the file names they give
- ``write``: :class:`CacheWriter` (partial file, resume counter); ``publish``: :func:`publish` (merge, fsync,
  atomic rename) and :func:`recover_finished`
- ``read``: :func:`load` -> :class:`FeatureSet`; ``rows``: :class:`Rows` for data larger than memory (the HDF5
  :class:`featcache.rowsource.RowSource`; ``minibatches`` and ``available_memory`` are re-exported from there)
- ``verify`` and ``catalog``: checking one cache, listing a cache directory
- ``use``: :func:`in_use`, what a running sweep holds so that ``rm`` and ``prune`` leave its cache alone
"""
from ..rowsource import available_memory, minibatches
from .catalog import list_caches
from .key import cache_key, cache_path, key_parts, lock_path, partial_path, partials_of
from .layout import FORMAT_VERSION, PARTIAL_SUFFIX, CacheMeta
from .publish import publish
from .read import FeatureSet, incomplete_message, is_hit, load, read_meta
from .rows import Rows
from .use import in_use
from .verify import verify
from .write import CacheWriter, Reuse, RowBlock, find_reusable

__all__ = ["CacheMeta", "CacheWriter", "FORMAT_VERSION", "FeatureSet", "PARTIAL_SUFFIX", "Reuse", "RowBlock", "Rows",
           "in_use",
           "available_memory", "cache_key", "cache_path", "find_reusable", "incomplete_message", "is_hit", "key_parts",
           "list_caches", "load", "lock_path", "minibatches", "partial_path", "partials_of", "publish", "read_meta",
           "verify"]
