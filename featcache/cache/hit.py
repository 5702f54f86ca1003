"""Finding a cache hit without torch: what an extraction resolved from its model, remembered beside the caches.

Stage: cache. Imports ``sources``, ``key``, ``read`` and the shared helpers; never torch. The first extraction with a
set of settings loads the model to resolve what the key needs from it (its name, the checksum of its weights, the
layers a preset names, its preprocessing, the precision and engine ``auto`` become) and writes that down in
``<cache dir>/.resolved/<hash>.json``; the hash covers the settings and everything the answer depends on (the
installed versions, the CPU's features, whether a GPU is there, the weights file's size and time). The next run with
the same settings computes the key from it and the files alone, so a hit imports no torch and loads no model
(``featcache.extract --data data/digits``: 4 s -> under 1 s). Anything not remembered, or changed since, takes the
full path, which is always right.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import List, Optional, Tuple

from .._util import atomic_write_text, cpu_flags, featcache_version, json_text, package_versions, sha256_json
from ..errors import FeatcacheError
from ..sources import Source, open_source
from .key import ModelIdentity, cache_key, cache_path, key_parts
from .read import is_hit, load

__all__ = ["remember", "find_hit", "accept_hit", "refuse_undecodable", "RESOLVED_VERSION"]

log = logging.getLogger("featcache")

RESOLVED_VERSION = 1  # what a record holds: bump when that changes
# What the precision and engine ``auto`` resolve to depends on these being installed (and their versions).
_PACKAGES = ("torch", "torchvision", "pillow", "onnxruntime", "openvino", "onnx", "onnxscript")


def _folder(cfg) -> Path:
    return cfg.resolved_cache_dir() / ".resolved"


def _weights_file(weights: str) -> Optional[List]:
    path = Path(weights).expanduser()
    try:
        st = path.stat()
    except OSError:
        return None
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _gpus() -> list:
    """What decides whether torch sees a GPU, read without torch: the NVIDIA driver's GPUs and the visible list."""
    try:
        found = sorted(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        found = []
    return [found, os.environ.get("CUDA_VISIBLE_DEVICES")]


def _lookup(cfg) -> Optional[str]:
    """The record's name for these settings, or ``None`` where a record cannot stand for them: data that is not
    files, a model passed as a module or built by a factory, timm's downloadable weights, a torchrun job."""
    if not isinstance(cfg.data, (str, os.PathLike)) or not isinstance(cfg.model, str):
        return None
    if ":" in cfg.model and not cfg.model.startswith("timm:"):  # package.module:factory runs code of its own
        return None
    weights = str(cfg.weights)
    if weights.lower() not in ("default", "none"):
        weights = _weights_file(weights)
        if weights is None:
            return None
    elif cfg.model.startswith("timm:") and weights.lower() == "default":
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    settings = {f: getattr(cfg, f) for f in ("model", "layers", "pool", "image_size", "resize_size", "mean", "std",
                                             "precision", "engine", "device", "strict")}
    settings = json.loads(json.dumps(settings, default=list))
    return sha256_json({"settings": settings, "weights": weights, "version": RESOLVED_VERSION,
                        "featcache": featcache_version(), "packages": package_versions(*_PACKAGES),
                        "cpu": sorted(cpu_flags()), "gpus": _gpus()})


def remember(cfg, model: ModelIdentity, layers: List[str], precision: str, engine: str, engine_key: Optional[dict],
             weights_file: Optional[str]) -> None:
    """Write down what the full path resolved for ``cfg`` (quietly nothing where the cache folder is read-only)."""
    name = _lookup(cfg)
    if name is None:
        return
    record = {"model": model.__dict__, "layers": list(layers), "precision": precision, "engine": engine,
              "engine_key": engine_key, "weights_file": _weights_file(weights_file) if weights_file else None}
    try:
        _folder(cfg).mkdir(parents=True, exist_ok=True)
        atomic_write_text(_folder(cfg) / f"{name}.json", json_text(record))
    except OSError:
        pass


def _recall(cfg) -> Optional[dict]:
    name = _lookup(cfg)
    if name is None:
        return None
    try:
        record = json.loads((_folder(cfg) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    weights_file = record.get("weights_file")
    if weights_file and _weights_file(weights_file[0]) != weights_file:
        return None  # the weights file changed since (a new download, a replaced checkpoint)
    code = record["model"].get("code") or {}
    if code and package_versions(*code) != code:
        return None  # another version of the model's own package
    return record


def find_hit(cfg) -> Tuple[Optional[Path], Optional[Source], Optional[dict]]:
    """``(path, source, manifest)``: the path of the finished cache for ``cfg`` when one is found from a record,
    without torch; the source and its manifest whenever they were read, so that a miss need not read them again."""
    cfg.validate()
    record = _recall(cfg)
    if record is None:
        return None, None, None
    source = open_source(cfg.data)
    manifest = source.manifest(cfg.hash_content, cfg.decode_timeout)
    model = ModelIdentity(**record["model"])
    parts = key_parts(source, manifest, model, record["layers"], cfg.pool, record["precision"], cfg.dtype,
                      decoder="torchvision.io" if cfg.gpu_decode else "pillow", views=cfg.views, augment=cfg.augment,
                      scales=cfg.scales, engine=record["engine_key"])
    fingerprint = cache_key(parts)
    path = cache_path(cfg.resolved_cache_dir(), source.name, model.name, record["layers"], fingerprint)
    return (path if is_hit(path, fingerprint) else None), source, manifest


def accept_hit(cfg, path: Path) -> Path:
    """A finished cache for these settings: no forward pass. ``--strict`` holds here too: a cache that skipped
    files is refused, naming them, as a fresh extraction of the same files would be."""
    log.info("cache hit: %s (no forward pass)", path)
    if cfg.strict:
        with load(path, lazy=True) as fs:
            refuse_undecodable(fs.failed, "skipped when this cache was extracted")
    return path


def refuse_undecodable(bad, why: str) -> None:
    """``--strict``: one error naming the files that cannot be decoded (the first ten)."""
    if bad:
        listing = "; ".join(f"{p} ({r})" for p, r in bad[:10])
        listing += f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise FeatcacheError(f"{{strict}}: {len(bad)} file(s) cannot be decoded ({why}): {listing}")
