"""Nearest neighbours of every row in feature space (cosine similarity), read in blocks from the HDF5 file
(stage: insight).

:func:`knn` is exact up to ``EXACT_LIMIT`` rows: query blocks against database blocks, a running top-k merged
per block, so memory is a few blocks and ``N x k`` results, never an ``N x N`` matrix. The database blocks stay
in memory when they fit ``memory_bytes`` (read once), else they are read again from the file for each query
block. Beyond ``EXACT_LIMIT`` rows an approximate index (faiss-cpu's HNSW, else hnswlib; ``pip install
'featcache[inspect]'``) answers, and :func:`measure_recall` checks it against the exact search on a sample.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from ..cache.rows import Rows
from ..errors import FeatcacheError

__all__ = ["Neighbours", "knn", "exact_knn", "knn_array", "brute_force_knn", "measure_recall", "normalized_blocks",
           "EXACT_LIMIT", "METHODS"]

log = logging.getLogger("featcache")

EXACT_LIMIT = 100_000  # rows searched exactly by default; beyond, an approximate index when one is installed
METHODS = ("auto", "exact", "faiss", "hnswlib")
QUERY_BYTES = 64 << 20  # similarity block (query rows x database rows, float32) held at once


@dataclass
class Neighbours:
    """``index[i]``: the ``k`` rows most similar to row ``i`` (itself excluded), most similar first;
    ``similarity[i]``: their cosine similarities. ``method`` says how they were found; ``recall`` is the
    measured recall@k of an approximate search (None when exact)."""

    index: np.ndarray
    similarity: np.ndarray
    method: str
    recall: Optional[float] = None


def normalized_blocks(cache, layer: str, block_rows: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
    """``(first_row, X)`` per block of the file, rows scaled to unit length (all-zero rows stay zero)."""
    rows = Rows(cache, [layer], block_rows=block_rows)
    try:
        for pos, X in rows.blocks():
            X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
            norm = np.linalg.norm(X, axis=1, keepdims=True)
            yield int(pos[0]), X / np.where(norm > 0, norm, 1.0)
    finally:
        if rows._file is not None:
            rows._file.close()


def _merge(best_i, best_s, cand_i, cand_s, k):
    """Keep the ``k`` most similar of the current best and a block's candidates, per row."""
    idx = np.concatenate([best_i, cand_i], axis=1)
    sim = np.concatenate([best_s, cand_s], axis=1)
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if sim.shape[1] > k else np.arange(sim.shape[1])[None]
    top = np.broadcast_to(top, (len(sim), top.shape[1]))
    return np.take_along_axis(idx, top, 1), np.take_along_axis(sim, top, 1)


