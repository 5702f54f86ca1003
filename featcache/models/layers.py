"""Naming layers: graph nodes, stage outputs, presets and the default layers (stage: models).

Layers are named as graph nodes, exactly as torchvision's ``feature_extraction`` names them
(``get_graph_node_names``); the default is the outputs of the last three stages (:func:`default_layers`),
whose deepest is the pooled penultimate features a linear probe uses. Imports torch and ``models.load``.
"""
from __future__ import annotations

import difflib
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import FeatcacheError
from ._fx import trace
from .load import Backbone, classifier_name

log = logging.getLogger("featcache")

__all__ = ["canonical_layer", "graph_node_names", "default_layer", "default_layers", "check_layers", "Stage",
           "stage_outputs", "resolve_layers", "PRESET_HELP"]


def graph_node_names(module: nn.Module) -> List[str]:
    """Eval-mode graph nodes (torchvision ``get_graph_node_names``), in execution order."""
    from torchvision.models.feature_extraction import get_graph_node_names

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _, nodes = get_graph_node_names(module)
        except Exception as e:
            raise FeatcacheError(f"cannot trace this model into named layers (torch.fx: {e}); "
                                 f"only the default layer of traceable models is supported") from e
    return [n for n in nodes if n != "x"]


def default_layer(module: nn.Module, nodes: Sequence[str]) -> str:
    """The input of the final classifier (skipping dropout): the penultimate, pooled features."""
    modules = dict(module.named_modules())
    head = classifier_name(module)
    if head in nodes:
        i = nodes.index(head) - 1
        while i > 0 and isinstance(modules.get(nodes[i]), (nn.Dropout, nn.Identity)):
            i -= 1
        return nodes[i]
    return nodes[-1]


DEFAULT_STAGES = 3


def default_layers(backbone: Backbone, nodes: Sequence[str]) -> List[str]:
    """What extraction stores without ``--layer``: the last three stage outputs, the deepest always being the
    penultimate features; models without stage outputs (ViTs) get the penultimate features alone.

    Mid-level stages beat the last layer by 2.5-3.6 points on data far from ImageNet (docs/layers.md),
    cost no extra forward pass, and the sweep's layer screen keeps the last layer where it is better. Where
    layers with weights sit between the last stage and the final classifier (MobileNetV3's and VGG's fully
    connected layers, ConvNeXt's LayerNorm), the penultimate features replace the last stage.
    """
    penultimate = default_layer(backbone.module, nodes)
    try:
        names = [s.name for s in stage_outputs(backbone)]
    except FeatcacheError:
        names = []
    if len(names) < 2:
        return [penultimate]
    ends = [i for i, n in enumerate(nodes) if n == names[-1] or n.startswith(names[-1] + ".")]
    modules = dict(backbone.module.named_modules())
    between = nodes[ends[-1] + 1:nodes.index(penultimate) + 1] if ends and penultimate in nodes else []
    owners = [_owner(n, modules) for n in between]  # a traced-through module's nodes are "<module>.<op>"
    if any(m is not None and next(m.parameters(recurse=False), None) is not None for m in owners):
        names = names[:-1] + [penultimate]
    return names[-DEFAULT_STAGES:]


def _owner(node: str, modules: Dict[str, nn.Module]) -> Optional[nn.Module]:
    """The module a graph node belongs to: the longest module name that is the node's name or a prefix of it."""
    parts = node.split(".")
    return next((modules[".".join(parts[:k])] for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in modules),
                None)


def check_layers(layers: Sequence[str], nodes: Sequence[str]) -> None:
    """Fail before any batch runs when a layer name is wrong, with the closest valid names.

    As in torchvision, a module name (``layer4``) stands for the last node inside that module.
    """
    for layer in layers:
        if layer not in nodes and not any(n.startswith(layer + ".") for n in nodes):
            close = difflib.get_close_matches(layer, nodes, n=5, cutoff=0.4)
            raise FeatcacheError(
                f"{{layers}} {layer!r} is not a node of this model"
                + (f"; closest: {', '.join(close)}" if close else "")
                + f". Run with --list-layers to see every node with its output shape (presets: {PRESET_HELP})")


