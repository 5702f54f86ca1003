"""Running the frozen extractor with a CPU inference engine: ONNX Runtime or OpenVINO (stage: models).

The whole :class:`FeatureExtractor` (normalisation, the network, every requested layer pooled inside it, ``--scales``
joined) is exported once to ONNX with ``torch.onnx.export`` (the dynamo exporter, batch size left free), so one call
returns every layer's features. ONNX Runtime runs the file; OpenVINO reads it. Measured on an AMD EPYC (2 cores,
AVX-512), EfficientNet-Lite0 at 96 px, batch 64, model only, img/s: torch eager 652, ONNX Runtime 1,328, OpenVINO
1,703; every fp32 feature agreed with torch's to a cosine of 0.9999998 (max abs diff 2e-5). A runner is called like
the torch module (uint8 images in, ``{layer: features}`` out) from several threads at once: each thread of the
extraction is one inference stream.

``int8`` runs a copy of the ONNX file quantised after training (ONNX Runtime's static QDQ quantisation, calibrated on
images the caller passes: the user's own), by either engine.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .._util import atomic_path, package_versions
from ..config import ENGINES
from ..errors import FeatcacheError
from .extractor import FeatureExtractor

__all__ = ["CPU_ENGINES", "AGREEMENT", "installed_engines", "export_onnx", "quantize_int8", "open_runner",
           "agreement", "timed", "EngineRunner"]

log = logging.getLogger("featcache")

CPU_ENGINES = ("onnxruntime", "openvino")
# Features an engine computes agree with torch's when every row of every layer has at least this cosine with torch's
# at the same precision: such an engine shares torch's cache key (docs/cache-format.md).
AGREEMENT = 0.99999
_EXPORT_PACKAGES = ("onnx", "onnxscript")  # what torch.onnx.export's dynamo exporter needs
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the quantised layers run int8, the rest f32


def installed_engines() -> Dict[str, str]:
    """``{engine: version}`` of the CPU engines whose packages (and the exporter's) are installed; nothing imported."""
    if not all(importlib.util.find_spec(p) for p in _EXPORT_PACKAGES):
        return {}
    found = package_versions(*CPU_ENGINES)
    return {name: version for name, version in found.items() if version != "not installed"}


class _Outputs(nn.Module):
    """The extractor with its ``{layer: features}`` as a tuple in layer order: what ONNX graphs return."""

    def __init__(self, fx: FeatureExtractor):
        super().__init__()
        self.fx = fx

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = self.fx(images)
        return tuple(out[name] for name in self.fx.layers)


def export_onnx(fx: FeatureExtractor, crop: int, path: Path) -> None:
    """Write ``fx`` (on the CPU, fp32) to ``path`` as one ONNX file taking (batch, 3, crop, crop) uint8 images.

    Raises whatever the exporter raises: the caller falls back to torch. torch's exporter prints its progress on
    stdout, which carries only results here, so that goes to stderr."""
    from torch.export import Dim

    example = torch.zeros(2, 3, crop, crop, dtype=torch.uint8)
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(_Outputs(fx).eval(), (example,), str(tmp), dynamo=True, external_data=False,
                          # outputs in layer order, under names no node of the graph has (a node may be "relu")
                          input_names=["images"], output_names=[f"featcache_out{i}" for i in range(len(fx.layers))],
                          verbose=False,
                          dynamic_shapes=({0: Dim("batch", min=1, max=1 << 16)},))


def quantize_int8(onnx_path: Path, out_path: Path, images: np.ndarray) -> None:
    """Post-training static int8 quantisation of ``onnx_path`` (QDQ, per-channel weights), its activation ranges
    calibrated on ``images`` (uint8, (n, 3, S, S)): the user's own."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": images[i:i + 8]} for i in range(0, len(images), 8)])

        def get_next(self):
            return next(self.batches, None)

    fd, pre = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".pre.onnx")  # scratch
    os.close(fd)
    try:
        with atomic_path(out_path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            quant_pre_process(str(onnx_path), pre, skip_symbolic_shape=True)
            quantize_static(pre, str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        os.unlink(pre)


class EngineRunner:
    """uint8 images in, ``{layer: features}`` out, as :class:`FeatureExtractor`; safe to call from several threads."""

    name = ""

    def __init__(self, layers: Sequence[str], version: str):
        self.layers = list(layers)
        self.version = version

    def _run(self, images: np.ndarray) -> List[np.ndarray]:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = self._run(np.ascontiguousarray(images.cpu().numpy()))
        return {name: torch.from_numpy(np.asarray(x)) for name, x in zip(self.layers, outputs)}

    def to(self, device):  # the torch module's interface: engines run on the CPU only
        return self


class _OnnxRuntime(EngineRunner):
    name = "onnxruntime"

    def __init__(self, path: Path, layers, version: str, threads_per_stream: int):
        import onnxruntime as ort

        super().__init__(layers, version)
        so = ort.SessionOptions()
        # One intra-op thread per stream runs on the calling thread: the extraction's streams are the parallelism.
        so.intra_op_num_threads = max(1, threads_per_stream)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def _run(self, images):
        return self.session.run(None, {"images": images})


class _OpenVino(EngineRunner):
    name = "openvino"

    def __init__(self, path: Path, layers, version: str, precision: str, streams: int, threads: int,
                 compiled_dir: Path):
        import openvino as ov

        super().__init__(layers, version)
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(compiled_dir)})  # the compiled model, reused by later runs
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(max(1, streams)),
            "INFERENCE_NUM_THREADS": str(max(1, threads)), "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision]})
        self.local = threading.local()  # one infer request per calling thread (= per stream)

    def _run(self, images):
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        request.infer({0: images})
        return [request.get_output_tensor(i).data.copy() for i in range(len(self.layers))]


def open_runner(engine: str, path: Path, layers: Sequence[str], precision: str, streams: int, threads: int,
                work_dir: Path) -> EngineRunner:
    """An engine's runner for the ONNX file at ``path``: ``streams`` threads will call it, ``threads`` cores in all."""
    version = installed_engines().get(engine)
    if version is None:
        raise FeatcacheError(f"engine {engine!r} is not installed: pip install 'featcache[cpu-fast]'")
    if engine == "onnxruntime":
        if precision == "bf16":
            raise FeatcacheError("ONNX Runtime runs fp32 or int8 on the CPU, not bf16 ({engine} openvino or torch)")
        return _OnnxRuntime(path, layers, version, threads // max(1, streams))
    if engine == "openvino":
        return _OpenVino(path, layers, version, precision, streams, threads, work_dir / "openvino")
    raise FeatcacheError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")


def agreement(reference: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor]) -> Tuple[float, float]:
    """``(min cosine, max abs diff)`` over every row of every layer: how far ``other``'s features are from torch's."""
    cosines, diffs = [], []
    for name, ref in reference.items():
        a = ref.detach().float().flatten(1).double()
        b = other[name].detach().float().flatten(1).double()
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)
        same = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)  # two all-zero rows agree
        cosines.append(torch.where(same, torch.ones_like(cos), cos).min().item())
        diffs.append((a - b).abs().max().item())
    return min(cosines), max(diffs)


def timed(run: Callable[[], object], repeats: int = 2) -> float:
    """The best of ``repeats`` timed calls of ``run`` after one untimed call, in seconds."""
    import time

    run()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best
