"""Orchestration: run a frozen model once over a dataset and stream its features into an HDF5 cache.

The path of the data: ``sources`` lists and decodes images (in DataLoader workers, straight to
uint8 at the final size) → ``backbones`` runs the frozen model and pools the chosen layers on the
device → a writer thread appends the rows to ``store``'s partial file → the finished file is
renamed into place. The same config and unchanged files give a cache hit with no forward pass.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from . import backbones, sources, store
from .config import ExtractConfig, FeatcacheError
from .heads import torch_threads

log = logging.getLogger("featcache")


# --- device, precision, threads ------------------------------------------------------------------

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatcacheError(f"--device {device}: no CUDA GPU is visible to torch; use --device cpu or auto")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPUs where bf16 autocast is about twice as fast as fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware runs it fast (recent GPUs/CPUs), fp16 on older GPUs, else fp32."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise FeatcacheError("--precision fp16 is for GPUs; on the CPU use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


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


def default_num_workers(device: torch.device) -> int:
    """Decode workers: on a CPU run they compete with the model for cores, so keep it to a few."""
    cores = os.cpu_count() or 1
    return min(8, max(1, cores - 1)) if device.type == "cuda" else max(1, min(4, cores // 2))


# --- decoding in workers -------------------------------------------------------------------------

class DecodeDataset(torch.utils.data.Dataset):
    """The given rows of a source, decoded to uint8 CHW at the crop size; failures carry a reason.

    With ``raw_jpegs``, JPEG files are returned as their bytes (flag ``True``) for decoding on the device.
    With ``views``, each item is (1 + views, 3, S, S): the clean crop, then its augmented views.
    """

    def __init__(self, source: sources.Source, pre: backbones.Preprocess, rows: np.ndarray, timeout_s: float,
                 raw_jpegs: bool = False, views: int = 0, augment=()):
        self.source, self.pre, self.rows, self.timeout_s, self.raw_jpegs = source, pre, rows, timeout_s, raw_jpegs
        self.views = views
        self.transform = sources.augmenter(augment, pre.crop_size, pre.resize_size) if views else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        i = int(self.rows[k])
        if self.raw_jpegs and self.source.root is not None and sources.is_jpeg(self.source.file_path(i)):
            try:
                return torch.from_numpy(np.fromfile(self.source.file_path(i), dtype=np.uint8)), "", True
            except OSError as e:
                return self._blank(), f"{type(e).__name__}: {e}", False
        pre = self.pre
        try:
            with _time_limit(self.timeout_s):
                if self.views:
                    arr = sources.decode_views(self.source, i, pre.resize_size, pre.crop_size, self.views,
                                               self.transform)
                else:
                    arr = sources.decode_sample(self.source, i, pre.resize_size, pre.crop_size)
        except Exception as e:  # any undecodable input becomes a recorded failure, never a crash
            return self._blank(), f"{type(e).__name__}: {e}", False
        return torch.from_numpy(arr).movedim(-1, -3), "", False

    def _blank(self) -> torch.Tensor:
        shape = (1 + self.views,) * bool(self.views) + (3, self.pre.crop_size, self.pre.crop_size)
        return torch.zeros(shape, dtype=torch.uint8)


def _collate(batch):
    """Stack decoded images; keep raw JPEG bytes (variable length) as a list for the device decoder."""
    tensors, reasons, raw = zip(*batch)
    if any(raw):
        return list(tensors), list(reasons), list(raw)
    return torch.stack(tensors), list(reasons), None


def _to_device_batch(images, reasons: List[str], raw, device, pre: backbones.Preprocess) -> torch.Tensor:
    """One (B, 3, S, S) uint8 batch on ``device``; raw JPEGs are decoded there (failures update ``reasons``)."""
    if raw is None:
        return images.to(device, non_blocking=True)
    jpeg_rows = [k for k, is_raw in enumerate(raw) if is_raw]
    decoded, why = sources.decode_jpegs_on_device([images[k] for k in jpeg_rows], device, pre.resize_size,
                                                  pre.crop_size)
    out = []
    for k, img in enumerate(images):
        if raw[k]:
            img = decoded[jpeg_rows.index(k)]
            if img is None:
                reasons[k] = why[jpeg_rows.index(k)]
                img = torch.zeros(3, pre.crop_size, pre.crop_size, dtype=torch.uint8, device=device)
        out.append(img.to(device, non_blocking=True))
    return torch.stack(out)


class _DecodeTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Abort one decode after ``seconds`` (SIGALRM; Pillow decodes in blocks, so it is interruptible).

    Only possible in a process's main thread — DataLoader workers and a ``num_workers=0`` run are.
    """
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise _DecodeTimeout(f"decoding took longer than {seconds:g} s (--decode-timeout)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _loader(dataset: DecodeDataset, cfg: ExtractConfig, device, num_workers: int):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
        collate_fn=_collate,
        # A last resort against a worker stuck where no signal reaches it: never hang forever.
        timeout=(cfg.decode_timeout * cfg.batch_size + 60) if num_workers and cfg.decode_timeout else 0,
    )


