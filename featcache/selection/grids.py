"""What a sweep fits: the classifiers by name, the preprocessing options, and grid files.

A grid maps classifier names to tables of hyperparameters; a list is swept, a scalar is fixed,
and ``preprocess`` (per table or at the top level) lists the feature preprocessing to try.
Every grid point becomes a :class:`Config`, validated before anything is fitted.
Stage: selection. Estimators are imported on use, so ``sweep --help`` and grid errors need no scikit-learn.
"""
from __future__ import annotations

import difflib
import importlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import FeatcacheError

__all__ = ["Classifier", "CLASSIFIERS", "Config", "DEFAULT_GRID", "GRID_ONLY", "PREPROCESS_STEPS", "STREAMING_GRID",
           "canonical_preprocess", "describe_classifiers", "ensemble_config", "expand_grid", "make_config",
           "pca_components", "preprocess_steps", "read_grid"]

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib


@dataclass(frozen=True)
class Classifier:
    """A registered classifier: where its estimator lives, and what the sweep does specially with it.

    Estimators are imported on first use, so ``--help`` and grid errors come back without loading
    scikit-learn or torch.
    """

    target: str  # "module:Class"
    about: str
    defaults: Tuple[Tuple[str, Any], ...] = ()  # featcache's choices where they differ from the estimator's
    path_param: Optional[str] = None  # a hyperparameter fitted as a warm-started path

    def make(self):
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)(**dict(self.defaults))


CLASSIFIERS: Dict[str, Classifier] = {
    "logreg": Classifier("sklearn.linear_model:LogisticRegression",
                         "L2 logistic regression; the C values of a grid are one warm-started path", path_param="C"),
    "linsvm": Classifier("sklearn.svm:LinearSVC", "linear SVM (squared hinge); no probabilities"),
    "ridge": Classifier("sklearn.linear_model:RidgeClassifier", "ridge regression on one-vs-all targets; "
                                                                "no probabilities"),
    "sgd": Classifier("sklearn.linear_model:SGDClassifier", "linear model trained by SGD; loss=log_loss gives "
                                                            "probabilities"),
    "knn": Classifier("sklearn.neighbors:KNeighborsClassifier", "k nearest neighbours, cosine distance",
                      defaults=(("metric", "cosine"), ("algorithm", "brute"))),
    "svm": Classifier("sklearn.svm:SVC", "kernel SVM (RBF unless kernel= says otherwise); fit time grows with "
                                         "rows squared; no probabilities"),
    "dense": Classifier("featcache.learn.dense:DenseHead", "torch MLP or linear head, AdamW, early stopping"),
    "ensemble": Classifier("featcache.learn.ensemble:SoftVoting",
                           "soft vote of the sweep's best configurations (built by the sweep, --ensemble N; "
                           "not a grid table)"),
}
GRID_ONLY = ("max_rows", "min_rows")  # table keys that choose where a table applies, not hyperparameters

PREPROCESS_STEPS = ("none", "standardize", "l2", "pca:K", "rbf:K")
_ALIASES = {"standardise": "standardize", "std": "standardize", "scale": "standardize", "l2norm": "l2"}

DEFAULT_GRID = """\
# featcache's default sweep grid, chosen by measurement on MNIST-5k and sklearn digits (docs/benchmarks.md,
# "The default sweep, measured"): what won on validation, at what it costs. On a default cache (3 layers) the sweep
# screens the 6 layer choices, runs this grid on the best 2 (--screen-layers), then a soft-voting ensemble of the best
# few.
# Copy it (python -m featcache.sweep --print-grid > grid.toml), edit, and pass --grid grid.toml.
# A list is swept, a scalar is fixed; any constructor argument of the classifier may appear.
# preprocess: none | standardize | l2 | pca:K | rbf:K (K Nystroem RBF-kernel features), chained with "+".
# max_rows / min_rows: the table applies only when the pool (train+val rows, with their views) that the best is
# refitted on has at most / at least that many rows.
# [[name]] tables may repeat, for grids that differ per preprocessing.

[[svm]]             # sklearn SVC, RBF kernel on unit-norm rows: the best single model on both measured sets
preprocess = "l2"
C = [3.0, 10.0, 30.0]
max_rows = 20000    # exact kernel SVM: fit time grows with rows squared; beyond, the Nystroem table below

[[logreg]]          # the same kernel, approximated: 2,000 RBF features + logistic regression (one C path)
preprocess = "l2+rbf:2000"
C = [10.0, 100.0]
min_rows = 20001
max_iter = 300

[[logreg]]          # sklearn LogisticRegression on unit-norm rows; each table's C values are one warm-started path
preprocess = "l2"
C = [1.0, 10.0, 100.0, 1000.0]

[[logreg]]          # standardized rows need ~1000x smaller C than unit-norm ones
preprocess = "standardize"
C = [0.001, 0.01, 0.1]

[ridge]             # sklearn RidgeClassifier: the cheapest linear model, often within a point of the best
preprocess = "standardize"
alpha = [1000.0, 100000.0]

[knn]               # sklearn KNeighborsClassifier, cosine distance: nearly free, a different vote for ensembles
n_neighbors = 10
weights = "distance"

[dense]             # featcache.DenseHead: one hidden layer (a linear head is the logistic model again)
preprocess = "standardize"
hidden_layer_sizes = [512]
dropout = 0.2
weight_decay = 0.01
epochs = 30
"""

