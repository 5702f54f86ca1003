"""``extract``: find a cache for these settings, or make it, crash-safe and resumable.

Stage: extraction (its entry point). Imports ``plan``, ``run``, ``loader``, ``models`` and ``cache``. The same
config and unchanged files give a cache hit with no forward pass; two processes extracting the same cache
at once take turns through a file lock.
"""
from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from .. import models
from .._malloc import tune_allocator
from .._util import human_size, library_versions, now_iso, orphan_temporaries
from ..cache import CacheMeta, CacheWriter, find_reusable, is_hit, lock_path, partial_path, publish
from ..cache.hit import accept_hit, find_hit, refuse_undecodable
from ..cache.layout import feature_path, views_path
from ..cache.publish import recover_finished
from ..config import ExtractConfig
from ..errors import FeatcacheError
from .engine import choose_engine
from .loader import DecodeDataset, default_num_workers, make_loader, workers_and_streams
from .plan import CPU_BATCH_SIZE, Plan, plan_extraction, probe_shapes, resolve_batch_size
from .streams import run_streams

__all__ = ["extract", "extract_missing"]

log = logging.getLogger("featcache")


def extract(data=None, *, config: Optional[ExtractConfig] = None, **settings) -> Path:
    """Extract features (or find them cached) and return the cache file's path.

    ``data`` is an image folder, a CSV file (``path,label[,split]``) or a torch Dataset; any
    :class:`~featcache.config.ExtractConfig` field can be passed as a keyword, e.g.
    ``extract("photos/", model="resnet50", layers=["layer3", "layer4"], pool="avg")``.
    Two processes extracting the same cache at once: one waits, then finds the other's result.
    """
    tune_allocator()
    cfg = (config or ExtractConfig()).replace(**settings)
    if data is not None:
        cfg = cfg.replace(data=data)
    if isinstance(cfg.layers, str):
        cfg = cfg.replace(layers=[cfg.layers])
    found, source, manifest = find_hit(cfg)  # without torch or the model, when an earlier run left a record
    return accept_hit(cfg, found) if found is not None else extract_missing(cfg, source, manifest)


def extract_missing(cfg: ExtractConfig, source=None, manifest: Optional[dict] = None) -> Path:
    """:func:`extract` once :func:`~featcache.cache.hit.find_hit` found nothing: plan with the model (reusing the
    source and manifest it read), then a hit after all, or the extraction."""
    plan = plan_extraction(cfg, source, manifest)
    if plan.shard and plan.shard[0] != 0:  # one log and one progress bar: rank 0's
        log.setLevel(logging.WARNING)
        cfg = cfg.replace(progress=False)
    if plan.shard is None and is_hit(plan.path, plan.fingerprint):  # no lock: a read-only cache folder works
        return accept_hit(cfg, plan.path)
    lock_file = lock_path(plan.path)
    if plan.shard and plan.shard[0]:
        lock_file = lock_file.with_name(lock_file.name + f".rank{plan.shard[0]}")
    lock = FileLock(str(lock_file))
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0.5)
    except Timeout:
        log.info("another featcache process is extracting this cache; waiting for it (%s)", lock.lock_file)
        lock.acquire()
    except OSError as e:
        raise FeatcacheError(f"cannot write to the cache directory {plan.path.parent}: {e.strerror}; "
                             f"pass {{cache_dir}} or set FEATCACHE_DIR to a writable folder") from e
    try:
        if plan.shard is None and recover_finished(plan.path, plan.fingerprint):
            log.info("finished the cache an interrupted run had completed: %s", plan.path)
        if _decide_hit(plan):  # another process finished it while this one waited
            return accept_hit(cfg, plan.path)
        for orphan in orphan_temporaries(plan.path):  # a publish killed half-way, by a process now gone
            log.info("removing %s, left by a run that was killed while publishing", orphan.name)
            orphan.unlink(missing_ok=True)
        if cfg.strict:
            _refuse_bad_files(cfg.replace(batch_size=CPU_BATCH_SIZE) if cfg.batch_size == "auto" else cfg, plan)
        _extract_into(cfg, plan)
    finally:
        lock.release()
    return plan.path


def _decide_hit(plan: Plan) -> bool:
    """Whether the cache is finished. Under torchrun rank 0 decides, holding the cache's lock, and tells every
    rank: ranks that looked for themselves could disagree (a single-process run publishing between their looks
    would send rank 0 home while the others wait for it at a barrier)."""
    if plan.shard is None:
        return is_hit(plan.path, plan.fingerprint)
    import torch.distributed as dist

    decision = [is_hit(plan.path, plan.fingerprint) if plan.shard[0] == 0 else None]
    dist.broadcast_object_list(decision, src=0)
    return bool(decision[0])


def _refuse_bad_files(cfg: ExtractConfig, plan: Plan) -> None:
    """``--strict``: decode every file first and refuse the dataset, naming the bad ones."""
    rows = np.arange(len(plan.source))
    num_workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(plan.device)
    loader = make_loader(DecodeDataset(plan.source, plan.backbone.preprocess, rows, cfg.decode_timeout), cfg,
                         torch.device("cpu"), num_workers)
    bad, i = [], 0
    for _, reasons, _ in tqdm(loader, desc="check", unit="batch", disable=not cfg.progress, file=sys.stderr):
        bad += [(plan.source.paths[i + k], r) for k, r in enumerate(reasons) if r]
        i += len(reasons)
    refuse_undecodable(bad, "nothing was extracted")


