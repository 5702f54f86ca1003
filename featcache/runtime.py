"""Where and how torch computes: device, precision, autocast, thread limits (the one copy of each).

Stage: shared by models, extraction and learning; imports torch and ``errors`` only.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

from ._util import cpu_flags
from .errors import FeatcacheError

log = logging.getLogger("featcache")

__all__ = ["resolve_device", "cpu_has_fast_bf16", "resolve_precision", "autocast", "torch_threads"]


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first CUDA GPU when torch sees one, else the CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise FeatcacheError(f"device {device!r}: no CUDA GPU is visible to torch; use 'cpu' or 'auto' "
                             f"({{device}} cpu or auto)")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPUs where bf16 autocast is about twice as fast as fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(precision: str, device: torch.device, strict: bool = False) -> str:
    """``auto``: bf16 where the hardware runs it fast (recent GPUs/CPUs), fp16 on older GPUs, else fp32.

    ``bf16`` on a CPU without native bf16 is emulated, several times slower than fp32: a warning, or under
    ``strict`` an error."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise FeatcacheError("precision 'fp16' is for GPUs; on the CPU use bf16 or fp32 ({precision})")
        if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            slow = ("precision 'bf16' on this CPU (no AVX-512 BF16 or AMX) is emulated and several times slower "
                    "than fp32; use {precision} fp32 or auto")
            if strict:
                raise FeatcacheError(slow + " (refused under {strict})")
            log.warning(slow.format(precision="--precision"))  # a log line is no error: it names the flag, as before
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """torch's autocast for ``precision`` (``bf16``/``fp16``); nothing for ``fp32`` (or ``int8``, which engines run)."""
    if precision not in ("bf16", "fp16"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Limit torch's intra-op threads inside the block (joblib workers and inference streams share the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
