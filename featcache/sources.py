"""Where images and labels come from: image folders, CSV files, unlabelled folders, torch Datasets.

A :class:`Source` is the ordered list of samples an extraction will turn into rows, with labels,
splits and class names, plus a manifest (size, mtime, optional content hash) for the cache key.
Decoding lives here too, so every input kind goes through the same RGB conversion.
"""
from __future__ import annotations

import csv
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import FeatcacheError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_NAMES = ("train", "val", "test")
UNLABELLED = -1


@dataclass
class Source:
    """An ordered sample list: ``paths[i]`` (relative to ``root``) has ``labels[i]`` and ``splits[i]``."""

    name: str
    root: Optional[Path]
    paths: List[str]
    labels: np.ndarray
    class_names: List[str]
    splits: Optional[List[str]] = None
    dataset: Any = None  # a torch Dataset when the source is not files on disk

    def __len__(self) -> int:
        return len(self.paths)

    def file_path(self, i: int) -> Path:
        return self.root / self.paths[i]

    def manifest(self, hash_content: bool = False) -> dict:
        """What the cache key needs to know about the inputs: each file's identity and state."""
        if self.dataset is not None:
            return {"dataset": type(self.dataset).__qualname__, "content_sha256": _dataset_digest(self.dataset)}
        sizes, mtimes, digests = [], [], []
        for rel in self.paths:
            path = self.root / rel
            try:
                st = path.stat()
            except OSError as e:
                raise FeatcacheError(f"cannot read {path}: {e.strerror}") from e
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
            if hash_content:
                digests.append(file_sha256(path))
        return {"size": sizes, "mtime_ns": mtimes, "sha256": digests or None}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dataset_digest(dataset) -> str:
    """A torch Dataset has no files to stat, so its key is a hash of every decoded sample."""
    h = hashlib.sha256()
    for i in range(len(dataset)):
        image, label = dataset[i]
        h.update(np.ascontiguousarray(to_rgb_array(image)).tobytes())
        h.update(str(int(label)).encode())
    return h.hexdigest()


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _list_images(folder: Path) -> List[Path]:
    """Images under ``folder`` (recursively), skipping hidden files and folders, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(Path(f)))
    return sorted(found)


def _visible_dirs(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(root: Path, where: str) -> dict:
    """``{class name: [image paths]}`` for the class subfolders of ``root``; empty classes are errors."""
    classes = {}
    for d in _visible_dirs(root):
        images = _list_images(d)
        if not images:
            raise FeatcacheError(
                f"class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"remove it or add images")
        classes[d.name] = images
    stray = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
    if classes and stray:
        raise FeatcacheError(
            f"{where} holds both class folders and loose images ({', '.join(stray[:3])}...); "
            f"move the images into a class folder so none is left out")
    return classes


def from_folder(root: Path) -> Source:
    """An ImageFolder-style tree, optionally split into train/val/test, or a flat unlabelled folder."""
    top = _visible_dirs(root)
    split_dirs = [d for d in top if d.name in SPLIT_NAMES]
    if split_dirs:
        others = [d.name for d in top if d.name not in SPLIT_NAMES]
        if others:
            raise FeatcacheError(
                f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders "
                f"({', '.join(others)}); put every class folder inside train/, val/ or test/")
        per_split = {d.name: _class_folders(d, str(d)) for d in split_dirs}
        for name, classes in per_split.items():
            if not classes:
                raise FeatcacheError(f"split folder {root / name} has no class subfolders with images")
        class_names = sorted({c for classes in per_split.values() for c in classes})
        rows = [(p, class_names.index(c), s) for s, classes in per_split.items()
                for c, images in classes.items() for p in images]
    else:
        classes = _class_folders(root, str(root))
        if classes:
            class_names = sorted(classes)
            rows = [(p, class_names.index(c), None) for c, images in classes.items() for p in images]
        else:
            class_names = []
            rows = [(p, UNLABELLED, None) for p in _list_images(root)]
    if not rows:
        raise FeatcacheError(
            f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case)")
    rows.sort(key=lambda r: r[0].relative_to(root).as_posix())
    return Source(
        name=root.resolve().name,
        root=root.resolve(),
        paths=[p.relative_to(root).as_posix() for p, _, _ in rows],
        labels=np.array([label for _, label, _ in rows], dtype=np.int64),
        class_names=class_names,
        splits=[s for _, _, s in rows] if split_dirs else None,
    )


def _sort_key(name: str):
    """Numeric class names sort as numbers (2 before 10), others alphabetically."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def from_csv(csv_path: Path) -> Source:
    """A CSV with columns ``path,label[,split]``; paths are relative to the CSV's folder."""
    root = csv_path.resolve().parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            records = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FeatcacheError(f"cannot read CSV {csv_path}: {e}") from e
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise FeatcacheError(
            f"{csv_path} lacks column(s) {', '.join(missing)}; expected a header 'path,label[,split]', "
            f"found {','.join(columns) or 'no header'}")
    if not records:
        raise FeatcacheError(f"{csv_path} has a header but no rows")
    has_split = "split" in columns
    absent, bad_split = [], []
    for r in records:
        if not (root / r["path"]).is_file():
            absent.append(r["path"])
        if has_split and r["split"] not in SPLIT_NAMES:
            bad_split.append(r["split"])
    if absent:
        raise FeatcacheError(
            f"{csv_path}: {len(absent)} listed file(s) do not exist (paths are relative to the CSV's "
            f"folder {root}): {', '.join(absent[:5])}")
    if bad_split:
        raise FeatcacheError(
            f"{csv_path}: split must be one of {', '.join(SPLIT_NAMES)}; found {sorted(set(bad_split))[:5]}")
    seen = set()
    for r in records:
        key = Path(r["path"]).as_posix()
        if key in seen:
            raise FeatcacheError(f"{csv_path}: {key} is listed twice; each file must appear once")
        seen.add(key)
    class_names = sorted({r["label"] for r in records if r["label"] != ""}, key=_sort_key)
    records.sort(key=lambda r: Path(r["path"]).as_posix())
    return Source(
        name=csv_path.resolve().parent.name + "-" + csv_path.stem,
        root=root,
        paths=[Path(r["path"]).as_posix() for r in records],
        labels=np.array([class_names.index(r["label"]) if r["label"] != "" else UNLABELLED for r in records],
                        dtype=np.int64),
        class_names=class_names,
        splits=[r["split"] for r in records] if has_split else None,
    )


