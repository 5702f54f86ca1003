"""The network of a fine-tuning run (stage: orchestration): the cache's model rebuilt and split at the cached node
(the *top*: every layer after it up to the penultimate features), and a saved fine-tuned model as one torch module."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .. import models
from ..cache import FeatureSet
from ..cache.layout import CacheMeta
from ..config import ExtractConfig
from ..errors import FeatcacheError
from ..learn.top import TopClassifier
from ..selection.modelfile import load_model


def backbone_of(meta: CacheMeta, path) -> models.Backbone:
    """The cache's model rebuilt with its weights, refused unless the weights' checksum matches the cache's."""
    record = meta.config
    if record.get("weights") == "given module":
        raise FeatcacheError(f"{path}: its features came from a torch module passed in Python, which featcache "
                             f"cannot rebuild; fine-tune it in Python with "
                             f"TopClassifier(top=featcache.models.split_top(...))")
    backbone = models.load_backbone(ExtractConfig.from_record(record))
    if backbone.weights_sha256 != record.get("weights_sha256"):
        raise FeatcacheError(f"{path}: the weights loaded for {record.get('model')} ({backbone.weights}) are not the "
                             f"ones its features came from (the checksums differ); use the same weights file")
    return backbone


def split_for(meta: CacheMeta, path, node: str, backbone: Optional[models.Backbone] = None):
    """``(top, backbone)``: the layers of the cache's network after ``node`` up to its penultimate features."""
    backbone = backbone or backbone_of(meta, path)
    nodes = models.graph_node_names(backbone.module)
    return models.split_top(backbone.module, node, models.default_layer(backbone.module, nodes)), backbone


def check_activations(fs: FeatureSet, node: Optional[str], backbone: models.Backbone) -> str:
    """The cache layer to train from: spatial activations at ``node`` (or at the tensor it names: ``_blocks.10.add``
    is the cache's ``_blocks.10``); else an error naming the extract command."""
    record = fs.meta.config
    spatial = [name for name in fs.layers if record.get("pool") == "none" and len(fs.features[name].shape) >= 3]
    nodes = models.graph_node_names(backbone.module)
    if node is not None and node not in spatial and (node in nodes or any(n.startswith(node + ".") for n in nodes)):
        node = models.canonical_layer(node, nodes, backbone.module)
    if node in spatial:
        return node
    settings = ExtractConfig.from_record(record)
    command = (f"python -m featcache.extract --data {record.get('data') or 'DATA'} --model {settings.model} "
               f"--weights {settings.weights} --image-size {settings.image_size} --layer {node or 'NODE'} "
               f"--pool none --dtype float16")
    has = ", ".join(f"{name} {'x'.join(map(str, fs.features[name].shape[1:]))}" for name in fs.layers)
    if node is None:
        raise FeatcacheError(f"{{from_layer}} is required: the node whose activations the cache holds "
                             f"({', '.join(spatial) or 'none here'}); cache layers: {has}")
    raise FeatcacheError(f"{fs.path} holds no spatial activations at {node} (it has {has}, {{pool}} "
                         f"{record.get('pool')}); extract them first: {command}")


class Network(nn.Module):
    """uint8 images (B, 3, S, S) in, class logits out: the frozen bottom up to the split node, the trained top,
    the head. ``classes`` names the logits' columns."""

    def __init__(self, bottom: nn.Module, node: str, top: nn.Module, head: nn.Module, classes: Sequence[str]):
        super().__init__()
        self.bottom, self.node, self.top, self.head, self.classes = bottom, node, top, head, list(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.top(self.bottom(images)[self.node]))


def network(model_path, trust_model_code: bool = False) -> Network:
    """A saved fine-tuned model (``best.safetensors``) as one torch module, rebuilding the bottom from its metadata."""
    saved = load_model(model_path, trust_model_code=trust_model_code)
    if not isinstance(saved.pipeline, TopClassifier):
        raise FeatcacheError(f"{model_path} is not a fine-tuned model (it holds a {type(saved.pipeline).__name__})")
    node = saved.metadata["config"]["from_layer"]
    bottom = models.FeatureExtractor(backbone_of(CacheMeta(config=saved.metadata["extract_config"]), model_path),
                                     [node], "none")
    est = saved.pipeline
    return Network(bottom, node, est.top_, est.head_, est.classes_).eval()
