"""``python -m featcache.ls``: list the caches in a cache directory, finished and unfinished."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import h5py

from . import store
from .config import FeatcacheError, default_cache_dir
from .cli import Parser, run_cli


def list_caches(cache_dir: Path) -> List[dict]:
    """One record per ``.h5`` file in ``cache_dir``: dataset, model, layers, rows, dims, size, date."""
    if not cache_dir.is_dir():
        raise FeatcacheError(f"no cache directory at {cache_dir} (pass --cache-dir or set FEATCACHE_DIR)")
    records = []
    for path in sorted(cache_dir.glob("*.h5")):
        rec = {"path": str(path), "size_mb": round(path.stat().st_size / 2**20, 2)}
        if path.name.endswith(store.PARTIAL_SUFFIX):
            rec.update(status=store.incomplete_message(path))
            records.append(rec)
            continue
        try:
            with h5py.File(path, "r") as f:
                layers = json.loads(f.attrs["layers"])
                rec.update(
                    status="complete" if f.attrs.get("complete") else "incomplete",
                    dataset=str(f.attrs.get("dataset", "")), model=str(f.attrs.get("model", "")),
                    layers="+".join(layers), rows=int(f.attrs.get("n_rows", 0)),
                    dims="+".join(str(int(f["features"][k].size // max(1, f["features"][k].shape[0])))
                                  for k in layers),
                    created=str(f.attrs.get("created", "")))
        except (OSError, KeyError, ValueError) as e:
            rec.update(status=f"unreadable ({e})")
        records.append(rec)
    return records


def build_parser() -> Parser:
    p = Parser(prog="python -m featcache.ls",
                                description="List feature caches: dataset, model, layers, rows (N), feature "
                                            "size (D), file size and creation date.")
    p.add_argument("--cache-dir", type=Path, help="default: $FEATCACHE_DIR, else ~/.cache/featcache")
    p.add_argument("--json", action="store_true", help="one JSON record per line instead of a table")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _main(args) -> int:
    records = list_caches(args.cache_dir or default_cache_dir())
    if args.json:
        for r in records:
            print(json.dumps(r))
        return 0
    if not records:
        print("no caches", file=sys.stderr)
        return 0
    cols = ["dataset", "model", "layers", "rows", "dims", "size_mb", "created", "status", "path"]
    table = [[str(r.get(c, "")) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
