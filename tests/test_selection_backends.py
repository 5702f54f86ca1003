"""Sweeps on a local Dask or Ray cluster: the same leaderboard as loky, features sent once, clear errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from featcache.selection import backends
from featcache.sweeping import sweep

GRID = {"logreg": {"preprocess": "standardize", "C": [0.01, 1.0]}, "ridge": {"alpha": [1.0, 100.0]},
        "knn": {"n_neighbors": [5]}, "dense": {"preprocess": "standardize", "epochs": 3, "random_state": 0}}
COLUMNS = ["classifier", "params", "preprocess", "val_accuracy", "val_log_loss"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, feature_cache):
    return feature_cache(tmp_path_factory.mktemp("backends") / "c.h5", n=600, dim=16)


@pytest.fixture(scope="module")
def dask_address():
    """A local Dask cluster of 2 worker processes, joined through --address like a remote one."""
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray cluster of 2 CPUs for this module (sweeps use a session the caller started)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    ray.init(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def loky_board(cache):
    return sweep(cache, grid=GRID, reuse=False, progress=False).leaderboard


def _same_board(a, b):
    """Equal scores per configuration (ties in rank fall to fit time, which differs from run to run)."""
    a, b = (x[COLUMNS].sort_values(["classifier", "params"]).reset_index(drop=True) for x in (a, b))
    pd.testing.assert_frame_equal(a, b, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dask", "ray", "threading"])
def test_a_cluster_sweep_gives_the_loky_leaderboard(cache, loky_board, backend, request):
    address = request.getfixturevalue("dask_address") if backend == "dask" else None
    if backend == "ray":
        request.getfixturevalue("ray_session")
    import torch
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads(), [lib["num_threads"] for lib in threadpool_info()]
    board = sweep(cache, grid=GRID, reuse=False, progress=False, backend=backend, address=address,
                  n_jobs=2).leaderboard
    _same_board(board, loky_board)
    # Threads of one process share the thread limits: set once around the tasks, they come back as they were.
    assert (torch.get_num_threads(), [lib["num_threads"] for lib in threadpool_info()]) == before
    assert (board["status"] == "ok").all() and len(board) == 7  # 6 grid points and their ensemble


def test_dask_workers_get_the_features_once(cache):
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    from joblib import Parallel, delayed

    def _task_sees_scattered(X, y):  # local, so it travels by value (workers need not import this file)
        """True when the task got the very objects its worker holds (scattered), not a copy sent with it."""
        from distributed import get_worker

        held = get_worker().data.values()
        return any(v is X for v in held) and any(v is y for v in held)

    X, y = np.random.default_rng(0).random((2000, 64)), np.arange(2000)
    with backends.session("dask", None, 2, 12, [X, y]) as session:  # a local cluster of 2 worker processes
        assert session.workers == 2 and session.threads == 1
        X2, y2 = session.arrays
        seen = Parallel(return_as="list")(delayed(_task_sees_scattered)(X2, y2) for _ in range(12))
    assert seen == [True] * 12


def test_ray_tasks_read_the_features_from_the_object_store(cache, ray_session):
    from joblib import Parallel, delayed

    def _fetched(handle):  # local, so cloudpickle sends it by value (Ray workers cannot import this test file)
        X = backends.fetch(handle)
        return X.flags.writeable, float(X.sum())

    X = np.random.default_rng(0).random((2000, 64))
    with backends.session("ray", None, 2, 6, [X]) as session:
        handle, = session.arrays
        assert session.workers == 2 and isinstance(handle, backends._InObjectStore)  # put once, before any task
        out = Parallel(return_as="list")(delayed(_fetched)(handle) for _ in range(6))
    # zero-copy, read-only views of the one stored object (a pickled copy per task would be writeable)
    assert out == [(False, pytest.approx(float(X.sum())))] * 6


@pytest.mark.parametrize("backend, extra", [("ray", "ray"), ("dask", "distributed")])
def test_a_missing_extra_is_a_one_line_error(cache, tmp_path, backend, extra):
    code = (f"import sys; sys.modules[{extra!r}] = None\n"
            "from featcache.cli.sweep import main\n"
            f"sys.exit(main([{str(cache)!r}, '--backend', {backend!r}, '--classifiers', 'knn', '--no-progress', "
            f"'--out', {str(tmp_path / 'o')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2  # before any feature is read
    assert run.stderr.strip().splitlines() == [
        f"featcache: error: --backend {backend} needs "
        + ("Ray" if backend == "ray" else "Dask's distributed scheduler") + f": pip install 'featcache[{backend}]'"]


def test_bad_backend_settings(cache):
    from featcache.config import FeatcacheError

    with pytest.raises(FeatcacheError, match="The 'backend' parameter of SweepConfig must be one of 'loky', "
                                             "'threading', 'ray', 'dask'. Got 'spark'"):
        sweep(cache, grid=GRID, backend="spark")
    with pytest.raises(FeatcacheError, match="address is for backend ray or dask, not loky"):
        sweep(cache, grid=GRID, address="tcp://localhost:8786")


def test_a_killed_sweeps_shared_memory_is_gone_once_the_next_sweep_starts(tmp_path, feature_cache):
    """kill -9 of a sweep with 2 loky workers leaves its memmap folder (in /dev/shm when it has room); the next
    sweep removes it as it starts, whatever its backend, and never a live sweep's."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from featcache.selection.backends import SCRATCH_PREFIX, _scratch_dir

    X = np.random.default_rng(0).random((3000, 200)).astype(np.float32)  # 2.4 MB: memmapped for the workers
    scratch = Path(_scratch_dir(X.nbytes) or tempfile.gettempdir())
    np.save(tmp_path / "X.npy", X)
    code = ("import sys, time, numpy as np; from featcache.selection import backends\n"
            f"X = np.load({str(tmp_path / 'X.npy')!r})\n"
            "with backends.session('loky', None, 2, 4, [X, None]) as s:\n"
            "    print('ready', flush=True); time.sleep(120)\n")
    victim = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert victim.stdout.readline().strip() == "ready"
    left = list(scratch.glob(f"{SCRATCH_PREFIX}{victim.pid}-*"))
    assert left  # the running sweep's shared copy
    live = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "ready"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        assert all(p.exists() for p in left)  # kill -9: no clean-up ran
        time.sleep(0.2)
        # the next sweep, whatever its backend (here one thread, no shared copy of its own), removes it ...
        sweep(feature_cache(tmp_path / "c.h5", n=200), grid=GRID, backend="threading", n_jobs=1, progress=False)
        assert not any(p.exists() for p in left)
        assert list(scratch.glob(f"{SCRATCH_PREFIX}{live.pid}-*"))  # ... but not a live sweep's
    finally:
        live.kill()
        live.wait()
        for p in scratch.glob(f"{SCRATCH_PREFIX}{live.pid}-*"):
            shutil.rmtree(p, ignore_errors=True)
