"""The features a sweep fits on: the chosen layers read from the cache once, split into pool and test rows.

Stage: selection. Imports ``cache`` (h5py) and numpy. The layer dimension lives here too: with several
layers in a cache, each layer alone, adjacent runs and all of them concatenated are choices, each a slice
of the columns of one matrix (so memmaps stay views).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .._util import human_size
from ..cache import CacheMeta, FeatureSet, Rows, available_memory, load
from ..errors import FeatcacheError
from ..learn.streaming import STREAMING_CLASSIFIERS
from .backends import AUTO_PARALLEL_VALUES, local_tasks

__all__ = ["SweepRows", "load_features", "layer_choices", "pool_and_test", "copies_at_most"]

log = logging.getLogger("featcache")


@dataclass
class SweepRows:
    """The rows a sweep uses: the selection pool (train+val, or every labelled row) and test."""

    X: np.ndarray
    y: np.ndarray  # class indices into ``classes``
    pool_split: Optional[np.ndarray]  # "train"/"val" per pool row when the cache has splits
    X_test: Optional[np.ndarray]
    y_test: Optional[np.ndarray]
    V: Optional[np.ndarray]  # (pool rows, K, D) augmented views, when the cache has them and they are used
    V_test: Optional[np.ndarray]
    classes: List[str]
    layers: List[str]
    layer_dims: Dict[str, int]
    meta: CacheMeta
    path: Path
    # The layer dimension: "a", "b", "a+b" -> the columns of X they are; empty when the sweep has one choice.
    layer_choices: Dict[str, Any] = field(default_factory=dict)

    def columns(self, choice: str):
        """Column selector of a layer choice ("" = every column): a slice, so memmaps stay views."""
        return self.layer_choices[choice] if choice else slice(None)

    def for_layer(self, choice: str) -> "SweepRows":
        """These features restricted to one layer choice (what a configuration with ``layer=choice`` sees)."""
        if not choice:
            return self
        cols, names = self.columns(choice), choice.split("+")
        changes = {"layers": names, "layer_dims": {n: self.layer_dims[n] for n in names}, "layer_choices": {}}
        for name in ("X", "X_test", "V", "V_test"):  # views: (rows, K, D), columns last
            value = getattr(self, name, None)
            if value is not None:
                changes[name] = value[..., cols]
        return dataclasses.replace(self, **changes)


def pool_and_test(fs: FeatureSet) -> Tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the selection pool (labelled train+val rows, or every labelled row without splits)
    and of the labelled test rows. Test rows are only ever scored, never selected on."""
    labelled = fs.y >= 0
    if fs.split is None:
        return labelled, np.zeros(len(fs), bool)
    return labelled & np.isin(fs.split, ["train", "val"]), labelled & (fs.split == "test")


def load_features(path, layer: Optional[str] = None, views: bool = True, out_of_core: bool = False,
                  block_rows: Optional[int] = None, shared_copy: Optional[bool] = False, tasks: int = 1) -> SweepRows:
    """Read only the layer(s) the sweep needs (and their augmented views), split off pool and test rows.

    ``out_of_core``: read no features now; ``X`` and ``X_test`` are :class:`streaming.Rows` views of the file.
    ``shared_copy``: whether loky workers will share a copy (None: when the features are large enough for workers).
    ``tasks``: how many fits may run at once here, each with its own training rows and their preprocessed copy.
    """
    fs = load(path, lazy=True)
    try:
        if out_of_core and not layer and len(fs.layers) > 1:
            layer = fs.layers[-1]  # one layer choice streams; the last, as FeatureSet.X
            log.info("--out-of-core: using the cache's last layer %s (pick another with --layer)", layer)
        layers, choices = _pick_layers(fs.layers, layer)
        dims = {name: int(np.prod(fs.features[name].shape[1:])) for name in layers}
        use_views = views and all(name in fs.views for name in layers)
        if out_of_core and (len(choices) > 1 or use_views):
            raise FeatcacheError("{out_of_core} streams one layer choice without augmented views: pick it with "
                                 "{layer} (e.g. {layer} " + "+".join(layers) + ")"
                                 + (" and {use_views=False}" if use_views else ""))
        if not out_of_core:
            per_copy = len(fs) * sum(dims.values()) * 4 * (1 + (fs.views[layers[0]].shape[1] if use_views else 0))
            if shared_copy is None:  # n_jobs None: workers (and their shared copy) only for large features
                shared_copy = per_copy // 4 >= AUTO_PARALLEL_VALUES
                tasks = tasks if shared_copy else 1
            _check_memory(per_copy, copies_held(len(layers) > 1, shared_copy, tasks))
            blocks = [np.asarray(fs.features[name][:], dtype=np.float32).reshape(len(fs), -1) for name in layers]
        V = fs.view_matrix(layers) if use_views else None
    finally:
        fs.close()
    if out_of_core:
        X = Rows(fs.path, layers, block_rows=block_rows)
    else:
        X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    labelled = fs.y >= 0
    if not fs.classes or not labelled.any():
        raise FeatcacheError(f"{fs.path} has no labels (every row is unlabelled); a sweep needs labelled images: "
                             f"class subfolders, or a CSV with a label column")
    unlabelled = int((~labelled).sum())
    if unlabelled:
        log.info("ignoring %d unlabelled row(s)", unlabelled)
    split = fs.split
    pool, test = pool_and_test(fs)
    if split is not None and not (pool & (split == "train")).any():
        raise FeatcacheError(f"{fs.path} has splits but no labelled 'train' rows to fit on")
    present = np.unique(fs.y[pool])
    if len(present) < 2:
        name = fs.classes[present[0]] if len(present) else "none"
        raise FeatcacheError(f"{fs.path}: the training rows hold only one class ({name}); a classifier needs "
                             f"at least 2")
    if V is not None:
        log.info("training with %d cached augmented view(s) per training image", V.shape[1])
    return SweepRows(
        X=X[np.flatnonzero(pool)] if not pool.all() else X, y=fs.y[pool],
        pool_split=split[pool] if split is not None else None,
        X_test=X[np.flatnonzero(test)] if test.any() else None, y_test=fs.y[test] if test.any() else None,
        V=None if V is None else (V[pool] if not pool.all() else V),
        V_test=V[test] if V is not None and test.any() else None,
        classes=list(fs.classes), layers=layers, layer_dims=dims, meta=fs.meta, path=Path(fs.path),
        layer_choices=_choice_columns(choices, layers, dims) if len(choices) > 1 else {})


