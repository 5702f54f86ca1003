"""Fine-tuning the top blocks from cached activations: the split point, training, saving and predicting, errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import featcache
from featcache import decode, models, sources
from featcache.cache import Rows
from featcache.cli.finetune import main
from featcache.config import ExtractConfig, FeatcacheError
from featcache.errors import ParameterError
from featcache.finetuning import finetune, network, split_for
from featcache.learn.top import TopClassifier, top_blocks
from featcache.prediction import predict
from featcache.selection.modelfile import load_model

COLOURS = ("red", "green", "blue")
SETTINGS = dict(model="resnet18", weights="none", image_size=32, num_workers=0, batch_size=16, precision="fp32",
                progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, colour_images):
    """A resnet18 cache of train/val/test images holding layer3 maps, the penultimate features and the logits."""
    root = tmp_path_factory.mktemp("finetune")
    for split, n in {"train": 6, "val": 2, "test": 2}.items():
        colour_images(root / "data" / split, n, seed=100 * len(split))
    path = featcache.extract(root / "data", layers=["layer3", "flatten", "fc"], pool="none", cache_dir=root / "c",
                             **SETTINGS)
    return {"path": path, "root": root}


@pytest.mark.slow
@pytest.mark.parametrize("model,weights,node,penultimate,logits,blocks", [
    ("resnet18", "none", "layer3", "flatten", "fc", ["layer4.0", "layer4.1"]),
    ("efficientnet_lite0", "DEFAULT", "_blocks.10.add", "view", "_fc",
     ["_blocks.11", "_blocks.12", "_blocks.13", "_blocks.14", "_blocks.15", "_conv_head+_bn1"]),
])
def test_untrained_top_reproduces_the_model(model, weights, node, penultimate, logits, blocks, tmp_path,
                                            colour_images):
    """The top rebuilt after NODE maps the cached NODE activations to the cached penultimate features and,
    through the model's own classifier, to its logits: the split point is right."""
    path = featcache.extract(colour_images(tmp_path / "d", 2), layers=[node, penultimate, logits], pool="none",
                             cache_dir=tmp_path / "c", **{**SETTINGS, "model": model, "weights": weights})
    fs = featcache.load(path)
    top, backbone = split_for(fs.meta, path, node)
    assert list(top_blocks(top)) == blocks
    assert fs.layers[0] == node.removesuffix(".add")  # one name per tensor: the block whose last node it is
    acts = fs.features[fs.layers[0]]
    assert acts.ndim == 4
    with torch.no_grad():
        features = top(torch.from_numpy(acts))
        out = getattr(backbone.module, logits)(features)
    scale = np.abs(fs.features[penultimate]).max()
    np.testing.assert_allclose(features.numpy(), fs.features[penultimate], atol=1e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(out.numpy(), fs.features[logits], atol=1e-5 * np.abs(fs.features[logits]).max(),
                               rtol=1e-4)
    # Training only the head leaves the top as it was.
    est = TopClassifier(top=top, train_blocks=0, epochs=1, random_state=0).fit(acts, np.array(COLOURS)[fs.y])
    np.testing.assert_allclose(est.transform(acts), fs.features[penultimate], atol=1e-5 * scale, rtol=1e-4)


def test_from_layer_names_the_tensor_however_it_is_spelled(cache):
    """layer3 (the module) and layer3.1.relu_1 (its last node) are one tensor: the cache of one serves the other."""
    res = finetune(cache["path"], "layer3.1.relu_1", train_blocks=[0], epochs=1, progress=False)
    assert res.leaderboard["status"].tolist() == ["ok"] and res.leaderboard["layer"].iloc[0] == "layer3"


@pytest.mark.slow
def test_training_moves_only_the_chosen_blocks_and_is_seeded(cache):
    fs = featcache.load(cache["path"])
    top, _ = split_for(fs.meta, cache["path"], "layer3")
    y = np.array(COLOURS)[fs.y]
    X = fs.features["layer3"].reshape(len(fs), -1)  # flattened, as predict passes them
    fits = [TopClassifier(top=top, input_shape=(256, 2, 2), train_blocks=1, epochs=2, early_stopping=False,
                          random_state=3).fit(X, y) for _ in range(2)]
    before, after = top.state_dict(), fits[0].top_.state_dict()
    changed = {name.rsplit(".", 2)[0] for name in after if not torch.equal(before[name], after[name])}
    assert changed == {"layer4.1"}
    assert fits[0].n_epochs_ == 2 and fits[0].loss_curve_[1] < fits[0].loss_curve_[0]
    np.testing.assert_array_equal(fits[0].predict_proba(X), fits[1].predict_proba(X))
    assert all(not p.requires_grad for p in top.parameters())  # the given top is never modified
    assert torch.equal(top.state_dict()["layer4.1.conv1.weight"], before["layer4.1.conv1.weight"])
    # fp32 training is a choice (auto = bf16 on CPUs that run it fast); the trained top is the same kind of module.
    fp32 = TopClassifier(top=top, input_shape=(256, 2, 2), train_blocks=1, epochs=1, early_stopping=False,
                         precision="fp32", random_state=3).fit(X, y)
    assert fp32.precision_ == "fp32" and fits[0].precision_ in ("bf16", "fp32")
    with pytest.raises(ValueError, match="'precision' parameter of TopClassifier must be one of"):
        TopClassifier(top=top, input_shape=(256, 2, 2), precision="fp16").fit(X, y)


def test_frozen_layers_before_the_trained_block_run_once_with_the_same_result(cache, monkeypatch):
    from featcache.learn import top as ft

    fs = featcache.load(cache["path"])
    top, _ = split_for(fs.meta, cache["path"], "layer3")
    X, y = np.asarray(fs.features["layer3"], dtype=np.float32), np.array(COLOURS)[fs.y]
    settings = dict(top=top, train_blocks=1, epochs=2, precision="fp32", random_state=0)
    once = TopClassifier(**settings).fit(X, y)
    assert once.frozen_prefix_  # layer4.0 ran once; only layer4.1 and the head trained every epoch
    monkeypatch.setattr(ft, "split_frozen_prefix", lambda *a, **k: None)
    every_epoch = TopClassifier(**settings).fit(X, y)
    assert not every_epoch.frozen_prefix_
    np.testing.assert_allclose(once.predict_proba(X), every_epoch.predict_proba(X), rtol=1e-4, atol=1e-5)
    before, after = top.state_dict(), once.top_.state_dict()
    assert {n.rsplit(".", 2)[0] for n in after if not torch.equal(before[n], after[n])} == {"layer4.1"}
    assert once.best_epoch_ == every_epoch.best_epoch_


def test_cached_rows_that_fit_are_read_once_for_a_full_shuffle(cache, monkeypatch):
    from featcache.learn import training as ft

    fs = featcache.load(cache["path"])
    rows = Rows(cache["path"], ["layer3"], np.arange(len(fs))[::-1], maps=True)  # any order of rows
    got = ft.in_memory_if_small(rows)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(fs.features["layer3"], dtype=np.float32)[::-1])
    monkeypatch.setattr(ft, "IN_MEMORY_BYTES", 0)  # too big for memory: streamed as before
    assert ft.in_memory_if_small(rows) is rows


