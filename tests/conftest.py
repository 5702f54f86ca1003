"""Shared pytest fixtures: tiny, deterministic image folders built on the fly in ``tmp_path``.

Every image is a real file (PNG/JPEG/BMP/...) that PIL decodes; each class gets its own colour and
stripe pattern plus a little seeded noise, so classes are separable by any feature extractor.
Fixtures here must not import ``featcache``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

# Dominant colour per class index (RGB), far apart from each other.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),   # red
    (40, 200, 60),   # green
    (50, 70, 230),   # blue
    (235, 210, 40),  # yellow
    (200, 50, 210),  # magenta
    (40, 210, 220),  # cyan
)
N_PATTERNS = 4  # horizontal stripes, vertical stripes, diagonal stripes, checkerboard


def _pattern_mask(pattern: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    p = pattern % N_PATTERNS
    if p == 0:
        return (yy // 2) % 2 == 0
    if p == 1:
        return (xx // 2) % 2 == 0
    if p == 2:
        return ((xx + yy) // 3) % 2 == 0
    return ((xx // 3) + (yy // 3)) % 2 == 0


def pattern_array(
    size: tuple[int, int] = (24, 24),
    color: tuple[int, int, int] = PALETTE[0],
    pattern: int = 0,
    seed: int = 0,
    noise: float = 8.0,
) -> np.ndarray:
    """H x W x 3 uint8 array: ``color`` with darker stripes in ``pattern``, plus seeded noise."""
    w, h = size
    base = np.asarray(color, dtype=np.float64)
    mask = _pattern_mask(pattern, h, w)[..., None]
    arr = np.where(mask, base, base * 0.45)
    arr = arr + np.random.default_rng(seed).normal(0.0, noise, size=(h, w, 3))
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def write_image(
    path: str | Path,
    size: tuple[int, int] = (24, 24),
    color: tuple[int, int, int] = PALETTE[0],
    mode: str = "RGB",
    fmt: str | None = None,
    *,
    pattern: int = 0,
    seed: int = 0,
    **save_kwargs,
) -> Path:
    """Write a small patterned image to ``path`` (parents created) and return the path.

    ``size`` is (width, height). ``mode`` is a PIL mode: "RGB", "RGBA", "L", "LA", "1", "P",
    "CMYK" or "I;16" (16-bit grayscale). ``fmt`` is a PIL format name; by default PIL picks it
    from the extension (case-insensitively). Extra keyword arguments go to ``Image.save``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(pattern_array(size, color, pattern, seed))
    if mode == "RGB":
        img = rgb
    elif mode == "RGBA":
        w, h = size
        alpha = np.tile(np.linspace(64, 255, w, dtype=np.float64), (h, 1)).astype(np.uint8)
        img = rgb.copy()
        img.putalpha(Image.fromarray(alpha))
    elif mode == "I;16":
        gray = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        img = Image.fromarray(gray)  # uint16 2-D array -> mode "I;16"
    elif mode == "P":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        img = rgb.convert(mode)
    img.save(path, format=fmt, **save_kwargs)
    return path


def write_class_image(path: str | Path, class_index: int, i: int, **kwargs) -> Path:
    """``write_image`` with the colour/pattern of class ``class_index`` and a per-image seed."""
    kwargs.setdefault("color", PALETTE[class_index % len(PALETTE)])
    kwargs.setdefault("pattern", class_index)
    kwargs.setdefault("seed", 1000 * class_index + i)
    return write_image(path, **kwargs)


COLOURS = ("red", "green", "blue")  # class names of PALETTE[:3]


def write_colour_images(root: Path, per_class: int, classes=COLOURS, seed: int = 0) -> Path:
    """``per_class`` images in ``root/<class>/`` for each of ``classes`` (of ``COLOURS``, drawn in that colour)."""
    for k, cls in enumerate(classes):
        for i in range(per_class):
            write_class_image(root / cls / f"{i}.png", COLOURS.index(cls), i, seed=seed + 1000 * k + i)
    return root


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

