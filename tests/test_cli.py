"""The command line as a user meets it: mistyped flags, pipes, cache housekeeping (ls, rm, prune),
each command's flag named in a parameter error."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import featcache
from featcache import ExtractConfig, FinetuneConfig, FitConfig, SweepConfig
from featcache.config import InspectConfig, PredictConfig
from featcache.errors import ConflictError, FeatcacheError, ParameterError

REPO = Path(__file__).resolve().parents[1]


def _run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "featcache", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, **kwargs)


def test_a_mistyped_flag_gets_a_suggestion():
    r = _run("sweep", "x.h5", "--scren-layers", "1")
    assert r.returncode == 2 and "did you mean --screen-layers?" in r.stderr and "Traceback" not in r.stderr
    r = _run("extract", "--dta", "photos/")
    assert r.returncode == 2 and "did you mean --data?" in r.stderr


def test_a_closed_pipe_ends_quietly():
    """``featcache ... | head``: the reader closes the pipe before the command writes; no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "featcache", "sweep", "--print-grid"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # before the interpreter has even started: every write will hit a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def _caches(split_folder, tmp_path):
    fast = dict(model="resnet18", weights="none", image_size=32, progress=False, cache_dir=tmp_path / "c")
    return (featcache.extract(split_folder, layers=["layer4"], **fast),
            featcache.extract(split_folder, layers=["layer3"], pool="max", dtype="float16", **fast))


