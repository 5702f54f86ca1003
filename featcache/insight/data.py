"""What inspect knows about each row of a cache, and the pixels of its original file (stage: insight).

:class:`Dataset` holds a cache's row paths (resolved against its ``data_root``), labels, class names and splits,
read with h5py alone; the features stay in the file (``featcache.insight.neighbours`` reads them in blocks).
:func:`thumbnails` decodes the original images small (grey, fixed size) for the pixel checks and the report; a
file that is gone or unreadable is reported as missing, never an error.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import h5py
import numpy as np

from ..cache.layout import FEATURES, LABELS, PATHS, SPLIT, CacheMeta
from ..cache.read import load
from ..errors import FeatcacheError

__all__ = ["Dataset", "open_dataset", "open_grey", "thumbnails", "file_hashes", "thumbnail_png", "THUMB"]

THUMB = 16  # side of the grey thumbnails the pixel check compares
CROPS = (0.0, 0.06, 0.12)  # fractions cut off the sides when looking for a cropped copy (see thumbnails)


@dataclass
class Dataset:
    """The rows of a cache, without their features: ``paths`` (absolute where the cache knows its data root),
    ``y`` (class index, -1 = unlabelled), ``classes``, ``split`` (None without splits), ``layer`` (whose
    features inspect uses) and ``n_features``."""

    cache: Path
    paths: np.ndarray
    y: np.ndarray
    classes: List[str]
    split: Optional[np.ndarray]
    layer: str
    n_features: int
    sha256: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labelled(self) -> np.ndarray:
        return self.y >= 0

    def split_of(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return self.split[rows] if self.split is not None else np.full(len(rows), "", dtype=object)

    def label_names(self, idx) -> np.ndarray:
        names = np.asarray(list(self.classes) + [""], dtype=object)
        return names[np.asarray(idx, dtype=np.int64)]


def open_dataset(cache, layer: Optional[str] = None) -> Dataset:
    """A cache's rows; ``layer`` names the features to use (default: the cache's last layer). Checks the file
    through ``featcache.load`` (lazily: no feature is read), so a partial or damaged file gets its usual message."""
    with load(cache, lazy=True) as fs:
        path, meta = fs.path, fs.meta
    with h5py.File(path, "r") as f:
        meta = CacheMeta.from_attrs(f.attrs)
        layer = layer or meta.layers[-1]
        if layer not in meta.layers:
            raise FeatcacheError(f"{{layer}} {layer!r} is not in {path}; it has {', '.join(meta.layers)}")
        ds = f[FEATURES][layer]
        if ds.ndim != 2:
            raise FeatcacheError(f"layer {layer!r} of {path} holds {ds.ndim - 1}-D maps (extracted with pool "
                                 f"none); inspect needs pooled features: pick a pooled layer with {{layer}}")
        n_features = int(ds.shape[1])
        rel = f[PATHS].asstr()[:]
        y = f[LABELS][:].astype(np.int64)
        split = f[SPLIT].asstr()[:].astype(object) if SPLIT in f else None
        sha = None
        if "source/sha256" in f and len(f["source/sha256"]) == len(rel):
            src = dict(zip(f["source/paths"].asstr()[:], f["source/sha256"].asstr()[:]))
            sha = np.array([src.get(p, "") for p in rel], dtype=object)
    root = meta.data_root
    paths = np.array([str(Path(root) / p) if root and not os.path.isabs(p) else p for p in rel], dtype=object)
    if len(y) == 0:
        raise FeatcacheError(f"{path} has no rows; there is nothing to inspect")
    return Dataset(cache=path, paths=paths, y=y, classes=list(meta.class_names), split=split, layer=layer,
                   n_features=n_features, sha256=sha)


def open_grey(path: str):
    from PIL import Image, ImageOps

    img = Image.open(path)
    img.draft("L", (THUMB * 4, THUMB * 4))  # JPEGs decode at a reduced size: fast on large photos
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        flat = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(flat, img)
    return img.convert("L")


def thumbnails(paths: Sequence[str], crops: Sequence[float] = CROPS) -> Dict[str, Optional[np.ndarray]]:
    """``{path: (len(crops) ** 2, THUMB * THUMB) float32}`` per path: grey thumbnails, one per crop of the
    image (a fraction cut off the left/top and right/bottom sides together, in every combination), each
    zero-mean and unit-norm, so the dot product of two is the correlation of their pixels. ``None`` for a
    file that is missing or cannot be decoded."""
    from PIL import Image

    out: Dict[str, Optional[np.ndarray]] = {}
    for p in dict.fromkeys(paths):
        try:
            img = open_grey(p)
            w, h = img.size
            vecs = []
            for a in crops:
                for b in crops:
                    box = (round(a * w), round(a * h), w - round(b * w), h - round(b * h))
                    t = np.asarray(img.resize((THUMB, THUMB), Image.BILINEAR, box=box, reducing_gap=2.0),
                                   dtype=np.float32).ravel()
                    t = t - t.mean()
                    vecs.append(t / (np.linalg.norm(t) or 1.0))
            out[p] = np.stack(vecs)
        except (OSError, ValueError, SyntaxError):  # missing, unreadable or not an image
            out[p] = None
    return out


def file_hashes(paths: Sequence[str]) -> Dict[str, Optional[str]]:
    """SHA-256 of each file whose size another file of ``paths`` shares (only those can be byte-identical);
    ``None`` for a missing file."""
    sizes: Dict[str, Optional[int]] = {}
    for p in dict.fromkeys(paths):
        try:
            sizes[p] = os.stat(p).st_size
        except OSError:
            sizes[p] = None
    counts: Dict[int, int] = {}
    for s in sizes.values():
        if s is not None:
            counts[s] = counts.get(s, 0) + 1
    out: Dict[str, Optional[str]] = {}
    for p, s in sizes.items():
        if s is None:
            out[p] = None
        elif counts[s] > 1:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[p] = h.hexdigest()
        else:
            out[p] = f"unique-size-{s}"
    return out


def thumbnail_png(path: str, size: int = 96) -> Optional[bytes]:
    """A small PNG (RGB, longest side ``size``) of the original file for the report; ``None`` if it is missing or
    unreadable."""
    from PIL import Image, ImageOps

    try:
        img = Image.open(path)
        img.draft("RGB", (size, size))
        img = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError, SyntaxError):
        return None
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.NEAREST if scale >= 2 else Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
