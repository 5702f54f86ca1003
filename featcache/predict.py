"""Apply a sweep's best model to new images: ``python -m featcache.predict OUT/best.joblib --data DIR``.

A model file is a joblib pickle, and unpickling runs code: only load files from a source you
trust. featcache writes ``MODEL.json`` next to every model it saves, holding a marker, the
SHA-256 of the model file, and the metadata (classes, feature layers, the extractor settings and
the training cache's fingerprint). :func:`load_model` refuses a file without that sidecar or whose
bytes no longer match it, before unpickling. This guards against using a wrong or damaged file,
not against someone who can rewrite both files.

Prediction re-extracts features for the new images with exactly the stored extractor settings
(a cache hit when they were extracted before), checks that they are the same kind of features
the model was trained on, and writes ``path,prediction[,proba_<class>...]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import views
from .cli import Parser, make_callable, run_cli
from .config import ExtractConfig, FeatcacheError
from .sources import file_sha256

log = logging.getLogger("featcache")

MARKER = "featcache-model"
MODEL_FORMAT = 1
# Parts of a cache's key that decide what its features mean (the files and labels may differ).
FEATURE_PARTS = ("model", "weights_sha256", "pool", "preprocess", "precision", "dtype")


# --- saving and loading -------------------------------------------------------------------------

def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def save_model(path, pipeline, metadata: dict) -> Path:
    """Write ``pipeline`` with ``metadata`` to ``path`` (joblib) and its verifying sidecar ``path.json``."""
    import joblib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    joblib.dump({"marker": MARKER, "format": MODEL_FORMAT, "metadata": metadata, "pipeline": pipeline}, tmp)
    side = {"marker": MARKER, "format": MODEL_FORMAT, "file": path.name, "sha256": file_sha256(tmp),
            "size": tmp.stat().st_size, "metadata": metadata}
    side_tmp = sidecar_path(tmp)
    side_tmp.write_text(json.dumps(side, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
    os.replace(side_tmp, sidecar_path(path))
    return path


def read_metadata(path) -> dict:
    """The sidecar of a featcache model file, checked against the file's bytes (nothing is unpickled)."""
    path = Path(path).expanduser()
    side = sidecar_path(path)
    if not path.is_file():
        raise FeatcacheError(f"no model file at {path}")
    if not side.is_file():
        raise FeatcacheError(f"refusing to load {path}: it has no {side.name} written by featcache next to it. "
                             f"Model files are pickles that can run code when loaded; featcache only loads "
                             f"the ones it wrote and can verify")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FeatcacheError(f"refusing to load {path}: {side.name} is not readable JSON ({e})") from e
    if not isinstance(info, dict) or info.get("marker") != MARKER:
        raise FeatcacheError(f"refusing to load {path}: {side.name} was not written by featcache")
    if info.get("format") != MODEL_FORMAT:
        raise FeatcacheError(f"{path} is model format {info.get('format')}; this featcache reads format "
                             f"{MODEL_FORMAT}. Rerun the sweep with this version")
    if info.get("sha256") != file_sha256(path):
        raise FeatcacheError(f"refusing to load {path}: its contents changed since featcache wrote it "
                             f"(SHA-256 differs from {side.name}); rerun the sweep to write it again")
    return info["metadata"]


@dataclass
class SavedModel:
    """A verified model file: the fitted sklearn pipeline and what it was trained on."""

    path: Path
    pipeline: Any
    metadata: dict

    @property
    def classes(self) -> List[str]:
        return list(self.metadata["classes"])


def load_model(path) -> SavedModel:
    """Verify ``path`` against its sidecar, then unpickle it. Only load files from a trusted source."""
    import joblib

    path = Path(path).expanduser()
    metadata = read_metadata(path)
    payload = joblib.load(path)
    if not isinstance(payload, dict) or payload.get("marker") != MARKER:
        raise FeatcacheError(f"{path} is not a featcache model file")
    return SavedModel(path, payload["pipeline"], metadata)


# --- matching features to a model ----------------------------------------------------------------

def feature_identity(meta: dict) -> Dict[str, Any]:
    """What the features of a cache mean, from its stored key (see ``store.key_parts``)."""
    key = meta.get("key") or {}
    return {part: key.get(part) for part in FEATURE_PARTS}


