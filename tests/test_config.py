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
    assert (sweep.budget, tune.budget) == (5400.0, 90.0)
    with pytest.raises(FeatcacheError, match=r"budget: '10 minutes' is not a duration; use e.g. 90, 90s, 15m"):
        SweepConfig("c.h5", budget="10 minutes").validate()


def test_rules_across_parameters_name_both():
    with pytest.raises(ConflictError, match="use either cv or val_fraction, not both"):
        SweepConfig("c.h5", cv=3, val_fraction=0.2).validate()
    with pytest.raises(ConflictError, match="views are made with Pillow: drop gpu_decode"):
        ExtractConfig(views=2, gpu_decode=True).validate()
    SweepConfig("c.h5", n_jobs=-1, cv=3).validate()  # valid settings pass
    ExtractConfig(views=2, batch_size="auto", mean=(0.5, 0.5, 0.5)).validate()