def from_dataset(dataset, name: Optional[str] = None) -> Source:
    """Any map-style torch Dataset returning ``(PIL image or uint8 tensor, label)``."""
    try:
        n = len(dataset)
    except TypeError as e:
        raise FeatcacheError("a Dataset passed as data must have a length (map-style)") from e
    if n == 0:
        raise FeatcacheError("the Dataset passed as data is empty")
    labels = np.array([int(dataset[i][1]) for i in range(n)], dtype=np.int64)
    classes = getattr(dataset, "classes", None)
    class_names = [str(c) for c in classes] if classes else [str(c) for c in sorted(set(labels.tolist()) - {UNLABELLED})]
    return Source(
        name=name or type(dataset).__name__.lower(),
        root=None,
        paths=[f"{type(dataset).__name__}[{i}]" for i in range(n)],
        labels=labels,
        class_names=class_names,
        dataset=dataset,
    )


def open_source(data: Any) -> Source:
    """Turn ``--data`` (a folder, a CSV file, or a torch Dataset) into a :class:`Source`."""
    if data is None:
        raise FeatcacheError("no data given: pass --data FOLDER or --data FILE.csv")
    if not isinstance(data, (str, os.PathLike)):
        return from_dataset(data)
    path = Path(data).expanduser()
    if not path.exists():
        raise FeatcacheError(f"--data {path}: no such file or folder")
    if path.is_dir():
        return from_folder(path)
    if path.suffix.lower() == ".csv":
        return from_csv(path)
    raise FeatcacheError(f"--data {path}: expected an image folder or a .csv file with columns path,label[,split]")


# --- decoding -------------------------------------------------------------------------------------

