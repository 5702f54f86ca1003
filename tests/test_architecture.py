"""The package's shape: imports point one way down the stages, light commands stay light, modules stay small,
every public module says what it exports, and the code is ruff clean. The tests' shape: each test file is named
after the module it tests, and CI runs all of them (the slow ones too) with the README's command."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "featcache"
MAX_LINES = 450

# Every module's stage, lowest first: a module may import only from its own stage or a lower one
# (docs/architecture.md). Longest prefix wins.
STAGES = [
    ("errors", 0), ("_validation", 0), ("_util", 0), ("config", 0),
    ("runtime", 1), ("_malloc", 1), ("rowsource", 1),
    ("decode", 2), ("sources", 2),
    ("cache", 3),
    ("models", 4),
    ("extraction", 5),
    ("learn", 6),
    ("selection", 7),
    ("sweeping", 8), ("finetuning", 8), ("prediction", 8), ("autofit", 8), ("insight", 8),
    ("cli", 9), ("extract", 9), ("inspect", 9), ("sweep", 9), ("finetune", 9), ("predict", 9), ("fit", 9),
    ("ls", 9), ("verify", 9), ("explain", 9), ("__main__", 9), ("__init__", 9),
]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _stage(parts) -> int:
    return dict(STAGES)[parts[0]]


def _is_main_block(node) -> bool:
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


def _package_imports(path: Path, parts) -> set:
    """The featcache modules ``path`` imports (anywhere in it, lazy imports included), as top-level names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # ``if __name__ == "__main__":`` runs the module as a command (``python -m featcache.fit`` -> its CLI):
    # the command line sits on top, so that block may call up into it; the library code may not.
    tree.body = [n for n in tree.body if not _is_main_block(n)]
    return _imports_in(tree, parts)


