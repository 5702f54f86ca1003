"""``torchrun -m featcache.extract``: one shard per rank (gloo on the CPU), one merged cache, resumable."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featcache import load

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
FLAGS = ["--model", "resnet18", "--weights", "none", "--image-size", "64", "--precision", "fp32",
         "--num-workers", "0", "--batch-size", "4", "--no-progress"]

pytestmark = [pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python"),
              pytest.mark.slow]  # every test here starts torchrun with two ranks: more than a few seconds


def _folder(root, make_image, n=30):
    for k in range(3):
        for i in range(n):
            make_image(root / f"c{k}" / f"img_{i:03d}.png", k, i, size=(40, 40))
    (root / "c1" / "broken.png").write_bytes(b"nope")
    return root


def _torchrun(data, cache, nproc=2, *extra, **popen):
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", str(nproc), "-m", "featcache.extract",
           "--data", str(data), "--cache-dir", str(cache), *FLAGS, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                            **popen)


def _rank_pids(cache) -> list:
    """PIDs of the worker processes torchrun started for this cache (not torchrun itself)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(cache).encode() in cmd and b"featcache.extract" in cmd and not cmd[1].endswith(b"torchrun"):
            pids.append(int(proc.name))
    return sorted(pids)


def _single(data, cache, *extra):
    r = subprocess.run([sys.executable, "-m", "featcache.extract", "--data", str(data), "--cache-dir", str(cache),
                        *FLAGS, *extra], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r


def test_two_ranks_give_the_same_cache_as_one_process(tmp_path, make_image):
    data = _folder(tmp_path / "data", make_image)
    proc = _torchrun(data, tmp_path / "multi")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1  # one path on stdout, from rank 0
    multi = load(lines[0])
    one = load(_single(data, tmp_path / "one").stdout.strip().splitlines()[-1])
    assert Path(lines[0]).name == one.path.name  # same cache key
    assert list(multi.paths) == list(one.paths) and (multi.y == one.y).all()
    np.testing.assert_allclose(multi.X, one.X, rtol=1e-4, atol=1e-5)
    assert [p for p, _ in multi.failed] == ["c1/broken.png"]
    assert not list((tmp_path / "multi").glob("*.partial.h5"))
    # a later single-process run with the same settings is a cache hit
    assert "cache hit" in _single(data, tmp_path / "multi").stderr


def test_killed_torchrun_job_resumes(tmp_path, make_image):
    import h5py

    data = _folder(tmp_path / "data", make_image, n=100)
    cache = tmp_path / "cache"
    proc = _torchrun(data, cache, 2, "--image-size", "128")
    deadline = time.time() + 300

    def committed():
        """Rows the least advanced rank has committed (so both ranks have work to resume)."""
        done = []
        for p in cache.glob("*.rank*of2.partial.h5"):
            try:
                with h5py.File(p, "r", locking=False) as f:
                    done.append(int(f["progress/rows_done"][()]))
            except (OSError, KeyError):
                pass  # being created
        return min(done) if len(done) == 2 else 0

    while committed() < 12 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    ranks = _rank_pids(cache)
    assert len(ranks) == 2, "the job ended before it could be killed"
    os.kill(ranks[-1], signal.SIGKILL)  # one rank dies; torchrun then stops the other
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert list(cache.glob("*.rank*of2.partial.h5"))
    proc = _torchrun(data, cache, 2, "--image-size", "128")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "resuming" in err
    resumed = load(out.strip().splitlines()[-1])
    ref = load(_single(data, tmp_path / "ref", "--image-size", "128").stdout.strip().splitlines()[-1])
    assert list(resumed.paths) == list(ref.paths)
    np.testing.assert_allclose(resumed.X, ref.X, rtol=1e-4, atol=1e-5)
    assert not list(cache.glob("*.partial.h5"))


def test_a_cache_published_while_the_ranks_start_is_one_decision(tmp_path, make_image):
    """A single-process run (here a real second process holding the cache's lock) publishes the cache after the
    ranks have started: rank 0 decides, holding the lock, and every rank follows it. Ranks that looked for
    themselves would split: rank 1 extracting its shard and waiting at a barrier for a rank 0 that went home."""
    from featcache.cache import lock_path

    data = _folder(tmp_path / "data", make_image, n=6)
    cache = tmp_path / "c"
    path = Path(_single(data, cache).stdout.strip().splitlines()[-1])
    finished = path.rename(tmp_path / "finished.h5")
    holder = subprocess.Popen([sys.executable, "-c", "import time; from filelock import FileLock; "
                               f"l = FileLock({str(lock_path(path))!r}); l.acquire(); print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = _torchrun(data, cache)
        deadline = time.time() + 120
        while len(_rank_pids(cache)) < 2 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(8)  # both ranks import, plan and reach their decision (rank 0 waits on the lock)
        finished.rename(path)  # the other run publishes ...
    finally:
        holder.kill()  # ... and releases the lock
        holder.wait()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert out.strip().splitlines() == [str(path)] and "cache hit" in err
    assert not list(cache.glob("*.partial.h5"))


def test_a_file_touched_while_the_ranks_plan_gives_one_cache(tmp_path, make_image):
    """A second process keeps touching one image (a new mtime every few milliseconds) while two ranks start: ranks
    that listed the files themselves saw different times, computed different keys and wrote parts of different
    caches, and rank 0 failed at publish. Rank 0 lists them once for every rank."""
    data = _folder(tmp_path / "data", make_image, n=6)
    victim = data / "c0" / "img_000.png"
    cache = tmp_path / "c"
    toucher = subprocess.Popen([sys.executable, "-c", "import os, time\nt = 1_000_000_000\nwhile True:\n"
                                f"    t += 1\n    os.utime({str(victim)!r}, (t, t))\n    time.sleep(0.003)\n"])
    try:
        proc = _torchrun(data, cache)
        out, err = proc.communicate(timeout=240)
    finally:
        toucher.kill()
        toucher.wait()
    assert proc.returncode == 0, err
    caches = sorted(cache.glob("*.h5"))
    assert [str(p) for p in caches] == out.strip().splitlines()[-1:] and not list(cache.glob("*.partial.h5"))
    assert len(load(caches[0]).paths) == 18  # every decodable image, once
