"""``featcache.verify``: a sound cache passes; each kind of damage is named."""
import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import featcache
from featcache.cache import verify


@pytest.mark.slow
def test_sound_cache_passes_and_cli_exits_zero(split_folder, fast):
    path = featcache.extract(split_folder, **fast)
    assert verify(path) == []
    r = subprocess.run([sys.executable, "-m", "featcache.verify", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith(": OK")


@pytest.mark.slow
def test_changed_input_file_is_reported(split_folder, fast):
    path = featcache.extract(split_folder, **fast)
    f = split_folder / "val" / "a" / "img_0.png"
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    problems = verify(path)
    assert len(problems) == 1 and "input files changed" in problems[0] and "val/a/img_0.png" in problems[0]
    assert verify(path, check_files=False) == []
    f.unlink()
    assert "no longer exist" in verify(path)[0]


@pytest.mark.slow
def test_nan_rows_edited_key_and_row_mismatch_are_reported(split_folder, fast):
    path = featcache.extract(split_folder, **fast)
    with h5py.File(path, "r+") as f:
        f["features/layer4"][3, 0] = np.nan
        key = json.loads(f.attrs["key"])
        key["pool"] = "max"
        f.attrs["key"] = json.dumps(key)
        del f["labels"]
        f["labels"] = np.zeros(19, np.int64)
    text = "\n".join(verify(path, check_files=False))
    assert "1 row(s) hold NaN or Inf" in text
    assert "fingerprint does not match" in text
    assert "labels has 19" in text
    r = subprocess.run([sys.executable, "-m", "featcache.verify", str(path), "--no-files"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "problem(s)" in r.stdout


def test_partial_and_foreign_files(tmp_path):
    (tmp_path / "x.h5").write_text("not hdf5")
    assert "cannot open" in verify(tmp_path / "x.h5")[0]
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f.attrs["format_version"] = 7
    assert "format_version is 7" in verify(tmp_path / "y.h5")[0]


@pytest.mark.slow
def test_any_flipped_feature_byte_is_found_by_the_checksums(split_folder, fast):
    """Zeros written over one chunk of features on disk (as a bad sector would): verify names the rows and load
    refuses the file, in one line, instead of returning wrong numbers."""
    path = featcache.extract(split_folder, **fast)
    with h5py.File(path, "r") as f:
        d = f["features/layer4"]
        assert d.fletcher32
        info = d.id.get_chunk_info(0)
        offset, rows = info.byte_offset, d.chunks[0]
    with open(path, "r+b") as raw:
        raw.seek(offset + 16)
        raw.write(b"\0" * 64)
    problems = verify(path, check_files=False)
    assert len(problems) == 1 and f"features/layer4: damaged bytes (checksum mismatch) in rows 0-{rows - 1}" in \
        problems[0]
    try:
        featcache.load(path)
    except featcache.FeatcacheError as e:
        assert "is damaged" in str(e) and "verify" in str(e)
    else:
        raise AssertionError("a damaged cache loaded")
    r = subprocess.run([sys.executable, "-m", "featcache.verify", str(path), "--no-files"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "checksum mismatch" in r.stdout
