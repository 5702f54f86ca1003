"""Checking a cache end to end: :func:`verify` lists what is wrong (an empty list: the cache is sound).

Stage: cache. Imports h5py and numpy only (the ``verify`` command must not load torch). Checks structure and
format version, row counts that agree, finite features, a fingerprint consistent with the recorded key, and
the input files on disk still matching what was extracted.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import h5py
import numpy as np

from .._util import file_sha256
from ..errors import FeatcacheError
from .key import cache_key, files_fingerprint, partials_of
from .layout import (
    FAILED_PATHS,
    FAILED_REASONS,
    FEATURES,
    FORMAT_VERSION,
    LABELS,
    PARTIAL_SUFFIX,
    PATHS,
    SOURCE,
    SPLIT,
    VIEWS,
    CacheMeta,
)
from .read import folder_message, incomplete_message

__all__ = ["verify"]

log = logging.getLogger("featcache")


def verify(path: Path, check_files: bool = True) -> List[str]:
    """Problems found in the cache at ``path`` (an empty list means it is sound)."""
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX) or (not path.exists() and partials_of(path)):
        partial = path if path.name.endswith(PARTIAL_SUFFIX) else partials_of(path)[0]
        return [f"{partial} is {incomplete_message(partial)}"]
    if path.is_dir():
        raise FeatcacheError(folder_message(path))
    if not path.exists():
        raise FeatcacheError(f"no cache at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError:
        return [f"cannot open {path} as HDF5: not an HDF5 file, or one cut short"]
    problems: List[str] = []
    with f:
        meta = CacheMeta.from_attrs(f.attrs)
        version = meta.format_version
        if version != FORMAT_VERSION:
            return [f"format_version is {version}; this featcache reads {FORMAT_VERSION}"]
        if not meta.complete:
            problems.append("not marked complete")
        missing = [k for k in (FEATURES, LABELS, PATHS, FAILED_PATHS, FAILED_REASONS, f"{SOURCE}/{PATHS}")
                   if k not in f]
        missing += [a for a in ("layers", "class_names", "config", "key", "fingerprint") if a not in f.attrs]
        if missing:
            return problems + [f"missing: {', '.join(missing)}"]
        n = len(f[LABELS])
        layers = meta.layers
        for name in (PATHS, SPLIT):
            if name in f and len(f[name]) != n:
                problems.append(f"{name} has {len(f[name])} rows, labels has {n}")
        if meta.n_rows is not None and int(meta.n_rows) != n:
            problems.append(f"n_rows attribute says {meta.n_rows}, labels has {n}")
        n_failed, n_inputs = len(f[FAILED_PATHS]), len(f[f"{SOURCE}/{PATHS}"])
        if n_failed != len(f[FAILED_REASONS]):
            problems.append(f"{FAILED_PATHS} and {FAILED_REASONS} differ in length")
        if n + n_failed != n_inputs:
            problems.append(f"{n} rows + {n_failed} failed != {n_inputs} input files")
        classes = meta.class_names
        y = f[LABELS][:]
        if ((y < -1) | (y >= len(classes))).any():
            problems.append(f"labels outside -1..{len(classes) - 1}")
        for layer in layers:
            if layer not in f[FEATURES]:
                problems.append(f"{FEATURES}/{layer} is missing")
                continue
            d = f[FEATURES][layer]
            if d.shape[0] != n:
                problems.append(f"features/{layer} has {d.shape[0]} rows, labels has {n}")
            problems += _check_rows(d, f"{FEATURES}/{layer}")
        for name in f.get(VIEWS, {}):
            problems += _check_rows(f[VIEWS][name], f"{VIEWS}/{name}")
        if any(not f[FEATURES][layer].fletcher32 for layer in layers if layer in f[FEATURES]):
            log.warning("%s has no checksums (written by a featcache before they were added): damaged bytes cannot "
                        "be found; extract it again to add them", path)
        if cache_key(meta.key) != meta.fingerprint:
            problems.append("fingerprint does not match the recorded key (the file was edited)")
        if check_files and meta.data_root:
            problems += _check_files(f, meta)
    return problems


def _check_rows(d: h5py.Dataset, name: str) -> List[str]:
    """Read every chunk of a row dataset: HDF5 checks each chunk's Fletcher-32 checksum on the way (a damaged
    chunk fails to read); rows holding NaN or Inf are counted."""
    step = max(1, (d.chunks or (1024,))[0])
    bad, damaged = 0, []
    for i in range(0, d.shape[0], step):
        try:
            block = d[i:i + step]
        except OSError:  # h5py: "Can't read data (filter returned failure during read)": a checksum mismatch
            damaged.append(f"{i}-{min(i + step, d.shape[0]) - 1}")
            continue
        bad += int((~np.isfinite(block.reshape(len(block), -1))).any(axis=1).sum())
    problems = [f"{name}: {bad} row(s) hold NaN or Inf"] if bad else []
    if damaged:
        problems.append(f"{name}: damaged bytes (checksum mismatch) in rows {', '.join(damaged[:5])}"
                        + (f" and {len(damaged) - 5} more blocks" if len(damaged) > 5 else "")
                        + "; extract the cache again")
    return problems


def _check_files(f: h5py.File, meta: CacheMeta) -> List[str]:
    """Do the input files on disk still have the size/mtime (or hash) the cache was built from?"""
    root = Path(meta.data_root)
    src = f[SOURCE]
    paths = src[PATHS].asstr()[:]
    gone = [p for p in paths if not (root / p).is_file()]
    if gone:
        return [f"{len(gone)} input file(s) no longer exist under {root}, e.g. {gone[0]}"]
    manifest = {"size": [], "mtime_ns": [], "sha256": []}
    for p in paths:
        st = (root / p).stat()
        manifest["size"].append(st.st_size)
        manifest["mtime_ns"].append(st.st_mtime_ns)
        if meta.config.get("hash_content"):
            manifest["sha256"].append(file_sha256(root / p))
    manifest["sha256"] = manifest["sha256"] or None
    if files_fingerprint(paths, manifest) == meta.key.get("files"):
        return []
    if manifest["sha256"] and "sha256" in src:  # --hash-content: the bytes decide, not the dates
        changed = [p for p, h, h0 in zip(paths, manifest["sha256"], src["sha256"].asstr()[:]) if h != h0]
    else:
        changed = [p for p, s, m, s0, m0 in zip(paths, manifest["size"], manifest["mtime_ns"], src["size"][:],
                                                src["mtime_ns"][:]) if (s, m) != (s0, m0)]
    example = f", e.g. {changed[0]}" if changed else ""
    return [f"the input files changed since extraction ({len(changed) or 'some'} file(s){example}); "
            f"rerun the extraction to refresh the cache"]
