"""Where a sweep's fits run: joblib's local backends (loky, threading), or a Ray or Dask cluster.

On a cluster the arrays travel once: put in Ray's object store, or scattered to every Dask worker;
each task then fetches them on its own node instead of receiving a copy with every fit.
Stage: selection. Imports joblib; Ray or Dask only when asked for.
"""
from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from .._util import pid_alive
from ..config import BACKENDS, CLUSTER_BACKENDS
from ..errors import FeatcacheError

__all__ = ["BACKENDS", "CLUSTER_BACKENDS", "Session", "session", "require", "fetch", "remove_stale_scratch",
           "local_tasks"]


# From this many feature values (rows x columns; 2M = 1,400 rows of 1,432 floats) parallel workers repay their
# start (1-2 s for loky's processes); below, one process whose BLAS uses every core is as fast.
AUTO_PARALLEL_VALUES = 2_000_000


@dataclass
class Session:
    """An open backend: parallel tasks, threads each task may use, the arrays as tasks receive them."""

    workers: int
    threads: int
    arrays: list
    return_as: str  # how joblib's Parallel hands back results here ("generator" = as they finish, in order)


@contextmanager
def session(backend: str, address: Optional[str], n_jobs: Optional[int], n_tasks: int,
            arrays: List[Optional[np.ndarray]]) -> Iterator[Session]:
    """Route joblib to ``backend`` inside the block, with ``arrays`` (``arrays[0]``: the features) sent once.

    Locally the features are shared as a read-only memmap (loky) or in place (threading); on a cluster
    every array goes out once and tasks get a handle (see :func:`fetch`). ``n_jobs`` None means a worker per
    core with loky when the features hold ``AUTO_PARALLEL_VALUES`` values or more (else 1; threading: 1), and
    every core of the cluster on Ray or Dask.
    """
    from joblib import parallel_config

    with ExitStack() as stack:
        if backend in CLUSTER_BACKENDS:
            cores, backend_args, arrays = (_ray if backend == "ray" else _dask)(stack, address, n_jobs, arrays)
            workers = min(n_tasks, cores if n_jobs in (None, -1) else n_jobs)
            threads = 1  # the cluster's cores are the parallelism: one thread per task
        else:
            cores = os.cpu_count() or 1
            if n_jobs is None:  # every core as its own worker, unless the fits are too small to repay starting them
                big = isinstance(arrays[0], np.ndarray) and arrays[0].size >= AUTO_PARALLEL_VALUES
                n_jobs = -1 if big and backend == "loky" else 1
            workers = min(n_tasks, cores if n_jobs == -1 else n_jobs)
            threads = max(1, cores // workers)
            backend_args = {}
            if backend == "loky" and workers > 1 and isinstance(arrays[0], np.ndarray):
                arrays = [stack.enter_context(_memmap(arrays[0]))] + arrays[1:]
        stack.enter_context(parallel_config(backend=backend, n_jobs=workers, **backend_args))
        # Ray's joblib backend cannot hand results back one by one, only all together at the end.
        yield Session(workers, threads, arrays, "list" if backend == "ray" else "generator")


def local_tasks(backend: str, n_jobs: Optional[int]) -> int:
    """At most how many tasks run at once on this machine (each holds its own preprocessed training rows); a
    cluster's run on its nodes."""
    if backend in CLUSTER_BACKENDS or n_jobs is None and backend != "loky":
        return 1
    return (os.cpu_count() or 1) if n_jobs in (None, -1) else max(1, int(n_jobs))


def require(backend: str) -> None:
    """Fail early, in one line naming the extra to install, when a cluster backend's package is missing."""
    try:
        if backend == "ray":
            importlib.import_module("ray.util.joblib")
        elif backend == "dask":
            importlib.import_module("distributed")
    except ImportError:
        what = "Ray" if backend == "ray" else "Dask's distributed scheduler"
        raise FeatcacheError(f"{{backend}} {backend} needs {what}: pip install 'featcache[{backend}]'") from None


def fetch(obj):
    """What a task does with each array it receives: take it from Ray's object store, or use it as it is."""
    return obj.get() if isinstance(obj, _InObjectStore) else obj


class _InObjectStore:
    """An array put in Ray's object store once; :meth:`get` reads it on the task's node (zero-copy, read-only)."""

    def __init__(self, ref):
        self.ref = ref

    def get(self):
        import ray

        return ray.get(self.ref)


def _ray(stack: ExitStack, address: Optional[str], n_jobs, arrays):
    require("ray")
    import ray
    from ray.util.joblib import register_ray

    if not ray.is_initialized():  # else: the caller's own ray.init() session
        # address None: $RAY_ADDRESS when set, else a new local cluster
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = address or os.environ.get("RAY_ADDRESS")
            raise FeatcacheError(f"{{address}} {where}: cannot join the Ray cluster ({str(e).splitlines()[0]})") from e
        stack.callback(ray.shutdown)
    register_ray()
    cores = int(ray.cluster_resources().get("CPU", 1))
    return cores, {}, [_InObjectStore(ray.put(a)) if isinstance(a, np.ndarray) else a for a in arrays]


def _dask(stack: ExitStack, address: Optional[str], n_jobs, arrays):
    require("dask")
    import dask
    from distributed import Client, LocalCluster

    address = address or dask.config.get("scheduler-address", None)  # $DASK_SCHEDULER_ADDRESS
    if address:
        try:
            client = stack.enter_context(Client(address, set_as_default=False, timeout=30))
        except OSError as e:
            raise FeatcacheError(f"{{address}} {address}: cannot reach the Dask scheduler ({e})") from e
    else:
        cluster = stack.enter_context(LocalCluster(
            n_workers=n_jobs if n_jobs not in (None, -1) else os.cpu_count() or 1, threads_per_worker=1,
            dashboard_address=None, silence_logs=logging.ERROR))
        client = stack.enter_context(Client(cluster, set_as_default=False))
    cores = sum(client.ncores().values())
    scatter = [a for a in arrays if isinstance(a, np.ndarray)]  # broadcast once; joblib swaps them by identity
    return cores, {"client": client, "scatter": scatter}, arrays


@contextmanager
def _memmap(X: np.ndarray):
    """``X`` as a read-only memmap for loky workers: one copy in the page cache, none per task. The folder's
    name holds this process's id, so a later sweep can tell it was left by a sweep that was killed."""
    scratch = _scratch_dir(X.nbytes)
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=scratch) as tmp:
        path = Path(tmp) / "X.npy"
        np.save(path, X)
        yield np.load(path, mmap_mode="r")


SCRATCH_PREFIX = "featcache-sweep-"


def remove_stale_scratch() -> List[Path]:
    """Delete the memmap folders of sweeps whose process is gone (a ``kill -9`` skips the clean-up), featcache's
    and joblib's own (``joblib_memmapping_folder_<pid>_...``), in /dev/shm and the temporary folder; a live sweep's
    are kept. Every sweep calls it as it starts, whatever its backend. Returns those removed."""
    removed = []
    folders = {Path(f) for f in ("/dev/shm", tempfile.gettempdir()) if os.path.isdir(f)}
    for path in [p for folder in sorted(folders) for pattern in (f"{SCRATCH_PREFIX}*", "joblib_memmapping_folder_*")
                 for p in folder.glob(pattern)]:
        digits = path.name.split("-")[2] if path.name.startswith(SCRATCH_PREFIX) else path.name.split("_")[3]
        if path.is_dir() and digits.isdigit() and not pid_alive(int(digits)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _scratch_dir(nbytes: int) -> Optional[str]:
    """RAM-backed /dev/shm when it has room to spare (containers often give it 64 MB), else the temp dir."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * nbytes:
            return str(shm)
    except OSError:
        pass
    return None