# The default grid out of core (--out-of-core): the classifiers that train from a stream of blocks.
STREAMING_GRID = {
    "sgd": {"preprocess": "standardize", "loss": "log_loss", "alpha": [0.0001, 0.001, 0.01], "max_iter": 20},
    "dense": {"preprocess": "standardize", "hidden_layer_sizes": [0, 512], "dropout": 0.2, "weight_decay": 0.01,
              "epochs": 30},
}

# --- preprocessing --------------------------------------------------------------------------------

def canonical_preprocess(spec: str) -> str:
    """Validate a preprocessing spec and spell it one way (``standardise`` -> ``standardize``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise FeatcacheError(f"preprocess must be a string like 'standardize' or 'pca:128+l2'; got {spec!r}")
    steps = []
    for raw in spec.lower().replace(" ", "").split("+"):
        step = _ALIASES.get(raw, raw)
        if step.startswith(("pca:", "rbf:")):
            kind, k = step[:3], step[4:]
            if not k.isdigit() or int(k) < 1:
                raise FeatcacheError(f"preprocess {spec!r}: {kind} takes a positive number of components, "
                                     f"e.g. {kind}:128")
            step = f"{kind}:{int(k)}"
        elif step not in PREPROCESS_STEPS:
            raise FeatcacheError(f"unknown preprocess step {raw!r} in {spec!r}; valid: {', '.join(PREPROCESS_STEPS)} "
                                 f"(chain them with '+')")
        steps.append(step)
    steps = [s for s in steps if s != "none"]
    return "+".join(steps) or "none"


def pca_components(spec: str) -> List[int]:
    return [int(s[4:]) for s in spec.split("+") if s.startswith("pca:")]


def preprocess_steps(spec: str, seed: int, max_components: Optional[int] = None) -> List[Tuple[str, Any]]:
    """The sklearn transformers for ``spec``; PCA is capped at ``max_components`` (the data's rank bound)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer, StandardScaler

    from ..learn.kernel import RBFFeatures

    steps = []
    for i, step in enumerate(canonical_preprocess(spec).split("+")):
        if step == "standardize":
            steps.append((f"standardize{i}", StandardScaler()))
        elif step == "l2":
            steps.append((f"l2{i}", Normalizer(norm="l2")))
        elif step.startswith("pca:"):
            k = int(step[4:]) if max_components is None else min(int(step[4:]), max_components)
            steps.append((f"pca{i}", PCA(n_components=k, random_state=seed)))
        elif step.startswith("rbf:"):
            steps.append((f"rbf{i}", RBFFeatures(n_components=int(step[4:]), random_state=seed)))
    return steps


# --- configurations -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """One grid point: a classifier, the hyperparameters the grid sets, and the preprocessing."""

    classifier: str
    params_json: str  # sorted JSON of the grid's hyperparameters (hashable, stable)
    preprocess: str
    layer: str = ""  # the cache layer(s) it fits on, "a+b" = concatenated; "" = the sweep's only choice

    @property
    def params(self) -> Dict[str, Any]:
        return json.loads(self.params_json)

    def identity(self) -> dict:
        ident = {"classifier": self.classifier, "params": self.params, "preprocess": self.preprocess}
        if self.layer:  # only when the sweep tries several layer choices, so other result keys stay as they were
            ident["layer"] = self.layer
        return ident

    def params_text(self) -> str:
        if self.classifier == "ensemble":  # its members, as "0.6 svm(C=10) on l2 + 0.4 logreg(C=100) on l2"
            weights = self.params.get("weights") or [None] * len(self.params["members"])
            members = [Config(m["classifier"], json.dumps(m["params"], sort_keys=True), m["preprocess"])
                       for m in self.params["members"]]
            return " + ".join((f"{w:g} " if w is not None else "") + m.label() for m, w in zip(members, weights))
        return ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())

    def label(self) -> str:
        where = f" [{self.layer}]" if self.layer else ""
        if self.classifier == "ensemble":
            return f"ensemble of {self.params_text()}{where}"
        return f"{self.classifier}({self.params_text()}) on {self.preprocess}{where}"

    def estimator(self, seed: int):
        """The unfitted classifier; ``random_state`` is the sweep's seed unless the grid sets it."""
        est = CLASSIFIERS[self.classifier].make()
        params = self.params
        if "random_state" in est.get_params() and "random_state" not in params:
            params["random_state"] = seed
        return est.set_params(**_tuples(params))

    def pipeline(self, seed: int, max_components: Optional[int] = None):
        from sklearn.pipeline import Pipeline

        steps = preprocess_steps(self.preprocess, seed, max_components)
        if self.classifier == "ensemble":  # its members are whole configurations, each with its preprocessing
            members = [(f"m{i}", Config(m["classifier"], json.dumps(m["params"], sort_keys=True),
                                        m["preprocess"]).pipeline(seed, max_components))
                       for i, m in enumerate(self.params["members"])]
            voting = CLASSIFIERS["ensemble"].make().set_params(estimators=members,
                                                              weights=self.params.get("weights"),
                                                              temperatures=self.params.get("temperatures"))
            return Pipeline(steps + [("clf", voting)])
        return Pipeline(steps + [("clf", self.estimator(seed))])

    def path_group(self) -> Optional[Tuple[str, str, str, str]]:
        """Configs that differ only in the path parameter share a group (one warm-started fit)."""
        path_param = CLASSIFIERS[self.classifier].path_param
        if path_param is None:
            return None
        rest = {k: v for k, v in self.params.items() if k != path_param}
        return self.classifier, json.dumps(rest, sort_keys=True), self.preprocess, self.layer

    def path_value(self) -> float:
        """This config's value of the path parameter (the estimator's default when the grid omits it)."""
        return self.estimator(0).get_params()[CLASSIFIERS[self.classifier].path_param]


