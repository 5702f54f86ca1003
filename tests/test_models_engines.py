"""CPU engines (models/engines.py, extraction/engine.py): the real ONNX Runtime and OpenVINO on real exported graphs.

fp32 engines agree with torch and share its cache key; an engine that disagrees, or a graph that does not export,
leaves the run to torch; ``auto`` runs the fastest measured; int8 is opt-in with a key of its own."""
from __future__ import annotations

import logging
import re

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import featcache
from featcache.extraction import engine as engine_choice
from featcache.models import engines

pytestmark = [pytest.mark.skipif(set(engines.installed_engines()) != set(engines.CPU_ENGINES),
                                 reason="the CPU engines are not installed (pip install -e '.[cpu-fast]')"),
              pytest.mark.usefixtures("logs_reach_caplog")]  # the fixture is in conftest.py


def _features(path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.concatenate([f["features"][k][()].reshape(len(f["labels"]), -1) for k in sorted(f["features"])], 1)


def _ran(path) -> str:
    return featcache.load(path, lazy=True).meta.timings["engine"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))



@pytest.mark.slow
def test_fp32_engines_agree_with_torch_and_share_its_cache_key(class_folder, tmp_path, caplog):
    """EfficientNet-Lite0's real ImageNet weights: each engine writes the same cache (same key, same file name) as
    torch, with features at a cosine >= AGREEMENT; the graph is exported once and reused."""
    settings = dict(image_size=64, precision="fp32", num_workers=0, progress=False, cache_dir=tmp_path / "c")
    caplog.set_level(logging.INFO, logger="featcache")
    paths, feats = {}, {}
    for name in ("onnxruntime", "openvino", "torch"):
        paths[name] = featcache.extract(class_folder, engine=name, **settings)
        feats[name], ran = _features(paths[name]), _ran(paths[name])
        assert ran == name
        paths[name].rename(paths[name].with_suffix(".kept"))  # the next engine must extract, not hit
    assert len(set(paths.values())) == 1
    for name in engines.CPU_ENGINES:
        assert _cosines(feats[name], feats["torch"]).min() >= engines.AGREEMENT
        assert np.abs(feats[name] - feats["torch"]).max() < 1e-3
    assert caplog.text.count("exporting the network to ONNX") == 1  # paid once, by the first engine
    assert "engine openvino (cosine" in caplog.text


@pytest.mark.slow
def test_auto_runs_the_fastest_engine_measured_here(split_folder, fast, monkeypatch, caplog):
    """Every candidate is timed (torch too) and the fastest that agrees runs; the measurement is kept."""
    monkeypatch.setattr(engine_choice, "SHORT_RUN", 0)  # the folder is tiny: time the engines anyway
    caplog.set_level(logging.INFO, logger="featcache")
    path = featcache.extract(split_folder, **{**fast, "engine": "auto", "num_workers": 1})
    line = next(ln for ln in caplog.text.splitlines() if "img/s measured here" in ln)
    rates = {name: float(rate) for name, rate in re.findall(r"(torch|onnxruntime|openvino) (\d+)", line)}
    assert set(rates) == {"torch", "onnxruntime", "openvino"}
    assert _ran(path) == max(rates, key=rates.get)
    records = list((fast["cache_dir"] / "engines").glob("*/measured.*.json"))
    assert len(records) == 1 and "onnxruntime" in records[0].read_text()


def test_auto_leaves_a_short_run_to_torch(split_folder, fast, caplog):
    caplog.set_level(logging.INFO, logger="featcache")
    path = featcache.extract(split_folder, **{**fast, "engine": "auto"})
    assert _ran(path) == "torch" and "20 forward passes are too few" in caplog.text
    assert not (fast["cache_dir"] / "engines").exists() or not list((fast["cache_dir"] / "engines").glob("*/*.onnx"))