# --- the run -------------------------------------------------------------------------------------

class _WriterThread(threading.Thread):
    """The only thread that touches HDF5, so the model never waits on disk (bounded queue)."""

    def __init__(self, writer: store.CacheWriter, depth: int = 4):
        super().__init__(daemon=True, name="featcache-writer")
        self.writer, self.q = writer, queue.Queue(maxsize=depth)
        self.error: Optional[BaseException] = None
        self.busy_s = 0.0

    def run(self) -> None:
        while True:
            block = self.q.get()
            if block is None:
                return
            if self.error is not None:
                continue  # drain so the producer never blocks forever
            t = time.perf_counter()
            try:
                self.writer.append(block)
            except BaseException as e:
                self.error = e
            self.busy_s += time.perf_counter() - t

    def put(self, block) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(block)


def _probe_shapes(fx: backbones.FeatureExtractor, device, precision, crop: int) -> Dict[str, tuple]:
    """Per-layer feature shapes from one dummy batch, before any image is decoded."""
    with torch.inference_mode(), autocast(device, precision):
        out = fx(torch.zeros(2, 3, crop, crop, dtype=torch.uint8, device=device))
    return {k: tuple(v.shape[1:]) for k, v in out.items()}


def default_streams(device: torch.device) -> int:
    """Batches in flight on the model. On a CPU, two streams of half the intra-op threads each: a decode
    worker that takes a core from one stream leaves the other running, where one stream's parallel ops all
    wait for the thread that lost its core (measured on 2 cores: 270-320 vs 237 img/s; README, Performance)."""
    return 2 if device.type == "cpu" and torch.get_num_threads() >= 2 else 1


