"""Cutting a network in two and rewriting graphs for faster training (stage: models).

:func:`split_top` gives the layers after a node as a module whose input is that node's activation (what
fine-tuning from cached activations trains); :func:`split_frozen_prefix` cuts frozen layers off the front of
a top; :func:`with_pointwise_as_linear` computes 1x1 convolutions as matrix products. All trace through
``models._fx``.
"""
from __future__ import annotations

import copy
import operator
import warnings
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import FeatcacheError
from ._fx import trace

__all__ = ["split_top", "split_frozen_prefix", "pointwise_conv", "with_pointwise_as_linear"]


def split_top(module: nn.Module, node: str, output: str) -> torch.fx.GraphModule:
    """The layers of ``module`` after graph node ``node`` up to ``output``, as a module whose input is
    ``node``'s activation (a copy with the pretrained weights, traced in eval mode).

    Refused, naming the reason, when the model cannot be traced or when ``output`` also needs a value
    computed before ``node`` by another path (a skip connection across the split).
    """
    try:  # node names as get_graph_node_names gives them, so they match --layer and the cache
        graph, name = trace(module.eval())
    except Exception as e:
        raise FeatcacheError(f"cannot split this model into bottom and top: torch.fx cannot trace it "
                             f"({type(e).__name__}: {e})") from e
    order = [n for n in graph.nodes if n in name]
    start, end = _find_node(order, name, node, "{from_layer}"), _find_node(order, name, output, "output")
    image = next(n for n in graph.nodes if n.op == "placeholder")

    def batch_size(n) -> bool:
        """``x.size(0)`` / ``x.shape[0]`` of the image: the same number as the activation's batch size."""
        if n.op == "call_method" and n.target == "size" and n.args[0] is image:
            return n.args[1:] == (0,) or n.kwargs.get("dim") == 0
        return (n.op == "call_function" and n.target is operator.getitem and n.args[1] == 0
                and isinstance(n.args[0], torch.fx.Node) and n.args[0].args[:1] == (image,)
                and (n.args[0].target == "size" and len(n.args[0].args) == 1 or n.args[0].target == "shape"))

    crossing = _bypass(graph, image, start, batch_size)
    if end is start or not _depends_on(end, start):
        raise FeatcacheError(f"{{from_layer}} {node} does not come before {output} (the penultimate features); "
                             f"choose an earlier node")
    if crossing[end]:
        user, source = next((u, a) for u in order if u is not start and _depends_on(u, start)
                            for a in u.all_input_nodes if crossing[a])
        valid = [n for n in order if n.op not in ("placeholder", "get_attr") and _depends_on(end, n)
                 and not _bypass(graph, image, n, batch_size)[end]]
        here = order.index(start)
        near = ([name[n] for n in valid if order.index(n) < here][-1:]
                + [name[n] for n in valid if order.index(n) > here][:1])
        raise FeatcacheError(
            f"cannot split the model at {{from_layer}} {node}: {name[user]} also uses {name[source]}, which comes "
            f"from earlier layers, not from {node} (a skip connection across the split); the nearest nodes "
            f"where it can be split: "
            f"{', '.join(near) or 'none'}")
    needed, stack = set(), [end]
    while stack:
        n = stack.pop()
        if n in needed or n is start:
            continue
        needed.add(n)
        stack += [] if batch_size(n) else n.all_input_nodes
    top = torch.fx.Graph()
    env = {start: top.placeholder("activation")}
    for n in graph.nodes:
        if n in needed:
            env[n] = (top.call_method("size", (env[start], 0)) if batch_size(n)
                      else top.node_copy(n, lambda a: env[a]))
    top.output(env[end])
    return copy.deepcopy(torch.fx.GraphModule(module, top, class_name="Top"))


def _find_node(order, name, query: str, flag: str):
    """As torchvision resolves return nodes: the node itself, or the last node inside a module of that name
    (``flag``, what the error calls ``query``, may be a template such as ``{from_layer}``)."""
    hits = [n for n in order if name[n] == query or name[n].startswith(query + ".")]
    if not hits:
        raise FeatcacheError(f"{flag} {query!r} is not a node of this model; see extract --list-layers")
    exact = [n for n in hits if name[n] == query]
    return exact[0] if exact else hits[-1]


def _depends_on(node, ancestor) -> bool:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n is ancestor:
            return True
        if n not in seen:
            seen.add(n)
            stack += n.all_input_nodes
    return False


def _bypass(graph, image, start, batch_size) -> dict:
    """For every node: whether it depends on the image by a path that avoids ``start``."""
    out = {}
    for n in graph.nodes:
        out[n] = n is image or (n is not start and not batch_size(n) and any(out[a] for a in n.all_input_nodes))
    return out