def make_config(classifier: str, params: Dict[str, Any], preprocess: str) -> Config:
    return Config(classifier, json.dumps(params, sort_keys=True), canonical_preprocess(preprocess))


def _short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _tuples(params: dict) -> dict:
    """TOML has no tuples: turn lists into tuples for estimators that expect them."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


# --- grids ----------------------------------------------------------------------------------------

def read_grid(source) -> dict:
    """A grid as a dict, from None (the default), a dict, or a ``.toml``/``.yaml`` file."""
    if source is None:
        return tomllib.loads(DEFAULT_GRID)
    if isinstance(source, dict):
        return source
    path = Path(source).expanduser()
    if not path.is_file():
        raise FeatcacheError(f"{{grid}} {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise FeatcacheError(f"{{grid}} {path}: YAML grids need PyYAML (pip install pyyaml), or use TOML") from e
        try:
            grid = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FeatcacheError(f"{{grid}} {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    else:
        try:
            grid = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise FeatcacheError(f"{{grid}} {path} is not valid TOML: {e}") from e
    if not isinstance(grid, dict):
        raise FeatcacheError(f"{{grid}} {path}: expected tables of classifiers at the top level")
    return grid


def ensemble_config(members: List[Config], layer: str = "", weights: Optional[List[float]] = None,
                    temperatures: Optional[List[float]] = None) -> Config:
    """The soft vote of ``members`` (configurations on one layer choice) as a configuration of its own, with each
    member's weight and calibrating temperature when given (``learn.ensemble``)."""
    spec = [{"classifier": m.classifier, "params": m.params, "preprocess": m.preprocess} for m in members]
    params = {"members": spec}
    if weights is not None:
        params.update(weights=[round(float(w), 4) for w in weights],
                      temperatures=[round(float(t), 4) for t in temperatures])
    return Config("ensemble", json.dumps(params, sort_keys=True), "none", layer)


