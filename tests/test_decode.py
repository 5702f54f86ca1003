"""Decoding is part of the features: its output for fixed images is pinned to FEATURES_VERSION.

A change to decoding, RGB conversion, resizing or cropping that moves any pixel fails here until
``featcache.cache.key.FEATURES_VERSION`` is bumped (and the new checksum recorded below), so no cache made by
the old code is ever reused for the new one.
"""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from featcache.cache.key import FEATURES_VERSION
from featcache.decode import open_rgb, resize_center_crop

# FEATURES_VERSION -> SHA-256 of the decoded pixels of the images below.
DECODED = {1: "008decb6cb810eb02761028687f3a984890efc0196964933bef953b7bf99fa37"}


def _images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, rng.integers(0, 256, (37, 53, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray((rng.integers(0, 65536, (29, 31))).astype(np.uint16)).save(tmp_path / "gray16.png")
    Image.fromarray(rgb[:, :, 0]).convert("P").save(tmp_path / "palette.png")
    return [tmp_path / n for n in ("rgb.png", "rgba.png", "gray16.png", "palette.png")]


def test_decoded_pixels_are_pinned_to_the_features_version(tmp_path):
    h = hashlib.sha256()
    for path in _images(tmp_path):
        for resize, crop in ((40, 32), (24, 24), (64, 56)):
            h.update(resize_center_crop(open_rgb(path, resize), resize, crop).tobytes())
    assert FEATURES_VERSION in DECODED, f"record the checksum of FEATURES_VERSION {FEATURES_VERSION}"
    assert h.hexdigest() == DECODED[FEATURES_VERSION], (
        "decoded pixels changed: bump featcache.cache.key.FEATURES_VERSION and record the new checksum")
