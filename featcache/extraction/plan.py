"""Planning an extraction: inputs, model, layers, precision and the cache key, known before any image is decoded.

Stage: extraction. Imports ``sources``, ``models``, ``cache`` (the key) and ``runtime``. ``explain`` builds
the same :class:`Plan` as ``extract``, so both agree on the key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .. import models
from ..cache import cache_key, cache_path, key_parts
from ..cache.hit import remember
from ..config import ExtractConfig, plain_scales
from ..errors import FeatcacheError
from ..runtime import autocast, resolve_device
from ..sources import Source, open_source
from .engine import plan_engine

__all__ = ["Plan", "plan_extraction", "distributed_shard", "resolve_batch_size", "probe_shapes", "list_layers",
           "CPU_BATCH_SIZE"]


@dataclass
class Plan:
    """What an extraction will do, known before any image is decoded: inputs, model, layers, key."""

    source: Source
    device: torch.device
    precision: str
    backbone: models.Backbone
    layers: List[str]
    manifest: dict
    parts: dict
    fingerprint: str
    path: Path
    shard: Optional[Tuple[int, int]] = None  # (rank, world size) under torchrun
    engine: str = "torch"  # torch, a CPU engine, or auto (measured when the run starts: extraction.engine)
    engine_key: Optional[dict] = None  # what the engine adds to the key (int8, OpenVINO's bf16), else None

    def record(self, cfg: ExtractConfig) -> dict:
        """What the cache stores of ``cfg``, with what this plan resolved (:meth:`ExtractConfig.to_record`)."""
        b = self.backbone
        return cfg.to_record(model=b.name, weights=b.weights, weights_sha256=b.weights_sha256, layers=self.layers,
                             preprocess=b.preprocess.to_dict(), precision=self.precision, engine=self.engine,
                             engine_key=self.engine_key)


def distributed_shard() -> Optional[Tuple[int, int]]:
    """``(rank, world)`` when started by torchrun with more than one process, else ``None``.

    Joins the process group (NCCL with GPUs, gloo otherwise) so the ranks can wait for each other.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        import datetime

        # Long: ranks wait at a barrier for the slowest rank and for rank 0's merge.
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size()


def plan_extraction(cfg: ExtractConfig, source: Optional[Source] = None, manifest: Optional[dict] = None) -> Plan:
    """Resolve inputs, model, layers and precision, and compute the cache key and path (``source`` and its
    ``manifest``, when given, were read already). What was resolved from the model is written down, so the next
    cache hit with these settings needs no torch (:mod:`featcache.cache.hit`)."""
    cfg.validate()
    shard = distributed_shard()
    if shard is not None and isinstance(cfg.data, (str, os.PathLike)):  # a Dataset: each rank hashes its own
        source, manifest = _listing_of_rank0(cfg, shard)
    source = source if source is not None else open_source(cfg.data)
    device = resolve_device(cfg.device)
    if shard and device.type == "cuda" and device.index is None:  # one GPU per rank, never all on cuda:0
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    engine, precision, engine_key = plan_engine(cfg, device)
    backbone = models.load_backbone(cfg)
    nodes = models.graph_node_names(backbone.module)
    # Presets (--layer last2) become node names here, so the cache key names the layers themselves.
    layers = (models.resolve_layers(list(cfg.layers), backbone, nodes) if cfg.layers
              else models.default_layers(backbone, nodes))
    manifest = manifest if manifest is not None else source.manifest(cfg.hash_content, cfg.decode_timeout)
    parts = key_parts(source, manifest, backbone.identity(), layers, cfg.pool, precision, cfg.dtype,
                            decoder="torchvision.io" if cfg.gpu_decode else "pillow", views=cfg.views,
                            augment=cfg.augment, scales=cfg.scales, engine=engine_key)
    fingerprint = cache_key(parts)
    path = cache_path(cfg.resolved_cache_dir(), source.name, backbone.name, layers, fingerprint)
    if shard is None:
        remember(cfg, backbone.identity(), layers, precision, engine, engine_key, backbone.weights_file)
    return Plan(source, device, precision, backbone, layers, manifest, parts, fingerprint, path, shard, engine,
                engine_key)


def _listing_of_rank0(cfg: ExtractConfig, shard: Tuple[int, int]) -> Tuple[Source, dict]:
    """Under torchrun, rank 0 lists the files and reads their sizes and times (or hashes them), and every rank
    plans from that one listing: ranks listing for themselves get different keys when a file changes between
    their looks, and write parts of different caches. A mistake in the data fails every rank with rank 0's
    message, never leaving the others waiting."""
    import torch.distributed as dist

    listing: list = [None]
    if shard[0] == 0:
        try:
            source = open_source(cfg.data)
            listing = [(source, source.manifest(cfg.hash_content, cfg.decode_timeout))]
        except FeatcacheError as e:
            listing = [e]
    dist.broadcast_object_list(listing, src=0)
    if isinstance(listing[0], FeatcacheError):
        raise listing[0]
    return listing[0]


CPU_BATCH_SIZE = 64  # CPU throughput is flat beyond a few dozen images per batch


def resolve_batch_size(batch_size, fx, device: torch.device, precision: str, crop: int) -> int:
    """``auto``: on a GPU, the largest power of two (up to 1024) whose forward pass stays under ~70%
    of free memory, found with dummy batches; on a CPU, 64."""
    if batch_size != "auto":
        return int(batch_size)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    best, size = 16, 32
    while size <= 1024:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        free, _ = torch.cuda.mem_get_info(device)
        base = torch.cuda.memory_allocated(device)
        try:
            with torch.inference_mode(), autocast(device, precision):
                fx(torch.zeros(size, 3, crop, crop, dtype=torch.uint8, device=device))
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            break
        if torch.cuda.max_memory_allocated(device) - base > 0.7 * free:
            break
        best, size = size, size * 2
    torch.cuda.empty_cache()
    return best


def probe_shapes(fx: models.FeatureExtractor, device, precision, crop: int) -> Dict[str, tuple]:
    """Per-layer feature shapes from one dummy batch, before any image is decoded."""
    try:
        with torch.inference_mode(), autocast(device, precision):
            out = fx(torch.zeros(2, 3, crop, crop, dtype=torch.uint8, device=device))
    except (RuntimeError, AssertionError, ValueError) as e:
        if plain_scales(fx.scales):
            raise
        sizes = ", ".join(f"{max(1, round(crop * s))} px" for s in fx.scales)
        raise FeatcacheError(f"{{scales}} {' '.join(f'{s:g}' for s in fx.scales)}: the model does not run at every "
                             f"size ({sizes}): {str(e).splitlines()[0]}; models with a fixed input size (most vision "
                             f"transformers) take one scale") from e
    return {k: tuple(v.shape[1:]) for k, v in out.items()}


def list_layers(cfg: ExtractConfig) -> List[dict]:
    """Every graph node of the model with its output shape and pooled size (one dummy batch)."""
    cfg.validate()
    # The graph and its shapes do not depend on the weights: list them without loading (or downloading) any.
    backbone = models.load_backbone(cfg.replace(weights="none"))
    rows = models.layer_table(backbone, cfg.pool)
    try:
        stages = models.stage_outputs(backbone)
    except FeatcacheError:
        stages = []
    # Stage outputs are marked with the shortest preset that includes them (lastK) and their --layer name.
    marks = {s.node: f"last{len(stages) - i}" + (f" = {s.name}" if s.name != s.node else "")
             for i, s in enumerate(stages)}
    for r in rows:
        r["stage"] = marks.get(r["layer"], "")
    return rows