CLASS_FOLDER_CLASSES = ("cat", "dog", "bird")
CLASS_FOLDER_EXTS = (".jpg", ".PNG", ".jpeg", ".bmp", ".JPG", ".Jpeg")


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """``root/{cat,dog,bird}/`` with 4 valid images per class (12 in all), plus junk to ignore.

    - Extensions are mixed and partly upper-case (.jpg .PNG .jpeg .bmp .JPG .Jpeg).
    - ``cat/same.png`` and ``dog/same.png`` share a file name (each is one of its class's 4).
    - Junk: ``.DS_Store`` (root and cat/), ``dog/notes.txt``, hidden folders ``.thumbs/x.jpg``
      (at the root, where it would look like a class) and ``cat/.thumbs/x.jpg`` (both valid JPEGs,
      to be skipped only because they are hidden), and an AppleDouble ``bird/._img_0.jpg``
      (hidden, image extension, not an image).
    """
    root = tmp_path / "class_folder"
    j = 0
    for k, cls in enumerate(CLASS_FOLDER_CLASSES):
        names = [f"img_{i}" for i in range(4)]
        if cls in ("cat", "dog"):
            names[-1] = "same"
        for i, stem in enumerate(names):
            ext = ".png" if stem == "same" else CLASS_FOLDER_EXTS[j % len(CLASS_FOLDER_EXTS)]
            j += 1
            fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[ext.lower()]
            write_class_image(root / cls / f"{stem}{ext}", k, i, fmt=fmt)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (root / "dog" / "notes.txt").write_text("not an image\n", encoding="utf-8")
    write_class_image(root / ".thumbs" / "x.jpg", 0, 99)
    write_class_image(root / "cat" / ".thumbs" / "x.jpg", 0, 98)
    (root / "bird" / "._img_0.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(80))
    return root


SPLIT_FOLDER_COUNTS = {"train": 6, "val": 2, "test": 2}
SPLIT_FOLDER_CLASSES = ("a", "b")


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """``root/{train,val,test}/{a,b}/img_<i>.png`` with 6/2/2 images per class (20 in all)."""
    root = tmp_path / "split_folder"
    for split, n in SPLIT_FOLDER_COUNTS.items():
        for k, cls in enumerate(SPLIT_FOLDER_CLASSES):
            for i in range(n):
                seed = 1000 * k + 100 * list(SPLIT_FOLDER_COUNTS).index(split) + i
                write_class_image(root / split / cls / f"img_{i}.png", k, i, seed=seed)
    return root


CSV_CLASSES = ("red", "green", "blue")
CSV_SPLIT_COUNTS = {"train": 4, "val": 2, "test": 2}


@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    """``root/labels.csv`` (header ``path,label,split``) + images in nested subfolders.

    3 classes (red/green/blue) x 4 train / 2 val / 2 test = 24 rows. Paths are relative to the
    CSV's folder, POSIX-style, and the folder layout (``images/part<n>/...``) deliberately does
    not match the labels, so labels must come from the CSV. Returns the CSV path.
    """
    root = tmp_path / "csv_dataset"
    rows = []
    n = 0
    for split, count in CSV_SPLIT_COUNTS.items():
        for k, label in enumerate(CSV_CLASSES):
            for _ in range(count):
                sub = Path("images") / f"part{n % 2}"
                if n % 3 == 0:
                    sub = sub / "nested"
                rel = sub / f"im_{n:03d}{'.png' if n % 2 else '.jpg'}"
                write_class_image(root / rel, k, n)
                rows.append({"path": rel.as_posix(), "label": label, "split": split})
                n += 1
    csv_path = root / "labels.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


@pytest.fixture
def unlabelled_folder(tmp_path: Path) -> Path:
    """A flat folder of 5 images (``img_<i>.png``/``.jpg``), no class subfolders."""
    root = tmp_path / "unlabelled"
    for i in range(5):
        write_class_image(root / f"img_{i}{'.png' if i % 2 else '.jpg'}", i % 3, i)
    return root


ODD_IMAGE_NAMES = (
    "gray_L.png",
    "gray16_I16.png",
    "palette_P_transparent.png",
    "gray_alpha_LA.png",
    "bilevel_1.png",
    "rgba.png",
    "cmyk.jpg",
    "exif_rotated.jpg",
    "tiny_1x1.png",
    "animated.gif",
    "image.webp",
    "image.tiff",
)
EXIF_ROTATED_SIZE = (32, 20)  # stored (width, height); orientation 6 means shown as 20 x 32


@pytest.fixture
def odd_images(tmp_path: Path) -> Path:
    """``root/odd/`` with one valid image per awkward case (see ``ODD_IMAGE_NAMES``).

    Modes L, I;16 (16-bit PNG), P with a tRNS transparency index, LA, 1, RGBA, CMYK JPEG; an
    EXIF-rotated JPEG (orientation 6, stored 32x20 so the rotation changes the size); a 1x1 image;
    a 2-frame animated GIF; a WEBP; a TIFF.
    """
    root = tmp_path / "odd_images"
    d = root / "odd"
    write_class_image(d / "gray_L.png", 0, 0, mode="L")
    write_class_image(d / "gray16_I16.png", 0, 1, mode="I;16")
    write_class_image(d / "palette_P_transparent.png", 0, 2, mode="P", transparency=0)
    write_class_image(d / "gray_alpha_LA.png", 0, 3, mode="LA")
    write_class_image(d / "bilevel_1.png", 0, 4, mode="1")
    write_class_image(d / "rgba.png", 0, 5, mode="RGBA")
    write_class_image(d / "cmyk.jpg", 0, 6, mode="CMYK")

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    write_class_image(d / "exif_rotated.jpg", 0, 7, size=EXIF_ROTATED_SIZE, exif=exif)

    write_image(d / "tiny_1x1.png", size=(1, 1), color=PALETTE[0], seed=8)

    frames = [Image.fromarray(pattern_array((24, 24), PALETTE[0], p, seed=9 + p)) for p in (0, 1)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)

    write_class_image(d / "image.webp", 0, 10, quality=80)
    write_class_image(d / "image.tiff", 0, 11)
    return root


class BrokenImages(NamedTuple):
    """``root`` holds class folder ``x/``; ``bad_names`` are the undecodable files in it."""

    root: Path
    bad_names: list[str]


BROKEN_GOOD_NAMES = ("good_0.png", "good_1.jpg", "good_2.png")


@pytest.fixture
def broken_images(tmp_path: Path) -> BrokenImages:
    """``root/x/`` with 3 valid images and 3 broken ones; returns ``(root, bad_names)``.

    Broken: ``empty.jpg`` (0 bytes), ``truncated.jpg`` (first 60% of a valid JPEG's bytes: it
    opens, but ``load()`` raises unless ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set) and
    ``not_image.png`` (a text file).
    """
    root = tmp_path / "broken_images"
    d = root / "x"
    for i, name in enumerate(BROKEN_GOOD_NAMES):
        write_class_image(d / name, 0, i)

    (d / "empty.jpg").write_bytes(b"")
    # Big and noisy enough that the cut lands in the entropy-coded data, after the headers.
    src = write_class_image(tmp_path / "broken_src" / "full.jpg", 0, 123, size=(40, 40), quality=95)
    data = src.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: int(len(data) * 0.6)])
    (d / "not_image.png").write_text("this is plain text, not a PNG\n" * 4, encoding="utf-8")
    return BrokenImages(root, ["empty.jpg", "truncated.jpg", "not_image.png"])


