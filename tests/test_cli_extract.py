"""`featcache extract` on the command line: the README's main command, one-line errors for bad flags, --list-layers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featcache import load

REPO = Path(__file__).resolve().parents[1]
FAST_CLI = ["--model", "resnet18", "--weights", "none", "--image-size", "64", "--precision", "fp32",
            "--num-workers", "0", "--no-progress"]


def _cmd(data, cache_dir, *extra):
    return [sys.executable, "-m", "featcache.extract", "--data", str(data), "--cache-dir", str(cache_dir),
            *FAST_CLI, *extra]


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


@pytest.mark.slow
def test_readme_main_command_on_the_builtin_default(tmp_path):
    """`python -m featcache.extract --data data/digits`: real pretrained features, offline, path on stdout."""
    r = _cli("featcache.extract", "--data", "data/digits", "--no-progress", env={"FEATCACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path and path.is_file()
    assert "done: 300 images" in r.stderr
    fs = load(path)
    assert fs.X.shape == (300, 1280) and len(fs.classes) == 10
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(*fs.subset("train"))
    assert clf.score(*fs.subset("test")) > 0.7  # pretrained features separate the digits; random ones don't
    again = _cli("featcache.extract", "--data", "data/digits", env={"FEATCACHE_DIR": str(tmp_path)})
    assert again.stdout.strip().splitlines()[-1] == str(path) and "cache hit" in again.stderr


@pytest.mark.slow
def test_cli_errors_are_one_line_without_traceback(tmp_path):
    for args, message in [
        (["--data", str(tmp_path / "nope")], "no such file or folder"),
        (["--data", "data/digits", "--model", "resnet18", "--weights", "none", "--layer", "layer9"], "closest"),
        (["--data", "data/digits", "--batch-size", "0"], "--batch-size must be an int >= 1 or 'auto'; got 0"),
        (["--data", "data/digits", "--weights", str(tmp_path / "w.pt")], "no such file"),
        ([], "--data is required"),
    ]:
        r = _cli("featcache.extract", *args, "--cache-dir", str(tmp_path))
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_list_layers_cli():
    r = _cli("featcache.extract", "--model", "resnet18", "--weights", "none", "--list-layers")
    assert r.returncode == 0, r.stderr
    line = next(text for text in r.stdout.splitlines() if text.startswith("layer4.1.relu_1 "))
    assert "512x7x7" in line and " 512 " in line and "2048" in line  # shape, pooled dim, bytes/image
    assert line.endswith("last1 = layer4")  # stage outputs are marked with their preset and --layer name


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--pool", "bad"], "invalid choice: 'bad'"),
    (["--batch-size", "x"], "expected a positive integer or auto"),
    (["--precision", "fp16", "--device", "cpu"], "'fp16' is for GPUs; on the CPU use bf16 or fp32 (--precision)"),
    (["--device", "tpu"], "--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'tpu'"),
    (["--decode-timeout", "-1"], "--decode-timeout must be a float >= 0; got -1.0"),
    (["--model", "nosuchmodel"], "is not a torchvision classification model"),
    (["--layer", "fc", "fc"], "featcache: error: --layer lists a layer twice: fc fc"),  # layers in Python
])
def test_bad_flags_are_one_line_errors(tmp_path, make_image, args, message):
    make_image(tmp_path / "d" / "a" / "1.png", 0, 0)
    cmd = _cmd(tmp_path / "d", tmp_path / "cache")
    if "--model" in args:
        i = cmd.index("--model")
        del cmd[i:i + 2]
    r = subprocess.run(cmd + args, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_list_layers_needs_no_pretrained_weights(tmp_path):
    """resnet18's default weights are not on this machine and cannot be downloaded: the graph does not need them."""
    r = subprocess.run([sys.executable, "-m", "featcache.extract", "--model", "resnet18", "--list-layers"],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "TORCH_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("layer4.1.relu_1 ") for line in r.stdout.splitlines())
