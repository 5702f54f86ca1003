"""Apply a saved model to new images: ``featcache.predict(MODEL, data)`` (stage: orchestration).

Prediction re-extracts features for the new images with exactly the stored extractor settings (a cache hit
when they were extracted before), checks that they are the same kind of features the model was trained on,
and returns ``path,prediction[,proba_<class>...]``. Model files and their checks are
``featcache.selection.modelfile``; the command line is ``featcache.cli.predict``; ``python -m featcache.predict``
runs it.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ._malloc import tune_allocator
from .cache import load
from .cache.layout import FEATURE_PARTS, CacheMeta, feature_identity
from .config import ExtractConfig, PredictConfig
from .errors import ConflictError, FeatcacheError
from .learn import views
from .selection.modelfile import load_model, needs_trust, read_metadata

__all__ = ["predict", "run_predict", "features_for", "check_compatible"]

log = logging.getLogger("featcache")


def check_compatible(model_meta: dict, cache_meta: CacheMeta, dims: Dict[str, int], where: str) -> None:
    """Refuse features that differ from the training features in meaning or shape, naming the difference."""
    want, have = model_meta["feature_identity"], feature_identity(cache_meta)
    diffs = [f"{k}: {_brief(have.get(k))} here, {_brief(want.get(k))} for the model"
             for k in FEATURE_PARTS if have.get(k) != want.get(k)]
    missing = [layer for layer in model_meta["layers"] if layer not in dims]
    if missing:
        diffs.append(f"layer(s) {', '.join(missing)} missing here (has {', '.join(dims) or 'none'})")
    else:
        for layer in model_meta["layers"]:
            if dims[layer] != model_meta["layer_dims"][layer]:
                diffs.append(f"layer {layer}: {dims[layer]} features here, {model_meta['layer_dims'][layer]} "
                             f"for the model")
    if diffs:
        raise FeatcacheError(f"the features of {where} do not match the model's training features: "
                             f"{'; '.join(diffs)}. Predict on images ({{data}} an image folder) to extract matching "
                             f"features")
    trained, now = (model_meta.get("feature_versions") or {}), (cache_meta.key.get("versions") or {})
    if trained and now and trained != now:
        log.warning("features were extracted with %s; the model was trained on features from %s",
                    _brief(now), _brief(trained))


def _brief(value) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def features_for(metadata: dict, data, *, cache_dir=None, device: str = "auto", batch_size: int = 64,
                 num_workers: Optional[int] = None, progress: bool = True):
    """The (X, FeatureSet) for ``data``: an existing cache file, or images extracted with the model's settings.

    For a model that predicts with test-time augmentation, ``FeatureSet.views`` holds the views it needs.
    """
    from .extraction import extract

    path = Path(data).expanduser() if isinstance(data, (str, os.PathLike)) else None
    if path is not None and path.suffix == ".h5":
        cache = path
    else:
        record = metadata["extract_config"]
        if record.get("weights") == "given module":
            raise FeatcacheError("the model's features came from a torch module passed in Python; extract features "
                                 "for the new images with that module and pass the cache file as {data}")
        cfg = ExtractConfig.from_record(record, with_views=bool(metadata.get("tta")), data=data, cache_dir=cache_dir,
                                        device=device, batch_size=batch_size, num_workers=num_workers,
                                        progress=progress)
        cache = extract(config=cfg)
    fs = load(cache, lazy=True)
    try:
        dims = {layer: int(np.prod(fs.features[layer].shape[1:])) for layer in fs.layers}
        check_compatible(metadata, fs.meta, dims, str(cache))
        X = np.concatenate([np.asarray(fs.features[layer][:], dtype=np.float32).reshape(len(fs), -1)
                            for layer in metadata["layers"]], axis=1)
        if metadata.get("tta"):
            if not all(layer in fs.views for layer in metadata["layers"]):
                raise FeatcacheError(f"the model predicts with test-time augmentation, but {cache} has no augmented "
                                     f"views; predict on images ({{data}} an image folder) so featcache extracts them")
            fs.views = {layer: np.asarray(fs.views[layer][:], dtype=np.float32) for layer in metadata["layers"]}
    finally:
        fs.close()
    return X, fs


def predict(model, data, **settings):
    """Predict classes for ``data`` (image folder, CSV, or a cache ``.h5``) with a saved featcache model.

    ``settings`` are :class:`~featcache.config.PredictConfig` fields: ``out`` (a CSV file to write), ``proba``,
    ``trust_model_code``, and how new images are extracted (``cache_dir``, ``device``, ``batch_size``...).

    Returns a DataFrame ``path, prediction[, split][, trained_on][, proba_<class>...]``, written as CSV to
    ``out`` when given: ``split`` when the data has splits, ``trained_on`` when the model's training cache can
    tell that the model was fitted on some of these images. When ``data`` is labelled, ``df.attrs["accuracy"]``
    maps each group of rows (a split, or ``all``; rows the model was trained on apart from the others) to the
    accuracy over its rows whose class the model knows: never one number pooled over both.
    """
    return run_predict(PredictConfig(model=model, data=data, **settings))


def run_predict(cfg: PredictConfig):
    """The predictions for one :class:`~featcache.config.PredictConfig` (what :func:`predict` and the CLI call)."""
    import pandas as pd

    cfg.validate()
    tune_allocator()
    model_path = Path(cfg.model).expanduser()
    metadata = read_metadata(model_path)  # checks the file before the (slow) extraction
    spec = needs_trust(metadata)
    if spec and not cfg.trust_model_code:
        raise ConflictError(f"{model_path}'s features come from the model {spec}: extracting them imports and "
                            f"runs that code. If you trust it, set {{trust_model_code}}")
    X, fs = features_for(metadata, cfg.data, cache_dir=cfg.cache_dir, device=cfg.device, batch_size=cfg.batch_size,
                         num_workers=cfg.num_workers, progress=cfg.progress)
    saved = load_model(model_path, trust_model_code=cfg.trust_model_code)
    V = None
    if metadata.get("tta"):
        V = fs.view_matrix(metadata["layers"])
    classes = list(saved.pipeline.classes_)
    index, probs = views.predict(saved.pipeline, X, V, classes)
    predicted = np.asarray(classes, dtype=object)[index]
    root = fs.meta.data_root
    paths = [str(Path(root) / p) if root else p for p in fs.paths]
    df = pd.DataFrame({"path": paths, "prediction": [str(p) for p in predicted]})
    if fs.split is not None:
        df["split"] = fs.split
    seen = _trained_on(metadata, paths if root else None)
    if seen is not None and seen.any():  # new images: no column of False
        df["trained_on"] = seen
    if cfg.proba and probs is not None:
        for j, name in enumerate(classes):
            df[f"proba_{name}"] = np.round(probs[:, j], 6)
    accuracy = _accuracy(fs, predicted, saved.classes, seen)
    if accuracy:
        df.attrs["accuracy"] = accuracy
    if cfg.out is not None:
        out = Path(cfg.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
        log.info("wrote %d predictions to %s", len(df), out)
    return df


def _trained_on(metadata: dict, paths: Optional[Sequence[str]]) -> Optional[np.ndarray]:
    """Per row, whether the model was fitted on that image (its training cache's train+val rows, found by file
    path); None when that cannot be told (images from a Dataset, or the training cache is gone)."""
    train_cache = Path((metadata.get("cache") or {}).get("path") or "")
    if paths is None or not train_cache.is_file():
        if paths is not None:
            log.warning("the model's training cache %s is gone: cannot tell which of these images it was trained "
                        "on", train_cache)
        return None
    with load(train_cache, lazy=True) as train:
        if train.meta.fingerprint != (metadata.get("cache") or {}).get("fingerprint"):
            log.warning("%s is not the cache the model was trained on any more (another fingerprint): cannot tell "
                        "which of these images it was trained on", train_cache)
            return None
        pool = train.y >= 0
        if train.split is not None:
            pool &= np.isin(train.split, ["train", "val"])
        root = Path(train.meta.data_root) if train.meta.data_root else None
        fitted = {str(root / p) for p in train.paths[pool]} if root is not None else set()
    return np.array([p in fitted for p in paths], dtype=bool)


def _accuracy(fs, predicted: np.ndarray, model_classes: Sequence[str], seen: Optional[np.ndarray]) -> Dict[str, float]:
    """``{group: accuracy}`` over labelled rows whose class the model was trained on (others are reported).

    A group is a split (or ``all``); rows the model was fitted on never share a number with rows it was not.
    """
    labelled = fs.y >= 0
    if not labelled.any() or not fs.classes:
        return {}
    truth = np.array([fs.classes[i] if i >= 0 else "" for i in fs.y], dtype=object)
    known = labelled & np.isin(truth, list(model_classes))
    unknown = sorted(set(truth[labelled & ~known]))
    if unknown:
        log.warning("%d labelled image(s) belong to classes the model never saw (%s); they are left out of the "
                    "accuracy", int((labelled & ~known).sum()), ", ".join(unknown[:5]))
    groups = np.asarray(fs.split, dtype=object) if fs.split is not None else np.full(len(fs), "all", dtype=object)
    if seen is not None:
        mixed = {g for g in set(groups[known]) if 0 < seen[known & (groups == g)].sum() < (known & (groups == g)).sum()}
        groups = np.array([f"{g} (trained on)" if g in mixed and s else f"{g} (not trained on)" if g in mixed else g
                           for g, s in zip(groups, seen)], dtype=object)
    correct = truth == np.asarray(predicted, dtype=object)
    out = {}
    for g in sorted(set(groups[known]), key=lambda g: (("test", "val", "train").index(g.split()[0])
                                                      if g.split()[0] in ("test", "val", "train") else -1, g)):
        rows = known & (groups == g)
        out[g] = float(correct[rows].mean())
        note = ("; the model was trained on these images" if seen is not None and seen[rows].all() else
                "; none of them trained the model" if seen is not None else "")
        log.debug("accuracy on %s: %.4f (%d labelled image(s)%s)", g, out[g], int(rows.sum()), note)
    return out