@pytest.mark.slow
def test_saved_model_predicts_new_images_like_the_trained_one(cache, tmp_path, colour_images):
    out = tmp_path / "run"
    res = finetune(cache["path"], "layer3", out=out, train_blocks=[0, 1], epochs=2, progress=False)
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 2 and board["rank"].tolist() == [1, 2]
    assert board["params"].str.contains("train_blocks").all() and not np.isnan(board["test_accuracy"][0])
    assert {"confusion_matrix.png", "finetune.png"} <= {p.name for p in (out / "plots").iterdir()}
    assert res.test_scores is not None and res.scheme.startswith("the cache's val split")

    new = colour_images(tmp_path / "new", 2, seed=7)
    df = predict(out / "best.safetensors", new, cache_dir=tmp_path / "c", num_workers=0, progress=False)
    new_cache = featcache.load(next((tmp_path / "c").glob("*.h5")))
    assert new_cache.meta["config"]["pool"] == "none"
    np.testing.assert_array_equal(df["prediction"], res.best.predict(new_cache.features["layer3"]))
    np.testing.assert_allclose(df.filter(like="proba_").to_numpy(),
                               res.best.predict_proba(new_cache.features["layer3"]), atol=1e-6)
    saved = load_model(out / "best.safetensors")
    assert saved.pipeline.top is None and saved.metadata["config"]["from_layer"] == "layer3"

    # One torch module: decoded uint8 images -> the frozen bottom -> the trained top and head.
    net = network(out / "best.safetensors")
    pre = new_cache.meta["config"]["preprocess"]
    src = sources.open_source(new)
    images = np.stack([decode.decode_sample(src, i, pre["resize_size"], pre["crop_size"]) for i in range(len(src))])
    with torch.no_grad():
        proba = torch.softmax(net(torch.from_numpy(images)).double(), 1).numpy()
    np.testing.assert_allclose(proba, df.filter(like="proba_").to_numpy(), atol=1e-4)
    assert net.classes == sorted(COLOURS)