def split_frozen_prefix(top: nn.Module, trainable: set, max_tries: int = 32):
    """``(prefix, rest)`` with ``rest(prefix(x)) == top(x)`` where ``prefix`` uses none of the ``trainable``
    parameter names: cut as late as the graph allows (at a node no skip connection crosses). None when the top
    cannot be traced, starts with a trained layer, or has no such cut near the first trained layer.
    ``rest`` holds the same parameter names as ``top`` for the layers it keeps.
    """
    from torchvision.models.feature_extraction import create_feature_extractor

    try:
        graph, qual = trace(top)
    except Exception:
        return None

    def trained(n) -> bool:
        if n.op == "get_attr":
            return n.target in trainable
        if n.op == "call_module":
            return any(f"{n.target}.{p}" in trainable for p, _ in top.get_submodule(n.target).named_parameters())
        return any(trained(a) for a in n.all_input_nodes if a.op == "get_attr")

    nodes = list(graph.nodes)
    first = next((i for i, n in enumerate(nodes) if trained(n)), None)
    output = next(n for n in nodes if n.op == "output").args[0]
    if first is None or not isinstance(output, torch.fx.Node) or output not in qual:
        return None
    candidates = [n for n in reversed(nodes[:first]) if n in qual and n.op not in ("placeholder", "get_attr")]
    for cut in candidates[:max_tries]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rest = split_top(top, qual[cut], qual[output])
                prefix = create_feature_extractor(top, {qual[cut]: "cut"})
        except Exception:  # FeatcacheError for a cut a skip connection crosses, or anything fx refuses
            continue
        return _Only(prefix, "cut"), rest
    return None


class _Only(nn.Module):
    """One output of a feature extractor that returns a dict."""

    def __init__(self, extractor: nn.Module, key: str):
        super().__init__()
        self.extractor, self.key = extractor, key

    def forward(self, x):
        return self.extractor(x)[self.key]


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A 1x1 convolution (stride 1, no padding, one group) as a matrix product over channels-last pixels.

    The same numbers as ``conv2d``; on small maps its backward pass runs about 2x faster on the CPU (oneDNN's
    convolution backward is tuned for large maps), and the 1x1 convolutions are most of an EfficientNet's
    or ResNet's top.
    """
    return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)


def with_pointwise_as_linear(top: nn.Module) -> nn.Module:
    """``top`` (a traced GraphModule) with its 1x1 convolutions computed by :func:`pointwise_conv`.

    Both forms in a traced graph are rewritten: ``torch.conv2d`` calls (modules whose forward calls
    ``F.conv2d``, e.g. EfficientNet's same-padding convs) and ``nn.Conv2d`` leaf modules (torchvision).
    Parameters are untouched (same names, same tensors), so the state dict and the outputs do not change.
    Anything else is returned as it is.
    """
    if not isinstance(top, torch.fx.GraphModule):
        return top
    graph = top.graph
    for n in list(graph.nodes):
        if n.op == "call_function" and n.target in (torch.conv2d, F.conv2d):
            args = list(n.args) + [None] * (7 - len(n.args))
            x, w, b, stride, padding, dilation, groups = args
            stride, padding, groups = (n.kwargs.get("stride", stride), n.kwargs.get("padding", padding),
                                       n.kwargs.get("groups", groups))
            weight = _attr(top, w.target) if w is not None and w.op == "get_attr" else None
            if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[-2:] != (1, 1):
                continue
            if _ones(stride) and _zeros(padding) and (groups in (None, 1)):
                with graph.inserting_after(n):
                    new = graph.call_function(pointwise_conv, (x, w, n.kwargs.get("bias", b)))
                n.replace_all_uses_with(new)
                graph.erase_node(n)
        elif n.op == "call_module":
            m = top.get_submodule(n.target)
            hooked = m._forward_hooks or m._forward_pre_hooks  # e.g. weight_norm computes weight in a pre-hook
            if (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) and _zeros(m.padding)
                    and m.groups == 1 and len(n.args) == 1 and not n.kwargs and not hooked):
                with graph.inserting_before(n):
                    w = graph.get_attr(f"{n.target}.weight")
                    b = graph.get_attr(f"{n.target}.bias") if m.bias is not None else None
                    new = graph.call_function(pointwise_conv, (n.args[0], w, b))
                n.replace_all_uses_with(new)
                graph.erase_node(n)
    graph.lint()
    top.recompile()
    return top


def _attr(module: nn.Module, target: str):
    """The tensor a ``get_attr`` node names (a parameter, buffer or plain attribute), or None."""
    for name in target.split("."):
        module = getattr(module, name, None)
    return module


def _ones(v) -> bool:
    return v in (None, 1) or (isinstance(v, (tuple, list)) and all(i == 1 for i in v))


def _zeros(v) -> bool:
    return v in (None, 0, "valid") or (isinstance(v, (tuple, list)) and all(i == 0 for i in v))
