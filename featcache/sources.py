"""Where images and labels come from: image folders, CSV files, unlabelled folders, torch Datasets.

Stage: sources (the top of the data's path). A :class:`Source` is the ordered list of samples an
extraction will turn into rows, with labels, splits and class names, plus a manifest (size, mtime,
optional content hash) for the cache key. Imports ``decode`` (a Dataset's key hashes its decoded
samples), ``_util`` and ``errors``; never torch.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import queue
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from ._util import file_sha256
from .decode import to_rgb_array
from .errors import FeatcacheError

log = logging.getLogger("featcache")

__all__ = ["Source", "open_source", "from_folder", "from_csv", "from_dataset", "is_image_file", "IMAGE_EXTENSIONS",
           "SPLIT_NAMES", "UNLABELLED"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_NAMES = ("train", "val", "test")
UNLABELLED = -1


@dataclass
class Source:
    """An ordered sample list: ``paths[i]`` (relative to ``root``) has ``labels[i]`` and ``splits[i]``."""

    name: str
    root: Optional[Path]
    paths: List[str]
    labels: np.ndarray
    class_names: List[str]
    splits: Optional[List[str]] = None
    dataset: Any = None  # a torch Dataset when the source is not files on disk
    digest: str = ""  # a Dataset's content hash, taken while its labels were read

    def __len__(self) -> int:
        return len(self.paths)

    def file_path(self, i: int) -> Path:
        return self.root / self.paths[i]

    def manifest(self, hash_content: bool = False, timeout: Optional[float] = None) -> dict:
        """What the cache key needs to know about the inputs: each file's identity and state. ``hash_content``:
        each file's sha256, read in a helper thread given ``timeout`` seconds a file (``--decode-timeout``; 0 or
        None: no limit)."""
        if self.dataset is not None:
            return {"dataset": type(self.dataset).__qualname__, "content_sha256": self.digest}
        sizes, mtimes, regular = [], [], []
        for rel in self.paths:
            path = self.root / rel
            try:
                st = path.stat()
            except OSError as e:
                raise FeatcacheError(f"cannot read {path}: {e.strerror}") from e
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
            regular.append(stat.S_ISREG(st.st_mode))
        digests = _content_digests([self.root / rel for rel in self.paths], regular, timeout) if hash_content else None
        return {"size": sizes, "mtime_ns": mtimes, "sha256": digests}


def _content_digests(paths: List[Path], regular: List[bool], timeout: Optional[float]) -> List[str]:
    """Each file's sha256, read by a daemon thread the caller waits on for at most ``timeout`` seconds a file. A
    file that is not a regular one (a FIFO, a device: opening it may never return) is not opened, and one whose
    read outlasts the timeout (a hung network mount) is given up, its thread left behind: each gets a note in
    place of a hash, and decoding then fails that file alone and records it under ``failed/``."""
    out: List[str] = []
    jobs: Optional[queue.Queue] = None
    for path, is_file in zip(paths, regular):
        if not is_file:
            log.warning("%s is not a regular file (a FIFO or a device?): not hashed, and it will fail to decode", path)
            out.append("not a regular file")
            continue
        if jobs is None:  # a fresh thread with its own queues: a stuck one keeps the old ones
            jobs, results = queue.Queue(), queue.Queue()
            threading.Thread(target=_hash_worker, args=(jobs, results), daemon=True).start()
        jobs.put(path)
        try:
            out.append(results.get(timeout=timeout or None))
        except queue.Empty:
            log.warning("%s: no answer after %g s of reading it to hash it (--decode-timeout): not hashed, left to "
                        "fail on decoding", path, timeout)
            out.append(f"no answer in {timeout:g} s")
            jobs = None
    if jobs is not None:
        jobs.put(None)
    return out


def _hash_worker(jobs: queue.Queue, results: queue.Queue) -> None:
    for path in iter(jobs.get, None):
        try:
            results.put(file_sha256(path))
        except OSError as e:
            results.put(f"unreadable: {e.strerror or e}")


def _read_dataset(dataset, n: int):
    """Labels and a content hash of a torch Dataset in one pass over its samples (it has no files to stat, so
    its key hashes every decoded sample; a second pass would decode everything twice)."""
    h = hashlib.sha256()
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        image, label = dataset[i]
        labels[i] = int(label)
        h.update(np.ascontiguousarray(to_rgb_array(image)).tobytes())
        h.update(str(int(label)).encode())
    return labels, h.hexdigest()


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


class _Walk:
    """Lists images under the folders of one dataset, following symbolic links but never into the same real
    folder twice (a link cycle such as ``cat/loop -> ..`` adds nothing), never up to the dataset's root or an
    ancestor of it, and never into another split or class folder (:func:`_one_row_per_file` then makes a file
    reached by two paths one row)."""

    def __init__(self, root: Path, fences: List[Path]):
        self.root = os.path.realpath(root)
        self.fences = {os.path.realpath(p) for p in fences}  # split and class folders
        self.visited: set = set()  # real folders listed for the current class folder
        self.current = ""  # the real path of the folder being listed

    def _skip(self, real: str) -> bool:
        ancestor = self.root == real or self.root.startswith(real.rstrip(os.sep) + os.sep)
        inside_other = any(real == f or real.startswith(f + os.sep) for f in self.fences
                           if f != self.current and not self.current.startswith(f + os.sep))
        return ancestor or inside_other or real in self.visited

    def images(self, folder: Path) -> List[Path]:
        """Images under ``folder`` (recursively), skipping hidden files and folders, sorted."""
        found = []
        self.current = os.path.realpath(folder)
        self.visited = {self.current}  # per class folder: two classes linking one outside folder is a conflict
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            keep = []
            for d in sorted(dirnames):
                real = os.path.realpath(os.path.join(dirpath, d))
                if d.startswith("."):
                    continue
                if self._skip(real):
                    log.info("not following %s: it leads to a folder already listed, the dataset's root or another "
                             "class or split folder", os.path.join(dirpath, d))
                    continue
                self.visited.add(real)
                keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if is_image_file(path):
                    found.append(path)
        return sorted(found)


def _file_id(path: Path):
    """What makes two paths one file: its device and inode (hard links and symbolic links alike); a path that
    cannot be read stays its own (reading it fails later, naming it)."""
    try:
        st = os.stat(path)
    except OSError:
        return ("unreadable", str(path))
    return (st.st_dev, st.st_ino)


def _one_row_per_file(rows: list, root: Path, where: str) -> list:
    """``rows`` (path, class, split) with every file once, with the class and split of its real place: a link to
    an image of another class or split does not relabel it; a file that two classes or splits hold at their own
    places (hard links, or links from outside) is an error naming both paths."""
    real_root = os.path.realpath(root)
    groups: dict = {}
    for row in rows:
        groups.setdefault(_file_id(row[0]), []).append(row)
    kept = []
    for group in groups.values():
        if len(group) == 1:
            kept.append(group[0])
            continue
        group.sort(key=lambda r: r[0].as_posix())
        home = [r for r in group
                if os.path.realpath(r[0]) == os.path.join(real_root, r[0].relative_to(root).as_posix())]
        claims = home or group  # no copy at its real place: every path's folder claims it
        a = claims[0]
        b = next((r for r in claims[1:] if r[1:] != a[1:]), None)
        if b is not None:
            raise FeatcacheError(
                f"{where}: {a[0]} and {b[0]} are the same file (a link), in {_place(a)} and {_place(b)}; an image "
                "has one class and one split: remove one of them (or copy the file if both are meant)")
        for r in group:
            if r is not a:
                how = "the same file as" if r[1:] == a[1:] else f"a link from {_place(r)} to"
                (log.info if r[1:] == a[1:] else log.warning)(
                    "%s is %s %s: one row, in %s (its real place)", r[0], how, a[0], _place(a))
        kept.append(a)
    return kept


def _place(row) -> str:
    _, cls, split = row
    return " ".join(x for x in (f"split {split}" if split else "", f"class {cls}" if cls is not None else "") if x) \
        or "the dataset"


def _visible_dirs(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(root: Path, where: str, walk: _Walk) -> dict:
    """``{class name: [image paths]}`` for the class subfolders of ``root``; empty classes are errors."""
    classes = {}
    for d in _visible_dirs(root):
        images = walk.images(d)
        if not images:
            raise FeatcacheError(
                f"class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"remove it or add images")
        classes[d.name] = images
    stray = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
    if classes and stray:
        raise FeatcacheError(
            f"{where} holds both class folders and loose images ({', '.join(stray[:3])}...); "
            f"move the images into a class folder so none is left out")
    return classes


def from_folder(root: Path) -> Source:
    """An ImageFolder-style tree, optionally split into train/val/test, or a flat unlabelled folder."""
    top = _visible_dirs(root)
    split_dirs = [d for d in top if d.name in SPLIT_NAMES]
    structure = [*top, *(c for d in top if d.name in SPLIT_NAMES for c in _visible_dirs(d))]
    walk = _Walk(root, structure)
    if split_dirs:
        others = [d.name for d in top if d.name not in SPLIT_NAMES]
        if others:
            raise FeatcacheError(
                f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders "
                f"({', '.join(others)}); put every class folder inside train/, val/ or test/")
        per_split = {d.name: _class_folders(d, str(d), walk) for d in split_dirs}
        for name, classes in per_split.items():
            if not classes:
                raise FeatcacheError(f"split folder {root / name} has no class subfolders with images")
        class_names = sorted({c for classes in per_split.values() for c in classes})
        rows = [(p, c, s) for s, classes in per_split.items() for c, images in classes.items() for p in images]
    else:
        classes = _class_folders(root, str(root), walk)
        class_names = sorted(classes)
        rows = [(p, c, None) for c, images in classes.items() for p in images] if classes else \
            [(p, None, None) for p in walk.images(root)]
    rows = [(p, class_names.index(c) if c is not None else UNLABELLED, s)
            for p, c, s in _one_row_per_file(rows, root, str(root))]
    if not rows:
        raise FeatcacheError(
            f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case)")
    rows.sort(key=lambda r: r[0].relative_to(root).as_posix())
    return Source(
        name=root.resolve().name,
        root=root.resolve(),
        paths=[p.relative_to(root).as_posix() for p, _, _ in rows],
        labels=np.array([label for _, label, _ in rows], dtype=np.int64),
        class_names=class_names,
        splits=[s for _, _, s in rows] if split_dirs else None,
    )


def _sort_key(name: str):
    """Numeric class names sort as numbers (2 before 10), others alphabetically."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def from_csv(csv_path: Path) -> Source:
    """A CSV with columns ``path,label[,split]``; paths are relative to the CSV's folder."""
    root = csv_path.resolve().parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            records = [{k.strip(): (v or "").strip() for k, v in r.items() if k} | {"line": reader.line_num}
                       for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FeatcacheError(f"cannot read CSV {csv_path}: {e}") from e
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise FeatcacheError(
            f"{csv_path} lacks column(s) {', '.join(missing)}; expected a header 'path,label[,split]', "
            f"found {','.join(columns) or 'no header'}")
    if not records:
        raise FeatcacheError(f"{csv_path} has a header but no rows")
    has_split = "split" in columns
    absent, bad_split = [], []
    for r in records:
        if not (root / r["path"]).is_file():
            absent.append(r["path"])
        if has_split and r["split"] not in SPLIT_NAMES:
            bad_split.append(r["split"])
    if absent:
        raise FeatcacheError(
            f"{csv_path}: {len(absent)} listed file(s) do not exist (paths are relative to the CSV's "
            f"folder {root}): {', '.join(absent[:5])}")
    if bad_split:
        raise FeatcacheError(
            f"{csv_path}: split must be one of {', '.join(SPLIT_NAMES)}; found {sorted(set(bad_split))[:5]}")
    records = _one_line_per_file(records, root, csv_path)
    class_names = sorted({r["label"] for r in records if r["label"] != ""}, key=_sort_key)
    records.sort(key=lambda r: r["path"])
    return Source(
        name=csv_path.resolve().parent.name + "-" + csv_path.stem,
        root=root,
        paths=[r["path"] for r in records],
        labels=np.array([class_names.index(r["label"]) if r["label"] != "" else UNLABELLED for r in records],
                        dtype=np.int64),
        class_names=class_names,
        splits=[r["split"] for r in records] if has_split else None,
    )


def _one_line_per_file(records: list, root: Path, csv_path: Path) -> list:
    """The CSV's lines with every file once: paths normalised (``a/../a/x.png`` is ``a/x.png``) and files matched
    by identity (a link is its target); a file listed twice with another label or split is an error naming both
    lines, an identical repeat is one row and a note."""
    first: dict = {}
    kept = []
    for r in records:
        r["path"] = Path(os.path.normpath(r["path"])).as_posix()
        key = _file_id(root / r["path"])
        if key not in first:
            first[key] = r
            kept.append(r)
            continue
        was = first[key]
        same = was["label"] == r["label"] and was.get("split") == r.get("split")
        if not same:
            raise FeatcacheError(
                f"{csv_path}: line {was['line']} ({was['path']}: {_listing(was)}) and line {r['line']} ({r['path']}: "
                f"{_listing(r)}) are the same file; an image has one label and one split: remove one of the lines")
        log.warning("%s: line %d lists the same file as line %d (%s), with the same label%s: one row", csv_path,
                    r["line"], was["line"], was["path"], " and split" if "split" in r else "")
    return kept


def _listing(r: dict) -> str:
    return f"label {r['label'] or '(none)'}" + (f", split {r['split']}" if "split" in r else "")


def from_dataset(dataset, name: Optional[str] = None) -> Source:
    """Any map-style torch Dataset returning ``(PIL image or uint8 tensor, label)``."""
    try:
        n = len(dataset)
    except TypeError as e:
        raise FeatcacheError("a Dataset passed as data must have a length (map-style)") from e
    if n == 0:
        raise FeatcacheError("the Dataset passed as data is empty")
    labels, digest = _read_dataset(dataset, n)
    classes = getattr(dataset, "classes", None)
    class_names = ([str(c) for c in classes] if classes
                   else [str(c) for c in sorted(set(labels.tolist()) - {UNLABELLED})])
    return Source(
        name=name or type(dataset).__name__.lower(),
        root=None,
        paths=[f"{type(dataset).__name__}[{i}]" for i in range(n)],
        labels=labels,
        class_names=class_names,
        dataset=dataset,
        digest=digest,
    )


def open_source(data: Any) -> Source:
    """Turn ``--data`` (a folder, a CSV file, or a torch Dataset) into a :class:`Source`."""
    if data is None:
        raise FeatcacheError("no data given: pass {data} FOLDER or {data} FILE.csv")
    if not isinstance(data, (str, os.PathLike)):
        return from_dataset(data)
    path = Path(data).expanduser()
    if not path.exists():
        raise FeatcacheError(f"{{data}} {path}: no such file or folder")
    if path.is_dir():
        return from_folder(path)
    if path.suffix.lower() == ".csv":
        return from_csv(path)
    raise FeatcacheError(f"{{data}} {path}: expected an image folder or a .csv file with columns path,label[,split]")