def _imports_in(tree, parts) -> set:
    """The featcache modules the code under ``tree`` (of the module ``parts``) imports, as top-level names."""
    here = list(parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if not target else [target]
            elif node.module and node.module.split(".")[0] == "featcache":
                names = [node.module.split(".")[1:] or [a.name for a in node.names][:1]]
            else:
                continue
            for t in names:
                if t and t[0] != "__init__":
                    found.add(t[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                bits = a.name.split(".")
                if bits[0] == "featcache" and len(bits) > 1:
                    found.add(bits[1])
    return found - {parts[0]}


def test_imports_point_down_the_stages():
    unplaced = sorted({parts[0] for _, parts in _modules()} - set(dict(STAGES)))
    assert not unplaced, f"modules with no stage in STAGES (so no rule applies to them): {unplaced}"
    upward = []
    for path, parts in _modules():
        for target in _package_imports(path, parts):
            if target in dict(STAGES) and dict(STAGES)[target] > _stage(parts):
                upward.append(f"{'/'.join(parts)} imports {target}")
    assert not upward, upward


def test_learning_never_imports_the_cache():
    """An estimator knows arrays and the row-source protocol (``featcache.rowsource``), not the HDF5 cache that
    implements it (``cache.rows.Rows``)."""
    offending = [f"{'/'.join(parts)} imports cache" for path, parts in _modules()
                 if parts[0] == "learn" and "cache" in _package_imports(path, parts)]
    assert not offending, offending


def _module_imports(path: Path, parts) -> set:
    """The featcache modules (as path tuples, packages as ``(..., "__init__")``) ``path`` imports, lazy imports
    included, its ``if __name__ == "__main__":`` block left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tree.body = [n for n in tree.body if not (isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))]
    here, found = list(parts[:-1]), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "featcache"):
            named = node.module.split(".") if node.module else []
            if node.level:
                module = (here[: len(here) - (node.level - 1)] if node.level > 1 else here) + named
            else:
                module = named[1:]
            for alias in node.names:  # ``from . import x`` names a module, ``from .x import y`` names y in x
                found.add(tuple(module + [alias.name]))
                found.add(tuple(module))
        elif isinstance(node, ast.Import):
            found |= {tuple(a.name.split(".")[1:]) for a in node.names if a.name.startswith("featcache.")}
    return found


def test_no_two_modules_import_each_other():
    """Imports between modules form no circle (a formatting helper belongs below both users, not in one of them)."""
    modules = {tuple(parts): path for path, parts in _modules()}
    graph = {m: {t for t in _module_imports(p, m) if t in modules and t != m and t[-1] != "__init__"}
             for m, p in modules.items()}
    circles = []
    for start in graph:  # a depth-first walk from every module back to itself
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join("/".join(m) for m in trail + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
    assert not circles, sorted(circles)


def test_every_module_is_small_says_its_stage_and_what_it_exports():
    problems = []
    for path, parts in _modules():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        if len(text.splitlines()) > MAX_LINES:
            problems.append(f"{path.name}: {len(text.splitlines())} lines")
        if not ast.get_docstring(tree):
            problems.append(f"{'/'.join(parts)}: no module docstring")
        private = any(p.startswith("_") and p != "__init__" for p in parts)
        assigns = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        if not private and "__all__" not in assigns:
            problems.append(f"{'/'.join(parts)}: no __all__")
    assert not problems, problems



def _command_modules():
    """The ``python -m featcache.X`` modules: top-level modules with an ``if __name__ == "__main__":`` block."""
    for path, parts in _modules():
        if len(parts) == 1 and parts[0] != "__main__":
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if any(_is_main_block(n) for n in tree.body):
                yield path, parts, tree


def test_no_library_module_imports_the_command_line():
    """Only featcache/cli, and a command module's ``main`` (lazily), import featcache.cli: the library never does,
    so no library module and its command import each other."""
    shims = {parts for _, parts, _ in _command_modules()}
    found = []
    for path, parts in _modules():
        if parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if parts in shims:
            tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "main")]
        if "cli" in _imports_in(tree, parts):
            found.append("/".join(parts))
    assert not found, f"import featcache.cli outside a command module's main: {found}"


# Raise sites that must keep a literal flag, as (module, flag): each is a command-line action, not a parameter a
# Python caller sets, so no template names it.
FLAGS_KEPT = {
    # extract's --list-layers prints the model's nodes and exits: an action of the command, no parameter (Python
    # callers have featcache.extraction.list_layers); "see extract --list-layers" is half a command to run.
    ("models/layers.py", "--list-layers"),
    ("models/cuts.py", "--list-layers"),
    # select_for_pruning serves only `featcache prune` (there is no Python prune): its parameters
    # (older_than_days, everything) are not the flags' destinations, and the message lists the flags with their
    # values (--older-than DAYS) as the command's usage.
    ("cache/catalog.py", "--older-than"), ("cache/catalog.py", "--unused-days"),
    ("cache/catalog.py", "--larger-than"), ("cache/catalog.py", "--all"),
}
_ERRORS = {"FeatcacheError", "ParameterError", "ConflictError"}
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _raised_messages(tree):
    """(line, text) of each ``raise FeatcacheError/ParameterError/ConflictError(...)``: the call's string
    constants joined, an f-string's literal parts included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                and ast.unparse(node.exc.func).split(".")[-1] in _ERRORS:
            texts = [c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            yield node.lineno, " ".join(texts)


def test_library_errors_name_parameters_by_template_not_by_flag():
    """One error rule: a library error names a parameter as ``{name}``, so Python callers read ``batch_size`` and
    the command line ``--batch-size`` (featcache.errors). A literal flag is fine only in a command to copy
    (``python -m featcache.extract --data D``) or in ``FLAGS_KEPT``."""
    found = []
    for path, parts in _modules():
        if parts[0] == "cli":
            continue
        module = "/".join(parts) + ".py"
        for line, text in _raised_messages(ast.parse(path.read_text(encoding="utf-8"))):
            if "python -m featcache" in text:
                continue
            flags = sorted({f for f in _FLAG.findall(text) if (module, f) not in FLAGS_KEPT})
            if flags:
                found.append(f"{module}:{line}: {' '.join(flags)}")
    assert not found, found


def test_every_command_module_is_a_thin_shim():
    """``python -m featcache.X`` is the same few lines for every X: ``main(argv)`` importing the command
    (``featcache.cli.X``) when called, nothing of featcache imported at load but ``_util``, and, where
    ``featcache.X(...)`` is a function of the API, ``make_callable`` to the library function by name."""
    import featcache

    api = {name for name, (_, attr) in featcache._LAZY.items() if attr is None}
    problems = []
    for path, parts, tree in _command_modules():
        name = parts[0]
        if len(path.read_text(encoding="utf-8").splitlines()) >= 40:
            problems.append(f"{name}: 40 lines or more")
        main = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        if not main or _imports_in(ast.Module(body=main, type_ignores=[]), parts) != {"cli"}:
            problems.append(f"{name}: no main(argv) importing featcache.cli.{name}")
        at_load = ast.Module(body=[n for n in tree.body if not isinstance(n, ast.FunctionDef)], type_ignores=[])
        if _imports_in(at_load, parts) - {"_util"}:
            problems.append(f"{name}: imports {sorted(_imports_in(at_load, parts) - {'_util'})} at load")
        calls = [n for n in ast.walk(at_load) if isinstance(n, ast.Call) and ast.unparse(n.func) == "make_callable"]
        if name in api and not (len(calls) == 1 and isinstance(calls[0].args[1], ast.Constant)
                                and not calls[0].args[1].value.startswith("featcache.cli")):
            problems.append(f"{name}: no make_callable(__name__, 'featcache.<library>:<function>')")
    assert not problems, problems

LIGHT = {
    "load": "import featcache, sys; fs = featcache.load(sys.argv[1]); assert len(fs) > 0",
    "ls": "import sys; from featcache.cli.ls import main; main(['--cache-dir', sys.argv[2]])",
    "verify": "import sys; from featcache.cli.verify import main; main([sys.argv[1]])",
    "explain --help": "from featcache.cli.explain import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    ...",
    "sweep --help": "from featcache.cli.sweep import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    ...",
    "inspect --help": "from featcache.cli.inspect import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    ...",
}


@pytest.mark.slow  # each case is quick; its cases together take more than 10 s
@pytest.mark.parametrize("what", sorted(LIGHT))
def test_light_commands_import_neither_torch_nor_sklearn(what, split_folder, fast):
    import featcache

    cache = featcache.extract(split_folder, **fast)
    code = LIGHT[what] + "\nimport sys\nheavy = sorted({'torch', 'sklearn'} & set(sys.modules))\n" \
                         "print('HEAVY', ','.join(heavy))"
    run = subprocess.run([sys.executable, "-c", code, str(cache), str(cache.parent)], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "HEAVY", run.stdout


@pytest.mark.slow
def test_a_cache_hit_imports_neither_torch_nor_the_model(split_folder, fast, tmp_path):
    """The second extract with the same settings finds its cache from the record the first left (cache/hit.py)."""
    argv = ["--data", str(split_folder), "--cache-dir", str(fast["cache_dir"]), "--model", "resnet18", "--weights",
            "none", "--image-size", "32", "--precision", "fp32", "--engine", "torch", "-q"]
    code = ("import sys; from featcache.cli.extract import main; rc = main(sys.argv[1:])\n"
            "print('HEAVY', ','.join(sorted({'torch', 'torchvision', 'sklearn'} & set(sys.modules))))")
    first = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, cwd=REPO)
    second = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.splitlines()[0] == second.stdout.splitlines()[0]  # the same cache's path
    assert first.stdout.splitlines()[-1].startswith("HEAVY torch")  # the first run planned with the model
    assert second.stdout.splitlines()[-1].strip() == "HEAVY", second.stdout


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is not installed (pip install -e '.[dev]' brings it)")
def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    run = subprocess.run([ruff, "check", "featcache", "tests", "scripts"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_one_entry_point_for_every_command():
    run = subprocess.run([sys.executable, "-m", "featcache"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0 and all(c in run.stdout for c in ("extract", "sweep", "ls", "verify", "explain"))
    typo = subprocess.run([sys.executable, "-m", "featcache", "sweeep"], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert typo.returncode == 2 and "did you mean sweep?" in typo.stderr and "Traceback" not in typo.stderr
    ls = subprocess.run([sys.executable, "-m", "featcache", "ls", "--help"], capture_output=True, text=True,
                        timeout=60, cwd=REPO)
    assert ls.returncode == 0 and "--cache-dir" in ls.stdout


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_dependency_floors_are_past_known_code_execution_bugs_in_loading_files():
    """torch.load's weights_only bypass (CVE-2025-32434) is fixed in torch 2.6, skops' (CVE-2025-54412/54413) in
    0.12: pyproject.toml must not allow older releases."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = {r.name: r.specifier for r in map(Requirement, _pyproject()["project"]["dependencies"])}
    for name, first_fixed in {"torch": "2.6", "torchvision": "0.21", "skops": "0.12"}.items():
        allowed_below = [v for v in ("0.1", "0.10", "0.11.9", "0.17", "0.20.1", "2.2", "2.5.1")
                         if Version(v) < Version(first_fixed) and deps[name].contains(v)]
        assert not allowed_below, f"{name}{deps[name]} allows {allowed_below}"


# --- the tests: named after what they test, all of them run in CI ---------------------------------------------------

# Test files named after no featcache module, and what they test instead.
NOT_NAMED_AFTER_A_MODULE = {
    "test_architecture.py": "the package's and the tests' shape, and CI's test command (this file)",
    "test_readme.py": "the README's Python examples",
    "test_fixtures.py": "the shared fixtures of tests/conftest.py",
}


def _module_named_by(test_file: Path) -> Path | None:
    """The featcache module or package a test file is named after: the words of its name are read down the package,
    a private module's underscore left out. None when its name starts with no module's."""
    words = test_file.stem.removeprefix("test_").split("_")
    folder, found = PACKAGE, None
    while words:
        for n in range(len(words), 0, -1):  # the longest name first: report_page before report
            name = "_".join(words[:n])
            if (folder / name / "__init__.py").exists():  # a package: what follows may name a module in it
                folder = found = folder / name
                words = words[n:]
                break
            for module in (folder / f"{name}.py", folder / f"_{name}.py"):
                if module.exists():
                    return module
        else:
            break  # the rest of the name says which part of the package the file tests
    return found


def test_a_test_files_name_reads_as_a_path_down_the_package():
    assert _module_named_by(Path("test_cli_extract.py")) == PACKAGE / "cli" / "extract.py"
    assert _module_named_by(Path("test_selection_backends.py")) == PACKAGE / "selection" / "backends.py"
    assert _module_named_by(Path("test_extraction_faults.py")) == PACKAGE / "extraction"
    assert _module_named_by(Path("test_cache.py")) == PACKAGE / "cache"
    assert _module_named_by(Path("test_util.py")) == PACKAGE / "_util.py"
    assert _module_named_by(Path("test_extract.py")) == PACKAGE / "extract.py"  # the command, not extraction/
    assert _module_named_by(Path("test_streaming.py")) is None  # learn/streaming.py is test_learn_streaming.py


def test_every_test_file_is_named_after_the_module_it_tests():
    """A newcomer looking for the tests of featcache/learn/views.py finds tests/test_learn_views.py."""
    test_files = sorted((REPO / "tests").glob("test_*.py"))
    unnamed = [f.name for f in test_files if f.name not in NOT_NAMED_AFTER_A_MODULE and _module_named_by(f) is None]
    assert not unnamed, f"name each after the featcache module it tests (tests/test_<package>_<module>.py): {unnamed}"
    assert set(NOT_NAMED_AFTER_A_MODULE) <= {f.name for f in test_files}  # no stale exceptions


def test_the_slow_marker_is_registered_and_no_test_is_left_out_by_default():
    """`python -m pytest -m "not slow"` is the quick loop; plain `python -m pytest` still runs every test."""
    options = _pyproject()["tool"]["pytest"]["ini_options"]
    assert any(marker.split(":")[0].strip() == "slow" for marker in options["markers"])
    addopts = options["addopts"].split()
    assert "--strict-markers" in addopts  # a mistyped @pytest.mark.slwo is an error, not a new marker
    assert not any(option.startswith("-m") for option in addopts), addopts


def test_ci_runs_the_readmes_test_command_unchanged():
    """CI runs `python -m pytest` as the README says: no -m filter, so the slow tests run there too."""
    assert "python -m pytest" in (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    runs = [line.split("||")[0].strip() for line in ci.splitlines()
            if "pytest" in line and not line.lstrip().startswith(("#", "echo"))]
    assert runs == ["python -m pytest"], runs
    assert "PYTEST_ADDOPTS" not in ci