class _Tiny(nn.Module):
    """A small convolutional net; ``noise`` multiplies by torch's random numbers (an exported graph draws others),
    ``cummax`` uses an op torch's ONNX exporter cannot convert."""

    def __init__(self, noise: bool = False, cummax: bool = False):
        super().__init__()
        self.conv, self.noise, self.cummax = nn.Conv2d(3, 8, 3, padding=1), noise, cummax

    def forward(self, x):  # the layer stored is "relu": what comes before it is in the exported graph
        y = self.conv(x)
        if self.noise:
            y = y * torch.rand_like(y)
        if self.cummax:
            y = torch.cummax(y, dim=1).values
        return torch.relu(y)


@pytest.mark.parametrize("kind, why", [("noise", r"onnxruntime's features are not torch's \(cosine"),
                                       ("cummax", "the network does not export to ONNX|onnxruntime cannot run")])
def test_an_engine_that_cannot_give_torchs_features_leaves_the_run_to_torch(kind, why, split_folder, fast, caplog):
    torch.manual_seed(0)
    caplog.set_level(logging.INFO, logger="featcache")
    path = featcache.extract(split_folder, **{**fast, "model": _Tiny(**{kind: True}), "layers": ["relu"],
                                              "engine": "onnxruntime"})
    assert _ran(path) == "torch"
    line = next(ln for ln in caplog.text.splitlines() if "engine torch:" in ln)
    assert re.search(why, line) and "\x1b[" not in caplog.text  # one plain line, no exporter's colours


@pytest.mark.slow
def test_int8_is_opt_in_with_a_key_of_its_own(class_folder, tmp_path, caplog):
    settings = dict(image_size=64, num_workers=0, progress=False, cache_dir=tmp_path / "c")
    caplog.set_level(logging.INFO, logger="featcache")
    fp32 = featcache.extract(class_folder, **settings)
    int8 = featcache.extract(class_folder, precision="int8", **settings)
    assert int8 != fp32
    key = featcache.load(int8, lazy=True).meta.key
    assert key["precision"] == "int8" and key["engine"]["name"] in engines.CPU_ENGINES
    assert key["engine"]["calibration"]["images"] == engine_choice.CALIBRATION_IMAGES
    cos = _cosines(_features(int8), _features(fp32))
    assert 0.5 < cos.min() < engines.AGREEMENT  # it drifts, and says by how much
    assert "calibrated on 12 of your images" in caplog.text and "its own cache key" in caplog.text
    assert list((tmp_path / "c" / "engines").glob("*/model.int8.*.onnx"))
    with pytest.raises(featcache.FeatcacheError, match="int8 runs on a CPU engine"):
        featcache.extract(class_folder, precision="int8", engine="torch", **settings)


@pytest.mark.slow
def test_views_and_scales_run_on_an_engine_with_torchs_features(split_folder, fast, tmp_path):
    """fit's extra passes: augmented views (a 5-d batch) and the network at two scales, in one exported graph."""
    extra = dict(views=1, scales=(1.0, 0.5), image_size=48)
    by_torch = featcache.extract(split_folder, **{**fast, **extra})
    by_engine = featcache.extract(split_folder, **{**fast, **extra, "engine": "onnxruntime",
                                                   "cache_dir": tmp_path / "other"})
    assert by_torch.name == by_engine.name and _ran(by_engine) == "onnxruntime"
    with h5py.File(by_torch, "r") as a, h5py.File(by_engine, "r") as b:
        for group in ("features", "views"):
            for k in a[group]:
                x, y = a[group][k][()], b[group][k][()]
                assert _cosines(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])).min() >= engines.AGREEMENT


def test_bf16_on_a_cpu_that_emulates_it_warns_or_is_refused(monkeypatch, caplog):
    """Whether this machine has native bf16 is not ours to choose: the CPU's flags are patched to an AVX2-only CPU."""
    from featcache import runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    caplog.set_level(logging.WARNING, logger="featcache")
    assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert "emulated and several times slower than fp32" in caplog.text
    with pytest.raises(featcache.FeatcacheError, match=r"use precision fp32 or auto \(refused under strict\)"):
        runtime.resolve_precision("bf16", torch.device("cpu"), strict=True)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"
