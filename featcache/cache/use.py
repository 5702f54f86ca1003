"""Which caches running processes use: the work that reads one for long (a sweep, fine-tuning) holds a
shared lock on ``<cache dir>/.locks/<name>.use``; ``rm`` and ``prune`` take it exclusively, with the cache's
extraction lock, and refuse a cache someone holds (or, with ``--force``, say so and go on).

Stage: cache. Imports filelock and the standard library. Best effort where it cannot lock: a read-only cache
folder, or an operating system without ``flock`` (Windows): there nothing is marked and nothing refused.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

from filelock import FileLock, Timeout

from ..errors import FeatcacheError, register_parameters
from .key import lock_path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["in_use", "for_removal", "use_path"]

register_parameters("force")  # for_removal's, named in its message as {force} (rm and prune's --force)

log = logging.getLogger("featcache")


def use_path(path: Path) -> Path:
    return Path(path).parent / ".locks" / (Path(path).name + ".use")


def _open(path: Path) -> Optional[int]:
    if fcntl is None:
        return None
    target = use_path(path)
    try:
        target.parent.mkdir(exist_ok=True)
        return os.open(target, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError:
        return None


@contextlib.contextmanager
def in_use(path: Path) -> Iterator[None]:
    """The cache at ``path`` is in use for the block: ``rm`` and ``prune`` refuse it meanwhile."""
    fd = _open(path)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an rm holds it (the time to unlink a file)
        yield
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def for_removal(paths: Sequence[Path], force: bool = False) -> Iterator[None]:
    """Hold every cache of ``paths`` exclusively for the block (its extraction lock and its use lock); a cache a
    running process holds is a :class:`FeatcacheError` before anything is removed, unless ``force``."""
    with contextlib.ExitStack() as stack:
        for path in map(Path, paths):
            busy = []
            lock = FileLock(lock_path(path))
            try:
                lock_path(path).parent.mkdir(exist_ok=True)
                lock.acquire(timeout=0)
                stack.callback(lock.release)
            except Timeout:
                busy.append("an extraction")
            except OSError:
                pass  # a read-only folder: nothing here can be removed anyway, the unlink says so
            fd = _open(path)
            if fd is not None:
                stack.callback(os.close, fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    busy.append("a sweep or fine-tuning")
            if busy and not force:
                raise FeatcacheError(f"{path} is in use by a running process ({' and '.join(busy)}); nothing was "
                                     "removed: wait for it to end, or pass {force} (it then goes on without the "
                                     "cache's result store, and says so)")
            if busy:
                log.warning("removing %s although %s uses it (--force)", path, " and ".join(busy))
        yield
