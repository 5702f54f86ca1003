"""Train a network's top blocks from cached activations: ``python -m featcache.finetune CACHE.h5 --from-layer NODE``.

The path of the data: the cache holds the spatial activations at NODE (``extract --layer NODE --pool
none``) → the network is rebuilt with the cache's model and weights (checked against the weights'
checksum) and split at NODE (:func:`featcache.backbones.split_top`): the *top* is every layer after
NODE up to the penultimate features → for each configuration of a small grid, a
:class:`TopClassifier` (the top with its pretrained weights + a new linear head) is trained with
AdamW on minibatches read from the cache a few storage chunks at a time, early-stopped on the val
rows → the leaderboard ranks the configurations on val, the best is scored once on test and saved
as ``best.joblib``, which ``featcache.predict`` applies to new images (it extracts NODE and runs the
trained top). The frozen bottom never runs here: it ran once, during extraction.

BatchNorm layers of the top keep their pretrained running statistics (eval mode) while their scale
and shift train, as is usual when fine-tuning on small data; dropout applies only to the new head.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import json
import logging
import sys
import time
import types
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F

from . import metrics
from .cli import Parser, make_callable, run_cli
from .config import ExtractConfig, FeatcacheError
from .streaming import Rows, available_memory, minibatches

log = logging.getLogger("featcache")

# --- reading activations ------------------------------------------------------------------------

def augment_maps(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per map: a horizontal flip with p=0.5 and a random shift of up to 1/8 of its size (edges replicated).

    Cheap stand-ins for flipping and translating the images; the conv filters are not mirror-symmetric,
    so a flipped map is only close to the map of a flipped image.
    """
    if x.ndim != 4:
        raise FeatcacheError(f"augmentation needs (C, H, W) feature maps; these activations are {tuple(x.shape[1:])}")
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    h, w = x.shape[-2:]
    p = max(1, round(min(h, w) / 8))
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dy, dx = torch.randint(0, 2 * p + 1, (2, len(x)), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))])


# --- a faster top ---------------------------------------------------------------------------------------

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


def split_frozen_prefix(top: nn.Module, trainable: set, max_tries: int = 32):
    """``(prefix, rest)`` with ``rest(prefix(x)) == top(x)`` where ``prefix`` uses none of the ``trainable``
    parameter names: cut as late as the graph allows (at a node no skip connection crosses). None when the top
    cannot be traced, starts with a trained layer, or has no such cut near the first trained layer.
    ``rest`` holds the same parameter names as ``top`` for the layers it keeps.
    """
    from torchvision.models import feature_extraction as fe

    from .backbones import split_top

    tracer = fe.NodePathTracer(**fe._set_default_tracer_kwargs(None))
    try:
        graph = tracer.trace(top)
    except Exception:
        return None
    qual = tracer.node_to_qualname

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
                prefix = fe.create_feature_extractor(top, {qual[cut]: "cut"})
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


def _attr(module: nn.Module, target: str):
    """The tensor a ``get_attr`` node names (a parameter, buffer or plain attribute), or None."""
    for name in target.split("."):
        module = getattr(module, name, None)
    return module


def _ones(v) -> bool:
    return v in (None, 1) or (isinstance(v, (tuple, list)) and all(i == 1 for i in v))


def _zeros(v) -> bool:
    return v in (None, 0, "valid") or (isinstance(v, (tuple, list)) and all(i == 0 for i in v))


# --- the estimator ------------------------------------------------------------------------------------

IN_MEMORY_BYTES = 2 << 30  # cached rows up to this size (and a quarter of free memory) are read once, not streamed


