"""Running an extraction: decode workers feed ``streams`` model threads; one writer thread appends rows in order.

Stage: extraction. Imports torch, ``models``, ``cache`` (the writer) and ``runtime``. :class:`Streams` holds
the run's shared state by name: the batch iterator, the reorder buffer that hands finished batches to the
writer in input order, and the first error any thread met.
"""
from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from typing import Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import models
from ..cache import CacheWriter, RowBlock
from ..cache.layout import feature_path, views_path
from ..config import ExtractConfig
from ..runtime import autocast, torch_threads
from .loader import DecodeDataset, ResilientBatches, to_device_batch, workers_and_streams
from .plan import Plan

__all__ = ["run_streams", "Streams"]


class _WriterThread(threading.Thread):
    """The only thread that touches HDF5, so the model never waits on disk (bounded queue)."""

    def __init__(self, writer: CacheWriter, depth: int = 4):
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


def _features(fx: models.FeatureExtractor, batch: torch.Tensor) -> Dict[str, np.ndarray]:
    """The rows of one batch keyed by dataset path; a (B, 1 + K, 3, S, S) batch of images with
    augmented views also gives ``views/<layer>`` rows of shape (K, ...)."""
    if batch.dim() == 4:
        return {feature_path(k): v.float().cpu().numpy() for k, v in fx(batch).items()}
    b, v = batch.shape[:2]
    out = {}
    for k, x in fx(batch.flatten(0, 1)).items():
        x = x.float().cpu().numpy().reshape((b, v) + tuple(x.shape[1:]))
        out[feature_path(k)], out[views_path(k)] = x[:, 0], x[:, 1:]
    return out


class Streams:
    """``n`` threads that each take the next batch, run the model, and hand the rows on in batch order."""

    def __init__(self, n: int, batches, plan: Plan, fx, writer_thread: _WriterThread, bar, scale: int):
        self.n, self.batches, self.plan, self.fx, self.writer, self.bar, self.scale = (
            n, batches, plan, fx, writer_thread, bar, scale)
        self.take = threading.Lock()  # one thread at a time draws from the loader
        self.ordered = threading.Condition()  # guards the reorder buffer and the timings
        self.next_in = 0  # sequence number of the next batch drawn
        self.next_out = 0  # sequence number of the next batch the writer must get
        self.done: Dict[int, RowBlock] = {}  # finished batches waiting for their turn
        self.stop = False
        self.error: Optional[BaseException] = None
        self.timings = {"data_wait_s": 0.0, "compute_s": 0.0, "queue_wait_s": 0.0}
        self.rows_out = 0  # rows handed to the writer
        self.warm: Optional[tuple] = None  # (time, rows) once every stream's first batch, its warm-up, is out

    def stream(self) -> None:
        """Take the next batch, run the model, hand the rows to the writer in batch order."""
        device, precision, pre = self.plan.device, self.plan.precision, self.plan.backbone.preprocess
        while not self.stop:
            t0 = time.perf_counter()
            with self.take:
                if self.stop:
                    return
                try:
                    images, reasons, raw = next(self.batches)
                except StopIteration:
                    return
                seq, self.next_in = self.next_in, self.next_in + 1
            t1 = time.perf_counter()
            with torch.inference_mode():
                batch = to_device_batch(images, reasons, raw, device, pre)
            with torch.inference_mode(), autocast(device, precision):
                feats = _features(self.fx, batch)
            t2 = time.perf_counter()
            ok = np.array([r == "" for r in reasons], dtype=np.uint8)
            with self.ordered:
                self.done[seq] = RowBlock(feats, ok, list(reasons))
                while self.next_out in self.done:  # the writer appends rows in order
                    block = self.done.pop(self.next_out)
                    self.writer.put(block)
                    self.next_out += 1
                    self.rows_out += len(block.reasons)
                    if self.next_out == self.n:
                        self.warm = (time.perf_counter(), self.rows_out)
                    self.bar.update(len(block.reasons) * self.scale)
                self.timings["data_wait_s"] += (t1 - t0) / self.n
                self.timings["compute_s"] += (t2 - t1) / self.n
                self.timings["queue_wait_s"] += (time.perf_counter() - t2) / self.n

    def helper(self) -> None:
        """A stream on its own thread: its error stops every stream and is raised by :meth:`run_all`."""
        try:
            self.stream()
        except BaseException as e:
            self.error, self.stop = e, True

    def run_all(self) -> None:
        """Run ``n - 1`` helper threads and one stream on this thread (so Ctrl-C reaches the loop)."""
        helpers = [threading.Thread(target=self.helper, daemon=True, name=f"featcache-stream-{i}")
                   for i in range(1, self.n)]
        failed = True
        try:
            for h in helpers:
                h.start()
            self.stream()
            failed = False
        finally:
            self.stop = True
            for h in helpers:
                # After an error or Ctrl-C a helper may wait on decode workers that are gone: give up on it
                # (a daemon thread) rather than hang; its rows are not written, and a rerun resumes.
                h.join(timeout=10 if failed else None)
        if self.error is not None:
            raise self.error


def run_streams(cfg: ExtractConfig, plan: Plan, fx, writer: CacheWriter) -> dict:
    """Decode in workers, run the model (``fx``: torch's module or an engine's runner) in ``streams`` threads, write
    in order from one writer thread."""
    device = plan.device
    rows = writer.remaining
    num_workers, n_streams = workers_and_streams(cfg, device)
    dataset = DecodeDataset(plan.source, plan.backbone.preprocess, rows, cfg.decode_timeout,
                            raw_jpegs=cfg.gpu_decode, views=cfg.views, augment=cfg.augment)
    batches = ResilientBatches(dataset, cfg, device, num_workers)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    thread = _WriterThread(writer)
    thread.start()
    # Under torchrun only rank 0 shows a bar; its share times the world size estimates the global rate.
    scale = plan.shard[1] if plan.shard else 1
    bar = tqdm(total=len(plan.source), initial=max(0, len(plan.source) - len(rows) * scale), unit="img",
               desc="extract", disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    streams = Streams(n_streams, batches, plan, fx, thread, bar, scale)
    t_all = time.perf_counter()
    threads_each = max(1, torch.get_num_threads() // n_streams)
    try:
        with torch_threads(threads_each) if n_streams > 1 else contextlib.nullcontext():
            streams.run_all()
    finally:
        thread.q.put(None)
        thread.join()
        bar.close()
    if thread.error is not None:
        raise thread.error
    writer.flush()
    end = time.perf_counter()
    # the rate after every stream's first batch (its warm-up): what a longer run of the same data would average
    steady = (streams.rows_out - streams.warm[1]) / (end - streams.warm[0]) if streams.warm and \
        streams.rows_out > streams.warm[1] else None
    return {**streams.timings, "write_s": thread.busy_s, "total_s": end - t_all, "rows": len(rows),
            "steady_img_s": steady, "num_workers": num_workers, "streams": n_streams}
