"""Frozen models: loading them with their weights, naming their layers, running them, cutting them.

Stage: models, below extraction and learning; every module imports torch.

- ``load``: :func:`load_backbone` -> :class:`Backbone` (module, preprocessing, weights checksum)
- ``layers``: graph node names, stage outputs, presets, the default layers
- ``extractor``: :class:`FeatureExtractor` (uint8 images -> pooled features per layer)
- ``cuts``: :func:`split_top` and the graph rewrites fine-tuning uses
- ``_fx``: the one place that touches torchvision's private tracer
"""
from .cuts import split_frozen_prefix, split_top, with_pointwise_as_linear
from .extractor import FeatureExtractor, layer_table, pool
from .layers import (
    canonical_layer,
    check_layers,
    default_layer,
    default_layers,
    graph_node_names,
    resolve_layers,
    stage_outputs,
)
from .load import Backbone, Preprocess, is_random, load_backbone, load_checkpoint, read_checkpoint, state_dict_sha256

__all__ = ["Backbone", "FeatureExtractor", "Preprocess", "canonical_layer", "check_layers", "default_layer",
           "default_layers", "graph_node_names", "is_random", "layer_table", "load_backbone", "load_checkpoint", "pool",
           "read_checkpoint", "resolve_layers", "split_frozen_prefix", "split_top", "stage_outputs",
           "state_dict_sha256", "with_pointwise_as_linear"]
