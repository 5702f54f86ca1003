"""The result store: one small JSON record per fitted configuration (and its out-of-fold class scores beside it, as
``.npy``), so a rerun fits nothing.

Stage: selection. Records are keyed by (cache fingerprint, layers, configuration, validation scheme, seed,
library versions) and :data:`RESULTS_VERSION`: bump it with any change to code that changes fitted results
(estimators, preprocessing, folds, streaming order), so no stored result of the old code is reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .._util import atomic_path, atomic_write_text, library_versions
from .grids import Config

__all__ = ["RESULTS_VERSION", "OOF_DTYPE", "ResultStore", "as_stored", "result_key", "config_key", "result_versions"]

log = logging.getLogger("featcache")

# 2: the streaming shuffle buffer and the in-memory reading of cached activations changed (0.1.0's results)
# 3: records keep out-of-fold class scores and a calibrating temperature; decision-score classifiers get a log-loss
# 4: out-of-fold scores are used at the precision the store keeps (float16), fresh or stored, so a rerun from stored
#    results calibrates and ensembles exactly as the run that stored them
RESULTS_VERSION = 4
OOF_DTYPE = np.float16  # out-of-fold class scores on disk: half the bytes of float32, 3 significant digits


def as_stored(oof: np.ndarray) -> np.ndarray:
    """Out-of-fold scores rounded to what the store keeps (float32 for arithmetic): a fresh fit uses exactly the
    numbers a rerun reads back, so both choose the same temperature, log-loss and ensemble."""
    return np.asarray(oof, dtype=OOF_DTYPE).astype(np.float32)


def result_versions() -> dict:
    """The versions a fitted result depends on (in result keys and model metadata)."""
    return {**library_versions("featcache", "sklearn", "scipy", "torch", "numpy"), "featcache_results": RESULTS_VERSION}


def result_key(parts: dict) -> str:
    """The hash of ``parts`` as JSON with sorted keys (Python's default separators: keys of stored results)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def config_key(base: dict, config: Config, scheme: dict) -> str:
    """A configuration's result key: its own layers (not the others the sweep tries), so a fit on layer4
    is found again whether layer4 was pinned with --layer or one choice of a layer dimension."""
    ident = {k: v for k, v in config.identity().items() if k != "layer"}
    layers = config.layer.split("+") if config.layer else base["layers"]
    return result_key({**base, "layers": layers, "config": ident, "scheme": scheme})


class ResultStore:
    """One small JSON file per fitted configuration (plus refitted models), under ``root/<fingerprint>``."""

    def __init__(self, root: Optional[Path], fingerprint: str):
        self.dir = Path(root) / fingerprint[:16] if root is not None else None
        self.writable = self.dir is not None and self._can_write()

    def _can_write(self) -> bool:
        """Whether records can be kept here; a read-only store (a shared cache folder) is still read."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError as e:
            log.warning("cannot write the result store %s (%s): this sweep's fits will not be kept for the next "
                        "run; pass --results-dir DIR (results_dir=) to keep them elsewhere", self.dir, e.strerror or e)
            return False

    def get(self, key: str) -> Optional[dict]:
        if self.dir is None:
            return None
        try:
            record = json.loads((self.dir / f"{key[:32]}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if record.get("key") != key or record.get("format") != RESULTS_VERSION:
            return None
        if record.get("oof_kind"):
            try:
                record["oof"] = as_stored(np.load(self.dir / f"{key[:32]}.oof.npy"))
            except (OSError, ValueError):
                return None  # the scores are part of the record: refit rather than use half of it
        return record

    def _there(self) -> bool:
        """The store's folder, made again when it vanished (``rm --force`` while the sweep ran): a sweep never dies
        on its store; when it cannot be made, the sweep goes on without keeping its fits."""
        if self.writable and not self.dir.is_dir():
            self.writable = self._can_write()
            log.warning("the result store %s was removed while this sweep ran (featcache rm/prune --force?): %s",
                        self.dir, "made it again" if self.writable else "going on without keeping this sweep's fits")
        return self.writable

    def put(self, key: str, record: dict) -> None:
        for last in (False, True):
            if not self._there():
                return
            try:
                return self._write(key, record)
            except FileNotFoundError:  # removed between the check and the write: once more
                if last:
                    raise

    def _write(self, key: str, record: dict) -> None:
        oof = record.get("oof")
        if oof is not None:  # first, so a record on disk always has its scores
            with atomic_path(self.dir / f"{key[:32]}.oof.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.asarray(oof, dtype=OOF_DTYPE))
        text = json.dumps({**{k: v for k, v in record.items() if k != "oof"}, "key": key, "format": RESULTS_VERSION})
        atomic_write_text(self.dir / f"{key[:32]}.json", text)

    def model_path(self, key: str) -> Optional[Path]:
        """Where a refitted model is kept (None when nothing can be kept)."""
        return self.dir / f"{key[:32]}.skops" if self._there() else None
