"""Decoding images: any file or Dataset sample to an RGB crop of the model's size, and its augmented views,
as (3, S, S) uint8 arrays: the model's layout, so batches are stacked without a transpose.

Stage: sources/decoding (below models). Pillow and numpy; torch, imported where used (the cache's read-only
commands import this module without it), to resize and to seed the views' transforms. Every input kind goes
through the same RGB conversion (16-bit scaled, alpha on white, EXIF orientation applied).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import FeatcacheError

__all__ = ["to_rgb_array", "to_rgb", "open_rgb", "resize_center_crop", "resize_center_crop_tensor", "is_jpeg",
           "decode_sample", "load_image", "augmenter", "view_seeds", "decode_views"]


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
    """Resize the shorter side to ``resize_size`` (bilinear, antialiased), then centre-crop a square: (3, S, S)
    uint8.

    The resize is torch's uint8 antialiased kernel (:func:`resize_center_crop_tensor`): 2-3x faster than Pillow's
    on one core, 1.3-1.5x less decoding time per image at 224 px. Decoding workers share the CPU with the model, so
    on small machines this is extraction's speed.
    """
    import torch

    chw = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # channels-last memory: the kernel's fast path
    return np.ascontiguousarray(resize_center_crop_tensor(chw, resize_size, crop_size).numpy())


def resize_center_crop_tensor(img, resize_size: int, crop_size: int):
    """(3, H, W) uint8 tensor → (3, crop, crop) uint8 on the same device: the shorter side resized to
    ``resize_size`` (bilinear, antialiased), then a centred square. On the CPU, torch's uint8 kernel (fixed
    point, within 1 of Pillow's); elsewhere in float, rounded."""
    import torch

    h, w = img.shape[-2:]
    scale = resize_size / min(w, h)
    new_w, new_h = max(crop_size, round(w * scale)), max(crop_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        on_cpu = img.device.type == "cpu"
        x = img[None] if on_cpu else img[None].float()
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True,
                                            align_corners=False)[0]
        img = x if on_cpu else x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    return img[:, top:top + crop_size, left:left + crop_size]


def is_jpeg(path: Path) -> bool:
    return path.suffix.lower() in (".jpg", ".jpeg")


def decode_sample(source, i: int, resize_size: int, crop_size: int) -> np.ndarray:
    """Decode row ``i`` of any source; raises on unreadable input (the caller records the reason)."""
    return resize_center_crop(load_image(source, i, resize_size), resize_size, crop_size)


def load_image(source, i: int, draft_size: int) -> Image.Image:
    """Row ``i`` of any source as an RGB Pillow image (files decoded at reduced scale when possible)."""
    if source.dataset is not None:
        image, _ = source.dataset[i]
        return Image.fromarray(to_rgb_array(image))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return open_rgb(source.file_path(i), draft_size)


def augmenter(augment, crop_size: int, resize_size: int):
    """The torchvision transform that makes one augmented ``crop_size``² view of a (3, H, W) uint8 image tensor.

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


def view_seeds(img: Image.Image, views: int) -> list:
    """One seed per view, fixed by the decoded pixels and the view number: the same image gets the same views
    wherever it lies and however the run is resumed, sharded or batched."""
    pixels = hashlib.blake2b(img.tobytes(), digest_size=8)
    seeds = []
    for k in range(views):
        h = pixels.copy()
        h.update(k.to_bytes(4, "little"))
        seeds.append(int.from_bytes(h.digest(), "little"))
    return seeds


def decode_views(source, i: int, resize_size: int, crop_size: int, views: int, transform) -> np.ndarray:
    """The clean centre crop of row ``i`` followed by ``views`` augmented views: (1 + views, 3, S, S) uint8. The
    views are made from the decoded image as a uint8 tensor (torch's resize, as the clean crop)."""
    import torch

    img = load_image(source, i, resize_size)
    chw = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    out = [resize_center_crop_tensor(chw, resize_size, crop_size)]
    for seed in view_seeds(img, views):
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed also queues a seed for every lazy GPU backend, and
            # records a traceback each time (0.3 ms a view)
            torch.default_generator.manual_seed(seed)
            out.append(transform(chw))
    return torch.stack(out).numpy()
