"""Decoding is part of the features: its output for fixed images is pinned to FEATURES_VERSION.

A change to decoding, RGB conversion, resizing or cropping that moves any pixel fails here until
``featcache.cache.key.FEATURES_VERSION`` is bumped (and the new checksum recorded below), so no cache made by
the old code is ever reused for the new one. Every odd image mode decodes to RGB.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from featcache.cache.key import FEATURES_VERSION
from featcache.decode import open_rgb, resize_center_crop, to_rgb

# FEATURES_VERSION -> SHA-256 of the decoded pixels of the images below.
DECODED = {1: "008decb6cb810eb02761028687f3a984890efc0196964933bef953b7bf99fa37",  # Pillow's resize
           2: "adca762646bc05eefb779250f2d8d61a2110530c4674b4912063b459b5d41305"}  # torch's uint8 resize, CHW


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


# FEATURES_VERSION -> features of the images above through the whole path (decoding, normalisation, the shipped
# EfficientNet-Lite0, pooling, a second scale, augmented views): every layer's 6 values of each image and of its
# first view (3 first and 3 last: with two scales, one of each). Compared with a tolerance (fp32 convolutions
# differ in the last bits between CPUs).
FEATURES = {2: {
    'avg+scales _blocks.4': [
        [15.6466, -2.18858, 1.30279, -1.31115, -2.64927, -3.75117],
        [15.53429, -2.40942, 0.70232, 0.86819, -2.30913, -1.66431],
        [9.42768, -5.51132, 0.41443, -3.7114, -1.47843, -1.59101],
        [8.54078, -5.68468, -0.01022, -4.5359, -0.6822, 0.08016]],
    'avg+scales _blocks.4 view0': [
        [15.38883, -2.93342, 1.51924, -0.14712, -3.41451, -4.75319],
        [14.12778, -2.81697, 2.17963, -0.72575, 1.03418, -2.99444],
        [8.4726, -1.71308, 1.80555, -5.5804, -0.31169, 0.12958],
        [8.49832, -5.07992, 0.98966, -3.94259, 0.45889, 0.45176]],
    'avg+scales _blocks.10': [
        [-3.67368, 1.83298, -1.82914, 2.34377, 3.18885, 3.12166],
        [-3.1766, 1.62425, -0.78696, 4.74547, 1.69177, 7.98979],
        [-3.01347, -0.23554, -1.12165, 1.28559, -3.1852, 2.60931],
        [-2.99824, -0.69916, -2.43599, 0.18399, -1.44046, -0.03056]],
    'avg+scales _blocks.10 view0': [
        [-2.34971, 0.41928, -1.56099, 0.40352, 5.00089, 1.44049],
        [-2.32519, 0.76586, -0.92992, 1.69409, 3.75033, 7.24279],
        [-1.09031, 0.26836, 0.83737, -0.02036, -2.77253, 2.01541],
        [-3.32909, -1.17753, -1.20223, 0.46827, -1.51214, -3.02823]],
    'avg+scales _swish_1': [
        [0.42196, 0, 0, 0, 0, 0],
        [0.53652, 0, 0.29441, 0, 0, 0],
        [0.39791, 0, 1.67662, 0, 0, 0],
        [1.03743, 0, 0.61642, 0, 0, 0]],
    'avg+scales _swish_1 view0': [
        [0.91608, 0, 0.04516, 0, 0, 0],
        [0.54909, 0, 0, 0, 0, 0],
        [0.31792, 0, 0, 0, 0, 0],
        [1.70125, 0, 0.55468, 0, 0, 0]],
    'max _blocks.4': [
        [32.25648, 11.22376, 12.27601, 9.63646, 12.20916, 14.2048],
        [30.78043, 9.2065, 12.53433, 13.76647, 14.49935, 15.44728],
        [22.01461, 8.76113, 16.47483, 7.6046, 8.36808, 14.61916],
        [22.28253, 11.1999, 17.78408, 1.52141, 14.97895, 13.15056]],
    'max _blocks.10': [
        [2.33242, 6.71766, 3.83627, 7.15161, 9.83909, 7.59663],
        [1.39625, 6.66056, 4.89315, 7.36821, 9.45972, 8.10604],
        [0.80388, 6.998, 4.20399, 6.93042, 5.47031, 5.8873],
        [0.70476, 3.74716, 1.99503, 6.3532, 2.01646, 9.05646]],
    'max _swish_1': [
        [1.03847, 0, 0, 0, 1.04055, 0],
        [1.3322, 0, 0.3787, 0, 0, 0],
        [0.8852, 0, 2.00644, 0.18599, 0, 0],
        [1.38124, 0, 0.85027, 0, 0, 0]],
}}


def _golden_features(tmp_path):
    import featcache

    for path in _images(tmp_path):
        (tmp_path / "imgs" / "x").mkdir(parents=True, exist_ok=True)
        path.rename(tmp_path / "imgs" / "x" / path.name)
    common = dict(image_size=64, engine="torch", precision="fp32", num_workers=0, progress=False,
                  cache_dir=tmp_path / "c")
    avg = featcache.load(featcache.extract(tmp_path / "imgs", scales=(1.0, 0.5), views=2, augment=("flip", "crop"),
                                           **common))
    peak = featcache.load(featcache.extract(tmp_path / "imgs", pool="max", **common))
    rows = {}
    for tag, fs in (("avg+scales", avg), ("max", peak)):
        for layer in fs.layers:
            x = np.asarray(fs.features[layer][:], dtype=np.float64)
            rows[f"{tag} {layer}"] = np.c_[x[:, :3], x[:, -3:]]  # with scales, the last 3 are the second scale's
            if layer in fs.views:
                v = np.asarray(fs.views[layer][:, 0], dtype=np.float64)
                rows[f"{tag} {layer} view0"] = np.c_[v[:, :3], v[:, -3:]]
    return rows


def test_features_are_pinned_to_the_features_version(tmp_path):
    """Normalisation, pooling, scales and views are part of the features too: a change that moves them fails here
    until FEATURES_VERSION is bumped (and the new values recorded)."""
    got = _golden_features(tmp_path)
    assert FEATURES.get(FEATURES_VERSION) is not None, (
        f"record the features of FEATURES_VERSION {FEATURES_VERSION}: "
        + repr({k: np.round(v, 5).tolist() for k, v in got.items()}))
    want = FEATURES[FEATURES_VERSION]
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        np.testing.assert_allclose(got[name], values, rtol=2e-3, atol=2e-4, err_msg=(
            f"{name}: features changed; bump featcache.cache.key.FEATURES_VERSION and record the new values"))


def test_every_odd_mode_decodes_to_rgb_uint8(odd_images):
    for path in sorted((odd_images / "odd").iterdir()):
        arr = resize_center_crop(open_rgb(path, 40), 40, 32)
        assert arr.shape == (3, 32, 32) and arr.dtype == np.uint8, path.name


def test_exif_orientation_is_applied(tmp_path):
    # Left half red, right half blue, stored 40x20 landscape with orientation 6 (rotate 90° CW to show).
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = resize_center_crop(open_rgb(tmp_path / "r.jpg", 20), 20, 20)
    # shown portrait: red on top, blue at the bottom
    assert out[0, 2, 10] > 200 and out[2, 2, 10] < 60
    assert out[2, 17, 10] > 200 and out[0, 17, 10] < 60


def test_sixteen_bit_is_scaled_not_clipped_and_alpha_goes_on_white():
    half = Image.fromarray(np.full((4, 4), 32768, np.uint16))  # mid-grey in 16 bits
    assert abs(int(np.asarray(to_rgb(half))[0, 0, 0]) - 128) <= 1
    clear = Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA")  # fully transparent black
    assert np.asarray(to_rgb(clear))[0, 0].tolist() == [255, 255, 255]


def test_resize_is_within_one_grey_level_of_pillows_bilinear(tmp_path):
    """torch's uint8 kernel stands in for Pillow's antialiased bilinear (faster, FEATURES_VERSION 2): down- and
    upscaling, odd sizes, the crop centred the same way."""
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("flower.jpg"))
    for size, (resize, crop) in (((320, 240), (110, 96)), ((320, 240), (256, 224)), ((37, 53), (64, 56)),
                                 ((1000, 30), (40, 32))):
        img = photo.resize(size, Image.BILINEAR)
        w, h = img.size
        scale = resize / min(w, h)
        new_w, new_h = max(crop, round(w * scale)), max(crop, round(h * scale))
        left, top = (new_w - crop) // 2, (new_h - crop) // 2
        pil = np.asarray(img.resize((new_w, new_h), Image.BILINEAR, reducing_gap=3.0)
                         .crop((left, top, left + crop, top + crop))).transpose(2, 0, 1)
        ours = resize_center_crop(img, resize, crop)
        assert ours.shape == (3, crop, crop) and ours.flags.c_contiguous
        diff = np.abs(ours.astype(int) - pil)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (size, diff.max(), (diff > 0).mean())


def test_views_depend_on_the_pixels_only_and_leave_the_global_generator_alone(tmp_path):
    """The same image gets the same views wherever it lies (another row, another call); two images get other
    views; the caller's random stream is untouched (the seeding uses the CPU generator inside fork_rng)."""
    import torch

    from featcache import decode, sources

    rng = np.random.default_rng(1)
    for c, name in (("a", "x.png"), ("b", "y.png"), ("b", "z.png")):
        (tmp_path / c).mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) if name != "z.png" else None
        Image.fromarray(pixels if pixels is not None else
                        np.asarray(Image.open(tmp_path / "a" / "x.png"))).save(tmp_path / c / name)
    src = sources.open_source(str(tmp_path))
    rows = {Path(p).name: i for i, p in enumerate(src.paths)}
    transform = decode.augmenter(("flip", "crop", "color"), 32, 36)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    x = decode.decode_views(src, rows["x.png"], 36, 32, 3, transform)
    after = torch.rand(3)
    assert torch.equal(before, after)
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, decode.decode_views(src, rows["z.png"], 36, 32, 3, transform))
    y = decode.decode_views(src, rows["y.png"], 36, 32, 3, transform)
    assert not np.array_equal(x[1:], y[1:])
    assert len({v.tobytes() for v in x[1:]}) == 3  # each view its own
