"""``featcache.inspect(cache, ...)``: look at a dataset through its cached features (stage: insight, orchestration).

:func:`run_inspect` reads top to bottom: the settings (:class:`~featcache.config.InspectConfig`) → the steps that
run → neighbours → duplicates → outliers → labels and confusion → map → summary → report.

One pass of nearest neighbours (block-wise, from the file) feeds the duplicates and the outliers; one set of
out-of-fold probabilities feeds the label issues and the class confusion; PCA features feed the label model and
the map. Every finding is a pandas DataFrame on the returned :class:`InspectResult`; with ``out`` the same tables
are CSV files beside ``index.html``, a self-contained report (``featcache.insight.report``).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from .._util import json_text
from ..config import FINDINGS, InspectConfig
from ..errors import ConflictError
from ..selection.outputs import prepare_out
from . import confusion as _confusion
from . import duplicates as _duplicates
from . import embedding as _embedding
from . import labels as _labels
from . import outliers as _outliers
from .data import Dataset, open_dataset
from .neighbours import knn

__all__ = ["inspect", "run_inspect", "InspectResult", "FINDINGS"]

log = logging.getLogger("featcache")

OUTPUTS = ("index.html", "summary.json", "duplicates.csv", "duplicate_clusters.csv", "label_issues.csv",
           "outliers.csv", "confusion.csv", "map.csv", "map.png", "confusion.png")


@dataclass
class InspectResult:
    """What inspect found. Each table is a DataFrame (empty when that finding was not run): ``duplicates`` (pairs
    of copies, ``leak`` marks pairs across splits), ``leaks`` (those pairs alone), ``clusters`` (groups of
    copies), ``label_issues`` (every labelled row, least believed label first; ``issue`` flags likely errors),
    ``outliers`` (every row, farthest first; ``outlier`` flags), ``confusion`` (class pairs), ``embedding`` (the
    map's x, y per row). ``summary``: counts, methods, timings and notes; ``out``: the report folder, if any."""

    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)
    leaks: pd.DataFrame = field(default_factory=pd.DataFrame)
    clusters: pd.DataFrame = field(default_factory=pd.DataFrame)
    label_issues: pd.DataFrame = field(default_factory=pd.DataFrame)
    outliers: pd.DataFrame = field(default_factory=pd.DataFrame)
    confusion: pd.DataFrame = field(default_factory=pd.DataFrame)
    embedding: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: Dict = field(default_factory=dict)
    out: Optional[Path] = None


def _find_duplicates(ds: Dataset, nb, cfg: InspectConfig, res: InspectResult) -> List[str]:
    """Copies among the neighbours, confirmed on pixels, and the leaks among them (pairs across splits); notes."""
    threshold = _duplicates.DEFAULT_THRESHOLD if cfg.threshold is None else float(cfg.threshold)
    res.duplicates, res.clusters, notes = _duplicates.find_duplicates(ds, nb, threshold)
    res.leaks = res.duplicates[res.duplicates["leak"]].reset_index(drop=True)
    return notes


def _labels_and_confusion(ds: Dataset, label_rows: np.ndarray, wanted: List[str], cfg: InspectConfig,
                          res: InspectResult):
    """Out-of-fold probabilities on PCA features: the label issues and the class confusion. Returns the PCA
    features (the map reuses them), the probabilities and how label issues were found."""
    Z = _embedding.pca_features(ds.cache, ds.layer, seed=cfg.seed)
    y = ds.y[label_rows]
    proba, fold = _labels.out_of_fold(Z[label_rows], y, len(ds.classes), cfg.folds, cfg.seed)
    table, label_about = _labels.label_issues(ds, label_rows, y, proba, fold, cfg.label_method)
    if "labels" in wanted:
        res.label_issues = table
    if "confusion" in wanted:
        res.confusion = _confusion.confusion_pairs(y, proba, ds.classes)
    return Z, proba, label_about