def test_ls_tells_caches_apart(split_folder, tmp_path):
    a, b = _caches(split_folder, tmp_path)
    r = _run("ls", "--cache-dir", tmp_path / "c", "--json")
    records = {rec["path"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert records[str(a)]["pool"] == "avg" and records[str(b)]["pool"] == "max"
    assert records[str(b)]["dtype"] == "float16" and records[str(a)]["weights"] == "RANDOM"
    table = _run("ls", "--cache-dir", tmp_path / "c")
    assert table.stdout.splitlines()[0].split()[:5] == ["dataset", "model", "weights", "layers", "pool"]
    assert "RANDOM: extracted with --weights none" in table.stderr


def test_rm_and_prune(split_folder, tmp_path):
    a, b = _caches(split_folder, tmp_path)
    store = tmp_path / "c" / "sweep-results" / featcache.load(a).meta.fingerprint[:16]
    store.mkdir(parents=True)
    (store / "r.json").write_text("{}")
    partial = tmp_path / "c" / "other.partial.h5"
    partial.write_bytes(b"in progress")
    assert _run("prune", "--cache-dir", tmp_path / "c").returncode == 2  # says what to choose by
    dry = _run("prune", "--cache-dir", tmp_path / "c", "--all", "--dry-run")
    assert dry.returncode == 0 and "would remove 2 cache(s)" in dry.stdout and a.exists() and b.exists()
    old = time.time() - 40 * 86400
    for path in (b, b.parent / ".used" / b.name):
        if path.exists():
            os.utime(path, (old, old))  # b: made, and last hit or loaded, 40 days ago
    pruned = _run("prune", "--cache-dir", tmp_path / "c", "--unused-days", "30")
    assert pruned.returncode == 0 and "removed 1 cache(s)" in pruned.stdout and a.exists() and not b.exists()
    featcache.load(a)  # a load counts as a use
    assert time.time() - (a.parent / ".used" / a.name).stat().st_mtime < 60
    removed = _run("rm", a)
    assert removed.returncode == 0 and not a.exists() and not store.exists()
    assert partial.exists()  # never pruned: a run may be writing it
    bad = _run("rm", partial)
    assert bad.returncode == 2 and "not a finished cache file" in bad.stderr


@pytest.mark.slow
def test_rm_refuses_a_cache_a_running_sweep_uses_and_the_sweep_survives_a_forced_rm(feature_cache, tmp_path):
    """A real sweep in a second process: ``rm`` refuses its cache while it trains; ``rm --force`` removes it and its
    result store, and the sweep goes on, making the store again (it once died on FileNotFoundError)."""
    import fcntl

    from featcache.cache.use import use_path

    (tmp_path / "c").mkdir()
    cache = feature_cache(tmp_path / "c" / "busy.h5", n=3000, dim=64)
    store = tmp_path / "c" / "sweep-results" / featcache.load(cache).meta.fingerprint[:16]
    code = ("import featcache; featcache.sweep(%r, grid={'svm': {'C': [0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100]}},"
            " n_jobs=1, halving=False, ensemble=0, screen_layers=0, progress=False)" % str(cache))
    sweep = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:  # until the sweep holds its cache (a shared lock that an exclusive probe cannot get)
            assert sweep.poll() is None and time.time() < deadline
            if use_path(cache).exists():
                with open(use_path(cache), "rb") as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        break
            time.sleep(0.05)
        while not any(store.glob("*.json")):  # and has kept a result
            assert sweep.poll() is None and time.time() < deadline
            time.sleep(0.01)
        # Paused (SIGSTOP) while both rm run, so that it still has results to store after them however loaded the
        # machine is; it keeps its lock while stopped.
        os.kill(sweep.pid, signal.SIGSTOP)
        refused = _run("rm", cache)
        assert refused.returncode == 2 and "is in use by a running process (a sweep or fine-tuning)" in refused.stderr
        assert cache.exists() and store.exists()
        forced = _run("rm", "--force", cache)
        assert forced.returncode == 0 and not cache.exists(), forced.stderr
        os.kill(sweep.pid, signal.SIGCONT)
        _, err = sweep.communicate(timeout=240)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, err
    assert "was removed while this sweep ran" in err and "made it again" in err and any(store.glob("*.json"))


def test_ls_shows_and_prune_removes_what_a_killed_publish_left(split_folder, tmp_path):
    """A process killed between its last fsync and its rename leaves ``.<cache>.<pid>.<random>.tmp``, the size of
    the cache: once its pid is gone, ``ls`` lists it and ``prune`` removes it (a real killed process's pid)."""
    a, _ = _caches(split_folder, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = a.with_name(f".{a.name}.{dead.pid}.k3x9q2zz.tmp")
    orphan.write_bytes(a.read_bytes())
    live = a.with_name(f".{a.name}.{os.getpid()}.abcdefgh.tmp")  # this process is alive: not an orphan
    live.write_bytes(b"still publishing")
    listed = [json.loads(line) for line in _run("ls", "--cache-dir", tmp_path / "c", "--json").stdout.splitlines()]
    orphans = [r for r in listed if r["status"].startswith("orphan")]
    assert [r["path"] for r in orphans] == [str(orphan)]
    pruned = _run("prune", "--cache-dir", tmp_path / "c", "--older-than", "365")
    assert pruned.returncode == 0 and "removed 0 cache(s)" in pruned.stdout
    assert "removed 1 temporary file(s) left by processes killed while publishing" in pruned.stdout
    assert not orphan.exists() and live.exists() and a.exists()


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


def test_any_error_names_parameters_by_template_and_other_braces_stay_text():
    """``{name}`` is a parameter (the Python name from Python, the flag on the command line) and ``{name=value}`` one
    set to a value; a dict, a set, None, or a path's ``{split}`` formatted into the message is text: only the
    registered names (every config field) are templates."""
    import argparse
    import pickle

    from featcache.cli import _for_cli

    values = {"a": 1}, {2, 3}, {None}, "{'x'}", "{1}", "/data/{split}/x.csv"
    e = FeatcacheError(f"{{batch_size}} too big for {{layers}} with {values[0]} {values[1]} {values[2]} "
                       f"{values[3]} {values[4]} {values[5]} {{not a name}} {{}}; or {{use_views=False}}")
    text = " {'a': 1} {2, 3} {None} {'x'} {1} /data/{split}/x.csv {not a name} {}; or "
    assert str(e) == "batch_size too big for layers with" + text + "use_views=False"
    assert e.params == ["batch_size", "layers", "use_views"]
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size")
    p.add_argument("--layer", dest="layers")
    p.add_argument("--no-views", dest="use_views", action="store_false")
    assert _for_cli(e, p) == "--batch-size too big for --layer with" + text + "--no-views"
    assert _for_cli(e, argparse.ArgumentParser()) == "--batch-size too big for --layer with" + text + "--no-views", (
        "a parameter the command has no flag for reads as the flag its field spells")
    assert _for_cli(FeatcacheError("give a larger {budget=90}, or {halving=False}"), argparse.ArgumentParser()) == (
        "give a larger --budget 90, or --no-halving")
    assert _for_cli(pickle.loads(pickle.dumps(e)), p) == _for_cli(e, p), "a worker's error keeps its template"
    assert issubclass(ConflictError, FeatcacheError) and str(ConflictError("{cv} or {x}")) == "cv or {x}"
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