def test_a_split_across_a_skip_connection_is_refused_with_the_valid_nodes():
    module = models.load_backbone(ExtractConfig(**SETTINGS)).module
    with pytest.raises(FeatcacheError, match=r"layer3\.0\.add also uses layer3\.0\.downsample\.1.*skip connection.*"
                                             r"nearest nodes where it can be split: layer2\.1\.relu_1, layer3\.0\.add"):
        models.split_top(module, "layer3.0.conv1", "flatten")
    with pytest.raises(FeatcacheError, match="does not come before flatten"):
        models.split_top(module, "fc", "flatten")


class DataDependent(nn.Module):
    """Control flow on values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x.mean((2, 3)))


def test_an_untraceable_model_is_refused():
    with pytest.raises(FeatcacheError, match="cannot split this model.*torch.fx cannot trace it"):
        models.split_top(DataDependent(), "conv", "fc")


@pytest.mark.slow
def test_a_cache_without_activations_at_the_node_names_the_extract_command(cache, tmp_path):
    pooled = featcache.extract(cache["root"] / "data", layers=["layer3"], cache_dir=tmp_path / "c", **SETTINGS)
    for path, node in ((pooled, "layer3"), (cache["path"], "layer2")):
        with pytest.raises(FeatcacheError, match=rf"holds no spatial activations at {node}.*extract them first: "
                                                 rf"python -m featcache.extract --data .*--model resnet18 "
                                                 rf"--weights none "
                                                 rf"--image-size 32 --layer {node} --pool none --dtype float16"):
            finetune(path, node, progress=False)
    with pytest.raises(FeatcacheError, match=r"^train_blocks 3: the top after layer3 has 2 blocks .*layer4\.0"):
        finetune(cache["path"], "layer3", train_blocks=[3], progress=False)


@pytest.mark.slow
def test_cli_help_run_and_error(cache, tmp_path, capsys):
    cmd = [sys.executable, "-m", "featcache.finetune"]
    helped = subprocess.run(cmd + ["--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--from-layer" in helped.stdout and "--pool none" in helped.stdout
    out = tmp_path / "cli"
    args = [str(cache["path"]), "--from-layer", "layer3", "--out", str(out), "--epochs", "1", "--train-blocks", "0",
            "1", "--no-progress", "--no-plots", "--precision", "fp32"]
    done = subprocess.run(cmd + args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert "train_blocks=1" in done.stdout and (out / "best.safetensors.json").is_file()
    assert load_model(out / "best.safetensors").pipeline.precision_ == "fp32"
    assert sorted(pd.read_csv(out / "leaderboard.csv")["params"].str.split(",").str[0]) == ["train_blocks=0",
                                                                                          "train_blocks=1"]
    assert main([str(cache["path"]), "--from-layer", "layer2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("featcache: error: ") and "--layer layer2 --pool none" in err


def test_configurations_are_ranked_on_rows_they_were_not_stopped_on(cache, caplog):
    """Early stopping and selection use different validation rows (each half of every class)."""
    import logging

    with caplog.at_level(logging.INFO, logger="featcache"):
        finetune(cache["path"], "layer3", train_blocks=[0], epochs=2, progress=False)
    assert "3 rows stop each configuration's training early, 3 others rank the configurations" in caplog.text


@pytest.mark.slow
def test_the_best_is_refitted_on_train_and_val_for_its_best_epochs(cache, caplog):
    """As the sweep refits its best: the saved model trained on every pool row, for the epochs that were best."""
    import logging

    kw = dict(train_blocks=[0, 1], epochs=3, patience=5, progress=False, precision="fp32")
    with caplog.at_level(logging.INFO, logger="featcache"):
        res = finetune(cache["path"], "layer3", **kw)
    kept = finetune(cache["path"], "layer3", refit=False, **kw)
    assert kept.best_params == res.best_params  # the same selection; only the final model differs
    epochs = kept.best.best_epoch_
    assert f"on 24 rows for {epochs} epochs" in caplog.text  # 6 + 2 images of 3 classes: train and val
    assert res.best.n_epochs_ == epochs and len(res.best.validation_loss_curve_) == 0  # no early stopping
    assert len(kept.train_rows) == 18 and len(kept.best.loss_curve_) == kept.best.n_epochs_
    budgeted = finetune(cache["path"], "layer3", budget=1e-9, **kw)
    assert any(s.startswith("refit of ") and s.endswith(" s") for s in budgeted.skipped)  # (out of time)


def test_no_epoch_starts_past_the_budget_and_the_best_so_far_is_kept(cache):
    import time

    from featcache.learn.top import TopClassifier

    fs = featcache.load(cache["path"])
    X, y = np.asarray(fs.features["layer3"][:]), np.asarray(fs.classes)[fs.y]
    est = TopClassifier(top=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), epochs=50,
                        n_iter_no_change=50, random_state=0, precision="fp32")
    est.fit(X, y, deadline=time.monotonic())  # already past: one epoch, then stop
    assert est.n_epochs_ == 1 and len(est.loss_curve_) == 1 and est.predict(X).shape == (len(y),)
    res = finetune(cache["path"], "layer3", train_blocks=[1], epochs=50, patience=50, budget=1e-9, progress=False,
                   precision="fp32")
    assert res.leaderboard["note"].iloc[0] == "1 epochs, best 1 (stopped at the budget)"


def test_label_smoothing_softens_the_training_loss_from_the_flag_to_the_estimator(cache, tmp_path):
    """--label-smoothing: one field of FinetuneConfig, its table, and the estimator that uses it. A smoothed target
    keeps the loss of a confident right answer above zero, so the same seeded fit ends with a higher training loss;
    the value reaches the saved model, and a bad one is refused by the table."""
    fs = featcache.load(cache["path"])
    top, _ = split_for(fs.meta, cache["path"], "layer3")
    X, y = fs.features["layer3"].reshape(len(fs), -1), np.array(COLOURS)[fs.y]
    kw = dict(top=top, input_shape=(256, 2, 2), train_blocks=0, epochs=3, early_stopping=False, precision="fp32",
              random_state=3)
    plain, smooth = (TopClassifier(**kw, label_smoothing=s).fit(X, y) for s in (0.0, 0.3))
    assert smooth.loss_curve_[-1] > plain.loss_curve_[-1]
    out = tmp_path / "smooth"
    assert main([str(cache["path"]), "--from-layer", "layer3", "--out", str(out), "--epochs", "1", "--train-blocks",
                 "0", "--label-smoothing", "0.1", "--no-progress", "--no-plots", "-q"]) == 0
    assert load_model(out / "best.safetensors").pipeline.label_smoothing == 0.1
    with pytest.raises(ParameterError, match="'label_smoothing' parameter of FinetuneConfig must be a float in the "
                                             r"range \[0, 1\). Got 1.5"):
        finetune(cache["path"], "layer3", label_smoothing=1.5)
