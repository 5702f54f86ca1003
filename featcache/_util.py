"""Small helpers every stage shares, one definition each (stage: none; imports the standard library and
``errors``).

Sizes for humans, hashes of JSON and files, atomic file writes (data fsynced before the rename),
library versions, and the callable-module trick behind ``featcache.extract(...)``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib
import json
import math
import os
import re
import stat
import sys
import tempfile
import types
from pathlib import Path
from typing import Iterator

from .errors import FeatcacheError

__all__ = ["parse_duration", "human_size", "sha256_json", "file_sha256", "atomic_path", "atomic_write_text",
           "same_file", "create_new", "refuse_link", "fsync_dir", "orphan_temporaries", "orphans_in", "pid_alive",
           "json_text", "now_iso", "library_versions", "featcache_version", "package_versions", "make_callable",
           "cpu_flags"]


def human_size(n: float) -> str:
    """``1536`` -> ``1.5 KB`` (binary units, as ``ls -h``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_duration(text) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1.5h"`` or ``"1h30m"``; ValueError naming the accepted forms."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    import re

    spec = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", spec)
    if not spec or not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms]?)", "", spec).strip():
        raise ValueError(f"{text!r} is not a duration; use e.g. 90, 90s, 15m, 1h or 1h30m")
    unit = {"h": 3600, "m": 60, "s": 1, "": 1}
    return float(sum(float(value) * unit[u] for value, u in parts))


def sha256_json(obj) -> str:
    """The SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces): a stable key for dicts."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, its file replaces ``path`` in one rename.

    Readers see the old file or the new one, never half of one; a failed block leaves no temporary file. The data
    is fsynced before the rename and the folder after it, so after a power cut the name points at complete data.
    The temporary file is created new (``O_EXCL``, never through a link) under a name no one can guess
    (``.<name>.<pid>.<random>.tmp``), and it must still be that file at the rename: in a shared folder no one
    can plant a link there to make the cache point elsewhere. A process killed inside the block leaves it:
    :func:`orphan_temporaries` finds it.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    tmp, made = Path(name), os.fstat(fd)
    os.close(fd)
    try:
        yield tmp
        same_file(tmp, made)
        with open(tmp, "rb+") as f:  # the data reaches the disk before the name points at it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # unlink removes a link itself, never what it points at
        raise
    fsync_dir(path.parent)


def same_file(path: Path, made: os.stat_result) -> None:
    """Refuse to publish ``path`` unless it is still a regular file of ours (not a link, not a file someone else put
    in its place). Writers may replace the file they were given (safetensors does), so ownership is what counts,
    not the inode: ``made`` is the file as created."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != made.st_uid:
        raise FeatcacheError(f"{path} was replaced while featcache wrote it (by a link or another user's file): "
                             "refusing to publish it; check who else writes to this folder")


def refuse_link(path: Path) -> None:
    """A file featcache makes (a partial cache) that is a symbolic link was planted by someone else: featcache
    creates them new, never through a link. Refuse it rather than write through it or publish it."""
    if os.path.islink(path):
        raise FeatcacheError(f"{path} is a symbolic link (to {os.readlink(path)}), not a file featcache made: "
                             "refusing to write through it or publish it; remove the link (and check who else writes "
                             "to this folder)")


def create_new(path: Path) -> os.stat_result:
    """Create ``path`` as a new empty file, never through a link (``O_EXCL | O_NOFOLLOW``); its identity."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?P<pid>\d+)(?:\.[^.]+)?\.tmp$")  # .<name>.<pid>[.<random>].tmp


def orphan_temporaries(path: Path) -> list:
    """The temporary files :func:`atomic_path` left for ``path`` in processes that no longer run (on this host)."""
    path = Path(path)
    return [tmp for tmp in orphans_in(path.parent) if _TEMPORARY.match(tmp.name)["name"] == path.name]


def orphans_in(folder: Path) -> list:
    """Every temporary file :func:`atomic_path` left in ``folder`` in a process that no longer runs (a publish
    killed between its last fsync and its rename), sorted."""
    found = []
    for tmp in sorted(Path(folder).glob(".*.tmp")):
        m = _TEMPORARY.match(tmp.name)
        if m and not pid_alive(int(m["pid"])):
            found.append(tmp)
    return found


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def atomic_write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _finite(obj):
    """``obj`` with NaN and infinities as None, recursively (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:
        obj = obj.item()  # numpy scalars as Python numbers
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def json_text(obj, **kwargs) -> str:
    """Strict JSON of ``obj`` (NaN and infinities become null; anything else unknown becomes its string)."""
    return json.dumps(_finite(obj), allow_nan=False, default=str, **kwargs)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def library_versions(*names: str) -> dict:
    """``{name: version}`` of featcache, python, or any package (local tags such as ``+cpu`` dropped), read from
    its installed metadata (so torch's version does not import torch), else from the module."""
    from importlib import metadata

    out = {}
    for name in names:
        if name == "python":
            out[name] = sys.version.split()[0]
        elif name == "featcache":
            out[name] = featcache_version()
        else:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:  # a module without distribution metadata (a source build)
                version = str(importlib.import_module(name).__version__)
            out[name] = version.split("+")[0]
    return out


def featcache_version() -> str:
    """featcache's version, from the installed package's metadata (pyproject.toml's ``version``)."""
    from importlib import metadata

    try:
        return metadata.version("featcache")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def package_versions(*distributions: str) -> dict:
    """``{distribution: version}`` from installed package metadata (``"not installed"`` when absent)."""
    from importlib import metadata

    out = {}
    for name in distributions:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def make_callable(module_name: str, function) -> None:
    """Make the module ``module_name`` call ``function`` (a callable, or ``"package.module:name"`` imported on
    the first call, so the module itself stays light) when called.

    ``featcache.extract``, ``sweep``, ``predict`` and ``finetune`` are both API functions and ``python -m``
    modules. Importing a submodule binds the package attribute to the module, so whichever is imported
    first, ``featcache.<name>`` is the module; this makes the module itself forward calls. This is the one
    place that reconciles the two names (each of those modules calls it once).
    """
    def target():
        if isinstance(function, str):
            module, _, name = function.partition(":")
            return getattr(importlib.import_module(module), name)
        return function

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return target()(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule


def cpu_flags() -> frozenset:
    """The CPU's feature flags (``avx2``, ``avx512_bf16``, ``amx_bf16``...) from ``/proc/cpuinfo``; empty elsewhere."""
    global _CPU_FLAGS
    if _CPU_FLAGS is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
        line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
        _CPU_FLAGS = frozenset(line.partition(":")[2].split())
    return _CPU_FLAGS


_CPU_FLAGS = None