def check_compatible(model_meta: dict, cache_meta: dict, dims: Dict[str, int], where: str) -> None:
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
                diffs.append(f"layer {layer}: {dims[layer]} features here, {model_meta['layer_dims'][layer]} for the model")
    if diffs:
        raise FeatcacheError(f"the features of {where} do not match the model's training features: "
                             f"{'; '.join(diffs)}. Predict on images (--data FOLDER) to extract matching features")
    trained, now = (model_meta.get("feature_versions") or {}), ((cache_meta.get("key") or {}).get("versions") or {})
    if trained and now and trained != now:
        log.warning("features were extracted with %s; the model was trained on features from %s",
                    _brief(now), _brief(trained))


def _brief(value) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def extract_settings(record: dict, views: bool = False) -> dict:
    """ExtractConfig fields that reproduce a cache's features (and, with ``views``, its augmented
    views), from its stored ``config`` record."""
    pre = record.get("preprocess") or {}
    weights = str(record.get("weights", "DEFAULT"))
    if weights.startswith("none"):
        weights_arg = "none"
    elif Path(weights).expanduser().is_file():
        weights_arg = weights
    else:  # descriptions of default weights, e.g. "torchvision:ResNet18_Weights.IMAGENET1K_V1"
        weights_arg = "DEFAULT"
    return {
        "model": record["model"], "weights": weights_arg, "layers": list(record.get("layers") or []),
        "pool": record.get("pool", "avg"), "image_size": pre.get("crop_size"), "resize_size": pre.get("resize_size"),
        "mean": pre.get("mean"), "std": pre.get("std"), "precision": record.get("precision", "auto"),
        "dtype": record.get("dtype", "float32"), "hash_content": bool(record.get("hash_content", False)),
        **({"views": int(record.get("views", 0)), "augment": tuple(record.get("augment") or ())} if views else {}),
    }


def features_for(metadata: dict, data, *, cache_dir=None, device: str = "auto", batch_size: int = 64,
                 num_workers: Optional[int] = None, progress: bool = True):
    """The (X, FeatureSet) for ``data``: an existing cache file, or images extracted with the model's settings.

    For a model that predicts with test-time augmentation, ``FeatureSet.views`` holds the views it needs.
    """
    from . import store
    from .pipeline import extract

    path = Path(data).expanduser() if isinstance(data, (str, os.PathLike)) else None
    if path is not None and path.suffix == ".h5":
        cache = path
    else:
        record = metadata["extract_config"]
        if record.get("weights") == "given module":
            raise FeatcacheError("the model's features came from a torch module passed in Python; extract features "
                                 "for the new images with that module and pass the cache file as --data CACHE.h5")
        cfg = ExtractConfig(**extract_settings(record, views=bool(metadata.get("tta")))).replace(
            data=data, cache_dir=cache_dir, device=device, batch_size=batch_size, num_workers=num_workers,
            progress=progress)
        cache = extract(config=cfg)
    fs = store.load(cache, lazy=True)
    try:
        dims = {layer: int(np.prod(fs.features[layer].shape[1:])) for layer in fs.layers}
        check_compatible(metadata, fs.meta, dims, str(cache))
        X = np.concatenate([np.asarray(fs.features[layer][:], dtype=np.float32).reshape(len(fs), -1)
                            for layer in metadata["layers"]], axis=1)
        if metadata.get("tta"):
            if not all(layer in fs.views for layer in metadata["layers"]):
                raise FeatcacheError(f"the model predicts with test-time augmentation, but {cache} has no augmented "
                                     f"views; predict on images (--data FOLDER) so featcache extracts them")
            fs.views = {layer: np.asarray(fs.views[layer][:], dtype=np.float32) for layer in metadata["layers"]}
    finally:
        fs.close()
    return X, fs


# --- predicting ----------------------------------------------------------------------------------