def _draw_map(ds: Dataset, Z: Optional[np.ndarray], seed: int, res: InspectResult, notes: List[str]) -> str:
    """The 2-D map of every flagged row and a sample of the others; how it was drawn."""
    Z = _embedding.pca_features(ds.cache, ds.layer, dims=50, seed=seed) if Z is None else Z
    issue = np.zeros(len(ds), bool)
    if len(res.label_issues):
        issue[res.label_issues.loc[res.label_issues["issue"], "row"].to_numpy()] = True
    leak = np.zeros(len(ds), bool)
    if len(res.leaks):
        leak[np.r_[res.leaks["row_a"].to_numpy(), res.leaks["row_b"].to_numpy()]] = True
    rows = _embedding.map_rows(len(ds), issue | leak, seed=seed)
    xy, map_method = _embedding.embed_2d(Z[rows], seed=seed)
    res.embedding = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "path": ds.paths[rows], "split": ds.split_of(rows),
                                  "label": ds.label_names(ds.y[rows]), "label_issue": issue[rows],
                                  "leak": leak[rows], "row": rows})
    if len(rows) < len(ds):
        notes.append(f"the map shows {len(rows):,} of {len(ds):,} rows (every flagged row and a random sample)")
    return map_method


def _label_rows(ds: Dataset, wanted: List[str], explicit: bool, notes: List[str]) -> Optional[np.ndarray]:
    """The rows the label model scores, or None (with a note, or an error when asked for explicitly)."""
    need = [w for w in ("labels", "confusion") if w in wanted]
    if not need:
        return None
    counts = np.bincount(ds.y[ds.labelled], minlength=len(ds.classes)) if ds.labelled.any() else np.zeros(0, int)
    problem = None
    if not ds.labelled.any():
        problem = (f"{ds.cache.name} has no labels (its images were not in class folders or a label column): "
                   f"label issues and class confusion need labels, so only duplicates, outliers and the map ran")
    elif (counts >= 2).sum() < 2:
        problem = (f"{ds.cache.name} has {'one class' if (counts > 0).sum() == 1 else 'no class with 2 rows'} "
                   f"with at least 2 rows; label issues and class confusion need two such classes, so they were "
                   f"skipped")
    if problem:
        if explicit:
            raise ConflictError(problem.split(", so")[0] + f"; drop {','.join(need)} from {{only}}")
        notes.append(problem)
        return None
    small = [ds.classes[c] for c in np.flatnonzero((counts > 0) & (counts < 2))]
    if small:
        notes.append(f"classes with a single row are not scored for label issues: {', '.join(small[:5])}")
    if (~ds.labelled).any():
        notes.append(f"{int((~ds.labelled).sum())} unlabelled rows are not scored for label issues")
    return np.flatnonzero(ds.labelled & np.isin(ds.y, np.flatnonzero(counts >= 2)))


def inspect(cache, out=None, **settings) -> InspectResult:
    """Find duplicates and leaks, likely label errors, outliers and class confusion in a cache; draw the map.

    ``settings`` are :class:`~featcache.config.InspectConfig` fields: ``only`` (some of ``FINDINGS``, a list or
    "a,b"), ``threshold`` (thumbnail correlation at or above which a pair is a copy, default
    ``duplicates.DEFAULT_THRESHOLD``; a pair that matches at native resolution once aligned, an aligned residual at
    most ``duplicates.RESIDUAL``, is one whatever the threshold), ``layer`` (the features used, default the cache's
    last), ``k`` (neighbours per row), ``neighbours``, ``label_method``, ``folds``, ``seed``; with ``out``, the CSVs,
    PNGs and ``index.html`` are written there.
    """
    return run_inspect(InspectConfig(cache=cache, out=out, **settings))


