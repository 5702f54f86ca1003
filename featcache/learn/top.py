"""TopClassifier: the top blocks of a pretrained network plus a new head, trained on cached activations.

Stage: learning. Imports torch, scikit-learn, ``models.cuts`` (the graph rewrites) and ``learn.training``.
It is a scikit-learn classifier: the activations where the top starts in, class labels out.
BatchNorm layers of the top keep their pretrained running statistics (eval mode) while their scale and
shift train, as is usual when fine-tuning on small data; dropout applies only to the new head.
"""
from __future__ import annotations

import copy
import time
from numbers import Integral, Real
from typing import Dict, List

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F

from .._validation import Interval, Options, validate_params
from .._validation import Sequence as ListOf
from ..config import DEVICE, TRAIN_PRECISIONS
from ..errors import FeatcacheError
from ..models.cuts import split_frozen_prefix, with_pointwise_as_linear
from ..rowsource import RowSource, minibatches
from ..runtime import autocast, resolve_device, resolve_precision
from .training import EarlyStopping, adamw, holdout_split, in_memory_if_small

__all__ = ["TopClassifier", "augment_maps", "top_blocks", "unfreeze_last", "export_state", "import_state"]


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
        :func:`featcache.models.split_top`); copied, never modified. It runs in eval mode: BatchNorm keeps
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
    label_smoothing : float, default=0.0
        Training targets spread this much over the other classes (``F.cross_entropy``'s); validation loss, which
        stops training early, is never smoothed.
    random_state : int, RandomState or None, default=None
    device : str, default="auto"
        ``auto`` trains on a CUDA GPU when one is visible; the fitted model is kept on the CPU.
    precision : {"auto", "bf16", "fp32"}, default="auto"
        Compute precision of the forward and backward passes (bf16 autocast; the weights and the optimiser
        stay float32). ``auto``: bf16 where the device runs it fast (CPUs with AVX-512 BF16/AMX, recent GPUs).

    ``X`` is an array or h5py dataset of activations, (n, C, H, W) or flattened, or a cache's rows as
    :class:`featcache.cache.Rows` (``maps=True``): read into memory once when they fit
    (:func:`~featcache.learn.training.in_memory_if_small`, for a full shuffle every epoch), else streamed in
    chunk-aligned blocks. Fitted attributes: ``classes_``, ``input_shape_``, ``top_`` and ``head_`` (trained,
    CPU), ``n_epochs_``, ``best_epoch_``, ``loss_curve_``, ``validation_loss_curve_``.
    """

    def __init__(self, top=None, input_shape=None, train_blocks="all", lr=1e-4, head_lr=1e-3, weight_decay=1e-2,
                 epochs=10, batch_size=32, early_stopping=True, validation_fraction=0.1, n_iter_no_change=3,
                 augment=False, dropout=0.0, label_smoothing=0.0, random_state=None, device="auto", precision="auto"):
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
        self.label_smoothing = label_smoothing
        self.random_state = random_state
        self.device = device
        self.precision = precision

    _parameter_constraints = {
        "top": [nn.Module],
        "input_shape": [None, ListOf((Interval(Integral, 1, None),), 1)],
        "train_blocks": [Interval(Integral, 0, None), Options(("all",))],
        "lr": [Interval(Real, 0, None, "neither")],
        "head_lr": [Interval(Real, 0, None, "neither")],
        "weight_decay": [Interval(Real, 0, None)],
        "epochs": [Interval(Integral, 1, None)],
        "batch_size": [Interval(Integral, 1, None)],
        "early_stopping": [bool],
        "validation_fraction": [Interval(Real, 0, 1, "neither")],
        "n_iter_no_change": [Interval(Integral, 1, None)],
        "augment": [bool],
        "dropout": [Interval(Real, 0, 1, "left")],
        "label_smoothing": [Interval(Real, 0, 1, "left")],
        "random_state": [None, Integral, np.random.RandomState],
        "device": [DEVICE],
        "precision": [Options(TRAIN_PRECISIONS)],
    }

    def _validate_params(self) -> None:
        """Check every hyperparameter against the table, saying what was passed and what is allowed."""
        validate_params(self, self._parameter_constraints)

    def _tensor(self, block) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).reshape((-1,) + self.input_shape_)

    def _input(self, xb, device) -> torch.Tensor:
        """A minibatch on ``device``; maps in channels-last order, the layout oneDNN's convolutions run fastest in."""
        xb = (xb if isinstance(xb, torch.Tensor) else self._tensor(xb)).to(device)
        return xb.contiguous(memory_format=torch.channels_last) if xb.ndim == 4 else xb

    def fit(self, X, y, X_val=None, y_val=None, deadline=None):
        """Train the top's last ``train_blocks`` blocks and the head on ``(X, y)``; returns ``self``.

        ``deadline``: a ``time.monotonic()`` value after which no further epoch starts (a time budget; at least
        one epoch always runs, and the best epoch so far is kept)."""
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
            train, val_pos = holdout_split(yi, self.validation_fraction, rng, min_val=1)
            val_X, yv = X, yi
        device = resolve_device(self.device)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
            self._train(X, yi, train, val_X, yv, val_pos, rng, device, deadline)
        return self

    def _train(self, X, yi, train, val_X, yv, val_pos, rng, device, deadline=None) -> None:
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
        if trainable and self.train_blocks != "all" and not self.augment and not isinstance(X, RowSource):
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
        stopping = EarlyStopping(self.n_iter_no_change)
        for epoch in range(1, self.epochs + 1):
            head.train()
            total = 0.0
            for pos, block in minibatches(X, train, self.batch_size, rng):
                xb = block if isinstance(block, torch.Tensor) else self._tensor(block)
                if self.augment:
                    xb = augment_maps(xb, gen)
                with autocast(device, self.precision_):
                    logits = head(train_top(self._input(xb, device)))
                loss = F.cross_entropy(logits.float(), y_train[pos].to(device), label_smoothing=self.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(pos)
            self.loss_curve_.append(total / len(train))
            self.n_epochs_ = self.best_epoch_ = epoch
            out_of_time = deadline is not None and time.monotonic() > deadline
            if y_val is None:
                if out_of_time:
                    break
                continue
            val_loss = float(F.cross_entropy(self._logits(val_top, head, val_X, val_pos, device, self.precision_),
                                             y_val[val_pos]))
            self.validation_loss_curve_.append(val_loss)
            if stopping.update(val_loss, epoch, lambda: {
                    "head": copy.deepcopy(head.state_dict()),
                    "top": {n: p.detach().clone() for n, p in params.items() if p.requires_grad}}) or out_of_time:
                break
        if stopping.best_state is not None:
            self.best_epoch_ = stopping.best_epoch
            head.load_state_dict(stopping.best_state["head"])
            with torch.no_grad():
                for n, value in stopping.best_state["top"].items():
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


def export_state(est: "TopClassifier"):
    """A fitted TopClassifier as ``(tensors, info)``: its trained top's and head's weights by name, and everything
    else as JSON-ready values. What a model file stores (safetensors + JSON): data only, no code."""
    check_is_fitted(est)
    tensors = {f"top.{k}": v.detach().cpu().contiguous().clone() for k, v in est.top_.state_dict().items()}
    tensors.update({f"head.{k}": v.detach().cpu().contiguous().clone() for k, v in est.head_.state_dict().items()})
    params = {k: v for k, v in est.get_params().items() if k != "top"}
    info = {"params": params, "classes": est.classes_.tolist(), "input_shape": list(est.input_shape_),
            "n_epochs": est.n_epochs_, "best_epoch": est.best_epoch_, "loss_curve": est.loss_curve_,
            "validation_loss_curve": est.validation_loss_curve_, "precision": est.precision_,
            "frozen_prefix": est.frozen_prefix_}
    return tensors, info


def import_state(tensors: dict, info: dict, top: nn.Module) -> "TopClassifier":
    """The TopClassifier :func:`export_state` described, on ``top``: a freshly built copy of the same layers
    (:func:`featcache.models.split_top` of the same network), whose weights are replaced by the trained ones."""
    est = TopClassifier(**info["params"])
    est.input_shape_ = tuple(info["input_shape"])
    est.n_features_in_ = int(np.prod(est.input_shape_))
    if len(est.input_shape_) == 3:
        top = with_pointwise_as_linear(top)  # the form it trained in: the same parameter names
    top.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("top.")}, strict=True)
    weight = tensors["head.1.weight"]
    head = nn.Sequential(nn.Dropout(est.dropout), nn.Linear(weight.shape[1], weight.shape[0]))
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")}, strict=True)
    est.top_ = top.cpu().eval().requires_grad_(False)
    est.head_ = head.eval().requires_grad_(False)
    est.classes_ = np.asarray(info["classes"], dtype=object)
    est.n_epochs_, est.best_epoch_ = info["n_epochs"], info["best_epoch"]
    est.loss_curve_, est.validation_loss_curve_ = info["loss_curve"], info["validation_loss_curve"]
    est.precision_, est.frozen_prefix_ = info["precision"], info["frozen_prefix"]
    return est
