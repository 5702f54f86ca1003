"""Never lose work, never trust bad input: kill -9 and resume, reuse, strict mode, timeouts,
concurrent runs, a full disk, and the errors a user sees (bad flags: test_cli_extract.py)."""
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import featcache
from featcache import FeatcacheError, load
from featcache.cache import CacheWriter, partial_path

REPO = Path(__file__).resolve().parents[1]
FAST_CLI = ["--model", "resnet18", "--weights", "none", "--image-size", "64", "--precision", "fp32",
            "--num-workers", "0", "--no-progress"]


def _folder(root: Path, make_image, n_per_class=40, classes=3) -> Path:
    for k in range(classes):
        for i in range(n_per_class):
            make_image(root / f"c{k}" / f"img_{i:03d}.png", k, i, size=(48, 40))
    return root


def _cmd(data, cache_dir, *extra):
    return [sys.executable, "-m", "featcache.extract", "--data", str(data), "--cache-dir", str(cache_dir),
            *FAST_CLI, *extra]


def _rows_done(cache_dir: Path) -> int:
    """Rows the running extraction has committed (read without the HDF5 lock the writer holds)."""
    import h5py

    for partial in cache_dir.glob("*.partial.h5"):
        try:
            with h5py.File(partial, "r", locking=False) as f:
                return int(f["progress/rows_done"][()])
        except (OSError, KeyError):
            return 0
    return -1


