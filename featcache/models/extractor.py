"""Running the frozen model: uint8 images in, pooled features per layer out (stage: models).

:class:`FeatureExtractor` wraps torchvision's ``create_feature_extractor`` with normalisation on the
device, :func:`pool` and, with ``scales``, the same images at other sizes; :func:`layer_table` is what
``extract --list-layers`` prints.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Sequence

import torch
from torch import nn

from ..errors import FeatcacheError
from .layers import graph_node_names
from .load import Backbone

__all__ = ["pool", "FeatureExtractor", "layer_table"]


def pool(x: torch.Tensor, how: str) -> torch.Tensor:
    """Turn one layer's output into per-image features: (B, C, H, W) maps or (B, T, D) tokens."""
    if x.ndim <= 2 or how == "none":
        return x
    if how == "flatten":
        return x.flatten(1)
    if x.ndim == 3:  # tokens: (B, T, D), batch-first as in torchvision/timm ViTs
        if how == "cls":
            return x[:, 0]
        dims = (1,)
    else:
        if how == "cls":
            raise FeatcacheError("{pool} cls takes the class token of a (batch, tokens, dim) output; "
                                 f"this layer gives a {tuple(x.shape[1:])} map, use avg, max, gem or flatten")
        dims = tuple(range(2, x.ndim))
    if how == "avg":
        return x.mean(dims)
    if how == "max":
        return x.amax(dims)
    if how == "gem":  # generalised mean, p=3 (Radenović et al.), common for retrieval
        return x.float().clamp(min=1e-6).pow(3).mean(dims).pow(1.0 / 3)
    raise FeatcacheError(f"unknown {{pool}} {how!r}")


class FeatureExtractor(nn.Module):
    """uint8 images in, ``{layer: pooled features}`` out; normalisation runs on the model's device.

    With ``scales`` (e.g. ``(1.0, 0.667)``) the network also runs on the normalised batch resized by each factor
    (bilinear, antialiased) and each layer's pooled features are the concatenation over the scales, in order:
    a small image upscaled to the model's size is often better seen at a smaller one, and the two views differ.
    """

    def __init__(self, backbone: Backbone, layers: Sequence[str], pooling: str, scales: Sequence[float] = (1.0,)):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.layers = list(layers)
        self.pooling = pooling
        self.scales = [float(s) for s in scales]
        pre = backbone.preprocess
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.body = create_feature_extractor(backbone.module, {n: n for n in self.layers})

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = (images.float() - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
        per_scale = [self._pooled(self._resized(x, s)) for s in self.scales]
        if len(per_scale) == 1:
            return per_scale[0]
        return {name: torch.cat([out[name].flatten(1) for out in per_scale], dim=1) for name in self.layers}

    def _pooled(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = self.body(x)
        return {name: pool(out[name], self.pooling) for name in self.layers}

    @staticmethod
    def _resized(x: torch.Tensor, scale: float) -> torch.Tensor:
        if scale == 1.0:
            return x
        size = max(1, round(x.shape[-1] * scale))
        if size == x.shape[-1]:
            return x
        return nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def layer_table(backbone: Backbone, pooling: str, device: str = "cpu") -> List[dict]:
    """Every node with its raw output shape and pooled width, from one dummy batch of two images."""
    nodes = graph_node_names(backbone.module)
    fx = FeatureExtractor(backbone, nodes, "none").to(device)
    size = backbone.preprocess.crop_size
    with torch.inference_mode():
        out = fx.body((torch.zeros(2, 3, size, size, device=device)))
    rows = []
    for n in nodes:
        t = out.get(n)
        if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != 2:
            continue  # weights, sizes and other non-batch values
        try:
            dim = pool(t, pooling)[0].numel()
        except FeatcacheError:
            dim = None
        rows.append({"layer": n, "shape": tuple(t.shape[1:]), "dim": dim})
    return rows