@pytest.fixture
def logs_reach_caplog(monkeypatch):
    """The command line stops featcache's log at its own handler; tests run after a CLI test in this process.
    A test file that reads featcache's log with caplog uses it: ``pytestmark = pytest.mark.usefixtures(...)``."""
    monkeypatch.setattr(logging.getLogger("featcache"), "propagate", True)


@pytest.fixture(scope="session")
def make_image():
    """The ``write_class_image(path, class_index, i, **write_image_kwargs) -> Path`` helper."""
    return write_class_image


@pytest.fixture(scope="session")
def colour_images():
    """The ``write_colour_images(root, per_class, classes=COLOURS, seed=0) -> root`` helper."""
    return write_colour_images


@pytest.fixture(scope="session")
def digits_dir() -> Path:
    """Absolute path of the repo's demo set ``data/digits`` (made by scripts/make_demo_data.py)."""
    return Path(__file__).resolve().parents[1] / "data" / "digits"


# Settings that make a real extraction take a second or two on a CPU: a torchvision ResNet-18 with
# seeded random weights (no download), 32-px inputs, decoding in the main process, torch (not a CPU engine, whose
# first export costs seconds; tests/test_models_engines.py runs those), no progress bar.
FAST_SETTINGS = dict(model="resnet18", weights="none", image_size=32, num_workers=0, batch_size=8,
                     precision="fp32", engine="torch", progress=False)


@pytest.fixture
def fast(tmp_path: Path) -> dict:
    """``FAST_SETTINGS`` plus a fresh ``cache_dir``: ``featcache.extract(folder, **fast)``."""
    return dict(FAST_SETTINGS, cache_dir=tmp_path / "cache")


def write_feature_cache(path: str | Path, n: int = 3000, dim: int = 32, n_classes: int = 4, chunk_rows: int = 64,
                        seed: int = 0, splits: tuple[float, float] = (0.7, 0.15)) -> Path:
    """A synthetic feature cache in featcache's HDF5 layout (plain h5py), chunked by ``chunk_rows`` rows.

    Gaussian classes whose means overlap (held-out accuracy around 0.9, not 1.0), uncentred and
    unscaled like CNN features; the first ``splits`` fractions are train and val, the rest test.
    """
    import h5py

    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    means = rng.normal(0, 0.6, (n_classes, dim))
    X = (3 + 2 * (means[y] + rng.normal(0, 1, (n, dim)))).astype(np.float32)
    n_train, n_val = int(splits[0] * n), int(splits[1] * n)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val), dtype=object)
    path = Path(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("features/synthetic", data=X, chunks=(chunk_rows, dim))
        f.create_dataset("labels", data=y.astype(np.int64))
        f.create_dataset("paths", data=np.array([f"row{i}" for i in range(n)], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("split", data=split, dtype=h5py.string_dtype())
        for name in ("paths", "reasons"):
            f.create_dataset(f"failed/{name}", data=np.array([], dtype=object), dtype=h5py.string_dtype())
        f.attrs.update({"format_version": 1, "complete": True, "layers": json.dumps(["synthetic"]),
                        "class_names": json.dumps([f"c{k}" for k in range(n_classes)]),
                        "fingerprint": f"synthetic-{n}x{dim}-{seed}", "config": "{}", "key": "{}",
                        "versions": "{}", "n_rows": n})
    return path


@pytest.fixture(scope="session")
def feature_cache():
    """The ``write_feature_cache(path, n, dim, n_classes, chunk_rows, seed, splits) -> Path`` helper."""
    return write_feature_cache