def _extract_into(cfg: ExtractConfig, plan: Plan) -> None:
    source, backbone, path = plan.source, plan.backbone, plan.path
    labelled = sorted(set(source.labels[source.labels >= 0].tolist()))
    if len(labelled) == 1:
        log.warning("every labelled image is of one class (%s): fine for features, but a classifier (sweep, finetune) "
                    "needs at least 2 classes", source.class_names[labelled[0]])
    fx = models.FeatureExtractor(backbone, plan.layers, cfg.pool, cfg.scales).to(plan.device)
    shapes = probe_shapes(fx, plan.device, plan.precision, backbone.preprocess.crop_size)
    if cfg.batch_size == "auto":
        cfg = cfg.replace(batch_size=resolve_batch_size("auto", fx, plan.device, plan.precision,
                                                        backbone.preprocess.crop_size))
        log.info("--batch-size auto: %d", cfg.batch_size)
    if cfg.views:  # --batch-size counts forward passes: each image brings 1 + views of them
        cfg = cfg.replace(batch_size=max(1, cfg.batch_size // (1 + cfg.views)))
    if len(cfg.scales) > 1:
        crop = backbone.preprocess.crop_size
        log.info("--scales: the network runs at %s px; each layer's features are joined in that order",
                 ", ".join(str(max(1, round(crop * s))) for s in cfg.scales))
    for layer, shape in shapes.items():
        log.info("layer %s -> %s features per image", layer, "x".join(map(str, shape)))
    datasets = {feature_path(k): s for k, s in shapes.items()}
    if cfg.views:
        datasets.update({views_path(k): (cfg.views,) + s for k, s in shapes.items()})
        log.info("%d augmented views per image (%s): %d forward passes per image", cfg.views,
                 ",".join(cfg.augment), 1 + cfg.views)
    row_bytes = sum(int(np.prod(s)) for s in datasets.values()) * np.dtype(cfg.dtype).itemsize
    log.info("%d images, %s per image, about %s in all; precision %s on %s",
             len(source), human_size(row_bytes), human_size(row_bytes * len(source)), plan.precision, plan.device)
    partial = partial_path(path, plan.shard)
    meta = CacheMeta(config=plan.record(cfg), key=plan.parts, layers=list(plan.layers),
                     class_names=list(source.class_names), dataset=source.name,
                     data_root=str(source.root) if source.root else "", model=backbone.name,
                     versions=library_versions("featcache", "torch", "torchvision", "h5py", "numpy", "python"))
    try:
        reuse = None if partial.exists() else find_reusable(path.parent, plan.parts, source, plan.manifest)
        writer = CacheWriter(path, source, plan.manifest, datasets, cfg.dtype, plan.fingerprint, meta, reuse,
                             shard=plan.shard)
        if reuse is not None:
            log.info("reusing %d rows of %s (unchanged files, same settings)", len(reuse.rows), reuse.path.name)
        resumed = writer.rows_done
        if resumed:
            log.info("resuming: %d rows already done", resumed + writer.reused)
        try:
            choice = choose_engine(cfg, backbone, fx, (plan.engine, plan.precision, plan.engine_key), source,
                                   len(writer.remaining) * (1 + cfg.views), workers_and_streams(cfg, plan.device)[1])
            if choice.why:
                log.info("%s", choice.why)
            timings = {**run_streams(cfg, plan, choice.runner, writer), "engine": choice.name}
            created = CacheMeta(created=now_iso(), timings=timings).to_attrs(only=("created", "timings"))
            if plan.shard is None:
                n_rows, failed = writer.finish(created)
            else:
                writer.complete()
                published = _publish_shards(path, plan.shard, created)
                if published is None:
                    return  # not rank 0: rank 0 merged the shards
                n_rows, failed = published
        finally:
            writer.close()
    except OSError as e:
        if e.errno == errno.ENOSPC or "No space left" in str(e):
            raise FeatcacheError(
                f"disk full while writing {partial} (the cache needs about "
                f"{human_size(row_bytes * len(source))}); free some space and rerun the same command: "
                f"the rows already written are kept") from e
        raise
    rate = timings["rows"] / max(timings["total_s"], 1e-9)
    dims = "+".join(str(int(np.prod(s))) for s in shapes.values())
    log.info("done: %d images (%d skipped, %d reused from another cache, %d resumed from an interrupted run), "
             "D=%s, %.1f s for %d new, %.1f img/s, %s -> %s", n_rows, len(failed), writer.reused, resumed, dims,
             timings["total_s"], timings["rows"], rate, human_size(path.stat().st_size), path)
    log.info("time went to: waiting for decoded images %.1f s, model %.1f s, writing %.1f s (in a thread)",
             timings["data_wait_s"], timings["compute_s"], timings["write_s"])
    if models.is_random(backbone):
        log.warning("these features come from random weights (--weights none): fine for testing, but no classifier "
                    "will learn much from them; use --weights DEFAULT or a checkpoint for real work")
    if failed:
        log.warning("%d file(s) could not be decoded and were skipped, e.g. %s (%s); see failed/paths and "
                    "failed/reasons in the cache", len(failed), failed[0][0], failed[0][1])


def _publish_shards(path: Path, shard: Tuple[int, int], created: dict):
    """Every rank waits for all shards; rank 0 merges them into the one cache, the others wait for that."""
    import torch.distributed as dist

    rank, world = shard
    dist.barrier()
    result = None
    if rank == 0:
        result = publish(path, [(partial_path(path, (r, world)), (r, world)) for r in range(world)], created)
    dist.barrier()
    return result