def to_rgb_array(image) -> np.ndarray:
    """HxWx3 uint8 from a PIL image or a uint8 tensor/array (CHW or HWC, 1 or 3 channels)."""
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    arr = np.asarray(image.numpy() if hasattr(image, "numpy") else image)
    if arr.dtype != np.uint8:
        raise FeatcacheError(f"Dataset images must be PIL images or uint8 tensors; got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: 16/32-bit scaled (not clipped), alpha composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        img = Image.alpha_composite(canvas, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


EXIF_ORIENTATION = 0x0112


def decode_file(path: Path, resize_size: int, crop_size: int) -> np.ndarray:
    """Decode one image file to a ``crop_size``² RGB uint8 array (EXIF orientation applied)."""
    return resize_center_crop(open_rgb(path, resize_size), resize_size, crop_size)


def open_rgb(path: Path, draft_size: int) -> Image.Image:
    """One image file as 8-bit RGB with EXIF orientation applied, decoded no larger than needed.

    JPEGs are decoded at reduced scale with ``draft`` when that still leaves ``draft_size``
    pixels on the shorter side, which is free accuracy-wise and several times faster.
    """
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        # exif_transpose copies the whole image even when there is nothing to rotate: ask first.
        if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
        img.load()
        return img


def resize_center_crop(img: Image.Image, resize_size: int, crop_size: int) -> np.ndarray:
    """Resize the shorter side to ``resize_size`` (bilinear, antialiased), then centre-crop a square."""
    w, h = img.size
    scale = resize_size / min(w, h)
    new_w, new_h = max(crop_size, round(w * scale)), max(crop_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR, reducing_gap=3.0)
    left, top = (new_w - crop_size) // 2, (new_h - crop_size) // 2
    return np.array(img.crop((left, top, left + crop_size, top + crop_size)))


def is_jpeg(path: Path) -> bool:
    return path.suffix.lower() in (".jpg", ".jpeg")


def decode_jpegs_on_device(datas: List[torch.Tensor], device, resize_size: int, crop_size: int):
    """Batched JPEG decode with ``torchvision.io.decode_jpeg`` on ``device`` (nvJPEG on CUDA), then
    resize and centre-crop there too. Returns ``(images, reasons)``; a file that fails gets ``None``.

    For GPU runs that are decode-bound: the CPU only reads bytes. Resizing uses torch's antialiased
    bilinear interpolation, so pixels differ slightly from the Pillow path (the cache key says which).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        reasons = [""] * len(datas)
    except RuntimeError:  # one bad file fails the whole batch: find it
        images, reasons = [], []
        for data in datas:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
                reasons.append("")
            except RuntimeError as e:
                images.append(None)
                reasons.append(f"RuntimeError: {e}")
    return [None if img is None else _resize_center_crop_tensor(img, resize_size, crop_size) for img in images], reasons


def _resize_center_crop_tensor(img: torch.Tensor, resize_size: int, crop_size: int) -> torch.Tensor:
    """The tensor twin of :func:`resize_center_crop`: (3, H, W) uint8 → (3, crop, crop) uint8, same device."""
    h, w = img.shape[-2:]
    scale = resize_size / min(w, h)
    new_w, new_h = max(crop_size, round(w * scale)), max(crop_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = torch.nn.functional.interpolate(img[None].float(), size=(new_h, new_w), mode="bilinear",
                                              antialias=True, align_corners=False)[0]
        img = img.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    return img[:, top:top + crop_size, left:left + crop_size]


def decode_sample(source: Source, i: int, resize_size: int, crop_size: int) -> np.ndarray:
    """Decode row ``i`` of any source; raises on unreadable input (the caller records the reason)."""
    return resize_center_crop(load_image(source, i, resize_size), resize_size, crop_size)


def load_image(source: Source, i: int, draft_size: int) -> Image.Image:
    """Row ``i`` of any source as an RGB Pillow image (files decoded at reduced scale when possible)."""
    if source.dataset is not None:
        image, _ = source.dataset[i]
        return Image.fromarray(to_rgb_array(image))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return open_rgb(source.file_path(i), draft_size)


# --- augmented views ------------------------------------------------------------------------------

def augmenter(augment, crop_size: int, resize_size: int):
    """The torchvision transform that makes one augmented ``crop_size``² view of an RGB image.

    ``crop``: random resized crop (15-100% of the area, aspect 3/4-4/3), else resize + centre crop;
    ``flip``: horizontal flip with p=0.5; ``color``: brightness/contrast/saturation jitter of 0.3.
    """
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(crop_size, scale=(0.15, 1.0), antialias=True) if "crop" in augment
             else v2.Compose([v2.Resize(resize_size, antialias=True), v2.CenterCrop(crop_size)])]
    if "flip" in augment:
        steps.append(v2.RandomHorizontalFlip())
    if "color" in augment:
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3))
    return v2.Compose(steps)


def view_seed(img: Image.Image, k: int) -> int:
    """A seed fixed by the decoded pixels and the view number: the same image gets the same views
    wherever it lies and however the run is resumed, sharded or batched."""
    h = hashlib.blake2b(img.tobytes(), digest_size=8)
    h.update(k.to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little")


def decode_views(source: Source, i: int, resize_size: int, crop_size: int, views: int, transform) -> np.ndarray:
    """The clean centre crop of row ``i`` followed by ``views`` augmented views: (1 + views, S, S, 3) uint8."""
    img = load_image(source, i, resize_size)
    out = [resize_center_crop(img, resize_size, crop_size)]
    for k in range(views):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(img, k))
            out.append(np.asarray(transform(img)))
    return np.stack(out)
