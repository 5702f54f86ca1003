"""The HDF5 cache format: plain-h5py layout, crash-safe partial files, compaction, clear load errors."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import featcache
from featcache import FeatcacheError
from featcache.cache import CacheMeta, CacheWriter, RowBlock, Rows, load, minibatches, partial_path
from featcache.cache.write import rows_per_chunk
from featcache.sources import Source


def _source(n):
    return Source(name="s", root=None, paths=[f"img_{i}.png" for i in range(n)],
                  labels=np.arange(n) % 2, class_names=["a", "b"], splits=["train"] * (n - 2) + ["test"] * 2)


def _block(lo, hi, d=3, bad=()):
    feats = np.arange(lo, hi, dtype=np.float32)[:, None] * np.ones((1, d), np.float32)
    ok = np.array([i not in bad for i in range(lo, hi)], np.uint8)
    return RowBlock({"features/f": feats}, ok, ["" if o else "OSError: broken" for o in ok])


ATTRS = CacheMeta(layers=["f"], class_names=["a", "b"])


def test_plain_h5py_layout_after_a_real_extraction(split_folder, fast):
    path = featcache.extract(split_folder, layers=["layer3", "layer4"], **fast)
    with h5py.File(path, "r") as f:
        assert f["features/layer3"].shape == (20, 256) and f["features/layer4"].shape == (20, 512)
        assert f["features/layer4"].chunks[1:] == (512,)  # whole rows per chunk
        assert f["features/layer4"].dtype == np.float32
        assert f["labels"].shape == (20,) and set(f["split"].asstr()[:]) == {"train", "val", "test"}
        assert f["paths"].asstr()[0].endswith(".png")
        assert json.loads(f.attrs["class_names"]) == ["a", "b"]
        assert json.loads(f.attrs["config"])["layers"] == ["layer3", "layer4"]
        assert len(f.attrs["fingerprint"]) == 64 and f.attrs["format_version"] == 1
        assert "torch" in json.loads(f.attrs["versions"]) and f.attrs["created"]
        assert len(f["failed/paths"]) == 0
        assert "progress" not in f  # resume bookkeeping is gone from a finished file
    assert not partial_path(path).exists()


def test_float16_storage(split_folder, fast):
    fs = load(featcache.extract(split_folder, dtype="float16", **fast))
    assert fs.X.dtype == np.float16 and fs.X.shape == (20, 512)


def test_partial_file_survives_a_stop_and_resumes(tmp_path):
    final = tmp_path / "c.h5"
    w = CacheWriter(final, _source(10), {}, {"features/f": (3,)}, "float32", "fp1", ATTRS)
    w.append(_block(0, 4))
    w.flush()
    w.close()  # as if the process died here: nothing else was written
    with pytest.raises(FeatcacheError, match="incomplete: 4 of 10 rows; rerun the same command to resume"):
        load(final)
    w = CacheWriter(final, _source(10), {}, {"features/f": (3,)}, "float32", "fp1", ATTRS)
    assert w.rows_done == 4
    w.append(_block(4, 10))
    n, failed = w.finish({})
    assert n == 10 and failed == []
    fs = load(final)
    np.testing.assert_array_equal(fs.X[:, 0], np.arange(10))
    assert not partial_path(final).exists()


def test_partial_of_another_config_or_corrupt_is_started_over(tmp_path):
    final = tmp_path / "c.h5"
    w = CacheWriter(final, _source(10), {}, {"features/f": (3,)}, "float32", "fp1", ATTRS)
    w.append(_block(0, 4))
    w.flush()
    w.close()
    assert CacheWriter(final, _source(10), {}, {"features/f": (3,)}, "float32", "other", ATTRS).rows_done == 0
    partial_path(final).write_bytes(b"garbage")
    w = CacheWriter(final, _source(10), {}, {"features/f": (3,)}, "float32", "fp1", ATTRS)
    assert w.rows_done == 0
    w.close()


def test_writes_are_chunk_aligned_and_counter_follows(tmp_path):
    w = CacheWriter(tmp_path / "c.h5", _source(10), {}, {"features/f": (3,)}, "float32", "fp", ATTRS)
    w.chunk_rows = 4
    w.append(_block(0, 3))
    assert w.rows_done == 0  # less than a chunk: buffered
    w.append(_block(3, 9))
    assert w.rows_done == 8  # two whole chunks written, one row waiting
    w.close()


def test_failed_rows_get_no_feature_row_and_are_listed(tmp_path):
    w = CacheWriter(tmp_path / "c.h5", _source(10), {}, {"features/f": (3,)}, "float32", "fp", ATTRS)
    w.append(_block(0, 10, bad={2, 7}))
    n, failed = w.finish({})
    assert n == 8 and [p for p, _ in failed] == ["img_2.png", "img_7.png"]
    fs = load(tmp_path / "c.h5")
    assert fs.X[:, 0].tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
    assert list(fs.paths) == [f"img_{i}.png" for i in (0, 1, 3, 4, 5, 6, 8, 9)]
    assert fs.y.tolist() == [i % 2 for i in (0, 1, 3, 4, 5, 6, 8, 9)]
    assert fs.failed[0] == ("img_2.png", "OSError: broken")


def test_nothing_decodable_is_an_error_and_leaves_nothing(tmp_path):
    w = CacheWriter(tmp_path / "c.h5", _source(3), {}, {"features/f": (3,)}, "float32", "fp", ATTRS)
    w.append(_block(0, 3, bad={0, 1, 2}))
    with pytest.raises(FeatcacheError, match="no image could be decoded"):
        w.finish({})
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_other_versions_and_foreign_files(tmp_path, split_folder, fast):
    path = featcache.extract(split_folder, **fast)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(FeatcacheError, match="cache format 99"):
        load(path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(FeatcacheError, match="not a featcache file"):
        load(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(FeatcacheError, match="not a readable HDF5 file"):
        load(tmp_path / "text.h5")
    with pytest.raises(FeatcacheError, match="no cache at"):
        load(tmp_path / "missing.h5")


def test_lazy_load_reads_on_demand(split_folder, fast):
    path = featcache.extract(split_folder, **fast)
    with load(path, lazy=True) as fs:
        assert isinstance(fs.X, h5py.Dataset)
        X, y = fs.subset("train")
        assert X.shape == (12, 512) and y.shape == (12,)


def test_cache_key_format_is_unchanged():
    """The key of fixed inputs, pinned: a change to what enters the key (or how it is hashed) fails here, so
    it cannot happen without a FORMAT_VERSION bump. Values computed by featcache before the reorganisation."""
    from featcache.cache import cache_key, key_parts
    from featcache.models import Backbone, Preprocess

    src = Source(name="toy", root=Path("/nonexistent"), paths=["a/1.png", "b/2.png"], labels=np.array([0, 1]),
                 class_names=["a", "b"], splits=["train", "test"])
    manifest = {"size": [10, 20], "mtime_ns": [1, 2], "sha256": None}
    bb = Backbone("resnet18", None, Preprocess(224, 256), "none", "ab" * 32)
    pinned = {"torch": "2.0.0", "torchvision": "0.15.0"}
    parts = key_parts(src, manifest, bb.identity(), ["layer3", "layer4"], "avg", "bf16", "float32")
    assert set(parts["versions"]) == {"torch", "torchvision", "pillow", "featcache_features"}
    assert cache_key({**parts, "versions": pinned}) == \
        "9e2f200f604537c968ca31601d66c2e30a1425acce866db73317e1d30e1b12df"
    parts = key_parts(src, manifest, bb.identity(), ["layer4"], "none", "fp32", "float16", decoder="torchvision.io",
                      views=2, augment=("flip",))
    assert cache_key({**parts, "versions": pinned}) == \
        "2849d879bd8376ebfe3bb3a95e88b6f46cdecd5119e8d1015c55295ccaf98e16"


def test_a_cache_written_with_the_old_attributes_is_still_read_and_hit(tmp_path):
    """A file laid out exactly as featcache wrote caches before the reorganisation (attribute by attribute,
    JSON strings where it wrote them) loads, verifies and is a cache hit."""
    from featcache.cache import cache_key, is_hit, verify

    key = {"format_version": 1, "model": "resnet18", "layers": ["layer4"], "pool": "avg"}
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({
            "config": json.dumps({"model": "resnet18", "layers": ["layer4"], "hash_content": False}, sort_keys=True),
            "key": json.dumps(key, sort_keys=True), "layers": json.dumps(["layer4"]),
            "class_names": json.dumps(["a", "b"]), "dataset": "toy", "data_root": "", "model": "resnet18",
            "versions": json.dumps({"featcache": "0.1.0", "torch": "2.14.1+cpu"}), "fingerprint": cache_key(key),
            "format_version": 1, "created": "2026-11-01T00:00:00+00:00", "timings": json.dumps({"total_s": 1.0}),
            "n_rows": 3, "complete": True})
        f.create_dataset("features/layer4", data=np.ones((3, 4), np.float32))
        f.create_dataset("labels", data=np.array([0, 1, 1]))
        f.create_dataset("paths", data=np.array(["x", "y", "z"], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("failed/paths", data=np.array([], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("failed/reasons", data=np.array([], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("source/paths", data=np.array(["x", "y", "z"], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("source/labels", data=np.array([0, 1, 1]))
    fs = load(path)
    assert fs.meta.layers == ["layer4"] and fs.meta.key == key and fs.meta["config"]["model"] == "resnet18"
    assert fs.classes == ["a", "b"] and fs.X.shape == (3, 4) and fs.meta.timings == {"total_s": 1.0}
    assert verify(path) == []
    assert is_hit(path, cache_key(key)) and not is_hit(path, "another")


def test_featcache_feature_code_and_libraries_enter_the_key(monkeypatch):
    """A bump of FEATURES_VERSION, another Pillow or another model package: another key (no stale reuse)."""
    from featcache.cache import cache_key, key, key_parts
    from featcache.models import Backbone, Preprocess

    src = Source(name="toy", root=Path("/x"), paths=["a.png"], labels=np.array([0]), class_names=["a"])
    manifest = {"size": [1], "mtime_ns": [1], "sha256": None}
    bb = Backbone("m", None, Preprocess(), "none", "ab", code={"efficientnet-lite-pytorch": "0.1"})
    base = cache_key(key_parts(src, manifest, bb.identity(), ["l"], "avg", "fp32", "float32"))
    versions = key_parts(src, manifest, bb.identity(), ["l"], "avg", "fp32", "float32")["versions"]
    assert versions["efficientnet-lite-pytorch"] == "0.1" and versions["featcache_features"] == key.FEATURES_VERSION
    monkeypatch.setattr(key, "FEATURES_VERSION", key.FEATURES_VERSION + 1)
    assert cache_key(key_parts(src, manifest, bb.identity(), ["l"], "avg", "fp32", "float32")) != base
    monkeypatch.undo()
    bb.code = {"efficientnet-lite-pytorch": "0.2"}
    assert cache_key(key_parts(src, manifest, bb.identity(), ["l"], "avg", "fp32", "float32")) != base


def test_content_hashes_not_dates_key_a_hash_content_cache(split_folder, fast):
    """--hash-content: touching every file (same bytes; touch, rsync without -t, git checkout) is a hit; verify
    agrees; changing one file's bytes is a miss, and explain names that file."""
    import os
    import time

    from featcache.cache import verify
    from featcache.config import ExtractConfig
    from featcache.extraction import explain

    settings = {**fast, "hash_content": True}
    first = featcache.extract(split_folder, **settings)
    later = time.time_ns() + 10**10
    for f in split_folder.rglob("*.png"):
        os.utime(f, ns=(later, later))
    assert featcache.extract(split_folder, **settings) == first
    assert verify(first) == []
    assert explain(ExtractConfig(data=split_folder, **settings)) == [f"cache hit: {first}"]
    victim = sorted(split_folder.rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # same image, other bytes
    assert "changed (content): 1" in "\n".join(explain(ExtractConfig(data=split_folder, **settings)))
    assert "1 file(s)" in verify(first)[0]
    assert featcache.extract(split_folder, **settings) != first


def test_rows_reach_the_disk_before_the_counter_that_vouches_for_them(tmp_path, monkeypatch):
    """fsync after the rows and again after the counter, for every commit. (os.fsync is wrapped to record the
    order: a power cut cannot be made in a test.)"""
    import os

    from featcache.cache import write

    events = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        events.append(("fsync", w.rows_done))
        real_fsync(fd)

    w = CacheWriter(tmp_path / "c.h5", _source(10), {}, {"features/f": (3,)}, "float32", "fp", ATTRS)
    monkeypatch.setattr(write.os, "fsync", recording_fsync)
    for lo in range(0, 10, 2):
        w.append(_block(lo, lo + 2))
    w.flush()
    done = sorted({d for _, d in events})
    assert events and all(("fsync", d) in events for d in done)
    # each commit: one fsync before the counter moves (old count), one after (new count)
    counts = [d for _, d in events]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 10


def test_publish_leaves_a_live_ranks_partial_and_removes_dead_ones(tmp_path):
    """Leftover partials of a torchrun job with another number of ranks: kept while its rank's lock is held by a
    live process (a real second process), removed once that process is gone."""
    import subprocess
    import sys

    from featcache.cache import lock_path

    final = tmp_path / "c.h5"
    leftover = final.with_name("c.rank1of3.partial.h5")
    leftover.write_bytes(b"another job's rows")
    lock = str(lock_path(final)) + ".rank1"
    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"l = FileLock({lock!r}); l.acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        w = CacheWriter(final, _source(4), {}, {"features/f": (3,)}, "float32", "fp", ATTRS)
        w.append(_block(0, 4))
        w.finish({})
        assert final.is_file() and leftover.exists()  # a live rank may still write it
    finally:
        holder.kill()
        holder.wait()
    w = CacheWriter(final, _source(4), {}, {"features/f": (3,)}, "float32", "fp2", ATTRS)
    w.append(_block(0, 4))
    w.finish({})
    assert not leftover.exists()  # its writer is gone: removed


def test_a_cache_without_failures_is_finished_in_place_not_copied(tmp_path):
    """Publishing renames the partial file (its features are written once); a cache with a failed row is copied
    without that row. Both read back the same way."""
    final = tmp_path / "c.h5"
    w = CacheWriter(final, _source(10), {}, {"features/f": (3,)}, "float32", "fp", ATTRS)
    inode = w.partial.stat().st_ino
    for lo in range(0, 10, 5):
        w.append(_block(lo, lo + 5))
    n, failed = w.finish({})
    assert n == 10 and failed == [] and final.stat().st_ino == inode and not w.partial.exists()
    fs = load(final)
    assert fs.X[:, 0].tolist() == list(range(10)) and list(fs.paths) == [f"img_{i}.png" for i in range(10)]

    other = tmp_path / "d.h5"
    w = CacheWriter(other, _source(10), {}, {"features/f": (3,)}, "float32", "fp2", ATTRS)
    inode = w.partial.stat().st_ino
    w.append(_block(0, 10, bad=(4,)))
    n, failed = w.finish({})
    assert n == 9 and len(failed) == 1 and other.stat().st_ino != inode


def test_a_finish_killed_before_its_rename_is_completed_by_the_next_run(tmp_path):
    """The partial was made a finished cache (listing written, marked complete, resume state gone) and the run
    died before the rename: the next run renames it instead of starting over."""
    from featcache.cache.publish import _write_listing, recover_finished

    final = tmp_path / "c.h5"
    w = CacheWriter(final, _source(6), {}, {"features/f": (3,)}, "float32", "fp", ATTRS)
    w.append(_block(0, 6))
    w.complete()
    with h5py.File(w.partial, "r+") as f:  # the first half of a finish in place
        _write_listing(f, f["source/paths"].asstr()[:], np.arange(6), [])
        del f["progress"]
    assert not recover_finished(final, "another fingerprint") and not final.exists()
    assert recover_finished(final, "fp") and not w.partial.exists()
    assert load(final).X[:, 0].tolist() == list(range(6))


def test_a_hit_without_torch_never_serves_a_stale_key(split_folder, fast, tmp_path):
    """The record that lets a hit skip the model (cache/hit.py) stands only for what it was made from: a checkpoint
    rewritten in place gives another key, found by the full path, never the old cache."""
    import torch
    import torchvision

    from featcache.cache.hit import find_hit
    from featcache.config import ExtractConfig

    ckpt = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    settings = {**fast, "weights": str(ckpt)}
    first = featcache.extract(split_folder, **settings)
    cfg = ExtractConfig(data=split_folder, **settings)
    assert find_hit(cfg)[0] == first  # remembered: found without the model
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)  # other weights, same path
    assert find_hit(cfg)[0] is None
    second = featcache.extract(split_folder, **settings)
    assert second != first and find_hit(cfg)[0] == second