def copies_held(several_layers: bool, shared_copy: bool, tasks: int) -> int:
    """How many copies of its features a sweep holds at once: the layers as read, their side-by-side matrix
    (several layers), the pool/test rows taken from it, the memmap the loky workers share (in /dev/shm: memory
    too), and in every task running at once its training rows and their preprocessed copy (at most the whole width
    each)."""
    return 1 + int(several_layers) + 1 + int(shared_copy) + 2 * tasks


def copies_at_most(several_layers: bool, n_jobs: Optional[int]) -> int:
    """:func:`copies_held` by a local sweep at the worst: its workers sharing a copy, a task per worker."""
    return copies_held(several_layers, True, local_tasks("loky", n_jobs))


def _check_memory(per_copy: int, copies: int) -> None:
    """Refuse, before reading, features that cannot fit in memory (every copy the sweep holds at once, under the
    container's limit too): out of core is the way to train on them."""
    available = available_memory()
    if available is not None and per_copy * copies > available:
        raise FeatcacheError(f"the features need {human_size(per_copy * copies)} ({copies} copies of "
                             f"{human_size(per_copy)} while loading and fitting) but {human_size(max(available, 0))} "
                             f"of memory is available; rerun with {{out_of_core=True}} to stream them from the cache "
                             f"(classifiers {', '.join(STREAMING_CLASSIFIERS)})")


def layer_choices(available: List[str]) -> List[List[str]]:
    """The layer dimension of a sweep on a cache with several layers: each layer alone, every run of
    adjacent layers (for 3+ layers), and all of them concatenated."""
    n = len(available)
    runs = [available[i:j] for size in range(1, n + 1) for i in range(n - size + 1) for j in [i + size]]
    return runs if n <= 3 else [[a] for a in available] + [available]


def _pick_layers(available: List[str], layer: Optional[str]) -> Tuple[List[str], List[List[str]]]:
    """The layers to read (in the order they sit side by side in X) and the layer choices to sweep.

    ``layer``: None = every layer alone and concatenated (just the layer, for a one-layer cache);
    ``"a+b"`` = that concatenation only; ``"a,b,a+b"`` = these choices.
    """
    if not layer:
        if len(available) == 1:
            return available, [available]
        choices = layer_choices(available)
        log.info("the cache has layers %s; trying %s (pin one with --layer, e.g. --layer %s)",
                 ", ".join(available), ", ".join("+".join(c) for c in choices), "+".join(available))
        return available, choices
    choices = []
    for text in layer.split(","):
        chosen = [name.strip() for name in text.split("+") if name.strip()]
        for name in chosen:
            if name not in available:
                raise FeatcacheError(f"{{layer}} {name!r} is not in this cache; it has {', '.join(available)} "
                                     f"(join several with '+', e.g. {'+'.join(available[:2])}; try several "
                                     f"choices with ',', e.g. {available[0]},{'+'.join(available[:2])})")
        if len(set(chosen)) != len(chosen):
            raise FeatcacheError(f"{{layer}} {text!r} names a layer twice")
        if not chosen:
            raise FeatcacheError(f"{{layer}} {layer!r}: an empty layer choice")
        if chosen not in choices:
            choices.append(chosen)
    if len(choices) == 1:
        return choices[0], choices
    # Every choice must be a slice of X (column views, no copies): lay the layers out so that each choice
    # sits side by side, reading a layer twice only for a choice that cannot (e.g. "a,b,a+c" reads a+b, a+c).
    layers: List[str] = []
    for c in choices:
        if _run_at(layers, c) is None:
            layers += c
    return layers, choices


def _run_at(layers: List[str], choice: List[str]) -> Optional[int]:
    """Where ``choice`` sits as a contiguous run in ``layers``, or None."""
    n = len(choice)
    return next((i for i in range(len(layers) - n + 1) if layers[i:i + n] == choice), None)


def _choice_columns(choices: List[List[str]], layers: List[str], dims: Dict[str, int]) -> Dict[str, slice]:
    starts = np.cumsum([0] + [dims[n] for n in layers]).tolist()
    out = {}
    for c in choices:
        i = _run_at(layers, c)
        out["+".join(c)] = slice(starts[i], starts[i + len(c)])
    return out
