"""The one place that touches torchvision's private fx tracer (stage: models).

torchvision's ``feature_extraction`` names graph nodes with its ``NodePathTracer`` and default settings;
tracing with the same tracer keeps node names identical to ``--layer`` names and to the cache's layers.
``get_graph_node_names`` and ``create_feature_extractor`` are public; the tracer set-up is not, so every
other module traces through :func:`trace`.
"""
from __future__ import annotations

import warnings
from typing import Dict, Tuple

import torch
from torch import nn

__all__ = ["trace"]


def trace(module: nn.Module) -> Tuple[torch.fx.Graph, Dict[torch.fx.Node, str]]:
    """``(graph, node -> qualified name)`` of ``module`` as torchvision's feature extraction traces it.

    Raises whatever torch.fx raises for an untraceable model; callers turn it into a message of their own.
    """
    from torchvision.models import feature_extraction as fe

    tracer = fe.NodePathTracer(**fe._set_default_tracer_kwargs(None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tracer.trace(module)
    return graph, tracer.node_to_qualname