def _kill_at(cmd, cache_dir: Path, min_rows: int) -> None:
    """Start an extraction and SIGKILL it once its partial file holds ``min_rows`` committed rows."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 240
    while _rows_done(cache_dir) < min_rows and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{err}"


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_matches_an_uninterrupted_run(tmp_path, make_image):
    data = _folder(tmp_path / "data", make_image)
    reference = subprocess.run(_cmd(data, tmp_path / "ref", "--batch-size", "4"), capture_output=True,
                               text=True, cwd=REPO)
    assert reference.returncode == 0, reference.stderr
    ref = load(reference.stdout.strip().splitlines()[-1])

    cache = tmp_path / "cache"
    for rows in (0, 8, 48):  # as soon as the partial file exists, then after some rows are committed
        _kill_at(_cmd(data, cache, "--batch-size", "4"), cache, rows)
    assert _rows_done(cache) >= 48
    done = subprocess.run(_cmd(data, cache, "--batch-size", "4"), capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "resuming:" in done.stderr  # continued, did not start over
    resumed = int(done.stderr.split(" reused from another cache, ")[1].split(" resumed")[0])
    assert resumed >= 48  # the summary counts the rows the interrupted runs had committed
    fs = load(done.stdout.strip().splitlines()[-1])
    assert list(fs.paths) == list(ref.paths) and (fs.y == ref.y).all()  # no row lost, none doubled
    np.testing.assert_allclose(fs.X, ref.X, rtol=1e-4, atol=1e-5)
    assert not list(cache.glob("*.partial.h5")) and not list(cache.glob("*.tmp*"))


def _counting_resnet():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.seen = 0
    model.conv1.register_forward_pre_hook(lambda m, a: setattr(model, "seen", model.seen + a[0].shape[0]))
    return model


def test_added_and_deleted_files_reuse_the_rest(tmp_path, make_image, fast):
    data = _folder(tmp_path / "data", make_image, n_per_class=5)
    model = _counting_resnet()
    fast = {**fast, "layers": ["layer4"]}  # named, so no dummy image finds the default stage outputs
    first = featcache.extract(data, **{**fast, "model": model})
    make_image(data / "c0" / "new_a.png", 0, 100, size=(48, 40))
    make_image(data / "c2" / "new_b.png", 2, 101, size=(48, 40))
    (data / "c1" / "img_000.png").unlink()
    model.seen = 0
    second = featcache.extract(data, **{**fast, "model": model})
    assert second != first
    assert model.seen == 2 + 2  # the two new images, plus the 2-image shape probe
    fs = load(second)
    assert len(fs) == 16 and "c1/img_000.png" not in fs.paths and "c0/new_a.png" in fs.paths
    fresh = load(featcache.extract(data, **{**fast, "model": _counting_resnet(), "cache_dir": tmp_path / "fresh"}))
    assert list(fresh.paths) == list(fs.paths) and (fresh.y == fs.y).all()
    np.testing.assert_allclose(fs.X, fresh.X, rtol=1e-4, atol=1e-5)


def test_strict_refuses_bad_files_before_extracting(broken_images, fast):
    model = _counting_resnet()
    with pytest.raises(FeatcacheError, match=r"^strict: 3 file\(s\) cannot be decoded \(nothing was extracted\): "
                                             r".*empty.jpg"):
        featcache.extract(broken_images.root, **{**fast, "model": model, "strict": True, "layers": ["layer4"]})
    assert model.seen == 0 and not list(fast["cache_dir"].glob("*.h5"))


def test_strict_holds_on_a_cache_hit_too(broken_images, fast):
    settings = {**fast, "model": _counting_resnet(), "layers": ["layer4"]}
    path = featcache.extract(broken_images.root, **settings)  # not strict: the 3 bad files are skipped, recorded
    assert len(load(path).failed) == 3
    with pytest.raises(FeatcacheError, match=r"^strict: 3 file\(s\) cannot be decoded \(skipped when this cache "
                                             r"was extracted\): .*empty.jpg"):
        featcache.extract(broken_images.root, **{**settings, "strict": True})


@pytest.mark.slow
def test_a_cache_hit_needs_no_write_access(split_folder, tmp_path):
    """A team's shared cache folder, mounted read-only: the hit is found and returned, nothing is written. The
    second run sees the folder through a real read-only bind mount (its own mount namespace)."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare --mount (util-linux, run as root) for a real read-only mount")
    shared = tmp_path / "shared"
    shutil.copytree(split_folder, shared / "data")
    cmd = [sys.executable, "-m", "featcache.extract", "--data", str(shared / "data"), "--cache-dir",
           str(shared / "cache"), "--model", "resnet18", "--weights", "none", "--layer", "layer4", "--image-size",
           "32", "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    shutil.rmtree(shared / "cache" / ".locks")
    script = f"mount --bind -o ro {shared} {shared} && touch {shared}/probe 2>/dev/null; exec \"$@\""
    second = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", *cmd], capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr
    assert "cache hit" in second.stderr and second.stdout == first.stdout
    assert not (shared / "cache" / ".locks").exists() and not (shared / "probe").exists()


def test_every_odd_image_mode_extracts_without_failures(odd_images, fast):
    fs = load(featcache.extract(odd_images, **fast))
    assert len(fs) == 12 and fs.failed == []


def test_a_hanging_decode_becomes_a_failed_row_not_a_hang():
    from featcache.extraction.loader import DecodeDataset
    from featcache.models import Preprocess
    from featcache.sources import Source

    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            if i == 1:
                time.sleep(30)  # a decoder that never comes back in reasonable time
            return torch.full((3, 16, 16), 50 * i, dtype=torch.uint8), 0

    src = Source(name="slow", root=None, paths=["0", "1", "2"], labels=np.zeros(3, np.int64), class_names=[],
                 dataset=Slow())
    dd = DecodeDataset(src, Preprocess(16, 16), np.arange(3), timeout_s=1.0)
    t = time.time()
    image, reason, _ = dd[1]
    assert time.time() - t < 5
    assert "decoding took longer than 1 s" in reason and image.shape == (3, 16, 16)
    assert dd[2][1] == ""


@pytest.mark.slow
def test_two_concurrent_runs_end_with_one_valid_cache(tmp_path, make_image):
    data = _folder(tmp_path / "data", make_image, n_per_class=15)
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(_cmd(data, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1
    assert any("cache hit" in err for _, err in outs)  # the second waited, then found the first's result
    assert len(load(paths.pop())) == 45
    assert not list(cache.glob("*.partial.h5"))


@pytest.mark.slow
def test_disk_full_is_a_clear_error_and_the_work_resumes(split_folder, fast, monkeypatch):
    real_write = CacheWriter._write
    calls = {"n": 0}

    def failing_write(self, whole_chunks_only):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, whole_chunks_only)

    monkeypatch.setattr(CacheWriter, "_write", failing_write)
    with pytest.raises(FeatcacheError, match="disk full while writing .*rerun the same command"):
        featcache.extract(split_folder, **{**fast, "batch_size": 2}, )
    partials = list(fast["cache_dir"].glob("*.partial.h5"))
    assert len(partials) == 1
    monkeypatch.setattr(CacheWriter, "_write", real_write)
    fs = load(featcache.extract(split_folder, **{**fast, "batch_size": 2}))
    assert len(fs) == 20 and not partial_path(fs.path).exists()


def test_unwritable_cache_dir(split_folder, fast, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FeatcacheError, match="cannot write to the cache directory"):
        featcache.extract(split_folder, **{**fast, "cache_dir": tmp_path / "file" / "cache"})


@pytest.mark.slow
def test_dataset_of_only_bad_files_exits_nonzero(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    r = subprocess.run(_cmd(tmp_path / "d", tmp_path / "cache"), capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "no image could be decoded" in r.stderr, r.stderr
    assert not list((tmp_path / "cache").glob("*.h5"))


def test_batch_size_auto_on_a_cpu(split_folder, fast):
    fs = load(featcache.extract(split_folder, **{**fast, "batch_size": "auto"}))
    assert len(fs) == 20 and fs.meta["config"]["batch_size"] == 64


@pytest.mark.slow
def test_device_jpeg_decode_path_matches_pillow(tmp_path, make_image, fast, broken_images):
    """``gpu_decode`` (run here on the CPU, same code as on CUDA) gives features close to the Pillow path."""
    data = tmp_path / "jpegs"
    for k in range(2):
        for i in range(4):
            make_image(data / f"c{k}" / f"{i}.jpg", k, i, size=(60, 44), quality=95)
    make_image(data / "c0" / "p.png", 0, 9)  # non-JPEG files still go through Pillow
    (data / "c1" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    pil = load(featcache.extract(data, **fast))
    dev = load(featcache.extract(data, **{**fast, "gpu_decode": True}))
    assert pil.path != dev.path and list(pil.paths) == list(dev.paths)
    assert [p for p, _ in dev.failed] == ["c1/bad.jpg"] and dev.failed[0][1]
    cos = (pil.X * dev.X).sum(1) / (np.linalg.norm(pil.X, axis=1) * np.linalg.norm(dev.X, axis=1))
    assert cos.min() > 0.99, cos


@pytest.mark.slow
def test_same_features_across_worker_counts_and_batch_sizes(split_folder, fast, tmp_path):
    a = load(featcache.extract(split_folder, **fast))
    b = load(featcache.extract(split_folder, **{**fast, "num_workers": 2, "batch_size": 3,
                                                 "cache_dir": tmp_path / "other"}))
    assert a.path.name == b.path.name  # workers and batch size are not part of the key
    assert list(a.paths) == list(b.paths)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-4, atol=1e-5)
    # Several batches in flight at once (streams finish out of order), or one: rows still land in order.
    for i, streams in enumerate((3, 1)):
        c = load(featcache.extract(split_folder, **{**fast, "streams": streams, "batch_size": 2, "num_workers": 1,
                                                     "cache_dir": tmp_path / f"streams{i}"}))
        assert c.path.name == a.path.name and list(c.paths) == list(a.paths)
        assert c.meta.timings["streams"] == streams
        for layer in a.layers:
            np.testing.assert_allclose(c.features[layer], a.features[layer], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_bf16_features_are_close_to_fp32(split_folder, fast):
    fp32 = load(featcache.extract(split_folder, **fast))
    bf16 = load(featcache.extract(split_folder, **{**fast, "precision": "bf16"}))
    cos = (fp32.X * bf16.X).sum(1) / (np.linalg.norm(fp32.X, axis=1) * np.linalg.norm(bf16.X, axis=1))
    assert cos.min() >= 0.99, cos.min()


def test_warnings_a_newcomer_needs(tmp_path, make_image, caplog):
    """One class, random weights: said at extract time, not found out at sweep time."""
    for i in range(3):
        make_image(tmp_path / "d" / "only" / f"{i}.png", 0, i)
    with caplog.at_level(logging.WARNING, logger="featcache"):
        featcache.extract(tmp_path / "d", model="resnet18", weights="NONE", layers=["layer4"], image_size=32,
                          cache_dir=tmp_path / "c", progress=False)
    assert "every labelled image is of one class (only)" in caplog.text
    assert "random weights (--weights none)" in caplog.text


@pytest.mark.slow
def test_weights_in_any_case_are_the_same_cache(split_folder, fast):
    settings = {k: v for k, v in fast.items() if k != "weights"}
    assert featcache.extract(split_folder, weights="None", **settings) == featcache.extract(split_folder, **fast)


@pytest.mark.slow
def test_a_publish_killed_half_way_leaves_nothing_behind_for_long(split_folder, fast):
    """The temporary file of a publish whose process is gone is removed by the next run of that cache; one of a
    live process is not. (The dead and live processes are real; their temporaries are made by hand, as a
    ``kill -9`` cannot be timed inside the few milliseconds of a publish.)"""
    path = featcache.extract(split_folder, **fast)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        orphan = path.with_name(f".{path.name}.{dead.pid}.tmp")
        busy = path.with_name(f".{path.name}.{live.pid}.tmp")
        orphan.write_bytes(b"half a cache")
        busy.write_bytes(b"a cache being published")
        path.unlink()  # a miss: the run takes the lock and looks for leftovers
        assert featcache.extract(split_folder, **fast) == path
        assert not orphan.exists() and busy.exists()
    finally:
        live.kill()
        live.wait()


class _StuckInWorkers(torch.utils.data.Dataset):
    """Item 3 hangs, in a decode worker, where no signal reaches it (SIGALRM blocked, as in a hung read)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 3 and torch.utils.data.get_worker_info() is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(120)
        return torch.full((3, 16, 16), 20 * i, dtype=torch.uint8), i % 2


@pytest.mark.slow
def test_a_stuck_file_fails_alone_and_the_run_goes_on(fast, monkeypatch):
    """The worker decoding item 3 never returns: that batch is decoded again image by image, item 3 is recorded
    as failed, every other row is extracted. (The loader's grace period is shortened from 60 s so the test is
    quick; the stall itself is real.)"""
    from featcache.extraction import loader

    monkeypatch.setattr(loader, "LOADER_GRACE_S", 3.0)
    path = featcache.extract(_StuckInWorkers(), **{**fast, "num_workers": 1, "batch_size": 2, "decode_timeout": 1.0})
    fs = load(path)
    assert len(fs) == 7 and [p for p, _ in fs.failed] == ["_StuckInWorkers[3]"]
    assert "decoding stalled" in fs.failed[0][1]


def test_a_hung_read_with_gpu_decode_fails_alone(tmp_path, make_image, fast):
    """--gpu-decode reads JPEG bytes in the workers: a file whose read never returns (a named pipe no one writes,
    as a hung network mount) is cut off by --decode-timeout and recorded; the other images are extracted."""
    for i in range(4):
        make_image(tmp_path / "d" / "a" / f"{i}.jpg", 0, i)
    os.mkfifo(tmp_path / "d" / "a" / "stuck.jpg")
    path = featcache.extract(tmp_path / "d", **{**fast, "gpu_decode": True, "device": "cpu", "num_workers": 1,
                                                "decode_timeout": 1.0})
    fs = load(path)
    assert len(fs) == 4 and [p for p, _ in fs.failed] == ["a/stuck.jpg"] and "longer than 1 s" in fs.failed[0][1]


@pytest.mark.slow
def test_hashing_content_never_blocks_on_a_fifo(split_folder, tmp_path):
    """A FIFO named like an image (a real one: opening it for reading waits for a writer that never comes) once
    hung ``--hash-content`` forever. It fails alone, recorded under ``failed/``, and the run finishes."""
    fifo = split_folder / "train" / "a" / "pipe.png"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "featcache.extract", "--data", str(split_folder), "--cache-dir",
                        str(tmp_path / "c"), "--model", "resnet18", "--weights", "none", "--image-size", "32",
                        "--num-workers", "0", "--engine", "torch", "--hash-content", "--decode-timeout", "2",
                        "--no-progress"], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stderr
    fs = featcache.load(r.stdout.strip().splitlines()[-1])
    assert len(fs) == 20 and [p for p, _ in fs.failed] == ["train/a/pipe.png"]
    assert "pipe.png is not a regular file" in r.stderr
