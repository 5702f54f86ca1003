"""Parameter validation: one table per config or estimator, one message style (the flag on the
command line: test_cli.py)."""
from __future__ import annotations

import pytest

from featcache import ExtractConfig, FeatcacheError, FinetuneConfig, SweepConfig
from featcache.errors import ConflictError, ParameterError


@pytest.mark.parametrize("config, message", [
    (ExtractConfig(pool="bad"), "The 'pool' parameter of ExtractConfig must be one of 'avg', 'max', 'gem', 'flatten', "
                                "'cls', 'none'. Got 'bad' instead."),
    (ExtractConfig(batch_size=0), "The 'batch_size' parameter of ExtractConfig must be an int >= 1 or 'auto'. Got 0"),
    (ExtractConfig(mean=[0.5, 0.5]), "The 'mean' parameter of ExtractConfig must be None or a list of 3 of (a number)"),
    (ExtractConfig(streams=True), "The 'streams' parameter of ExtractConfig must be None or an int >= 1. Got True"),
    (SweepConfig("c.h5", n_jobs=0), "The 'n_jobs' parameter of SweepConfig must be None, an int >= 1 or -1. Got 0"),
    (SweepConfig("c.h5", val_fraction=1.0), "'val_fraction' parameter of SweepConfig must be None or a float in the "
                                            "range (0, 1). Got 1.0"),
    (FinetuneConfig("c.h5", train_blocks=[1, "most"]), "'train_blocks' parameter of FinetuneConfig must be a list of "
                                                       "at least 1 of (an int >= 0 or 'all')"),
    (FinetuneConfig("c.h5", precision="fp16"), "'precision' parameter of FinetuneConfig must be one of 'auto', "
                                               "'bf16', 'fp32'. Got 'fp16'"),
])
def test_python_callers_get_the_parameter_name(config, message):
    with pytest.raises(ParameterError) as e:
        config.validate()
    assert message in str(e.value)
    assert isinstance(e.value, FeatcacheError) and isinstance(e.value, ValueError)


def test_a_budget_is_seconds_or_a_duration_in_python_as_on_the_command_line():
    sweep, tune = SweepConfig("c.h5", budget="1h30m"), FinetuneConfig("c.h5", budget=90)
    sweep.validate(), tune.validate()
    assert (sweep.budget_s, tune.budget_s) == (5400.0, 90.0)
    assert sweep.budget == "1h30m", "validate() checks a field and never rewrites it"
    with pytest.raises(ParameterError, match=r"The 'budget' parameter of SweepConfig must be .* a duration such as "
                                             r"'90s', '15m', '1h' or '1h30m'. Got '10 minutes' instead"):
        SweepConfig("c.h5", budget="10 minutes").validate()


def test_rules_across_parameters_name_both():
    with pytest.raises(ConflictError, match="use either cv or val_fraction, not both"):
        SweepConfig("c.h5", cv=3, val_fraction=0.2).validate()
    with pytest.raises(ConflictError, match="views are made with Pillow: drop gpu_decode"):
        ExtractConfig(views=2, gpu_decode=True).validate()
    SweepConfig("c.h5", n_jobs=-1, cv=3).validate()  # valid settings pass
    ExtractConfig(views=2, batch_size="auto", mean=(0.5, 0.5, 0.5)).validate()


def test_a_caches_record_gives_back_every_setting_that_entered_its_key():
    """to_record / from_record: one round trip, covering every field marked key=True."""
    given = ExtractConfig(model="resnet18", weights="none", layers=("layer4",), pool="max", image_size=96,
                          resize_size=110, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), precision="fp32",
                          dtype="float16", hash_content=True, views=2, augment=("crop",), scales=(1.0, 0.5))
    record = given.to_record(model="resnet18", weights="none (random init)", weights_sha256="", layers=["layer4"],
                             preprocess={"crop_size": 96, "resize_size": 110, "mean": [0.5] * 3, "std": [0.2] * 3},
                             precision="fp32", engine="torch", engine_key=None)
    back = ExtractConfig.from_record(record, with_views=True)
    assert set(ExtractConfig.key_fields()) >= {"model", "layers", "pool", "image_size", "scales", "views"}
    plain = lambda v: [float(x) if isinstance(x, float) else x for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    assert {name: plain(getattr(back, name)) for name in ExtractConfig.key_fields()} == {
        name: plain(getattr(given, name)) for name in ExtractConfig.key_fields()}
