"""Out-of-core training: chunk-aligned block reads, streaming preprocessing, SGD and DenseHead from HDF5."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from featcache import load
from featcache.cache import rows as cache_rows
from featcache.learn import streaming
from featcache.learn.dense import DenseHead


@pytest.fixture(scope="module")
def cache(tmp_path_factory, feature_cache):
    """2,400 rows x 32 features, 4 classes, stored in 64-row chunks; half train, 40% test."""
    return feature_cache(tmp_path_factory.mktemp("streaming") / "c.h5", n=2400, dim=32, chunk_rows=64,
                         splits=(0.5, 0.1))


@pytest.fixture(scope="module")
def data(cache):
    fs = load(cache)
    return fs.X, fs.y, np.flatnonzero(fs.split == "train"), np.flatnonzero(fs.split == "test")


def test_blocks_are_chunk_aligned_and_cover_every_row_once(cache, data):
    X, _, train, _ = data
    rows = cache_rows.Rows(cache)
    assert rows.block_rows % 64 == 0 and rows.shape == (2400, 32)  # whole chunks by default
    subset = np.random.default_rng(0).permutation(train)[:500]  # any order in
    view = cache_rows.Rows(cache, block_rows=48)[subset]
    seen, spans = [], set()
    for pos, block in view.blocks(np.random.default_rng(1)):
        assert block.dtype == np.float32 and np.array_equal(block, X[subset[pos]])
        spans.add(tuple(np.unique(subset[pos] // 48)))
        seen.append(pos)
    assert all(len(s) == 1 for s in spans)  # no read crosses a 48-row block boundary
    seen = np.concatenate(seen)
    assert sorted(seen) == list(range(500)) and not np.array_equal(seen, np.sort(seen))  # shuffled block order
    clone = pickle.loads(pickle.dumps(view))  # what a joblib worker receives: path and row numbers
    assert np.array_equal(np.concatenate([b for _, b in clone.blocks()]), X[np.sort(subset)])


def test_a_caches_rows_are_a_row_source_and_arrays_are_not(cache, data):
    """Training reads rows through the protocol in ``featcache.rowsource``; ``cache.rows.Rows`` implements it (a
    view, a transformed view and an unpickled copy included), while arrays go the in-memory way."""
    import torch

    from featcache.rowsource import RowSource, minibatches

    rows = cache_rows.Rows(cache, block_rows=48)
    for view in (rows, rows[:100], rows.with_transform(np.negative), pickle.loads(pickle.dumps(rows))):
        assert isinstance(view, RowSource)
    X, _, train, _ = data
    for other in (X, torch.from_numpy(X), [[0.0]], None):
        assert not isinstance(other, RowSource)
    batches = list(minibatches(rows, train[:200], 64))
    assert np.array_equal(np.sort(np.concatenate([b for b, _ in batches])), np.sort(train[:200]))
    assert all(np.array_equal(block, X[b]) for b, block in batches)


def test_batches_shuffle_within_a_buffer_and_keep_every_row(cache, monkeypatch):
    view = cache_rows.Rows(cache, block_rows=16)
    # The default buffer (32 MiB) holds this whole file: one batch mixes rows from all over it.
    first = next(view.batches(100, np.random.default_rng(0)))[0]
    assert first.max() - first.min() > 1200
    monkeypatch.setattr(cache_rows, "BUFFER_BYTES", 0)  # a buffer of BUFFER_BLOCKS blocks only
    batches = list(view.batches(100, np.random.default_rng(0)))
    pos = np.concatenate([p for p, _ in batches])
    assert sorted(pos) == list(range(2400)) and {len(p) for p, _ in batches[:-1]} == {100}
    first = batches[0][0]
    assert len(np.unique(first // 16)) > 1  # one batch mixes rows of several blocks
    assert first.max() - first.min() < cache_rows.BUFFER_BLOCKS * 16 * 30  # but only from one buffer's blocks


def test_streaming_preprocessing_matches_in_memory(cache, data):
    X, y, train, _ = data
    pipe = streaming.fit(make_pipeline(StandardScaler(), Normalizer(), SGDClassifier(max_iter=2, random_state=0)),
                         cache_rows.Rows(cache, block_rows=16)[train], y[train])
    ref = StandardScaler().fit(X[train])
    np.testing.assert_allclose(pipe[0].mean_, ref.mean_, rtol=1e-6)
    np.testing.assert_allclose(pipe[0].scale_, ref.scale_, rtol=1e-6)
    assert pipe[0].n_samples_seen_ == len(train)


@pytest.mark.parametrize("make", [
    lambda: make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=1e-3, max_iter=10, random_state=0)),
    lambda: make_pipeline(StandardScaler(), DenseHead(hidden_layer_sizes=32, epochs=6, lr=3e-3, random_state=0)),
], ids=["sgd", "dense"])
def test_out_of_core_accuracy_is_within_a_point_of_in_memory(cache, data, make):
    X, y, train, test = data
    in_memory = make().fit(X[train], y[train])
    streamed = streaming.fit(make(), cache_rows.Rows(cache, block_rows=8)[train], y[train])  # tiny reads
    acc_memory = np.mean(in_memory.predict(X[test]) == y[test])
    acc_stream = np.mean(streaming.Blockwise(streamed).predict(cache_rows.Rows(cache)[test]) == y[test])
    assert acc_memory > 0.8 and abs(acc_stream - acc_memory) <= 0.01, (acc_memory, acc_stream)
    proba = streaming.Blockwise(streamed).predict_proba(cache_rows.Rows(cache)[test])
    np.testing.assert_allclose(proba, streamed.predict_proba(X[test]), atol=1e-6)  # blockwise = whole


def test_dense_head_fit_stream_keeps_its_estimator_attributes(cache, data):
    _, y, train, _ = data
    head = DenseHead(epochs=3, early_stopping=True, random_state=0).fit_stream(
        cache_rows.Rows(cache, block_rows=32)[train], y[train])
    assert head.n_features_in_ == 32 and list(head.classes_) == [0, 1, 2, 3]
    assert len(head.loss_curve_) == head.n_epochs_ == 3 and len(head.validation_loss_curve_) == 3


def test_what_cannot_stream_says_so(cache, data):
    _, y, train, _ = data
    rows = cache_rows.Rows(cache)[train]
    with pytest.raises(ValueError, match="LogisticRegression cannot train by streaming"):
        streaming.fit(LogisticRegression(), rows, y[train])
    from sklearn.decomposition import PCA
    with pytest.raises(ValueError, match=r"preprocessing step pca \(PCA\) cannot be fitted by streaming; use none"):
        streaming.fit(make_pipeline(PCA(4), SGDClassifier()), rows, y[train])
    with pytest.raises(ValueError, match="block_rows must be a positive integer"):
        cache_rows.Rows(cache, block_rows=0)


# --- the sweep out of core ------------------------------------------------------------------------

STREAM_GRID = {"preprocess": "standardize", "sgd": {"loss": "log_loss", "alpha": [1e-3, 1e-2], "max_iter": 10},
               "dense": {"epochs": 6, "lr": 3e-3, "hidden_layer_sizes": 32}}


def test_an_out_of_core_sweep_scores_like_in_memory(cache, tmp_path):
    from featcache.sweeping import sweep

    kw = dict(grid=STREAM_GRID, results_dir=tmp_path / "r", progress=False, ensemble=0)  # (no ensemble out of core)
    memory = sweep(cache, **kw).leaderboard
    streamed = sweep(cache, out_of_core=True, block_rows=16, out=tmp_path / "out", **kw)
    assert streamed.n_cached == 0  # streamed results are stored under their own keys
    a, b = (x.sort_values("params").reset_index(drop=True) for x in (memory, streamed.leaderboard))
    assert list(a["params"]) == list(b["params"]) and (b["status"] == "ok").all()
    assert np.abs(a["val_accuracy"] - b["val_accuracy"]).max() <= 0.01
    assert abs(memory["test_accuracy"].max() - streamed.test_scores["accuracy"]) <= 0.015
    fs = load(cache)
    assert np.mean(streamed.best.predict(fs.X) == np.array(fs.classes)[fs.y]) > 0.9  # an ordinary pipeline


def test_out_of_core_takes_the_streaming_part_of_the_default_grid_and_refuses_the_rest(cache, tmp_path, caplog):
    import logging

    from featcache.config import FeatcacheError
    from featcache.sweeping import sweep

    with pytest.raises(FeatcacheError, match=r"^out_of_core trains only sgd, dense with preprocess none / "
                                             r"standardize / l2 \(chained with '\+'\); not knn"):
        sweep(cache, grid={"knn": {"n_neighbors": 3}, "sgd": {}}, out_of_core=True)
    with pytest.raises(FeatcacheError, match="not sgd\\(\\) on pca:4"):
        sweep(cache, grid={"sgd": {"preprocess": "pca:4"}}, out_of_core=True)
    with pytest.raises(FeatcacheError, match="block_rows only applies with out_of_core"):
        sweep(cache, grid=STREAM_GRID, block_rows=16)
    from featcache.selection.grids import expand_grid, read_grid
    from featcache.sweeping._problem import _streamable
    with caplog.at_level(logging.INFO, logger="featcache"):
        kept = _streamable(expand_grid(read_grid(None)), default_grid=True)
    assert {c.classifier for c in kept} == {"sgd", "dense"}
    assert "the default streaming grid (sgd and dense" in caplog.text


def test_features_larger_than_memory_are_refused_with_the_way_out(cache, tmp_path, monkeypatch):
    from featcache.config import FeatcacheError
    from featcache.selection import features
    from featcache.sweeping import sweep

    monkeypatch.setattr(features, "available_memory", lambda: 100_000)  # less than 2,400 x 32 x 4 bytes
    # as read, the pool/test rows, and one task's training rows with their preprocessed copy
    with pytest.raises(FeatcacheError, match=r"the features need 1\.2 MB \(4 copies of 300\.0 KB while loading "
                                             r"and fitting\) but 97\.7 KB of memory is available; "
                                             r"rerun with out_of_core"):
        sweep(cache, grid=STREAM_GRID, reuse=False)
    with pytest.raises(FeatcacheError, match=r"\(7 copies of 300\.0 KB"):  # + the workers' shared copy, 2 tasks
        sweep(cache, grid=STREAM_GRID, reuse=False, n_jobs=2)
    res = sweep(cache, grid={"sgd": {"max_iter": 3}}, out_of_core=True, reuse=False, progress=False)
    assert res.leaderboard["status"].tolist() == ["ok"]


@pytest.mark.slow
def test_cli_out_of_core(cache, tmp_path):
    import subprocess
    import sys

    grid = tmp_path / "grid.toml"
    grid.write_text('[sgd]\npreprocess = "l2"\nmax_iter = 5\n', encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "featcache.sweep", str(cache), "--grid", str(grid), "--out-of-core",
                          "--block-rows", "64", "--out", str(tmp_path / "o"), "--no-progress", "--no-plots"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == str(tmp_path / "o") and (tmp_path / "o" / "best.skops").is_file()
    bad = subprocess.run([sys.executable, "-m", "featcache.sweep", str(cache), "--block-rows", "0", "--out-of-core"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "featcache: error: --block-rows must be an int >= 1; got 0"


def test_a_containers_memory_limit_counts(tmp_path):
    """cgroup v2 and v1 limits, read from files laid out as the kernel lays them out (made here: a real cgroup
    limit cannot be set from a test)."""
    from featcache.rowsource import cgroup_available

    (tmp_path / "proc").write_text("0::/job\n")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "memory.max").write_text("1000000\n")
    (tmp_path / "job" / "memory.current").write_text("250000\n")
    assert cgroup_available(tmp_path, tmp_path / "proc") == 750000
    (tmp_path / "job" / "memory.max").write_text("max\n")
    assert cgroup_available(tmp_path, tmp_path / "proc") is None
    (tmp_path / "proc").write_text("4:memory:/box\n0::/\n")
    (tmp_path / "memory" / "box").mkdir(parents=True)
    (tmp_path / "memory" / "box" / "memory.limit_in_bytes").write_text("2000\n")
    (tmp_path / "memory" / "box" / "memory.usage_in_bytes").write_text("500\n")
    assert cgroup_available(tmp_path, tmp_path / "proc") == 1500
