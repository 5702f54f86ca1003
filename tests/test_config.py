"""Parameter validation: one table per config or estimator, one message style, the flag on the command line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import featcache
from featcache import ExtractConfig, FeatcacheError, FinetuneConfig, FitConfig, SweepConfig
from featcache.config import InspectConfig, PredictConfig
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


@pytest.mark.parametrize("args, line", [
    (["featcache.sweep", "x.h5", "--n-jobs", "0"], "featcache: error: --n-jobs must be an int >= 1 or -1; got 0"),
    (["featcache.sweep", "x.h5", "--cv", "3", "--val-fraction", "0.2"],
     "featcache: error: use either --cv or --val-fraction, not both"),
    (["featcache.finetune", "x.h5", "--from-layer", "l", "--epochs", "0"],
     "featcache: error: --epochs must be an int >= 1; got 0"),
    (["featcache.extract", "--data", "x", "--streams", "0"], "featcache: error: --streams must be an int >= 1; got 0"),
])
def test_cli_users_get_the_flag(args, line):
    run = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.strip() == line, run.stderr


@pytest.mark.parametrize("command, argv, expected", [
    ("extract", [], ExtractConfig()),
    ("sweep", ["c.h5"], SweepConfig(Path("c.h5"))),
    ("finetune", ["c.h5", "--from-layer", "n"], FinetuneConfig(Path("c.h5"), from_layer="n")),
    ("fit", ["--data", "d", "--out", "o"], FitConfig.from_settings(data="d", out=Path("o"))),
    ("predict", ["m.skops", "--data", "d"], PredictConfig(Path("m.skops"), data="d")),
    ("inspect", ["c.h5"], InspectConfig(Path("c.h5"))),
])
def test_a_command_without_flags_gets_the_configs_own_defaults(command, argv, expected):
    """The flags are built from the fields (one source): parsing no flags gives the dataclass's defaults."""
    import importlib

    from featcache.cli import config_from_args

    args = importlib.import_module(f"featcache.cli.{command}").build_parser().parse_args(argv)
    changes = {"out": expected.out} if hasattr(expected, "out") else {}  # the commands' own default folders aside
    assert config_from_args(type(expected), args, **changes) == expected


def test_every_setting_with_help_is_a_flag_that_shows_its_default_once():
    import argparse
    import dataclasses

    from featcache.cli import add_config_flags, flag_of

    for config in (ExtractConfig, SweepConfig, FinetuneConfig, FitConfig, PredictConfig, InspectConfig):
        p = argparse.ArgumentParser()
        add_config_flags(p, config)
        for f in dataclasses.fields(config):
            if f.metadata.get("help"):
                action = next(a for a in p._actions if a.dest == f.name)
                written = f.metadata["help"].count("(default:")
                assert action.help.count("(default:") == (written or action.help.count("(default:") and 1), (
                    config.__name__, f.name)
                assert flag_of(p, f.name), (config.__name__, f.name)


def test_adding_a_setting_is_one_field():
    """A new field made with setting() is a validated, documented flag with nothing else written for it."""
    import argparse
    import dataclasses
    from numbers import Integral

    from featcache._validation import Interval
    from featcache.cli import add_config_flags, config_from_args
    from featcache.config import setting

    @dataclasses.dataclass
    class Grown(SweepConfig):
        max_rows: int = setting(1000, "rows at most", type=int)
        _parameter_constraints = {**SweepConfig._parameter_constraints, "max_rows": [Interval(Integral, 1, None)]}

    p = argparse.ArgumentParser()
    add_config_flags(p, Grown)
    p.add_argument("cache")
    assert "rows at most (default: 1000)" in p.format_help()
    assert config_from_args(Grown, p.parse_args(["c.h5"])).max_rows == 1000
    with pytest.raises(ParameterError, match="'max_rows' parameter of Grown must be an int >= 1. Got 0"):
        config_from_args(Grown, p.parse_args(["c.h5", "--max-rows", "0"])).validate()


def test_a_caches_record_gives_back_every_setting_that_entered_its_key():
    """to_record / from_record: one round trip, covering every field marked key=True."""
    given = ExtractConfig(model="resnet18", weights="none", layers=("layer4",), pool="max", image_size=96,
                          resize_size=110, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), precision="fp32",
                          dtype="float16", hash_content=True, views=2, augment=("crop",), scales=(1.0, 0.5))
    record = given.to_record(model="resnet18", weights="none (random init)", weights_sha256="", layers=["layer4"],
                             preprocess={"crop_size": 96, "resize_size": 110, "mean": [0.5] * 3, "std": [0.2] * 3},
                             precision="fp32", engine="torch", engine_key=None)
    back = ExtractConfig.from_record(record, views=True)
    assert set(ExtractConfig.key_fields()) >= {"model", "layers", "pool", "image_size", "scales", "views"}
    plain = lambda v: [float(x) if isinstance(x, float) else x for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    assert {name: plain(getattr(back, name)) for name in ExtractConfig.key_fields()} == {
        name: plain(getattr(given, name)) for name in ExtractConfig.key_fields()}


def test_any_error_names_parameters_by_template_and_other_braces_stay_text():
    """``{name}`` is a parameter (the Python name from Python, the flag on the command line); a dict, a set or
    None formatted into the message is text, whatever braces it has."""
    import argparse
    import pickle

    from featcache.cli import _for_cli

    values = {"a": 1}, {2, 3}, {None}, "{'x'}", "{1}"
    e = FeatcacheError(f"{{batch_size}} too big for {{layers}} with {values[0]} {values[1]} {values[2]} "
                       f"{values[3]} {values[4]} {{not a name}} {{}}")
    text = " {'a': 1} {2, 3} {None} {'x'} {1} {not a name} {}"
    assert str(e) == "batch_size too big for layers with" + text
    assert e.params == ["batch_size", "layers"]
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size")
    p.add_argument("--layer", dest="layers")
    assert _for_cli(e, p) == "--batch-size too big for --layer with" + text
    assert _for_cli(e, argparse.ArgumentParser()) == "--batch-size too big for --layers with" + text, (
        "a parameter the command has no flag for reads as its name with dashes")
    assert _for_cli(pickle.loads(pickle.dumps(e)), p) == _for_cli(e, p), "a worker's error keeps its template"
    assert issubclass(ConflictError, FeatcacheError) and str(ConflictError("{cv} or {x}")) == "cv or x"
    got = ParameterError("SweepConfig", "n_jobs", "an int >= 1", "{seed}")
    assert str(got) == "The 'n_jobs' parameter of SweepConfig must be an int >= 1. Got '{seed}' instead."


def test_the_same_error_names_the_parameter_in_python_and_the_flag_on_the_command_line(tmp_path, capsys):
    from featcache.cli.extract import main

    missing = tmp_path / "nope"
    with pytest.raises(FeatcacheError) as e:
        featcache.extract(missing, cache_dir=tmp_path / "c", progress=False)
    assert str(e.value) == f"data {missing}: no such file or folder"
    assert main(["--data", str(missing), "--cache-dir", str(tmp_path / "c"), "-q"]) == 2
    assert capsys.readouterr().err == f"featcache: error: --data {missing}: no such file or folder\n"