def in_memory_if_small(X):
    """A :class:`Rows` view read into a float32 array when it fits comfortably in memory; anything else as is.

    In memory every epoch is a full shuffle. A stream only shuffles within a buffer of chunk-aligned blocks,
    which on a class-sorted cache gives minibatches of few classes: measured on MNIST-5k at 224 px (192x7x7 maps,
    a 888-row buffer of 3,000 rows), test accuracy 0.862 streamed vs 0.954 for the same training on
    shuffled images.
    """
    if not isinstance(X, Rows):
        return X
    nbytes = len(X) * int(np.prod(X.row_shape)) * 4
    free = available_memory()
    if nbytes > IN_MEMORY_BYTES or (free is not None and nbytes > free // 4):
        return X
    out = np.empty(X.shape, dtype=np.float32)
    for pos, block in X.blocks():
        out[pos] = block
    return out


def top_blocks(top: nn.Module) -> Dict[str, List[str]]:
    """The top's parameter names by block, in execution order.

    A block is a parameter path up to its first numeric part (``layer4.1``, ``_blocks.15``: one child of a
    Sequential/ModuleList); consecutive modules outside such containers make one block (``_conv_head+_bn1``).
    """
    groups: Dict[str, List[str]] = {}
    for name, _ in top.named_parameters():
        parts = name.split(".")
        k = next((i for i, p in enumerate(parts[:-1]) if p.isdigit()), None)
        key = ".".join(parts[:k + 1]) if k is not None else parts[0]
        last = next(reversed(groups), None)
        if k is None and last is not None and not any(p.isdigit() for p in last.split(".")):
            if key not in last.split("+"):  # a loose module joins the preceding block of loose modules
                groups[f"{last}+{key}"] = groups.pop(last)
                last = f"{last}+{key}"
            key = last
        groups.setdefault(key, []).append(name)
    return groups


def unfreeze_last(top: nn.Module, train_blocks) -> List[nn.Parameter]:
    """Freeze ``top`` except its last ``train_blocks`` blocks (``"all"``: every block); returns the trainable ones."""
    blocks = list(top_blocks(top).values())
    k = len(blocks) if train_blocks == "all" else train_blocks
    if k > len(blocks):
        raise ValueError(f"train_blocks={k}, but the top has only {len(blocks)} blocks with weights")
    params = dict(top.requires_grad_(False).named_parameters())
    trainable = [params[n] for block in blocks[len(blocks) - k:] for n in block]
    for p in trainable:
        p.requires_grad_(True)
    return trainable


class TopClassifier(ClassifierMixin, BaseEstimator):
    """The top of a pretrained network plus a new linear head, trained on the activations where the top starts.

    Parameters
    ----------
    top : torch.nn.Module
        Activation at the split node in, penultimate features out, with pretrained weights (e.g.
        :func:`featcache.backbones.split_top`); copied, never modified. It runs in eval mode: BatchNorm keeps
        its running statistics while its scale and shift train.
    input_shape : tuple of int, default=None
        Shape of one activation, (C, H, W); only needed when ``X`` comes flattened to (n, C*H*W).
    train_blocks : int or "all", default="all"
        How many of the top's last blocks (:func:`top_blocks`) train; 0 trains only the head.
    lr, head_lr : float, default=1e-4, 1e-3
        AdamW learning rates of the pretrained blocks and of the new head.
    weight_decay : float, default=1e-2
        AdamW (decoupled) weight decay of every trained parameter.
    epochs, batch_size : int, default=10, 32
    early_stopping : bool, default=True
        Stop when the validation loss has not improved for ``n_iter_no_change`` epochs and keep the best
        epoch's weights; validation rows are ``X_val`` given to :meth:`fit`, else a stratified
        ``validation_fraction`` of ``X``.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=3
    augment : bool, default=False
        Random flips and shifts of the activation maps (:func:`augment_maps`) while training.
    dropout : float, default=0.0
        Dropout before the head.
    random_state : int, RandomState or None, default=None
    device : str, default="auto"
        ``auto`` trains on a CUDA GPU when one is visible; the fitted model is kept on the CPU.
    precision : {"auto", "bf16", "fp32"}, default="auto"
        Compute precision of the forward and backward passes (bf16 autocast; the weights and the optimiser
        stay float32). ``auto``: bf16 where the device runs it fast (CPUs with AVX-512 BF16/AMX, recent GPUs).

    ``X`` is an array or h5py dataset of activations, (n, C, H, W) or flattened, or a cache's rows as
    :class:`featcache.streaming.Rows` (``maps=True``): read into memory once when they fit (:func:`in_memory_if_small`,
    for a full shuffle every epoch), else streamed in chunk-aligned blocks. Fitted attributes: ``classes_``, ``input_shape_``, ``top_`` and ``head_`` (trained, CPU),
    ``n_epochs_``, ``best_epoch_``, ``loss_curve_``, ``validation_loss_curve_``.
    """

    def __init__(self, top=None, input_shape=None, train_blocks="all", lr=1e-4, head_lr=1e-3, weight_decay=1e-2,
                 epochs=10, batch_size=32, early_stopping=True, validation_fraction=0.1, n_iter_no_change=3,
                 augment=False, dropout=0.0, random_state=None, device="auto", precision="auto"):
        self.top = top
        self.input_shape = input_shape
        self.train_blocks = train_blocks
        self.lr = lr
        self.head_lr = head_lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.augment = augment
        self.dropout = dropout
        self.random_state = random_state
        self.device = device
        self.precision = precision

    def _validate_params(self) -> None:
        if not isinstance(self.top, nn.Module):
            raise ValueError(f"TopClassifier needs top=<torch module>; got {type(self.top).__name__}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32'; got {self.precision!r}")
        if self.train_blocks != "all" and not (isinstance(self.train_blocks, Integral) and self.train_blocks >= 0):
            raise ValueError(f"train_blocks must be 'all' or an int >= 0; got {self.train_blocks!r}")
        for name, kind, ok, allowed in [("lr", Real, lambda v: v > 0, "> 0"), ("head_lr", Real, lambda v: v > 0, "> 0"),
                                        ("weight_decay", Real, lambda v: v >= 0, ">= 0"),
                                        ("epochs", Integral, lambda v: v >= 1, ">= 1"),
                                        ("batch_size", Integral, lambda v: v >= 1, ">= 1"),
                                        ("validation_fraction", Real, lambda v: 0 < v < 1, "in (0, 1)"),
                                        ("n_iter_no_change", Integral, lambda v: v >= 1, ">= 1"),
                                        ("dropout", Real, lambda v: 0 <= v < 1, "in [0, 1)")]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
                raise ValueError(f"{name} must be {allowed}; got {value!r}")

    def _tensor(self, block) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).reshape((-1,) + self.input_shape_)

    def _input(self, xb, device) -> torch.Tensor:
        """A minibatch on ``device``; maps in channels-last order, the layout oneDNN's convolutions run fastest in."""
        xb = (xb if isinstance(xb, torch.Tensor) else self._tensor(xb)).to(device)
        return xb.contiguous(memory_format=torch.channels_last) if xb.ndim == 4 else xb

    def fit(self, X, y, X_val=None, y_val=None):
        """Train the top's last ``train_blocks`` blocks and the head on ``(X, y)``; returns ``self``."""
        from .heads import resolve_device

        self._validate_params()
        X, X_val = in_memory_if_small(X), in_memory_if_small(X_val)
        shape = tuple(X.shape[1:]) if len(X.shape) > 2 else self.input_shape
        if shape is None or int(np.prod(shape)) != int(np.prod(X.shape[1:])):
            raise ValueError(f"X has {X.shape[1:]} values per row; pass input_shape=(C, H, W) for flattened "
                             f"activations")
        self.input_shape_, self.n_features_in_ = tuple(int(s) for s in shape), int(np.prod(shape))
        y = np.asarray(y)
        check_classification_targets(y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"TopClassifier needs samples of at least 2 classes; y holds only {self.classes_[0]!r}")
        rng = check_random_state(self.random_state)
        train, val_X, val_pos, yv = np.arange(len(yi)), None, np.array([], dtype=np.int64), None
        if self.early_stopping and X_val is not None:
            unknown = sorted(set(np.asarray(y_val)) - set(self.classes_))
            if unknown:
                raise ValueError(f"y_val holds classes not in y: {unknown[:5]}")
            val_X, val_pos, yv = X_val, np.arange(len(y_val)), np.searchsorted(self.classes_, np.asarray(y_val))
        elif self.early_stopping:
            train, val_pos = _holdout(yi, self.validation_fraction, rng)
            val_X, yv = X, yi
        device = resolve_device(self.device)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
            self._train(X, yi, train, val_X, yv, val_pos, rng, device)
        return self

    def _train(self, X, yi, train, val_X, yv, val_pos, rng, device) -> None:
        from .pipeline import autocast, resolve_precision

        self.precision_ = "bf16" if resolve_precision(self.precision, device) == "bf16" else "fp32"
        self.frozen_prefix_ = False  # whether frozen layers before the trained blocks ran once, not every epoch
        net = copy.deepcopy(self.top).to(device).eval()
        if len(self.input_shape_) == 3:
            net = with_pointwise_as_linear(net).to(memory_format=torch.channels_last)
        trainable = unfreeze_last(net, self.train_blocks)
        with torch.no_grad():
            dim = net(self._input(next(minibatches(X, train[:1], 1))[1], device)).shape[1]
        # Frozen layers give the same outputs every epoch: compute them once (fp32, as predict will) and train
        # what follows. A frozen top leaves only the head; a partly trained one, the layers from the first
        # trained block on (when the rows are in memory and not augmented, and a cut before that block exists).
        prefix, rest = (net, nn.Identity()) if not trainable else (None, net)
        if trainable and self.train_blocks != "all" and not self.augment and not isinstance(X, Rows):
            names = {n for n, p in net.named_parameters() if p.requires_grad}
            split = split_frozen_prefix(net, names)
            if split is not None:
                prefix, rest = split
                trainable = [p.requires_grad_(n in names) for n, p in rest.named_parameters() if n in names]
                self.frozen_prefix_ = True
        params = dict(rest.named_parameters())
        head = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(dim, len(self.classes_))).to(device)
        opt = adamw([{"params": list(head.parameters()), "lr": self.head_lr}]
                    + ([{"params": trainable, "lr": self.lr}] if trainable else []), self.weight_decay)
        gen = torch.Generator().manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
        train_top = val_top = net
        if prefix is not None and (trainable or not self.augment):
            X, yi, train_top = self._outputs(prefix, X, train, device), yi[train], rest
            train = np.arange(len(train))
        if prefix is not None and len(val_pos):
            val_X, yv, val_top = self._outputs(prefix, val_X, val_pos, device), yv[val_pos], rest
            val_pos = np.arange(len(val_pos))
        y_train = torch.from_numpy(yi.astype(np.int64))
        y_val = torch.from_numpy(np.asarray(yv, dtype=np.int64)) if len(val_pos) else None
        self.loss_curve_, self.validation_loss_curve_ = [], []
        best_loss, best_state, stale = np.inf, None, 0
        for epoch in range(1, self.epochs + 1):
            head.train()
            total = 0.0
            for pos, block in minibatches(X, train, self.batch_size, rng):
                xb = block if isinstance(block, torch.Tensor) else self._tensor(block)
                if self.augment:
                    xb = augment_maps(xb, gen)
                with autocast(device, self.precision_):
                    logits = head(train_top(self._input(xb, device)))
                loss = F.cross_entropy(logits.float(), y_train[pos].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(pos)
            self.loss_curve_.append(total / len(train))
            self.n_epochs_ = self.best_epoch_ = epoch
            if y_val is None:
                continue
            val_loss = float(F.cross_entropy(self._logits(val_top, head, val_X, val_pos, device, self.precision_),
                                             y_val[val_pos]))
            self.validation_loss_curve_.append(val_loss)
            if val_loss < best_loss - 1e-4:
                best_loss, stale = val_loss, 0
                best_state = {"head": copy.deepcopy(head.state_dict()),
                              "top": {n: p.detach().clone() for n, p in params.items() if p.requires_grad}}
            else:
                stale += 1
                if stale >= self.n_iter_no_change:
                    break
        if best_state is not None:
            self.best_epoch_ = len(self.validation_loss_curve_) - stale
            head.load_state_dict(best_state["head"])
            with torch.no_grad():
                for n, value in best_state["top"].items():
                    params[n].copy_(value)
        if rest is not net and not isinstance(rest, nn.Identity):  # the trained layers back into the whole top
            with torch.no_grad():
                whole = dict(net.named_parameters())
                for n, p in params.items():
                    if p.requires_grad:
                        whole[n].copy_(p)
        self.top_ = net.cpu().eval().requires_grad_(False)
        self.head_ = head.cpu().eval().requires_grad_(False)

    def _outputs(self, net, X, positions, device, precision: str = "fp32") -> torch.Tensor:
        """``net`` applied to the rows at increasing ``positions`` of ``X``, in that order (CPU).

        Training passes its precision; predictions are fp32, so they match the deployed network's exactly.
        """
        from .pipeline import autocast

        out, seen = [], []
        with torch.inference_mode(), autocast(device, precision):
            for pos, block in minibatches(X, positions, max(self.batch_size, 64)):
                out.append(net(self._input(block, device)).float().cpu())
                seen.append(pos)
        # A Rows view yields its rows in file order; cat is made outside inference mode, so usable under autograd.
        return torch.cat(out)[np.argsort(np.concatenate(seen), kind="stable")]

    def _logits(self, top, head, X, positions, device, precision: str = "fp32") -> torch.Tensor:
        head.eval()
        return self._outputs(lambda x: head(top(x)), X, positions, device, precision)

    def transform(self, X) -> np.ndarray:
        """The trained top's outputs (the penultimate features) for activations ``X``."""
        check_is_fitted(self)
        return self._outputs(self.top_, X, np.arange(len(X)), torch.device("cpu")).numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        logits = self._logits(self.top_, self.head_, X, np.arange(len(X)), torch.device("cpu"))
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def adamw(groups: List[dict], weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where this torch has it (CPU: 2.4+; ~8 ms less per step here)."""
    try:
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay)


def _holdout(y: np.ndarray, fraction: float, rng) -> tuple:
    """Train/validation positions, stratified when every class can spare a row."""
    from sklearn.model_selection import train_test_split

    n_val = max(1, int(round(fraction * len(y))))
    counts = np.bincount(y)
    stratify = y if counts.min() >= 2 and min(n_val, len(y) - n_val) >= len(counts) else None
    train, val = train_test_split(np.arange(len(y)), test_size=n_val, stratify=stratify, random_state=rng)
    return np.sort(train), np.sort(val)


# --- the network behind a cache ------------------------------------------------------------------------

def backbone_of(meta: dict, path) -> Any:
    """The cache's model rebuilt with its weights, refused unless the weights' checksum matches the cache's."""
    from . import backbones
    from .predict import extract_settings

    record = meta.get("config") or {}
    if record.get("weights") == "given module":
        raise FeatcacheError(f"{path}: its features came from a torch module passed in Python, which featcache "
                             f"cannot rebuild; fine-tune it in Python with TopClassifier(top=backbones.split_top(...))")
    backbone = backbones.load_backbone(ExtractConfig(**extract_settings(record)))
    if backbone.weights_sha256 != record.get("weights_sha256"):
        raise FeatcacheError(f"{path}: the weights loaded for {record.get('model')} ({backbone.weights}) are not the "
                             f"ones its features came from (the checksums differ); use the same weights file")
    return backbone


def split_for(meta: dict, path, node: str):
    """``(top, backbone)``: the layers of the cache's network after ``node`` up to its penultimate features."""
    from . import backbones

    backbone = backbone_of(meta, path)
    nodes = backbones.graph_node_names(backbone.module)
    return backbones.split_top(backbone.module, node, backbones.default_layer(backbone.module, nodes)), backbone


def _check_activations(fs, node: Optional[str]) -> str:
    """The cache layer to train from: spatial activations at ``node``; else an error naming the extract command."""
    record = fs.meta.get("config") or {}
    spatial = [name for name in fs.layers if record.get("pool") == "none" and len(fs.features[name].shape) >= 3]
    if node in spatial:
        return node
    from .predict import extract_settings

    settings = extract_settings(record)
    command = (f"python -m featcache.extract --data {record.get('data') or 'DATA'} --model {settings['model']} "
               f"--weights {settings['weights']} --image-size {settings['image_size']} --layer {node or 'NODE'} "
               f"--pool none --dtype float16")
    has = ", ".join(f"{name} {'x'.join(map(str, fs.features[name].shape[1:]))}" for name in fs.layers)
    if node is None:
        raise FeatcacheError(f"--from-layer is required: the node whose activations the cache holds "
                             f"({', '.join(spatial) or 'none here'}); cache layers: {has}")
    raise FeatcacheError(f"{fs.path} holds no spatial activations at {node} (it has {has}, --pool "
                         f"{record.get('pool')}); extract them first: {command}")


# --- the run -------------------------------------------------------------------------------------------

@dataclass
class FinetuneConfig:
    """Everything that decides what a fine-tuning run trains, how it validates, and where results go.

    ``train_blocks``, ``lr`` and ``head_lr`` are lists: every combination is one configuration
    (with ``train_blocks`` 0 only the head trains, so ``lr`` does not vary there).
    """

    cache: Path
    from_layer: Optional[str] = None
    out: Optional[Path] = None  # None: write nothing (the Python API still returns the result)
    train_blocks: Sequence[Any] = (0, 1, "all")
    lr: Sequence[float] = (1e-4,)
    head_lr: Sequence[float] = (1e-3,)
    weight_decay: float = 1e-2
    epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    augment: bool = False
    dropout: float = 0.0
    val_fraction: Optional[float] = None  # a stratified hold-out of train when the cache has no val split (0.2)
    metric: str = "accuracy"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # training compute precision: auto (bf16 where fast), bf16 or fp32
    plots: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise FeatcacheError(f"--precision must be auto, bf16 or fp32; got {self.precision!r}")
        if self.metric not in metrics.METRICS:
            raise FeatcacheError(f"--metric must be one of {', '.join(metrics.METRICS)}; got {self.metric!r}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise FeatcacheError(f"--val-fraction must be between 0 and 1; got {self.val_fraction!r}")
        for flag, values in (("--lr", self.lr), ("--head-lr", self.head_lr)):
            if not values or any(not isinstance(v, Real) or v <= 0 for v in values):
                raise FeatcacheError(f"{flag} takes positive numbers; got {list(values)}")
        if not self.train_blocks or any(b != "all" and not (isinstance(b, Integral) and b >= 0)
                                        for b in self.train_blocks):
            raise FeatcacheError(f"--train-blocks takes integers >= 0 or 'all'; got {list(self.train_blocks)}")
        for flag, value, least in (("--epochs", self.epochs, 1), ("--patience", self.patience, 1),
                                   ("--batch-size", self.batch_size, 1)):
            if not isinstance(value, Integral) or value < least:
                raise FeatcacheError(f"{flag} must be an integer >= {least}; got {value!r}")
        if not 0 <= self.dropout < 1 or self.weight_decay < 0:
            raise FeatcacheError("--dropout must be in [0, 1) and --weight-decay >= 0")

    def grid(self) -> List[dict]:
        """One dict of TopClassifier parameters per configuration, in a stable order."""
        out = []
        for blocks in dict.fromkeys(self.train_blocks):
            for lr in (self.lr[:1] if blocks == 0 else dict.fromkeys(self.lr)):
                for head_lr in dict.fromkeys(self.head_lr):
                    out.append({"train_blocks": blocks, "lr": float(lr), "head_lr": float(head_lr)})
        return out


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the leaderboard (best first) and the best trained model."""

    leaderboard: Any  # pandas DataFrame
    best: TopClassifier
    best_params: dict
    test_scores: Optional[Dict[str, float]]
    scheme: str
    out: Optional[Path] = None
    files: List[Path] = dataclasses.field(default_factory=list)


def finetune(cache, from_layer: str, **settings) -> FinetuneResult:
    """Train the top blocks after ``from_layer`` (+ a new head) from the cache's activations at that layer.

    ``settings`` are :class:`FinetuneConfig` fields, e.g. ``finetune("c.h5", "layer3", out="runs/ft", epochs=5)``.
    """
    return run(FinetuneConfig(cache=Path(cache).expanduser(), from_layer=from_layer, **settings))


def run(cfg: FinetuneConfig) -> FinetuneResult:
    """The fine-tuning run for one :class:`FinetuneConfig` (what :func:`finetune` and the CLI call)."""
    from tqdm.auto import tqdm

    from . import grids, store
    from .sweep import leaderboard, make_scheme, result_key

    cfg.validate()
    fs = store.load(cfg.cache, lazy=True)
    try:
        node = _check_activations(fs, cfg.from_layer)
        top, _ = split_for(fs.meta, fs.path, node)
        n_blocks = len(top_blocks(top))
        too_many = [b for b in cfg.train_blocks if b != "all" and b > n_blocks]
        if too_many:
            raise FeatcacheError(f"--train-blocks {too_many[0]}: the top after {node} has {n_blocks} blocks with "
                                 f"weights ({', '.join(top_blocks(top))})")
        labelled = fs.y >= 0
        split = fs.split
        pool = labelled & (np.isin(split, ["train", "val"]) if split is not None else True)
        test_rows = np.flatnonzero(labelled & (split == "test")) if split is not None else np.array([], np.int64)
        rows = np.flatnonzero(pool)
        if len(np.unique(fs.y[rows])) < 2:
            raise FeatcacheError(f"{fs.path}: fine-tuning needs labelled training rows of at least 2 classes")
        # The rows make_scheme reads (as sweep.Features has them): labels, splits and class names of the pool.
        feats = types.SimpleNamespace(y=fs.y[rows], pool_split=split[rows] if split is not None else None,
                                      classes=list(fs.classes))
        has_val = split is not None and (split[rows] == "val").any()
        scheme = make_scheme(feats, None, cfg.val_fraction or (None if has_val else 0.2), cfg.seed)
        (train, val), = scheme.folds
        val = val[np.isin(feats.y[val], feats.y[train])]  # a class never trained on cannot be early-stopped on
        names = np.asarray(fs.classes, dtype=object)
        acts = Rows(fs.path, [node], maps=True)
        shape = acts.shape[1:]
        log.info("fine-tuning the top after %s (%d blocks, %s parameters) on %d x %s activations; validation: %s",
                 node, n_blocks, f"{sum(p.numel() for p in top.parameters()):,}", len(train), "x".join(map(str, shape)),
                 scheme.description)
        grid = cfg.grid()
        # Parameters in grid order (not sorted), so the leaderboard shows train_blocks first.
        configs = [grids.Config("finetune", json.dumps(params), "none") for params in grid]
        keys = {c: result_key({"fingerprint": fs.meta.get("fingerprint"), "node": node, "config": c.identity()})
                for c in configs}
        records, models = {}, {}
        bar = tqdm(total=len(configs), desc="finetune", unit="config", disable=not cfg.progress, file=sys.stderr)
        try:
            for config, params in zip(configs, grid, strict=True):
                est = TopClassifier(top=top, input_shape=shape, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                                    batch_size=cfg.batch_size, n_iter_no_change=cfg.patience, augment=cfg.augment,
                                    dropout=cfg.dropout, random_state=cfg.seed, device=cfg.device,
                                    precision=cfg.precision, **params)
                t = time.perf_counter()
                try:
                    est.fit(acts[rows[train]], names[feats.y[train]], X_val=acts[rows[val]],
                            y_val=names[feats.y[val]])
                    scores, pred = _scores(est, acts[rows[val]], feats.y[val], fs.classes)
                    records[config] = {"scores": scores, "pred": pred, "fit_s": time.perf_counter() - t,
                                       "note": f"{est.n_epochs_} epochs, best {est.best_epoch_}"}
                    models[config] = est
                except (ValueError, RuntimeError) as e:  # one failing configuration must not end the run
                    records[config] = {"error": f"{type(e).__name__}: {e}".splitlines()[0], "fit_s": 0.0}
                bar.update(1)
                log.info("%s: %s", config.label(), records[config].get("note") or records[config].get("error"))
        finally:
            bar.close()
        board = leaderboard(configs, records, set(), keys, cfg.metric, node)
        ok = board[board["status"] == "ok"]
        if ok.empty:
            raise FeatcacheError(f"every configuration failed; the first error: {board['status'].iloc[0]}")
        best_config = next(c for c in configs if keys[c][:12] == ok["config_id"].iloc[0])
        best = models[best_config]
        test_scores, test_pred = None, None
        if len(test_rows):
            test_scores, test_pred = _scores(best, acts[test_rows], fs.y[test_rows], fs.classes)
            for name, value in test_scores.items():
                board.loc[0, f"test_{name}"] = value
        result = FinetuneResult(board, best, best_config.params, test_scores, scheme.description)
        if cfg.out is not None:
            result.out = Path(cfg.out).expanduser()
            truth = (fs.y[test_rows], test_pred, "test") if test_pred is not None else \
                (feats.y[val], records[best_config]["pred"], "validation")
            result.files = _write_outputs(cfg, result, fs, node, records, truth)
    finally:
        fs.close()
    return result


def _scores(est: TopClassifier, X, y_idx: np.ndarray, classes: Sequence[str]):
    """All metrics of ``est`` on ``X`` (true class indices ``y_idx``), and its predicted class indices."""
    proba = est.predict_proba(X)
    full = np.zeros((len(proba), len(classes)))
    full[:, [list(classes).index(c) for c in est.classes_]] = proba
    pred = np.argmax(full, axis=1)
    return metrics.scores(y_idx, pred, full, len(classes)), pred


def model_metadata(result: FinetuneResult, fs, node: str, metric: str) -> dict:
    """What ``best.joblib`` carries, in the keys of ``sweep.model_metadata``, so ``predict`` can re-extract ``node``."""
    from .predict import feature_identity
    from .sweep import library_versions

    row = result.leaderboard.iloc[0]
    return {
        "classes": list(fs.classes),
        "layers": [node],
        "layer_dims": {node: int(np.prod(fs.features[node].shape[1:]))},
        "n_features": int(np.prod(fs.features[node].shape[1:])),
        "feature_identity": feature_identity(fs.meta),
        "feature_versions": (fs.meta.get("key") or {}).get("versions"),
        "extract_config": fs.meta.get("config"),
        "cache": {"path": str(fs.path), "fingerprint": fs.meta.get("fingerprint"), "dataset": fs.meta.get("dataset")},
        "config": {"classifier": "finetune", "params": result.best_params, "from_layer": node,
                   "input_shape": list(result.best.input_shape_)},
        "selection": {"scheme": result.scheme, "metric": metric,
                      "val": {m: None if np.isnan(row[f"val_{m}"]) else float(row[f"val_{m}"])
                              for m in metrics.METRICS}},
        "test": result.test_scores,
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _write_outputs(cfg: FinetuneConfig, result: FinetuneResult, fs, node: str, records, truth) -> List[Path]:
    from . import plots
    from .predict import save_model

    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "leaderboard.csv"]
    result.leaderboard.to_csv(files[0], index=False)
    trained = copy.copy(result.best)
    trained.top = None  # the pretrained top, needed only to fit again: leaving it out halves the file
    files.append(save_model(out / "best.joblib", trained, model_metadata(result, fs, node, cfg.metric)))
    if cfg.plots:
        rows = [{"params": c.params, "preprocess": c.preprocess, "score": r["scores"][cfg.metric]}
                for c, r in records.items() if "scores" in r]
        files += plots.plot_all({"finetune": rows}, cfg.metric, out / "plots")
        y_true, y_pred, on = truth
        path = out / "plots" / "confusion_matrix.png"
        plots.confusion_plot(y_true, np.asarray(y_pred), list(fs.classes), f"finetune {result.best_params}\n({on})",
                             path)
        files.append(path)
    summary = {"cache": str(fs.path), "fingerprint": fs.meta.get("fingerprint"), "from_layer": node,
               "scheme": result.scheme, "metric": cfg.metric, "best": result.best_params, "test": result.test_scores,
               "epochs_run": result.best.n_epochs_, "best_epoch": result.best.best_epoch_,
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}}
    files.append(out / "finetune.json")
    files[-1].write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return files


# --- one deployable module ------------------------------------------------------------------------------

class Network(nn.Module):
    """uint8 images (B, 3, S, S) in, class logits out: the frozen bottom up to the split node, the trained top,
    the head. ``classes`` names the logits' columns."""

    def __init__(self, bottom: nn.Module, node: str, top: nn.Module, head: nn.Module, classes: Sequence[str]):
        super().__init__()
        self.bottom, self.node, self.top, self.head, self.classes = bottom, node, top, head, list(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.top(self.bottom(images)[self.node]))


def network(model_path) -> Network:
    """A saved fine-tuned model (``best.joblib``) as one torch module, rebuilding the bottom from its metadata."""
    from .backbones import FeatureExtractor
    from .predict import load_model

    saved = load_model(model_path)
    if not isinstance(saved.pipeline, TopClassifier):
        raise FeatcacheError(f"{model_path} is not a fine-tuned model (it holds a {type(saved.pipeline).__name__})")
    node = saved.metadata["config"]["from_layer"]
    bottom = FeatureExtractor(backbone_of({"config": saved.metadata["extract_config"]}, model_path), [node], "none")
    est = saved.pipeline
    return Network(bottom, node, est.top_, est.head_, est.classes_).eval()


# --- command line -----------------------------------------------------------------------------------------

def _blocks_arg(text: str):
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or all, got {text!r}") from None


def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.finetune",
        description="Fine-tune a network's top blocks from a cache of activations, without running the frozen "
                    "bottom again: the cache must hold the spatial activations at --from-layer (extract with "
                    "--layer NODE --pool none; --dtype float16 halves the file). featcache rebuilds the layers after "
                    "NODE with their pretrained weights, adds a new linear head, and trains each configuration of a "
                    "small grid (the last --train-blocks blocks at --lr, the head at --head-lr; AdamW with weight "
                    "decay; early stopping on the val rows). BatchNorm keeps its pretrained statistics. Writes "
                    "OUT/leaderboard.csv (best first), OUT/best.joblib (+ .json sidecar) for featcache.predict, "
                    "OUT/plots/*.png and OUT/finetune.json; prints the leaderboard, and OUT as the last line.",
        epilog="validation: the cache's val split when it has one, else a stratified --val-fraction (default 0.2)\n"
               "of train; test rows are scored once, with the best configuration.\n\n"
               "examples:\n"
               "  CACHE=$(python -m featcache.extract --data photos/ --layer _blocks.10.add --pool none \\\n"
               "          --dtype float16 | tail -n1)\n"
               "  python -m featcache.finetune $CACHE --from-layer _blocks.10.add --out runs/ft\n"
               "  python -m featcache.finetune $CACHE --from-layer _blocks.10.add --train-blocks 1 2 all \\\n"
               "         --lr 1e-4 3e-4 --augment\n"
               "  python -m featcache.predict runs/ft/best.joblib --data new_photos/ --out preds.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", type=Path, help="a cache (.h5) holding spatial activations at --from-layer")
    p.add_argument("--from-layer", required=True, metavar="NODE",
                   help="the graph node where the top starts: a layer of the cache extracted with --pool none, at a "
                        "block boundary (a split across a skip connection is refused, naming the nearest valid nodes)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<dataset>-finetune-<date-time>)")
    p.add_argument("--train-blocks", type=_blocks_arg, nargs="+", default=[0, 1, "all"], metavar="K",
                   help="how many of the top's last blocks train, each a configuration; 0 = only the head "
                        "(default: 0 1 all)")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-4], help="learning rate(s) of the pretrained blocks "
                                                                        "(default: 1e-4)")
    p.add_argument("--head-lr", type=float, nargs="+", default=[1e-3], help="learning rate(s) of the new head "
                                                                             "(default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default: 0.01)")
    p.add_argument("--epochs", type=int, default=10, help="maximum epochs per configuration (default: 10)")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a lower val loss; the best epoch is kept (default: 3)")
    p.add_argument("--batch-size", type=int, default=32, help="activations per step (default: 32)")
    p.add_argument("--augment", action="store_true",
                   help="random horizontal flips and small shifts of the cached maps while training")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the head (default: 0)")
    p.add_argument("--val-fraction", type=float,
                   help="hold out this stratified fraction of train+val for early stopping and selection "
                        "(default: the cache's val split, else 0.2)")
    p.add_argument("--metric", default="accuracy", choices=metrics.METRICS,
                   help="selection metric (default: accuracy; ties go to the lower log-loss)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the hold-out, the head's init and shuffling (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="compute precision of training (weights and optimiser stay float32; predictions are fp32); "
                        "auto = bf16 where the device runs it fast (default: auto)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors, and the output folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _main(args: argparse.Namespace) -> int:
    from .sweep import format_leaderboard

    out = args.out or Path("runs") / f"{args.cache.stem.split('__')[0]}-finetune-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    cfg = FinetuneConfig(
        cache=args.cache, from_layer=args.from_layer, out=out, train_blocks=args.train_blocks, lr=args.lr,
        head_lr=args.head_lr, weight_decay=args.weight_decay, epochs=args.epochs, patience=args.patience,
        batch_size=args.batch_size, augment=args.augment, dropout=args.dropout, val_fraction=args.val_fraction,
        metric=args.metric, seed=args.seed, device=args.device, precision=args.precision, plots=not args.no_plots,
        progress=not (args.no_progress or args.quiet))
    result = run(cfg)
    if not args.quiet:
        print(format_leaderboard(result.leaderboard))
        test = f"; test {cfg.metric} {result.test_scores[cfg.metric]:.4f}" if result.test_scores else ""
        val = result.leaderboard[f"val_{cfg.metric}"].iloc[0]
        print(f"best: {result.best_params}: val {cfg.metric} {val:.4f}{test}")
    print(result.out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())


make_callable(__name__, finetune)

if __name__ == "__main__":
    # Run the importable copy of this module: the saved TopClassifier must pickle as featcache.finetune's, not as
    # __main__'s, or no other process (predict) could load best.joblib.
    from featcache.finetune import main as _importable_main

    sys.exit(_importable_main())