PRESET_HELP = "lastK = the last K stage outputs, e.g. last2, last3; stages = every stage output"
_PRESET = re.compile(r"^(?:last(\d+)|stages)$")
STAGE_TRACE_SIZE = 224  # stages are found at this input size (or the crop size, if larger)


@dataclass(frozen=True)
class Stage:
    """The output of one stage: the last node, at one spatial resolution, that every path passes through."""

    name: str  # what --layer stores: the module whose last node this is (``layer3``), else the node
    node: str  # the graph node itself (``layer3.1.relu_1``)
    shape: Tuple[int, ...]  # (C, H, W) at the trace size


def stage_outputs(backbone: Backbone) -> List[Stage]:
    """The outputs of the network's stages, shallow to deep, for any traceable CNN.

    Trace the model (torch.fx, with the node names of ``get_graph_node_names``), run one dummy image
    through it at 224 px (so the stages do not depend on ``--image-size``), and keep the *cut nodes*:
    nodes every path from the image to the output passes through, i.e. block outputs, never a node
    inside a residual block. Going down the network, the resolution of 4-D cut nodes only falls
    (padding that briefly enlarges a map is skipped); the last cut node at each resolution, above 1x1
    (global pooling) and below the input size, is that resolution's stage output. Models without
    spatial maps (ViTs) have none.
    """
    cached = getattr(backbone, "_stages", None)
    if cached is not None:
        return cached
    try:
        graph, qual = trace(backbone.module.eval())
    except Exception as e:
        raise FeatcacheError(f"layer presets need a traceable model; torch.fx cannot trace this one "
                             f"({type(e).__name__}: {e}); name the layers instead (--list-layers)") from e
    order = list(graph.nodes)
    index = {n: i for i, n in enumerate(order)}
    live = set(n for n in order if n.op == "placeholder")  # tensors computed from the image ...
    for n in order:  # (x.size(0) and x.shape are numbers, not data paths: they may skip ahead)
        if n not in live and not _is_size(n) and any(a in live for a in n.all_input_nodes):
            live.add(n)
    used = set(n for n in order if n.op == "output")  # ... that the output needs
    for n in reversed(order):
        if any(u in used for u in n.users):
            used.add(n)
    cuts, furthest = [], -1
    for n in order:
        if n not in live or n not in used:
            continue
        if furthest <= index[n] and n in qual:  # no edge jumps over n: every path passes through it
            cuts.append(n)
        furthest = max([furthest] + [index[u] for u in n.users if u in used])
    shapes: Dict[str, Tuple[int, ...]] = {}
    wanted = set(cuts)

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if n in wanted and isinstance(result, torch.Tensor):
                shapes[qual[n]] = tuple(result.shape)
            return result

    size = max(backbone.preprocess.crop_size, STAGE_TRACE_SIZE)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Recorder(torch.fx.GraphModule(backbone.module, graph)).run(torch.zeros(1, 3, size, size))
    except Exception as e:
        raise FeatcacheError(f"layer presets: a {size}x{size} dummy image does not run through this model "
                             f"({type(e).__name__}: {e}); name the layers instead (--list-layers)") from e
    all_nodes = list(qual.values())
    groups: Dict[Tuple[int, ...], List[Tuple[str, str]]] = {}  # resolution -> [(node, module alias)]
    smallest = (size, size)
    for node in (qual[n] for n in cuts):
        shape = shapes.get(node)
        if shape is None or len(shape) != 4 or shape[0] != 1:
            continue
        res = shape[2:]
        if max(res) <= 1 or res[0] * res[1] > smallest[0] * smallest[1]:  # global pooling, or padding
            continue
        smallest = res
        if res != (size, size):
            groups.setdefault(res, []).append((node, _module_alias(node, all_nodes, backbone.module)))
    deep = [qual[n] for n in cuts][[qual[n] for n in cuts].index(groups[list(groups)[-1]][-1][0]):] if groups else []
    if any(len(shapes.get(node, ())) == 3 for node in deep):
        groups = {}  # the maps become a token sequence (a vision transformer's patch embedding): no CNN stages
    stages = []
    for members in groups.values():  # in order of first appearance: shallow to deep
        # Block boundaries, not a block's first layer that still runs at the old resolution: among the
        # cut nodes at one resolution, those with the shallowest module name; the last of them.
        depth = min(alias.count(".") for _, alias in members)
        node, alias = [m for m in members if m[1].count(".") == depth][-1]
        stages.append(Stage(alias, node, shapes[node][1:]))
    backbone._stages = stages
    return stages


