"""Checks of the shared fixtures in conftest.py themselves (no featcache import)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _visible_images(folder: Path) -> list[Path]:
    """Non-hidden files with an image extension directly in ``folder``."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS
    )


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError):
        return False


def _mean_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))


def test_class_folder(class_folder: Path) -> None:
    classes = sorted(p.name for p in class_folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert classes == ["bird", "cat", "dog"]
    per_class = {c: _visible_images(class_folder / c) for c in classes}
    assert {c: len(v) for c, v in per_class.items()} == {"bird": 4, "cat": 4, "dog": 4}
    assert (class_folder / "cat" / "same.png").is_file() and (class_folder / "dog" / "same.png").is_file()
    suffixes = {p.suffix for v in per_class.values() for p in v}
    assert {".PNG", ".JPG", ".bmp"} <= suffixes
    for v in per_class.values():
        for p in v:
            assert _decodes(p), p
    # Junk is present (so a loader has to skip it).
    junks = (".DS_Store", "cat/.DS_Store", "dog/notes.txt", ".thumbs/x.jpg", "cat/.thumbs/x.jpg", "bird/._img_0.jpg")
    for junk in junks:
        assert (class_folder / junk).is_file(), junk
    assert not _decodes(class_folder / "bird" / "._img_0.jpg")
    # Classes are separable: each class's mean colour is nearest its own class's other images.
    means = {c: np.mean([_mean_rgb(p) for p in v], axis=0) for c, v in per_class.items()}
    for c, v in per_class.items():
        for p in v:
            m = _mean_rgb(p)
            assert min(means, key=lambda k: np.linalg.norm(means[k] - m)) == c


def test_split_folder(split_folder: Path) -> None:
    counts = {
        (s, c): len(_visible_images(split_folder / s / c))
        for s in ("train", "val", "test") for c in ("a", "b")
    }
    assert counts == {(s, c): n for s, n in (("train", 6), ("val", 2), ("test", 2)) for c in ("a", "b")}
    assert all(_decodes(p) for p in split_folder.rglob("*.png"))


def test_csv_dataset(csv_dataset: Path) -> None:
    with csv_dataset.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "label", "split"]
        rows = list(reader)
    assert len(rows) == 24
    assert {r["label"] for r in rows} == {"red", "green", "blue"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert sum(r["split"] == "train" for r in rows) == 12
    assert any(r["path"].count("/") >= 3 for r in rows)  # nested subfolders
    for r in rows:
        assert not Path(r["path"]).is_absolute()
        assert _decodes(csv_dataset.parent / r["path"]), r["path"]


def test_unlabelled_folder(unlabelled_folder: Path) -> None:
    assert not any(p.is_dir() for p in unlabelled_folder.iterdir())
    files = _visible_images(unlabelled_folder)
    assert len(files) == 5 and all(_decodes(p) for p in files)


def test_odd_images(odd_images: Path) -> None:
    d = odd_images / "odd"
    files = _visible_images(d)
    assert len(files) == 12
    assert all(_decodes(p) for p in files)
    modes = {}
    for p in files:
        with Image.open(p) as im:
            modes[p.name] = (im.mode, im.format, im.size, getattr(im, "n_frames", 1), im.info)
    assert modes["gray_L.png"][0] == "L"
    assert modes["gray16_I16.png"][0] in ("I;16", "I")
    assert modes["palette_P_transparent.png"][0] == "P"
    assert "transparency" in modes["palette_P_transparent.png"][4]
    assert modes["gray_alpha_LA.png"][0] == "LA"
    assert modes["bilevel_1.png"][0] == "1"
    assert modes["rgba.png"][0] == "RGBA"
    assert modes["cmyk.jpg"][:2] == ("CMYK", "JPEG")
    assert modes["tiny_1x1.png"][2] == (1, 1)
    assert modes["animated.gif"][1] == "GIF" and modes["animated.gif"][3] == 2
    assert modes["image.webp"][1] == "WEBP"
    assert modes["image.tiff"][1] == "TIFF"
    # Every one of them converts to RGB.
    for p in files:
        with Image.open(p) as im:
            assert ImageOps.exif_transpose(im).convert("RGB").mode == "RGB"


def test_exif_rotated(odd_images: Path) -> None:
    with Image.open(odd_images / "odd" / "exif_rotated.jpg") as im:
        assert im.getexif().get(0x0112) == 6
        assert im.size == (32, 20)
        assert ImageOps.exif_transpose(im).size == (20, 32)


def test_broken_images(broken_images, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another module may have switched truncated-image tolerance on; test the strict default.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    root, bad_names = broken_images
    assert broken_images.root == root
    d = root / "x"
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(["good_0.png", "good_1.jpg", "good_2.png", *bad_names])
    assert sorted(bad_names) == ["empty.jpg", "not_image.png", "truncated.jpg"]
    for name in names:
        assert _decodes(d / name) == (name not in bad_names), name
    # The truncated JPEG gets past Image.open (headers intact) and fails only on decoding.
    with Image.open(d / "truncated.jpg") as im:
        with pytest.raises(OSError):
            im.load()


def test_images_are_deterministic(make_image, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a" / "i.png", 2, 5)
    b = make_image(tmp_path / "b" / "i.png", 2, 5)
    c = make_image(tmp_path / "c" / "i.png", 2, 6)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_digits_dir(digits_dir: Path) -> None:
    assert digits_dir.is_absolute()
    if not digits_dir.is_dir():
        pytest.skip("data/digits missing: run python scripts/make_demo_data.py")
    assert (digits_dir / "README.md").is_file()
    for split, n in (("train", 18), ("val", 6), ("test", 6)):
        classes = sorted(p.name for p in (digits_dir / split).iterdir() if p.is_dir())
        assert classes == [str(k) for k in range(10)]
        for c in classes:
            assert len(list((digits_dir / split / c).glob("digit_*.png"))) == n
    sample = next((digits_dir / "train" / "0").glob("*.png"))
    with Image.open(sample) as im:
        assert (im.mode, im.size) == ("L", (64, 64))