def test_a_link_planted_at_the_partials_name_is_refused_never_written_through(split_folder, fast, tmp_path):
    """In a shared cache folder, a dangling link at ``<cache>.partial.h5`` (a name anyone can predict) once made
    the published cache a link into another folder. A real symbolic link, planted where the run will write."""
    import os

    from featcache.config import ExtractConfig
    from featcache.extraction.plan import plan_extraction

    elsewhere = tmp_path / "elsewhere" / "stolen.h5"
    elsewhere.parent.mkdir()
    plan = plan_extraction(ExtractConfig(data=split_folder, **fast))
    partial = partial_path(plan.path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, partial)
    with pytest.raises(FeatcacheError, match="is a symbolic link .* refusing to write through it"):
        featcache.extract(split_folder, **fast)
    assert not elsewhere.exists() and not os.path.lexists(plan.path)


def test_reused_rows_reach_the_disk_before_anything_vouches_for_them(tmp_path, monkeypatch):
    """Rows copied from an older cache are done (not in the to-do list) once the partial's layout is whole: they must
    be fsynced first. A power cut cannot be made in a test, so the fsync helper is wrapped to record, at each call,
    what the file holds; the reused rows must be synced before the counter that marks the layout whole exists."""
    from featcache.cache import write
    from featcache.cache.layout import ROWS_DONE
    from featcache.cache.write import Reuse

    old = tmp_path / "old.h5"
    w = CacheWriter(old, _source(6), {}, {"features/f": (3,)}, "float32", "fp0", ATTRS)
    w.append(_block(0, 6))
    w.finish({})
    seen = []
    real = write._fsync

    def recording(f):
        seen.append((ROWS_DONE in f, float(f["features/f"][1, 0]) if "features/f" in f else None))
        real(f)

    monkeypatch.setattr(write, "_fsync", recording)
    reuse = Reuse(old, np.array([1, 2]), np.array([1, 2]))
    w = CacheWriter(tmp_path / "new.h5", _source(6), {}, {"features/f": (3,)}, "float32", "fp1", ATTRS, reuse=reuse)
    assert w.reused == 2 and list(w.remaining) == [0, 3, 4, 5]
    assert seen[0] == (False, 1.0)  # the reused row 1 synced while nothing vouched for it yet
    w.close()