def run_inspect(cfg: InspectConfig) -> InspectResult:
    """The whole inspection for one :class:`~featcache.config.InspectConfig`: neighbours → duplicates → outliers →
    labels and confusion → map → summary → report."""
    started = time.perf_counter()
    cfg.validate()
    wanted = cfg.findings()
    if cfg.label_method == "cleanlab" and not _labels.have_cleanlab():
        raise ConflictError("{label_method} cleanlab needs cleanlab: pip install 'featcache[inspect]'")
    ds = open_dataset(cfg.cache, cfg.layer)  # a bad cache is refused before the report folder is made
    out = None if cfg.out is None else prepare_out(cfg.out, cfg.overwrite, OUTPUTS, holds="a report")
    notes: List[str] = []
    res = InspectResult(out=out)
    label_rows = _label_rows(ds, wanted, cfg.only is not None, notes)
    runs = {"neighbours": bool({"duplicates", "outliers"} & set(wanted)), "duplicates": "duplicates" in wanted,
            "outliers": "outliers" in wanted, "labels": label_rows is not None, "map": "map" in wanted,
            "report": out is not None}  # labels: the label model, for label issues and confusion alike
    steps = _Steps([name for name, yes in runs.items() if yes], cfg.progress)
    nb = Z = proba = label_about = map_method = None
    if "neighbours" in steps:
        with steps.timed("neighbours"):
            nb = knn(ds.cache, ds.layer, k=max(cfg.k, 10), method=cfg.neighbours)
    if "duplicates" in steps:
        with steps.timed("duplicates"):
            notes += _find_duplicates(ds, nb, cfg, res)
    if "outliers" in steps:
        with steps.timed("outliers"):
            res.outliers = _outliers.find_outliers(ds, nb, cfg.k)
    if "labels" in steps:
        with steps.timed("labels"):
            Z, proba, label_about = _labels_and_confusion(ds, label_rows, wanted, cfg, res)
    if "map" in steps:
        with steps.timed("map"):
            map_method = _draw_map(ds, Z, cfg.seed, res, notes)
    res.summary = _summary(ds, wanted, res, nb, cfg.threshold, label_about, notes, steps.timings, map_method)
    if "report" in steps:
        with steps.timed("report"):
            from .report import write_report

            write_report(res, ds, out, y=ds.y[label_rows] if proba is not None else None, proba=proba)
    steps.close()
    res.summary["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        (out / "summary.json").write_text(json_text(res.summary, indent=2), encoding="utf-8")
    return res


class _Steps:
    """The inspection's steps: a progress bar over those that run, and each one's seconds (``timings``)."""

    def __init__(self, names: List[str], progress: bool):
        from tqdm.auto import tqdm

        self.names, self.timings = names, {}
        self.bar = tqdm(total=len(names), disable=not progress, leave=False, unit="step")

    def __contains__(self, name: str) -> bool:
        return name in self.names

    @contextlib.contextmanager
    def timed(self, name: str):
        """Time the step ``name`` and move the bar on."""
        self.bar.set_description(f"inspect: {name}")
        started = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - started, 2)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _summary(ds, wanted, res, nb, threshold, label_about, notes, timings, map_method) -> Dict:
    s: Dict = {"cache": str(ds.cache), "rows": len(ds), "layer": ds.layer, "features": ds.n_features,
               "classes": len(ds.classes), "findings": wanted, "notes": notes, "timings": timings}
    if nb is not None:
        s["neighbours"] = {"method": nb.method, "k": int(nb.index.shape[1]), "recall": nb.recall}
    if "duplicates" in wanted:
        d = res.duplicates
        s["duplicates"] = {"pairs": len(d), "exact_pairs": int(d["exact"].sum()), "clusters": len(res.clusters),
                           "rows_in_clusters": int(res.clusters["size"].sum()) if len(res.clusters) else 0,
                           "threshold": _duplicates.DEFAULT_THRESHOLD if threshold is None else float(threshold),
                           "residual": _duplicates.RESIDUAL}
        by = {}
        for a, b in zip(res.leaks["split_a"], res.leaks["split_b"]):
            key = "-".join(sorted((a, b)))
            by[key] = by.get(key, 0) + 1
        s["leaks"] = {"pairs": len(res.leaks), "by_splits": by}
    if len(res.label_issues):
        s["label_issues"] = {"flagged": int(res.label_issues["issue"].sum()), "scored": len(res.label_issues)}
    s["label_method"] = label_about
    if "outliers" in wanted:
        s["outliers"] = {"flagged": int(res.outliers["outlier"].sum()), "z_above": _outliers.Z_FLAG}
    if len(res.confusion):
        top = res.confusion.iloc[0]
        s["confusion"] = {"top_pair": [top["class_a"], top["class_b"]], "rate": float(top["rate"])}
    s["map"] = map_method
    return s