def _is_size(n) -> bool:
    """``x.size(...)``, ``x.dim()`` or ``x.shape``: numbers about a tensor, not a path of its data."""
    if n.op == "call_method" and n.target in ("size", "dim"):
        return True
    return n.op == "call_function" and n.target is getattr and n.args[1:2] == ("shape",)


def _module_alias(node: str, nodes: Sequence[str], module: nn.Module) -> str:
    """The shortest module name that stands for ``node`` (its last node), e.g. ``layer3.1.relu_1`` -> ``layer3``."""
    modules = dict(module.named_modules())
    parts = node.split(".")
    for k in range(1, len(parts)):
        prefix = ".".join(parts[:k])
        if prefix in modules and [n for n in nodes if n.startswith(prefix + ".")][-1] == node:
            return prefix
    return node


def canonical_layer(layer: str, nodes: Sequence[str], module: nn.Module) -> str:
    """The one name of the tensor ``layer`` stands for: the shortest module name whose last node it is, else the
    node. ``_blocks.10`` and ``_blocks.10.add`` (the last node of block 10) are one tensor, so one cache key."""
    node = layer if layer in nodes else [n for n in nodes if n.startswith(layer + ".")][-1]
    name = _module_alias(node, nodes, module)
    if name != layer:
        log.info("layer %s is the output of %s: stored as %s", layer, name, name)
    return name


def resolve_layers(layers: Sequence[str], backbone: Backbone, nodes: Sequence[str]) -> List[str]:
    """Expand presets (``last2``, ``stages``) into layer names and check every name; order kept, no repeats.

    A name that is a node of the model is never taken for a preset.
    """
    if len(set(layers)) != len(layers):
        raise FeatcacheError(f"{{layers}} lists a layer twice: {' '.join(layers)}")
    out: List[str] = []
    for layer in layers:
        is_node = layer in nodes or any(n.startswith(layer + ".") for n in nodes)
        match = _PRESET.match(layer) if not is_node else None
        if match is None and not is_node and layer.lower().startswith(("last", "stage", "top", "first")):
            raise FeatcacheError(f"{{layers}} {layer!r} is neither a node of this model nor a known preset; "
                                 f"presets: {PRESET_HELP}")
        if match is None:
            check_layers([layer], nodes)
            out.append(canonical_layer(layer, nodes, backbone.module))
            continue
        stages = stage_outputs(backbone)
        listing = ", ".join(s.name for s in stages) or "none"
        if not stages:
            raise FeatcacheError(f"{{layers}} {layer}: this model has no stage outputs (no spatial feature maps, "
                                 f"e.g. a vision transformer); name the layers instead (--list-layers)")
        k = len(stages) if match.group(1) is None else int(match.group(1))
        if not 1 <= k <= len(stages):
            raise FeatcacheError(f"{{layers}} {layer}: K must be between 1 and {len(stages)}, the number of stage "
                                 f"outputs of this model ({listing})")
        out += [s.name for s in stages[-k:]]
    return list(dict.fromkeys(out))