def predict(model, data, *, out=None, proba: bool = True, cache_dir=None, device: str = "auto",
            batch_size: int = 64, num_workers: Optional[int] = None, progress: bool = True):
    """Predict classes for ``data`` (image folder, CSV, or a cache ``.h5``) with a saved featcache model.

    Returns a DataFrame ``path, prediction[, proba_<class>...]``; written as CSV to ``out`` when
    given. When ``data`` is labelled, ``df.attrs["accuracy"]`` holds the accuracy over the rows whose
    class the model knows.
    """
    import pandas as pd

    model_path = Path(model).expanduser()
    metadata = read_metadata(model_path)  # checks the file before the (slow) extraction
    X, fs = features_for(metadata, data, cache_dir=cache_dir, device=device, batch_size=batch_size,
                         num_workers=num_workers, progress=progress)
    saved = load_model(model_path)
    V = None
    if metadata.get("tta"):
        V = np.concatenate([fs.views[layer].reshape(len(fs), fs.views[layer].shape[1], -1)
                            for layer in metadata["layers"]], axis=2)
    classes = list(saved.pipeline.classes_)
    index, probs = views.predict(saved.pipeline, X, V, classes)
    predicted = np.asarray(classes, dtype=object)[index]
    root = fs.meta.get("data_root") or ""
    df = pd.DataFrame({"path": [str(Path(root) / p) if root else p for p in fs.paths],
                       "prediction": [str(p) for p in predicted]})
    if proba and probs is not None:
        for j, name in enumerate(classes):
            df[f"proba_{name}"] = np.round(probs[:, j], 6)
    accuracy = _accuracy(fs, predicted, saved.classes)
    if accuracy is not None:
        df.attrs["accuracy"] = accuracy
    if out is not None:
        out = Path(out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
        log.info("wrote %d predictions to %s", len(df), out)
    return df


def _accuracy(fs, predicted: np.ndarray, model_classes: Sequence[str]) -> Optional[float]:
    """Accuracy over labelled rows whose class the model was trained on (others are reported)."""
    labelled = fs.y >= 0
    if not labelled.any() or not fs.classes:
        return None
    truth = np.array([fs.classes[i] if i >= 0 else "" for i in fs.y], dtype=object)
    known = labelled & np.isin(truth, list(model_classes))
    unknown = sorted(set(truth[labelled & ~known]))
    if unknown:
        log.warning("%d labelled image(s) belong to classes the model never saw (%s); they are left out of the "
                    "accuracy", int((labelled & ~known).sum()), ", ".join(unknown[:5]))
    if not known.any():
        return None
    acc = float(np.mean(truth[known] == np.asarray(predicted, dtype=object)[known]))
    log.info("accuracy on %d labelled image(s): %.4f", int(known.sum()), acc)
    return acc


# --- command line ---------------------------------------------------------------------------------

def build_parser() -> Parser:
    p = Parser(
        prog="python -m featcache.predict",
        description="Predict classes for new images with a model saved by featcache.sweep. Features are "
                    "extracted with exactly the settings the model was trained on (a cache hit when done "
                    "before); features of another kind are refused. Writes path,prediction[,proba_<class>...] "
                    "as CSV (to --out, else stdout); with labelled images it also prints the accuracy. "
                    "Model files are pickles: load only files from a source you trust (featcache checks "
                    "the SHA-256 in MODEL.json before unpickling).",
        epilog="examples:\n"
               "  python -m featcache.predict runs/exp1/best.joblib --data new_photos/ --out preds.csv\n"
               "  python -m featcache.predict runs/exp1/best.joblib --data labelled.csv --no-proba\n"
               "  python -m featcache.predict runs/exp1/best.joblib --data CACHE.h5   # features already extracted\n"
               "  python -m featcache.predict runs/exp1/best.joblib --info",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a model file written by featcache.sweep (OUT/best.joblib)")
    p.add_argument("--data", help="image folder, CSV (path,label[,split]) or a featcache cache .h5 file")
    p.add_argument("--out", type=Path, help="CSV file to write (default: print the CSV to stdout)")
    p.add_argument("--no-proba", action="store_true", help="leave out the per-class probability columns")
    p.add_argument("--info", action="store_true",
                   help="print the model's metadata (from its sidecar, nothing unpickled) and exit")
    p.add_argument("--cache-dir", type=Path,
                   help="where feature caches live (default: $FEATCACHE_DIR, else ~/.cache/featcache)")
    p.add_argument("--device", default="auto", help="for extraction: auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--num-workers", type=int, help="decode processes (default: chosen from the CPU count)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors (and the CSV when printed)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _main(args: argparse.Namespace) -> int:
    if args.info:
        print(json.dumps(read_metadata(args.model), indent=2, sort_keys=True, default=str))
        return 0
    if not args.data:
        raise FeatcacheError("--data is required (an image folder, a CSV file or a cache .h5); see --help")
    df = predict(args.model, args.data, out=args.out, proba=not args.no_proba, cache_dir=args.cache_dir,
                 device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
                 progress=not (args.no_progress or args.quiet))
    if args.out is None:
        df.to_csv(sys.stdout, index=False)
    if "accuracy" in df.attrs and not args.quiet:
        print(f"accuracy: {df.attrs['accuracy']:.4f}", file=sys.stderr if args.out is None else sys.stdout)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv, build_parser())


make_callable(__name__, predict)

if __name__ == "__main__":
    sys.exit(main())