def _search(queries: np.ndarray, q_rows: np.ndarray, db_blocks: Callable[[], Iterator[Tuple[int, np.ndarray]]],
            k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` (rows ``q_rows`` of the file) over the database blocks, self excluded."""
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start, D in db_blocks():
        step = max(1, QUERY_BYTES // (4 * max(1, len(D))))
        for a in range(0, len(queries), step):
            S = queries[a:a + step] @ D.T
            ids = np.arange(start, start + len(D))
            S[q_rows[a:a + step, None] == ids[None, :]] = -np.inf  # a row is not its own neighbour
            kk = min(k, S.shape[1])
            part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
            best_i[a:a + step], best_s[a:a + step] = _merge(best_i[a:a + step], best_s[a:a + step],
                                                             ids[part], np.take_along_axis(S, part, 1), k)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(best_s, order, 1)


def exact_knn(cache, layer: str, k: int, block_rows: Optional[int] = None, memory_bytes: int = 1 << 30,
              progress: Optional[Callable[[int], None]] = None) -> Neighbours:
    """Exact k nearest neighbours of every row, block by block (see the module docstring)."""
    first = next(normalized_blocks(cache, layer, block_rows), None)
    if first is None:
        raise FeatcacheError(f"{cache} has no rows to search")
    rows = Rows(cache, [layer], block_rows=block_rows)
    n, d = rows.shape
    k = min(k, n - 1)
    if k < 1:
        raise FeatcacheError(f"{cache} has one row; neighbours need at least two")
    if n * d * 4 <= memory_bytes:
        held = list(normalized_blocks(cache, layer, block_rows))

        def db_blocks():
            return iter(held)
    else:
        def db_blocks():
            return normalized_blocks(cache, layer, block_rows)
    index = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    for start, Q in (iter(held) if n * d * 4 <= memory_bytes else normalized_blocks(cache, layer, block_rows)):
        q_rows = np.arange(start, start + len(Q))
        index[q_rows], sim[q_rows] = _search(Q, q_rows, db_blocks, k)
        if progress:
            progress(len(Q))
    return Neighbours(index, sim, "exact")


def brute_force_knn(X: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The whole ``N x N`` cosine similarity matrix at once: for tests and small data only."""
    X = np.asarray(X, dtype=np.float32)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    X = X / np.where(norm > 0, norm, 1.0)
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, 1)


def _approximate(cache, layer: str, k: int, method: str, block_rows, progress) -> Neighbours:
    n, d = Rows(cache, [layer]).shape
    if method == "faiss":
        import faiss

        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        for _, X in normalized_blocks(cache, layer, block_rows):
            index.add(X)
        index.hnsw.efSearch = max(64, 4 * k)

        def query(X):
            s, i = index.search(X, k + 1)
            return i, s
    else:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, ef_construction=80, M=32)
        for start, X in normalized_blocks(cache, layer, block_rows):
            index.add_items(X, np.arange(start, start + len(X)))
        index.set_ef(max(64, 4 * k))

        def query(X):
            i, dist = index.knn_query(X, k=k + 1)
            return i.astype(np.int64), 1.0 - dist
    out_i = np.empty((n, k), dtype=np.int64)
    out_s = np.empty((n, k), dtype=np.float32)
    for start, X in normalized_blocks(cache, layer, block_rows):
        i, s = query(X)
        rows = np.arange(start, start + len(X))
        for r in range(len(X)):  # drop the row itself (wherever the index ranked it), keep k
            keep = i[r] != rows[r]
            out_i[rows[r]], out_s[rows[r]] = i[r][keep][:k], s[r][keep][:k]
        if progress:
            progress(len(X))
    return Neighbours(out_i, out_s, method)


def measure_recall(cache, layer: str, found: Neighbours, sample: int = 200, seed: int = 0,
                   block_rows: Optional[int] = None) -> float:
    """recall@k of ``found`` on ``sample`` random rows, against the exact search for those rows."""
    n, k = found.index.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    Q = np.concatenate([X[np.isin(np.arange(s, s + len(X)), rows)] for s, X in
                        normalized_blocks(cache, layer, block_rows)])
    truth, _ = _search(Q, rows, lambda: normalized_blocks(cache, layer, block_rows), k)
    return float(np.mean([len(set(truth[j]) & set(found.index[r])) / k for j, r in enumerate(rows)]))


def knn(cache, layer: str, k: int = 10, method: str = "auto", block_rows: Optional[int] = None,
        progress: Optional[Callable[[int], None]] = None) -> Neighbours:
    """The ``k`` nearest neighbours of every row: exact up to ``EXACT_LIMIT`` rows, else approximate when faiss
    or hnswlib is installed (its recall measured on a sample), else exact with a warning that it is slow."""
    if method not in METHODS:
        raise FeatcacheError(f"{{neighbours}} {method!r} is not one of {', '.join(METHODS)}")
    n = Rows(cache, [layer]).shape[0]
    if method == "auto":
        method = "exact"
        if n > EXACT_LIMIT:
            method = next((m for m in ("faiss", "hnswlib") if _installed(m)), "exact")
            if method == "exact":
                log.warning("%d rows: the exact neighbour search is quadratic and will be slow; pip install "
                            "'featcache[inspect]' (faiss-cpu) for an approximate index", n)
    if method == "exact":
        return exact_knn(cache, layer, k, block_rows, progress=progress)
    if not _installed(method):
        raise FeatcacheError(f"{{neighbours}} {method} needs the {method} package: pip install "
                             f"{'faiss-cpu' if method == 'faiss' else 'hnswlib'}")
    found = _approximate(cache, layer, min(k, n - 1), method, block_rows, progress)
    found.recall = measure_recall(cache, layer, found, block_rows=block_rows)
    return found


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def knn_array(X: np.ndarray, k: int, rows: Optional[np.ndarray] = None,
              queries: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k (cosine) of the rows of an in-memory matrix ``X`` among themselves, self excluded, in blocks
    (never ``N x N``); ``rows`` names them (default ``0 .. N-1``) in the returned indices. ``queries``, one row per
    row of ``X`` (another view of it), are searched among ``X`` instead."""
    def unit(M):
        M = np.asarray(M, dtype=np.float32)
        norm = np.linalg.norm(M, axis=1, keepdims=True)
        return M / np.where(norm > 0, norm, 1.0)

    X = unit(X)
    Q = X if queries is None else unit(queries)
    rows = np.arange(len(X)) if rows is None else np.asarray(rows, dtype=np.int64)
    k = min(k, len(X) - 1)
    if k < 1:
        return np.empty((len(X), 0), np.int64), np.empty((len(X), 0), np.float32)
    step = max(1, QUERY_BYTES // (4 * len(X)))
    idx = np.empty((len(X), k), dtype=np.int64)
    sim = np.empty((len(X), k), dtype=np.float32)
    for a in range(0, len(X), step):
        pos, s = _search(Q[a:a + step], np.arange(a, min(a + step, len(X))), lambda: iter([(0, X)]), k)
        idx[a:a + step], sim[a:a + step] = rows[pos], s
    return idx, sim