def expand_grid(grid: dict, only: Optional[List[str]] = None, n_rows: Optional[int] = None) -> List[Config]:
    """Every grid point as a :class:`Config`, after checking names, keys and values.

    ``n_rows``: the rows the sweep trains on; tables whose ``max_rows``/``min_rows`` exclude it are left out.
    """
    valid = sorted(CLASSIFIERS)
    for name in only or []:
        if name not in CLASSIFIERS:
            raise FeatcacheError(_unknown("classifier", name, valid))
    top_pre = grid.get("preprocess", "none")
    configs: List[Config] = []
    for name, tables in grid.items():
        if name == "preprocess":
            continue
        if name not in CLASSIFIERS:
            raise FeatcacheError(_unknown("classifier (grid table)", name, valid + ["preprocess"]))
        if name == "ensemble":
            raise FeatcacheError("grid [ensemble]: the sweep builds ensembles from its best configurations "
                                 "({ensemble} N, default 3); remove the table")
        if only and name not in only:
            continue
        for table in tables if isinstance(tables, list) else [tables]:
            if not isinstance(table, dict):
                raise FeatcacheError(f"grid [{name}] must be a table of hyperparameters; got {table!r}")
            if _applies(table, n_rows):
                configs += _expand_table(name, table, top_pre)
    unique = list(dict.fromkeys(configs))
    if not unique:
        raise FeatcacheError("the grid has no classifier to fit" + (f" among {', '.join(only)}" if only else "")
                             + f"; add a table such as [logreg] (valid: {', '.join(valid)})")
    return unique


def _applies(table: dict, n_rows: Optional[int]) -> bool:
    """Whether a table's ``max_rows``/``min_rows`` admit ``n_rows`` training rows (None: every table)."""
    for key in GRID_ONLY:
        if key in table and (not isinstance(table[key], int) or isinstance(table[key], bool) or table[key] < 0):
            raise FeatcacheError(f"grid {key} = {table[key]!r}: give a number of rows (an int >= 0)")
    if n_rows is None:
        return True
    return table.get("min_rows", 0) <= n_rows <= table.get("max_rows", n_rows)


def _expand_table(name: str, table: dict, top_pre) -> List[Config]:
    est = CLASSIFIERS[name].make()
    allowed = sorted(k for k in est.get_params(deep=False))
    table = {k: v for k, v in table.items() if k not in GRID_ONLY}
    pre = table.pop("preprocess", top_pre)
    for key in table:
        if key not in allowed:
            raise FeatcacheError(_unknown(f"hyperparameter of [{name}] ({type(est).__name__})", key,
                                          allowed + ["preprocess", *GRID_ONLY]))
    pres = [canonical_preprocess(p) for p in (pre if isinstance(pre, list) else [pre])]
    swept = {k: v if isinstance(v, list) and not _is_value_list(name, k, v) else [v] for k, v in table.items()}
    for k, values in swept.items():
        if not values:
            raise FeatcacheError(f"grid [{name}] {k} = []: give at least one value")
    configs = []
    for combo in itertools.product(*swept.values()):
        params = dict(zip(swept, combo))
        _check_values(name, params)
        configs += [make_config(name, params, p) for p in pres]
    return configs


def _is_value_list(name: str, key: str, value: list) -> bool:
    """``hidden_layer_sizes = []`` is one value (linear), not an empty sweep."""
    return name == "dense" and key == "hidden_layer_sizes" and len(value) == 0


def _check_values(name: str, params: dict) -> None:
    """Let the estimator validate its own parameters now, not after an hour of fitting."""
    est = CLASSIFIERS[name].make().set_params(**_tuples(params))
    validate = getattr(est, "_validate_params", None)  # sklearn's declarative checks (private API)
    if validate is None:
        return
    try:
        validate()
    except (ValueError, TypeError) as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise FeatcacheError(f"grid [{name}] {shown}: {str(e).splitlines()[0]}") from e


def _unknown(what: str, name: str, valid: List[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; valid: {', '.join(valid)}"


def describe_classifiers() -> str:
    """One line per classifier with its estimator and the hyperparameters a grid may set."""
    lines = []
    for name, c in CLASSIFIERS.items():
        est = c.make()
        keys = "" if name == "ensemble" else f"\n         keys: preprocess, {', '.join(GRID_ONLY)}, " + ", ".join(
            sorted(est.get_params(deep=False)))
        lines.append(f"{name:<8} {c.target.replace(':', '.')}: {c.about}{keys}")
    return "\n".join(lines)
