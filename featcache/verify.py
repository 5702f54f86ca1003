"""``python -m featcache.verify CACHE.h5``: check a cache end to end and say what is wrong.

Structure and format version, row counts that agree, finite features, a fingerprint consistent
with the recorded key, and the input files on disk still matching what was extracted.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import h5py
import numpy as np

from . import store
from .cli import Parser, run_cli
from .sources import file_sha256


def verify(path: Path, check_files: bool = True) -> List[str]:
    """Problems found in the cache at ``path`` (an empty list means it is sound)."""
    path = Path(path)
    if path.name.endswith(store.PARTIAL_SUFFIX) or (not path.exists() and store.partials_of(path)):
        partial = path if path.name.endswith(store.PARTIAL_SUFFIX) else store.partials_of(path)[0]
        return [f"{partial} is {store.incomplete_message(partial)}"]
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return [f"cannot open {path} as HDF5: {e}"]
    problems: List[str] = []
    with f:
        version = f.attrs.get("format_version")
        if version != store.FORMAT_VERSION:
            return [f"format_version is {version}; this featcache reads {store.FORMAT_VERSION}"]
        if not f.attrs.get("complete"):
            problems.append("not marked complete")
        missing = [k for k in ("features", "labels", "paths", "failed/paths", "failed/reasons", "source/paths")
                   if k not in f]
        missing += [a for a in ("layers", "class_names", "config", "key", "fingerprint") if a not in f.attrs]
        if missing:
            return problems + [f"missing: {', '.join(missing)}"]
        n = len(f["labels"])
        layers = json.loads(f.attrs["layers"])
        for name in ("paths", "split"):
            if name in f and len(f[name]) != n:
                problems.append(f"{name} has {len(f[name])} rows, labels has {n}")
        if int(f.attrs.get("n_rows", n)) != n:
            problems.append(f"n_rows attribute says {f.attrs['n_rows']}, labels has {n}")
        if len(f["failed/paths"]) != len(f["failed/reasons"]):
            problems.append("failed/paths and failed/reasons differ in length")
        if n + len(f["failed/paths"]) != len(f["source/paths"]):
            problems.append(f"{n} rows + {len(f['failed/paths'])} failed != {len(f['source/paths'])} input files")
        classes = json.loads(f.attrs["class_names"])
        y = f["labels"][:]
        if ((y < -1) | (y >= len(classes))).any():
            problems.append(f"labels outside -1..{len(classes) - 1}")
        for layer in layers:
            if layer not in f["features"]:
                problems.append(f"features/{layer} is missing")
                continue
            d = f["features"][layer]
            if d.shape[0] != n:
                problems.append(f"features/{layer} has {d.shape[0]} rows, labels has {n}")
            step = max(1, (d.chunks or (1024,))[0])
            bad = sum(int((~np.isfinite(d[i:i + step].reshape(len(d[i:i + step]), -1))).any(axis=1).sum())
                      for i in range(0, d.shape[0], step))
            if bad:
                problems.append(f"features/{layer}: {bad} row(s) hold NaN or Inf")
        key = json.loads(f.attrs["key"])
        if store.cache_key(key) != f.attrs["fingerprint"]:
            problems.append("fingerprint does not match the recorded key (the file was edited)")
        if check_files and f.attrs.get("data_root"):
            problems += _check_files(f, key, json.loads(f.attrs["config"]))
    return problems


def _check_files(f: h5py.File, key: dict, config: dict) -> List[str]:
    """Do the input files on disk still have the size/mtime (or hash) the cache was built from?"""
    root = Path(str(f.attrs["data_root"]))
    src = f["source"]
    paths = src["paths"].asstr()[:]
    gone = [p for p in paths if not (root / p).is_file()]
    if gone:
        return [f"{len(gone)} input file(s) no longer exist under {root}, e.g. {gone[0]}"]
    manifest = {"size": [], "mtime_ns": [], "sha256": []}
    for p in paths:
        st = (root / p).stat()
        manifest["size"].append(st.st_size)
        manifest["mtime_ns"].append(st.st_mtime_ns)
        if config.get("hash_content"):
            manifest["sha256"].append(file_sha256(root / p))
    manifest["sha256"] = manifest["sha256"] or None
    if store._sha256_json({"paths": list(paths), **manifest}) == key.get("files"):
        return []
    changed = [p for p, s, m, s0, m0 in zip(paths, manifest["size"], manifest["mtime_ns"], src["size"][:],
                                            src["mtime_ns"][:]) if (s, m) != (s0, m0)]
    example = f", e.g. {changed[0]}" if changed else ""
    return [f"the input files changed since extraction ({len(changed) or 'some'} file(s){example}); "
            f"rerun the extraction to refresh the cache"]


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.verify",
        description="Check a feature cache end to end: structure, format version, row counts, NaN/Inf in the "
                    "features, the fingerprint, and whether the input files still match. Exit 0 if sound, 1 if not.")
    p.add_argument("cache", type=Path, help="the .h5 cache file")
    p.add_argument("--no-files", action="store_true", help="skip comparing with the input files on disk")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _main(args) -> int:
    problems = verify(args.cache, check_files=not args.no_files)
    for line in problems:
        print(f"problem: {line}")
    print(f"{args.cache}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
