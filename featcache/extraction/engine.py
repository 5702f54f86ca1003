"""Which engine runs the network for an extraction: planned from the settings, measured here when there is a choice
(stage: extraction).

The rule for the cache key, decided before anything runs: fp32 features from ONNX Runtime or OpenVINO share torch's
fp32 key, because an engine runs only after its features agreed with torch's on images of the user's own (every row
of every layer at a cosine of at least :data:`~featcache.models.engines.AGREEMENT`, checked before the first row is
written); one that does not agree is not used, and torch runs instead, saying so. bf16 on OpenVINO and int8 are the
engine's own numbers: their name, version and precision enter the key. ``--precision auto`` on a CPU is fp32 when a
CPU engine is installed (exact, and the same cache on every machine), else bf16 where the CPU runs it natively.

``--engine auto`` on a CPU times torch and every installed engine on the same batch, the way the run calls them (one
call per stream, all streams at once), and runs the fastest that agrees. The exported graph and what was measured live
in ``<cache dir>/engines/<graph>/`` and are reused; a run of fewer than :data:`SHORT_RUN` images runs torch unless
its graph was exported before.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from .. import decode, models
from .._util import atomic_write_text, cpu_flags, json_text, library_versions, sha256_json
from ..cache.key import FEATURES_VERSION
from ..config import ExtractConfig
from ..errors import FeatcacheError
from ..models import engines
from ..runtime import autocast, resolve_precision, torch_threads

__all__ = ["EngineChoice", "plan_engine", "choose_engine", "check_images", "ENGINE_FORMAT", "CALIBRATION_IMAGES",
           "SHORT_RUN"]

log = logging.getLogger("featcache")

ENGINE_FORMAT = 1  # what the engines folder holds and how it is measured: bump to measure again
CALIBRATION_IMAGES = 128  # int8: images of the user's own that calibrate the activation ranges
# --engine auto exports a graph for a run of at least this many images (forward passes): exporting EfficientNet-Lite0
# took 6-7 s, and an engine then runs it 2-3x faster than torch; once exported, a run of any size uses it.
SHORT_RUN = 512
_CHECK_IMAGES = 14  # the user's images in the agreement check (plus a noise image and a gradient)
_TIMING_BATCH = 32  # images per call when engines are timed against each other
_INT8_ORDER = ("openvino", "onnxruntime")  # --precision int8 --engine auto: the first installed (fastest measured)


@dataclass
class EngineChoice:
    """The engine an extraction runs and at which precision; ``runner`` is what its streams call."""

    name: str
    precision: str
    runner: object
    why: str = ""  # one line for the log


def plan_engine(cfg: ExtractConfig, device: torch.device) -> Tuple[str, str, Optional[dict]]:
    """``(engine, precision, cache key part)`` from the settings alone: nothing is exported or measured here, so a
    cache hit never pays for it. The engine stays ``auto`` where a measurement at run time decides."""
    installed = engines.installed_engines() if device.type == "cpu" else {}
    engine, precision = cfg.engine, cfg.precision
    if device.type != "cpu":
        if engine not in ("auto", "torch") or precision == "int8":
            raise FeatcacheError(f"engine {engine} and int8 run on the CPU; on {device} use {{engine}} torch "
                                 f"(or auto) and {{precision}} auto, fp16, bf16 or fp32")
        return "torch", resolve_precision(precision, device, strict=cfg.strict), None
    if engine not in ("auto", "torch") and engine not in installed:
        raise FeatcacheError(f"engine {engine!r} is not installed: pip install 'featcache[cpu-fast]' "
                             f"(installed: {', '.join(installed) or 'none'})")
    if precision == "int8":
        if "onnxruntime" not in installed:
            raise FeatcacheError("{precision} int8 quantises the network with ONNX Runtime, which is not installed: "
                                 "pip install 'featcache[cpu-fast]'")
        if engine == "auto":
            engine = next(e for e in _INT8_ORDER if e in installed)
        calibration = {"images": CALIBRATION_IMAGES, "pick": "evenly spaced", "method": "static QDQ, minmax, "
                       "per-channel int8 weights", "quantizer": library_versions("onnxruntime")["onnxruntime"]}
        return engine, "int8", {"name": engine, "version": installed[engine], "precision": "int8",
                                "calibration": calibration}
    if precision == "auto":
        precision = "fp32" if installed and engine != "torch" else resolve_precision("auto", device)
    if engine == "auto" and precision != "fp32":
        engine = "torch"  # only torch's bf16 is torch's bf16
    if engine == "onnxruntime" and precision == "bf16":
        raise FeatcacheError("ONNX Runtime runs fp32 or int8 on the CPU, not bf16: use {engine} openvino or torch")
    if engine == "torch" or engine == "auto":
        return engine, resolve_precision(precision, device, strict=cfg.strict), None
    if precision == "bf16":
        return engine, "bf16", {"name": engine, "version": installed[engine], "precision": "bf16"}
    return engine, "fp32", None


def check_images(source, pre: models.Preprocess, n: int = _CHECK_IMAGES, extras: bool = True) -> torch.Tensor:
    """Up to ``n`` of the source's images, evenly spread, decoded as the run decodes them, and (``extras``) uniform
    noise and a diagonal gradient: (m, 3, S, S) uint8. Files that fail to decode are left out."""
    size = pre.crop_size
    picked = []
    for i in np.unique(np.linspace(0, len(source) - 1, num=min(n, len(source))).round().astype(int)):
        try:
            picked.append(decode.decode_sample(source, int(i), pre.resize_size, size))
        except Exception:  # noqa: BLE001 - a bad file is the run's to report, not the check's
            continue
    if extras or not picked:
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        picked.append(np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8))
        picked.append(np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, ramp[::-1]) / 2,
                                np.broadcast_to(ramp, (size, size))]).astype(np.uint8))
    return torch.from_numpy(np.stack(picked))


def _work_dir(cfg: ExtractConfig, backbone: models.Backbone, fx) -> Path:
    """``<cache dir>/engines/<model>__<hash>``: one folder per exported graph; a temporary one where the cache
    folder is read-only (the export is then paid again next time)."""
    ident = {"model": backbone.name, "weights_sha256": backbone.weights_sha256, "code": backbone.code,
             "layers": list(fx.layers), "pool": cfg.pool, "scales": [float(s) for s in cfg.scales],
             "preprocess": backbone.preprocess.to_dict(), "features_version": FEATURES_VERSION,
             "format": ENGINE_FORMAT, "versions": library_versions("torch", "torchvision", "onnx", "onnxscript")}
    folder = cfg.resolved_cache_dir() / "engines" / f"{backbone.name.replace(':', '-')[:40]}__{sha256_json(ident)[:16]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "graph.json").exists():
            atomic_write_text(folder / "graph.json", json_text(ident, indent=1))
        return folder
    except OSError:
        return Path(tempfile.mkdtemp(prefix="featcache-engine-"))


def _rate(call, batch: torch.Tensor, streams: int, precision: str = "fp32") -> float:
    """Images per second with ``streams`` threads calling ``call(batch)`` at once, as the run's streams do."""
    def one():
        with torch.inference_mode(), autocast(torch.device("cpu"), precision):
            call(batch)

    def all_streams():
        threads = [threading.Thread(target=one) for _ in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    with torch_threads(max(1, torch.get_num_threads() // streams)):
        return streams * len(batch) / engines.timed(all_streams)


def choose_engine(cfg: ExtractConfig, backbone: models.Backbone, fx, planned: Tuple[str, str, Optional[dict]],
                  source, rows: int, streams: int) -> EngineChoice:
    """The runner for this extraction: torch's module, or an engine's runner once its features agreed with torch's
    on the user's images (``planned`` is :func:`plan_engine`'s answer; ``rows`` how many images the run has left)."""
    engine, precision, key_part = planned
    if engine == "torch":
        return EngineChoice("torch", precision, fx)
    folder = _work_dir(cfg, backbone, fx)
    onnx = folder / "model.onnx"
    if engine == "auto" and not onnx.exists() and rows < SHORT_RUN:
        return EngineChoice("torch", precision, fx, f"engine torch: {rows} forward passes are too few to repay "
                                                    f"exporting the network for a CPU engine (it pays from "
                                                    f"{SHORT_RUN})")
    threads = torch.get_num_threads()
    images = check_images(source, backbone.preprocess)
    try:
        if not onnx.exists():
            log.info("exporting the network to ONNX once, for the CPU engines (%s)", folder)
            engines.export_onnx(fx, backbone.preprocess.crop_size, onnx)
        if precision == "int8":
            onnx = _quantized(onnx, folder, source, backbone.preprocess)
    except Exception as e:  # noqa: BLE001 - whatever the exporter cannot do, torch still can
        why = _said(e)
        if key_part is not None:  # bf16 on OpenVINO, int8: features only that engine makes
            raise FeatcacheError(f"{{engine}} {engine} {{precision}} {precision}: the network does not export to "
                                 f"ONNX ({why}); use {{engine}} torch") from e
        return EngineChoice("torch", precision, fx, f"engine torch: the network does not export to ONNX ({why})")
    candidates = list(engines.installed_engines()) if engine == "auto" else [engine]
    measured = _measure(fx, onnx, folder, candidates, precision, images, streams, timed=engine == "auto")
    return _pick(fx, engine, precision, key_part, measured, onnx, folder, streams, threads)


def _said(e: BaseException) -> str:
    """An exception in one plain line for the log (the exporter's messages span pages, in colour)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _quantized(onnx: Path, folder: Path, source, pre: models.Preprocess) -> Path:
    """The int8 copy of ``onnx``, calibrated on up to :data:`CALIBRATION_IMAGES` of the source's images."""
    images = check_images(source, pre, CALIBRATION_IMAGES, extras=False)
    path = folder / f"model.int8.{sha256_json(images.numpy().tobytes().hex())[:16]}.onnx"
    if not path.exists():
        log.info("--precision int8: quantising the network, calibrated on %d of your images", len(images))
        engines.quantize_int8(onnx, path, images.numpy())
    return path


def _measure(fx, onnx: Path, folder: Path, candidates, precision: str, images: torch.Tensor, streams: int,
             timed: bool) -> dict:
    """Each candidate's agreement with torch (and, when ``timed``, everyone's speed, torch's included), read from the
    folder's record for this machine and these versions when measured before."""
    machine = sha256_json({"flags": sorted(cpu_flags()), "threads": torch.get_num_threads(), "streams": streams})
    record_path = folder / f"measured.{machine[:16]}.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    batch = images.repeat((_TIMING_BATCH + len(images) - 1) // len(images), 1, 1, 1)[:_TIMING_BATCH]
    versions = engines.installed_engines()
    todo = [f"torch@{library_versions('torch')['torch']}@{precision}"] * timed + [
        f"{e}@{versions[e]}@{precision}@{onnx.name}" for e in candidates]
    reference = None
    for entry in [e for e in todo if e not in record]:
        name = entry.split("@")[0]
        if name == "torch":
            record[entry] = {"img_s": round(_rate(fx, batch, streams, precision), 1)}
            continue
        try:
            runner = engines.open_runner(name, onnx, fx.layers, precision, streams, torch.get_num_threads(), folder)
            if reference is None:  # torch at the engine's precision; int8 is compared with fp32
                with torch.inference_mode(), autocast(torch.device("cpu"), "bf16" if precision == "bf16" else "fp32"):
                    reference = fx(images)
            cosine, max_abs = engines.agreement(reference, runner(images))
            record[entry] = {"cosine": cosine, "max_abs": max_abs}
            if timed:
                record[entry]["img_s"] = round(_rate(runner, batch, streams), 1)
        except Exception as e:  # noqa: BLE001 - an engine that cannot run this graph is left out, saying why
            record[entry] = {"error": _said(e)}
        try:
            atomic_write_text(record_path, json_text(record, indent=1))
        except OSError:
            pass  # a read-only cache folder: measured again next time
    return {entry.split("@")[0]: record[entry] for entry in todo}


def _pick(fx, engine: str, precision: str, key_part, measured: dict, onnx: Path, folder: Path, streams: int,
          threads: int) -> EngineChoice:
    def agrees(m: dict) -> bool:
        return m.get("cosine", 0.0) >= engines.AGREEMENT

    def runner(name: str):
        return engines.open_runner(name, onnx, fx.layers, precision, streams, threads, folder)

    def said(name: str) -> str:
        m = measured[name]
        return f"cosine {m['cosine']:.7f} with torch's features, max abs diff {m['max_abs']:.2g}"

    failed = {n: m["error"] for n, m in measured.items() if "error" in m}
    if key_part is not None:  # the engine's own numbers: used as they are, the key says so
        if engine in failed:
            raise FeatcacheError(f"{{engine}} {engine} {{precision}} {precision}: {failed[engine]}; use {{engine}} "
                                 f"torch")
        return EngineChoice(engine, precision, runner(engine), f"engine {engine} at {precision} ({said(engine)}; its "
                                                              f"own cache key)")
    if engine != "auto":
        if engine in failed:
            return EngineChoice("torch", precision, fx, f"engine torch: {engine} cannot run this network "
                                                        f"({failed[engine]})")
        if not agrees(measured[engine]):
            return EngineChoice("torch", precision, fx, f"engine torch: {engine}'s features are not torch's "
                                                        f"({said(engine)})")
        return EngineChoice(engine, precision, runner(engine), f"engine {engine} ({said(engine)})")
    eligible = {n: m for n, m in measured.items() if n == "torch" or ("img_s" in m and agrees(m))}
    best = max(eligible, key=lambda n: eligible[n]["img_s"])
    table = ", ".join(f"{n} {m['img_s']:.0f}" + ("" if n in eligible else " (disagrees)")
                      for n, m in measured.items() if "img_s" in m)
    left_out = f"; left out: {', '.join(f'{n} ({why})' for n, why in failed.items())}" if failed else ""
    why = f"engine {best} (img/s measured here: {table}{left_out})"
    if best == "torch":
        return EngineChoice("torch", precision, fx, why)
    return EngineChoice(best, precision, runner(best), why + f"; {said(best)}")
