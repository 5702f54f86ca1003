"""Decoding in DataLoader workers: files to uint8 batches at the model's size, failures recorded, never fatal.

Stage: extraction. Imports torch, ``decode`` and ``sources``. Workers decode and resize to the final size
in uint8 (4x fewer bytes than float); with ``--gpu-decode`` JPEGs travel as bytes and are decoded in
batches on the model's device (:func:`decode_jpegs_on_device`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import threading
from typing import List, Tuple

import numpy as np
import torch

from .. import decode
from ..config import ExtractConfig
from ..models import Preprocess
from ..sources import Source

log = logging.getLogger("featcache")

__all__ = ["DecodeDataset", "ResilientBatches", "make_loader", "to_device_batch", "default_num_workers",
           "default_streams", "workers_and_streams",
           "decode_jpegs_on_device"]


def default_num_workers(device: torch.device) -> int:
    """Decode workers: on a CPU run they compete with the model for cores, so keep it to a few."""
    cores = os.cpu_count() or 1
    return min(8, max(1, cores - 1)) if device.type == "cuda" else max(1, min(4, cores // 2))


def default_streams(device: torch.device) -> int:
    """Batches in flight on the model. On a CPU, two streams of half the intra-op threads each: a decode
    worker that takes a core from one stream leaves the other running, where one stream's parallel ops all
    wait for the thread that lost its core (measured on 2 cores: 270-320 vs 237 img/s; docs/performance.md)."""
    return 2 if device.type == "cpu" and torch.get_num_threads() >= 2 else 1


def workers_and_streams(cfg: ExtractConfig, device: torch.device) -> Tuple[int, int]:
    """``(decode workers, model streams)`` for a run. Without workers the consuming thread decodes, and only the
    main thread can time a decode out (SIGALRM): one stream."""
    num_workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(device)
    return num_workers, 1 if num_workers == 0 else (cfg.streams or default_streams(device))


class DecodeDataset(torch.utils.data.Dataset):
    """The given rows of a source, decoded to uint8 CHW at the crop size; failures carry a reason.

    With ``raw_jpegs``, JPEG files are returned as their bytes (flag ``True``) for decoding on the device.
    With ``views``, each item is (1 + views, 3, S, S): the clean crop, then its augmented views.
    """

    def __init__(self, source: Source, pre: Preprocess, rows: np.ndarray, timeout_s: float,
                 raw_jpegs: bool = False, views: int = 0, augment=()):
        self.source, self.pre, self.rows, self.timeout_s, self.raw_jpegs = source, pre, rows, timeout_s, raw_jpegs
        self.views = views
        self.transform = decode.augmenter(augment, pre.crop_size, pre.resize_size) if views else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        i = int(self.rows[k])
        if self.raw_jpegs and self.source.root is not None and decode.is_jpeg(self.source.file_path(i)):
            try:
                with _time_limit(self.timeout_s):  # a read can hang too (a stale network mount)
                    return torch.from_numpy(np.fromfile(self.source.file_path(i), dtype=np.uint8)), "", True
            except (OSError, _DecodeTimeout) as e:
                return self._blank(), f"{type(e).__name__}: {e}", False
        pre = self.pre
        try:
            with _time_limit(self.timeout_s):
                if self.views:
                    arr = decode.decode_views(self.source, i, pre.resize_size, pre.crop_size, self.views,
                                               self.transform)
                else:
                    arr = decode.decode_sample(self.source, i, pre.resize_size, pre.crop_size)
        except Exception as e:  # any undecodable input becomes a recorded failure, never a crash
            return self._blank(), f"{type(e).__name__}: {e}", False
        return torch.from_numpy(arr), "", False

    def _blank(self) -> torch.Tensor:
        shape = (1 + self.views,) * bool(self.views) + (3, self.pre.crop_size, self.pre.crop_size)
        return torch.zeros(shape, dtype=torch.uint8)


def _collate(batch):
    """Stack decoded images; keep raw JPEG bytes (variable length) as a list for the device decoder."""
    tensors, reasons, raw = zip(*batch)
    if any(raw):
        return list(tensors), list(reasons), list(raw)
    return torch.stack(tensors), list(reasons), None


def to_device_batch(images, reasons: List[str], raw, device, pre: Preprocess) -> torch.Tensor:
    """One (B, 3, S, S) uint8 batch on ``device``; raw JPEGs are decoded there (failures update ``reasons``)."""
    if raw is None:
        return images.to(device, non_blocking=True)
    jpeg_rows = [k for k, is_raw in enumerate(raw) if is_raw]
    decoded, why = decode_jpegs_on_device([images[k] for k in jpeg_rows], device, pre.resize_size,
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


LOADER_GRACE_S = 60.0  # beyond the batch's decode timeouts: worker start-up, a busy machine


def make_loader(dataset: DecodeDataset, cfg: ExtractConfig, device, num_workers: int):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
        collate_fn=_collate,
        # Against a worker stuck where no signal reaches it: the batch is then decoded again image by image
        # (ResilientBatches), so only the stuck file fails.
        timeout=(cfg.decode_timeout * cfg.batch_size + LOADER_GRACE_S) if num_workers and cfg.decode_timeout else 0,
    )


class ResilientBatches:
    """The batches of ``dataset`` in order, from worker processes; a batch whose worker stalls past the loader's
    timeout (a read or decode no signal interrupts) is decoded again one image at a time, each in a worker of its
    own under the same limit: the stuck files fail alone, recorded with the reason, and the run goes on."""

    def __init__(self, dataset: DecodeDataset, cfg: ExtractConfig, device, num_workers: int):
        self.dataset, self.cfg, self.device, self.num_workers = dataset, cfg, device, num_workers
        self.done = 0  # rows of ``dataset`` handed out so far
        self.it = iter(make_loader(dataset, cfg, device, num_workers))

    def __iter__(self):
        return self

    def _subset(self, rows) -> DecodeDataset:
        sub = copy.copy(self.dataset)
        sub.rows = rows
        return sub

    def __next__(self):
        try:
            images, reasons, raw = next(self.it)
        except RuntimeError as e:
            if "timed out" not in str(e) or not self.num_workers:
                raise
            stalled = True
        else:
            stalled = False
        if stalled:  # out of the except block, so its traceback no longer keeps the stuck iterator alive
            return self._recover()
        self.done += len(reasons)
        return images, reasons, raw

    def _recover(self):
        stalled = self.dataset.rows[self.done:self.done + self.cfg.batch_size]
        log.warning("a decode worker stalled for %.0f s; decoding its %d image(s) one by one",
                    self.cfg.decode_timeout * self.cfg.batch_size + LOADER_GRACE_S, len(stalled))
        self.it = None  # shuts its workers down, the stuck one included
        single = self.cfg.replace(batch_size=1)
        items = []
        for row in stalled:
            try:
                images, reasons, raw = next(iter(make_loader(self._subset(np.array([row])), single, self.device, 1)))
                items.append((images[0], reasons[0], bool(raw[0]) if raw is not None else False))
            except RuntimeError as e:
                if "timed out" not in str(e):
                    raise
                why = f"decoding stalled for more than {self.cfg.decode_timeout + LOADER_GRACE_S:.0f} s (a hung read?)"
                items.append((self.dataset._blank(), why, False))
        self.done += len(stalled)
        rest = self.dataset.rows[self.done:]
        self.it = iter(make_loader(self._subset(rest), self.cfg, self.device, self.num_workers)) if len(rest) \
            else iter(())
        return _collate(items)


def decode_jpegs_on_device(datas: List[torch.Tensor], device, resize_size: int, crop_size: int):
    """Batched JPEG decode with ``torchvision.io.decode_jpeg`` on ``device`` (nvJPEG on CUDA), then
    resize and centre-crop there too. Returns ``(images, reasons)``; a file that fails gets ``None``.

    For GPU runs that are decode-bound: the CPU only reads bytes. Resizing uses torch's antialiased
    bilinear interpolation, so pixels differ slightly from the Pillow path (the cache key says which).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        reasons = [""] * len(datas)
    except RuntimeError:  # one bad file fails the whole batch: find it
        images, reasons = [], []
        for data in datas:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
                reasons.append("")
            except RuntimeError as e:
                images.append(None)
                reasons.append(f"RuntimeError: {e}")
    return [None if img is None else decode.resize_center_crop_tensor(img, resize_size, crop_size)
            for img in images], reasons