def _run(cfg: ExtractConfig, plan: "Plan", fx, writer: store.CacheWriter) -> dict:
    """Decode in workers, run the model in ``streams`` threads, write in order from one writer thread."""
    device, precision = plan.device, plan.precision
    rows = writer.remaining
    num_workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(device)
    # Without workers the consuming thread decodes, and only the main thread can time a decode out (SIGALRM).
    streams = 1 if num_workers == 0 else (cfg.streams or default_streams(device))
    pre = plan.backbone.preprocess
    dataset = DecodeDataset(plan.source, pre, rows, cfg.decode_timeout, raw_jpegs=cfg.gpu_decode, views=cfg.views,
                            augment=cfg.augment)
    loader = _loader(dataset, cfg, device, num_workers)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    thread = _WriterThread(writer)
    thread.start()
    timings = {"data_wait_s": 0.0, "compute_s": 0.0, "queue_wait_s": 0.0}
    # Under torchrun only rank 0 shows a bar; its share times the world size estimates the global rate.
    scale = plan.shard[1] if plan.shard else 1
    bar = tqdm(total=len(plan.source), initial=max(0, len(plan.source) - len(rows) * scale), unit="img",
               desc="extract", disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    it = iter(loader)
    take, ordered = threading.Lock(), threading.Condition()
    state = {"next_in": 0, "next_out": 0, "done": {}, "stop": False, "error": None}

    def stream() -> None:
        """Take the next batch, run the model, hand the rows to the writer in batch order."""
        while not state["stop"]:
            t0 = time.perf_counter()
            with take:
                if state["stop"]:
                    return
                try:
                    images, reasons, raw = next(it)
                except StopIteration:
                    return
                seq, state["next_in"] = state["next_in"], state["next_in"] + 1
            t1 = time.perf_counter()
            with torch.inference_mode():
                batch = _to_device_batch(images, reasons, raw, device, pre)
            with torch.inference_mode(), autocast(device, precision):
                feats = _features(fx, batch)
            t2 = time.perf_counter()
            ok = np.array([r == "" for r in reasons], dtype=np.uint8)
            with ordered:
                state["done"][seq] = store.RowBlock(feats, ok, list(reasons))
                while state["next_out"] in state["done"]:  # the writer appends rows in order
                    block = state["done"].pop(state["next_out"])
                    thread.put(block)
                    state["next_out"] += 1
                    bar.update(len(block.reasons) * scale)
                timings["data_wait_s"] += (t1 - t0) / streams
                timings["compute_s"] += (t2 - t1) / streams
                timings["queue_wait_s"] += (time.perf_counter() - t2) / streams

    def helper() -> None:
        try:
            stream()
        except BaseException as e:
            state["error"], state["stop"] = e, True

    t_all = time.perf_counter()
    threads_each = max(1, torch.get_num_threads() // streams)
    with torch_threads(threads_each) if streams > 1 else contextlib.nullcontext():
        helpers = [threading.Thread(target=helper, daemon=True, name=f"featcache-stream-{i}")
                   for i in range(1, streams)]
        failed = True
        try:
            for h in helpers:
                h.start()
            stream()  # the main thread is a stream too, so Ctrl-C reaches the loop
            failed = False
        finally:
            state["stop"] = True
            for h in helpers:
                # After an error or Ctrl-C a helper may wait on decode workers that are gone: give up on it
                # (a daemon thread) rather than hang; its rows are not written, and a rerun resumes.
                h.join(timeout=10 if failed else None)
            thread.q.put(None)
            thread.join()
            bar.close()
    for error in (state["error"], thread.error):
        if error is not None:
            raise error
    writer.flush()
    timings["write_s"] = thread.busy_s
    timings["total_s"] = time.perf_counter() - t_all
    timings["rows"] = len(rows)
    timings["num_workers"] = num_workers
    timings["streams"] = streams
    return timings


def _features(fx: backbones.FeatureExtractor, batch: torch.Tensor) -> Dict[str, np.ndarray]:
    """The rows of one batch keyed by dataset path; a (B, 1 + K, 3, S, S) batch of images with
    augmented views also gives ``views/<layer>`` rows of shape (K, ...)."""
    if batch.dim() == 4:
        return {f"features/{k}": v.float().cpu().numpy() for k, v in fx(batch).items()}
    b, v = batch.shape[:2]
    out = {}
    for k, x in fx(batch.flatten(0, 1)).items():
        x = x.float().cpu().numpy().reshape((b, v) + tuple(x.shape[1:]))
        out[f"features/{k}"], out[f"views/{k}"] = x[:, 0], x[:, 1:]
    return out


@dataclass
class Plan:
    """What an extraction will do, known before any image is decoded: inputs, model, layers, key."""

    source: sources.Source
    device: torch.device
    precision: str
    backbone: backbones.Backbone
    layers: List[str]
    manifest: dict
    parts: dict
    fingerprint: str
    path: Path
    shard: Optional[Tuple[int, int]] = None  # (rank, world size) under torchrun


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


def plan_extraction(cfg: ExtractConfig) -> Plan:
    """Resolve inputs, model, layers and precision, and compute the cache key and path."""
    cfg.validate()
    source = sources.open_source(cfg.data)
    device = resolve_device(cfg.device)
    shard = distributed_shard()
    if shard and device.type == "cuda" and device.index is None:  # one GPU per rank, never all on cuda:0
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    precision = resolve_precision(cfg.precision, device)
    backbone = backbones.load_backbone(cfg)
    nodes = backbones.graph_node_names(backbone.module)
    # Presets (--layer last2) become node names here, so the cache key names the layers themselves.
    layers = (backbones.resolve_layers(list(cfg.layers), backbone, nodes) if cfg.layers
              else backbones.default_layers(backbone, nodes))
    manifest = source.manifest(cfg.hash_content)
    parts = store.key_parts(source, manifest, backbone, layers, cfg.pool, precision, cfg.dtype,
                            decoder="torchvision.io" if cfg.gpu_decode else "pillow", views=cfg.views,
                            augment=cfg.augment)
    fingerprint = store.cache_key(parts)
    path = store.cache_path(cfg.resolved_cache_dir(), source.name, backbone.name, layers, fingerprint)
    return Plan(source, device, precision, backbone, layers, manifest, parts, fingerprint, path, shard)


def extract(data=None, *, config: Optional[ExtractConfig] = None, **settings) -> Path:
    """Extract features (or find them cached) and return the cache file's path.

    ``data`` is an image folder, a CSV file (``path,label[,split]``) or a torch Dataset; any
    :class:`~featcache.config.ExtractConfig` field can be passed as a keyword, e.g.
    ``extract("photos/", model="resnet50", layers=["layer3", "layer4"], pool="avg")``.
    Two processes extracting the same cache at once: one waits, then finds the other's result.
    """
    cfg = (config or ExtractConfig()).replace(**settings)
    if data is not None:
        cfg = cfg.replace(data=data)
    if isinstance(cfg.layers, str):
        cfg = cfg.replace(layers=[cfg.layers])
    plan = plan_extraction(cfg)
    if plan.shard and plan.shard[0] != 0:  # one log and one progress bar: rank 0's
        log.setLevel(logging.WARNING)
        cfg = cfg.replace(progress=False)
    lock_file = store.lock_path(plan.path)
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
                             f"pass --cache-dir or set FEATCACHE_DIR to a writable folder") from e
    try:
        if store.is_hit(plan.path, plan.fingerprint):
            log.info("cache hit: %s (no forward pass)", plan.path)
            return plan.path
        if cfg.strict:
            _refuse_bad_files(cfg.replace(batch_size=CPU_BATCH_SIZE) if cfg.batch_size == "auto" else cfg, plan)
        _extract_into(cfg, plan)
    finally:
        lock.release()
    return plan.path


def _refuse_bad_files(cfg: ExtractConfig, plan: Plan) -> None:
    """``--strict``: decode every file first and refuse the dataset, naming the bad ones."""
    rows = np.arange(len(plan.source))
    num_workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(plan.device)
    loader = _loader(DecodeDataset(plan.source, plan.backbone.preprocess, rows, cfg.decode_timeout), cfg,
                     torch.device("cpu"), num_workers)
    bad, i = [], 0
    for _, reasons, _ in tqdm(loader, desc="check", unit="batch", disable=not cfg.progress, file=sys.stderr):
        bad += [(plan.source.paths[i + k], r) for k, r in enumerate(reasons) if r]
        i += len(reasons)
    if bad:
        listing = "; ".join(f"{p} ({r})" for p, r in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise FeatcacheError(f"--strict: {len(bad)} file(s) cannot be decoded: {listing}")


def _extract_into(cfg: ExtractConfig, plan: Plan) -> None:
    source, backbone, path = plan.source, plan.backbone, plan.path
    fx = backbones.FeatureExtractor(backbone, plan.layers, cfg.pool).to(plan.device)
    shapes = _probe_shapes(fx, plan.device, plan.precision, backbone.preprocess.crop_size)
    if cfg.batch_size == "auto":
        cfg = cfg.replace(batch_size=resolve_batch_size("auto", fx, plan.device, plan.precision,
                                                        backbone.preprocess.crop_size))
        log.info("--batch-size auto: %d", cfg.batch_size)
    if cfg.views:  # --batch-size counts forward passes: each image brings 1 + views of them
        cfg = cfg.replace(batch_size=max(1, cfg.batch_size // (1 + cfg.views)))
    for layer, shape in shapes.items():
        log.info("layer %s -> %s features per image", layer, "x".join(map(str, shape)))
    datasets = {f"features/{k}": s for k, s in shapes.items()}
    if cfg.views:
        datasets.update({f"views/{k}": (cfg.views,) + s for k, s in shapes.items()})
        log.info("%d augmented views per image (%s): %d forward passes per image", cfg.views,
                 ",".join(cfg.augment), 1 + cfg.views)
    row_bytes = sum(int(np.prod(s)) for s in datasets.values()) * np.dtype(cfg.dtype).itemsize
    log.info("%d images, %s per image, about %s in all; precision %s on %s",
             len(source), _human(row_bytes), _human(row_bytes * len(source)), plan.precision, plan.device)
    attrs = {
        "config": json.dumps(_config_record(cfg, plan), sort_keys=True),
        "key": json.dumps(plan.parts, sort_keys=True),
        "layers": json.dumps(plan.layers),
        "class_names": json.dumps(source.class_names),
        "dataset": source.name,
        "data_root": str(source.root) if source.root else "",
        "model": backbone.name,
        "versions": json.dumps(_versions()),
    }
    partial = store.partial_path(path, plan.shard)
    try:
        reuse = None if partial.exists() else store.find_reusable(path.parent, plan.parts, source, plan.manifest)
        writer = store.CacheWriter(path, source, plan.manifest, datasets, cfg.dtype, plan.fingerprint, attrs, reuse,
                                   shard=plan.shard)
        if reuse is not None:
            log.info("reusing %d rows of %s (unchanged files, same settings)", len(reuse.rows), reuse.path.name)
        if writer.rows_done:
            log.info("resuming: %d rows already done", writer.rows_done + writer.reused)
        try:
            timings = _run(cfg, plan, fx, writer)
            created = {"created": store.now_iso(), "timings": json.dumps(timings)}
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
                f"{_human(row_bytes * len(source))}); free some space and rerun the same command: "
                f"the rows already written are kept") from e
        raise
    rate = timings["rows"] / max(timings["total_s"], 1e-9)
    log.info("done: %d images (%d skipped, %d reused), D=%s, %.1f s, %.1f img/s, %s -> %s", n_rows,
             len(failed), writer.reused, "+".join(str(int(np.prod(s))) for s in shapes.values()),
             timings["total_s"], rate, _human(path.stat().st_size), path)
    log.info("time went to: waiting for decoded images %.1f s, model %.1f s, writing %.1f s (in a thread)",
             timings["data_wait_s"], timings["compute_s"], timings["write_s"])
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
        result = store.publish(path, [(store.partial_path(path, (r, world)), (r, world)) for r in range(world)],
                               created)
    dist.barrier()
    return result


def _config_record(cfg: ExtractConfig, plan: Plan) -> dict:
    return {
        "data": str(cfg.data) if isinstance(cfg.data, (str, os.PathLike)) else type(cfg.data).__name__,
        "model": plan.backbone.name,
        "weights": plan.backbone.weights,
        "weights_sha256": plan.backbone.weights_sha256,
        "layers": list(plan.layers),
        "pool": cfg.pool,
        "preprocess": plan.backbone.preprocess.to_dict(),
        "precision": plan.precision,
        "dtype": cfg.dtype,
        "hash_content": cfg.hash_content,
        "gpu_decode": cfg.gpu_decode,
        "views": cfg.views,
        "augment": list(cfg.augment) if cfg.views else [],
        "batch_size": cfg.batch_size,
    }


def _versions() -> dict:
    import h5py
    import torchvision

    from . import __version__

    return {"featcache": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def list_layers(cfg: ExtractConfig) -> List[dict]:
    """Every graph node of the model with its output shape and pooled size (one dummy batch)."""
    cfg.validate()
    backbone = backbones.load_backbone(cfg)
    rows = backbones.layer_table(backbone, cfg.pool)
    try:
        stages = backbones.stage_outputs(backbone)
    except FeatcacheError:
        stages = []
    # Stage outputs are marked with the shortest preset that includes them (lastK) and their --layer name.
    marks = {s.node: f"last{len(stages) - i}" + (f" = {s.name}" if s.name != s.node else "")
             for i, s in enumerate(stages)}
    for r in rows:
        r["stage"] = marks.get(r["layer"], "")
    return rows
