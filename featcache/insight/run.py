"""``featcache.inspect(cache, ...)``: look at a dataset through its cached features (stage: insight, orchestration).

One pass of nearest neighbours (block-wise, from the file) feeds the duplicates and the outliers; one set of
out-of-fold probabilities feeds the label issues and the class confusion; PCA features feed the label model and
the map. Every finding is a pandas DataFrame on the returned :class:`InspectResult`; with ``out`` the same tables
are CSV files beside ``index.html``, a self-contained report (``featcache.insight.report``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from .._util import json_text
from ..errors import FeatcacheError
from ..selection.outputs import prepare_out
from . import confusion as _confusion
from . import duplicates as _duplicates
from . import embedding as _embedding
from . import labels as _labels
from . import outliers as _outliers
from .data import Dataset, open_dataset
from .neighbours import knn

__all__ = ["inspect", "InspectResult", "FINDINGS"]

log = logging.getLogger("featcache")

FINDINGS = ("duplicates", "labels", "outliers", "confusion", "map")
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


def _findings(only) -> List[str]:
    if only is None:
        return list(FINDINGS)
    names = [s.strip() for s in (only.split(",") if isinstance(only, str) else only) if s.strip()]
    bad = [s for s in names if s not in FINDINGS]
    if bad or not names:
        raise FeatcacheError(f"only={only!r}: choose from {', '.join(FINDINGS)} (--only, comma-separated)")
    return names


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
            raise FeatcacheError(problem.split(", so")[0] + f"; drop {','.join(need)} from --only")
        notes.append(problem)
        return None
    small = [ds.classes[c] for c in np.flatnonzero((counts > 0) & (counts < 2))]
    if small:
        notes.append(f"classes with a single row are not scored for label issues: {', '.join(small[:5])}")
    if (~ds.labelled).any():
        notes.append(f"{int((~ds.labelled).sum())} unlabelled rows are not scored for label issues")
    return np.flatnonzero(ds.labelled & np.isin(ds.y, np.flatnonzero(counts >= 2)))


def inspect(cache, out=None, only=None, threshold: Optional[float] = None, layer: Optional[str] = None,
            k: int = 20, neighbours: str = "auto", label_method: Optional[str] = None, folds: int = 5,
            seed: int = 0, overwrite: bool = False, progress: bool = True) -> InspectResult:
    """Find duplicates and leaks, likely label errors, outliers and class confusion in a cache; draw the map.

    ``only``: some of ``FINDINGS`` (a list or "a,b"); ``threshold``: thumbnail correlation at or above which a pair
    is a copy (default ``duplicates.DEFAULT_THRESHOLD``; a pair that matches at native resolution once aligned, an
    aligned residual at most ``duplicates.RESIDUAL``, is one whatever the threshold); ``layer``: the features used
    (default the cache's last); ``k``: neighbours per row; ``neighbours``: "auto", "exact", "faiss" or "hnswlib";
    ``label_method``: "cleanlab" or "featcache" (default cleanlab when installed); ``out``: write the CSVs, PNGs and
    ``index.html`` there.
    """
    started = time.perf_counter()
    wanted = _findings(only)
    if threshold is not None and not 0 < float(threshold) <= 1:
        raise FeatcacheError(f"threshold must be in (0, 1] (a pixel correlation); got {threshold!r} (--threshold)")
    if not isinstance(k, int) or k < 1:
        raise FeatcacheError(f"k must be a positive integer; got {k!r} (--k)")
    if label_method not in (None, "cleanlab", "featcache"):
        raise FeatcacheError(f"label_method must be cleanlab or featcache; got {label_method!r} (--label-method)")
    if label_method == "cleanlab" and not _labels.have_cleanlab():
        raise FeatcacheError("label_method='cleanlab' needs cleanlab: pip install 'featcache[inspect]' "
                             "(--label-method)")
    if out is not None:
        out = prepare_out(out, overwrite, OUTPUTS, holds="a report")
    ds = open_dataset(cache, layer)
    notes: List[str] = []
    timings: Dict[str, float] = {}
    res = InspectResult(out=out)
    label_rows = _label_rows(ds, wanted, only is not None, notes)
    steps = [s for s in ("neighbours", "duplicates", "outliers", "labels", "map", "report")
             if s == "neighbours" and {"duplicates", "outliers"} & set(wanted) or s in wanted
             or s == "labels" and label_rows is not None or s == "report" and out is not None]
    bar = _bar(len(steps), progress)
    nb = None

    def step(name):
        bar.set_description(f"inspect: {name}")
        timings[name] = time.perf_counter()

    def done(name):
        timings[name] = round(time.perf_counter() - timings[name], 2)
        bar.update(1)

    if "neighbours" in steps:
        step("neighbours")
        nb = knn(ds.cache, ds.layer, k=max(k, 10), method=neighbours)
        done("neighbours")
    if "duplicates" in wanted:
        step("duplicates")
        thr = _duplicates.DEFAULT_THRESHOLD if threshold is None else float(threshold)
        res.duplicates, res.clusters, more = _duplicates.find_duplicates(ds, nb, thr)
        res.leaks = res.duplicates[res.duplicates["leak"]].reset_index(drop=True)
        notes += more
        done("duplicates")
    if "outliers" in wanted:
        step("outliers")
        res.outliers = _outliers.find_outliers(ds, nb, k)
        done("outliers")
    Z = proba = None
    label_about = None
    if label_rows is not None:
        step("labels")
        Z = _embedding.pca_features(ds.cache, ds.layer, seed=seed)
        y = ds.y[label_rows]
        proba, fold = _labels.out_of_fold(Z[label_rows], y, len(ds.classes), folds, seed)
        table, label_about = _labels.label_issues(ds, label_rows, y, proba, fold, label_method)
        if "labels" in wanted:
            res.label_issues = table
        if "confusion" in wanted:
            res.confusion = _confusion.confusion_pairs(y, proba, ds.classes)
        done("labels")
    if "map" in wanted:
        step("map")
        Z = _embedding.pca_features(ds.cache, ds.layer, dims=50, seed=seed) if Z is None else Z
        issue = np.zeros(len(ds), bool)
        if len(res.label_issues):
            issue[res.label_issues.loc[res.label_issues["issue"], "row"].to_numpy()] = True
        leak = np.zeros(len(ds), bool)
        if len(res.leaks):
            leak[np.r_[res.leaks["row_a"].to_numpy(), res.leaks["row_b"].to_numpy()]] = True
        rows = _embedding.map_rows(len(ds), issue | leak, seed=seed)
        xy, map_method = _embedding.embed_2d(Z[rows], seed=seed)
        res.embedding = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "path": ds.paths[rows],
                                      "split": ds.split_of(rows), "label": ds.label_names(ds.y[rows]),
                                      "label_issue": issue[rows], "leak": leak[rows], "row": rows})
        if len(rows) < len(ds):
            notes.append(f"the map shows {len(rows):,} of {len(ds):,} rows (every flagged row and a random sample)")
        done("map")
    res.summary = _summary(ds, wanted, res, nb, threshold, label_about, notes, timings,
                           map_method if "map" in wanted else None)
    if out is not None:
        step("report")
        from .report import write_report

        write_report(res, ds, out, y=ds.y[label_rows] if proba is not None else None, proba=proba)
        done("report")
    bar.close()
    res.summary["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        (out / "summary.json").write_text(json_text(res.summary, indent=2), encoding="utf-8")
    return res


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, leave=False, unit="step")


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