def test_minibatches_cover_every_row_once_reading_whole_chunks(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("features/x", data=np.arange(40, dtype=np.float32).reshape(40, 1), chunks=(4, 1))
    rows = Rows(tmp_path / "x.h5", ["x"], np.arange(0, 40, 2), block_rows=4)  # every other row: 2 of each chunk
    seen = []
    for pos, block in minibatches(rows, np.arange(len(rows)), 3, np.random.RandomState(0)):
        np.testing.assert_array_equal(block[:, 0], 2 * pos)  # each position got its own row
        seen += pos.tolist()
    assert sorted(seen) == list(range(20))
    assert seen != sorted(seen)  # shuffled
    assert rows_per_chunk(100_000, 10_000, maps=True) == 1  # big maps: one image per chunk
    assert rows_per_chunk(1_000, 10_000, maps=True) == 65


def test_view_matrix_lays_out_each_views_layers_side_by_side_as_matrix_does(tmp_path):
    """``FeatureSet.view_matrix``: the one builder of (rows, K, features) view matrices (sweep, predict, fit)."""
    rng = np.random.default_rng(0)
    shapes = {"features/a": (3,), "features/b": (2, 2), "views/a": (2, 3), "views/b": (2, 2, 2)}
    data = {k: rng.normal(size=(6,) + s).astype(np.float32) for k, s in shapes.items()}
    w = CacheWriter(tmp_path / "v.h5", _source(6), {}, shapes, "float32", "fp",
                    CacheMeta(layers=["a", "b"], class_names=["a", "b"]))
    w.append(RowBlock(data, np.ones(6, np.uint8), [""] * 6))
    w.finish({})
    for lazy in (False, True):
        with load(tmp_path / "v.h5", lazy=lazy) as fs:
            both = fs.view_matrix("a+b")
            assert both.dtype == np.float32 and both.shape == (6, 2, 7)
            assert np.array_equal(both, np.concatenate([data["views/a"], data["views/b"].reshape(6, 2, 4)], axis=2))
            assert np.array_equal(fs.view_matrix(["b"]), data["views/b"].reshape(6, 2, 4))
            assert np.array_equal(fs.view_matrix(), fs.view_matrix("b"))  # default: the layer of X
            assert np.array_equal(both[:, 0, :3], data["views/a"][:, 0]) and fs.matrix("a+b").shape == (6, 7)
    with load(tmp_path / "v.h5") as fs:
        fs.views.pop("b")
        with pytest.raises(FeatcacheError, match="no augmented views of layer 'b'"):
            fs.view_matrix("a+b")
