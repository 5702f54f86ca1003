"""The report folder: CSV tables, PNG plots and ``index.html``, and the summary's lines (stage: insight; ``pipeline``
imports it, never the other way).

``index.html`` is one self-contained page that works opened from disk, offline, with no server: the summary, the
map (a PNG, and an interactive canvas whose points show their thumbnail and path on hover), and galleries of
thumbnails read from the original files (resized; a missing file is shown as such) for the top leaks, duplicate
clusters, label issues (given vs suggested label) and outliers. Images are inline ``data:`` URIs. When its script
has run, the page sets ``data-ready="1"`` on ``<body>``; script errors are listed in ``#js-errors``.
"""
from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .data import Dataset, thumbnail_png
from .report_page import PAGE, SCRIPT, STYLE

__all__ = ["write_report", "write_tables", "summary_lines", "GALLERY"]

GALLERY = 48  # tiles per gallery
HOVER_THUMBS = 1500  # map points that carry a thumbnail for the hover (flagged rows first)


def summary_lines(s: Dict) -> List[str]:
    """The short summary the command prints (and the report's page lists), from ``InspectResult.summary``."""
    lines = [f"{s['rows']:,} rows, layer {s['layer']} ({s['features']} features), {s['classes']} classes"]
    if "neighbours" in s:
        nb = s["neighbours"]
        lines.append(f"neighbours: {nb['method']}, k={nb['k']}"
                     + (f", measured recall {nb['recall']:.3f}" if nb.get("recall") is not None else ""))
    if "duplicates" in s:
        d = s["duplicates"]
        lines.append(f"duplicates: {d['pairs']} pairs ({d['exact_pairs']} byte-identical) in {d['clusters']} "
                     f"clusters, pixel similarity >= {d['threshold']} or aligned residual <= {d['residual']}")
        by = ", ".join(f"{k} {v}" for k, v in sorted(s["leaks"]["by_splits"].items()))
        lines.append(f"LEAKS across splits: {s['leaks']['pairs']} pairs" + (f" ({by})" if by else ""))
    if "label_issues" in s:
        li = s["label_issues"]
        lines.append(f"label issues: {li['flagged']} of {li['scored']:,} labelled rows flagged ({s['label_method']})")
    if "outliers" in s:
        lines.append(f"outliers: {s['outliers']['flagged']} rows (robust z > {s['outliers']['z_above']})")
    if "confusion" in s:
        c = s["confusion"]
        lines.append(f"most confused classes: {c['top_pair'][0]} / {c['top_pair'][1]} ({c['rate']:.1%} of their rows)")
    if s.get("map"):
        lines.append(f"map: {s['map']}")
    lines += [f"note: {n}" for n in s["notes"]]
    return lines


def write_tables(res, out: Path) -> None:
    """The CSV files of every finding that ran (helper columns such as row numbers left out)."""
    out.mkdir(parents=True, exist_ok=True)
    if len(res.duplicates.columns):
        res.duplicates.drop(columns=["row_a", "row_b"]).to_csv(out / "duplicates.csv", index=False)
        clusters = res.clusters.drop(columns=["rows"]).assign(paths=res.clusters["paths"].map(" | ".join))
        clusters.to_csv(out / "duplicate_clusters.csv", index=False)
    if len(res.label_issues.columns):
        res.label_issues.drop(columns=["row"]).to_csv(out / "label_issues.csv", index=False)
    if len(res.outliers.columns):
        res.outliers.drop(columns=["row"]).to_csv(out / "outliers.csv", index=False)
    if len(res.confusion.columns):
        res.confusion.to_csv(out / "confusion.csv", index=False)
    if len(res.embedding.columns):
        res.embedding.drop(columns=["row"]).to_csv(out / "map.csv", index=False)


class _Thumbs:
    """Data URIs of thumbnails, each file read once."""

    def __init__(self, size: int = 96):
        self.size, self.cache = size, {}

    def __call__(self, path: str) -> Optional[str]:
        if path not in self.cache:
            png = thumbnail_png(path, self.size)
            self.cache[path] = None if png is None else "data:image/png;base64," + base64.b64encode(png).decode()
        return self.cache[path]


def _tile(thumbs: _Thumbs, path: str, caption: str, cls: str = "") -> str:
    uri = thumbs(path)
    img = (f'<img src="{uri}" alt="{html.escape(Path(path).name)}">' if uri else
           '<div class="missing">missing file</div>')
    return (f'<figure class="tile {cls}" title="{html.escape(path)}">{img}<figcaption>{caption}'
            f'<span class="path">{html.escape(_short(path))}</span></figcaption></figure>')


def _short(path: str, keep: int = 3) -> str:
    parts = Path(path).parts
    return "/".join(parts[-keep:]) if len(parts) > keep else path


def _section(title: str, about: str, body: str, count: int) -> str:
    if not body:
        body = '<p class="empty">none found</p>'
    return (f'<section><h2>{html.escape(title)} <span class="count">{count}</span></h2>'
            f'<p class="about">{about}</p><div class="gallery">{body}</div></section>')


def _galleries(res, thumbs: _Thumbs) -> str:
    parts = []
    if len(res.duplicates.columns):
        tiles = []
        for _, r in res.leaks.head(GALLERY // 2).iterrows():
            how = f"similarity {r.similarity:.4f}" + (f", aligned residual {r.residual:.3f}" if r.residual >= 0 else "")
            cap = f"{html.escape(str(r.split_a))}; {'same bytes' if r.exact else how}"
            tiles.append('<div class="pair">' + _tile(thumbs, r.path_a, cap, "leak")
                         + _tile(thumbs, r.path_b, html.escape(str(r.split_b))) + "</div>")
        parts.append(_section("Leaks across splits", "copies of one image in different splits: every score "
                              "measured on the held-out split is inflated by them", "".join(tiles), len(res.leaks)))
        tiles = []
        for _, c in res.clusters.head(12).iterrows():
            members = "".join(_tile(thumbs, p, html.escape(str(s or ""))) for p, s in
                              zip(c.paths[:8], [""] * min(8, len(c.paths))))
            more = f'<span class="more">+{c["size"] - 8} more</span>' if c["size"] > 8 else ""
            tiles.append(f'<div class="cluster"><h3>cluster {c.cluster}: {c["size"]} copies'
                         f'{" (" + html.escape(c.splits) + ")" if c.splits else ""}</h3>{members}{more}</div>')
        parts.append(_section("Duplicate clusters", "groups of copies (near-duplicates confirmed on the pixels, or "
                              "byte-identical files)", "".join(tiles), len(res.clusters)))
    if len(res.label_issues.columns):
        flagged = res.label_issues[res.label_issues["issue"]]
        tiles = [_tile(thumbs, r.path, f'given <b>{html.escape(str(r.given_label))}</b> ({r.score:.2f}), '
                                       f'suggested <b>{html.escape(str(r.suggested_label))}</b> '
                                       f'({r.suggested_score:.2f})', "issue")
                 for _, r in flagged.head(GALLERY).iterrows()]
        parts.append(_section("Likely label errors", "rows whose given label the out-of-fold model least believes "
                              "(probability in brackets)", "".join(tiles), len(flagged)))
    if len(res.outliers.columns):
        flagged = res.outliers[res.outliers["outlier"]]
        shown = flagged if len(flagged) else res.outliers.head(12)
        tiles = [_tile(thumbs, r.path, f"{html.escape(str(r.label))} {html.escape(str(r.split))}, "
                                       f"distance {r.score:.3f} (z {r.z:.1f})", "outlier")
                 for _, r in shown.head(GALLERY).iterrows()]
        about = "rows far from their nearest neighbours in feature space" + \
            ("" if len(flagged) else "; none flagged, the farthest shown")
        parts.append(_section("Outliers", about, "".join(tiles), len(flagged)))
    return "".join(parts)


def _map_data(res, thumbs: _Thumbs, classes) -> Dict:
    e = res.embedding
    marked = (e["label_issue"] | e["leak"]).to_numpy()
    order = np.r_[np.flatnonzero(marked), np.random.default_rng(0).permutation(np.flatnonzero(~marked))]
    with_thumb = set(order[:HOVER_THUMBS].tolist())
    small = _Thumbs(48)
    names = list(classes)
    label_index = {c: i for i, c in enumerate(names)}
    return {"x": [round(float(v), 3) for v in e["x"]], "y": [round(float(v), 3) for v in e["y"]],
            "c": [label_index.get(v, -1) for v in e["label"]], "s": [str(v) for v in e["split"]],
            "p": [str(v) for v in e["path"]], "f": [int(a) + 2 * int(b) for a, b in zip(e["label_issue"], e["leak"])],
            "t": [small(p) if i in with_thumb else None for i, p in enumerate(e["path"])], "classes": names}


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img class="plot" src="data:image/png;base64,{data}" alt="{path.name}">'


def _fill(template: str, **parts: str) -> str:
    """``template`` with each ``@@name@@`` replaced (CSS and JS keep their braces), in one pass: a part that
    holds ``@@data@@`` (a class named so) is never filled in turn."""
    return re.sub(r"@@(\w+)@@", lambda m: parts.get(m.group(1), m.group(0)), template)


def script_json(obj) -> str:
    """``obj`` as JSON safe inside an inline ``<script>``: ``<``, ``>`` and ``&`` as ``\\u`` escapes (so no name
    can close the element or open a comment such as ``<!--<script``, which hides the rest from the parser), and
    the two line separators JavaScript once refused in strings."""
    text = json.dumps(obj)
    for ch in "<>&\u2028\u2029":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


def write_report(res, ds: Dataset, out: Path, y=None, proba=None) -> Path:
    """Write the CSVs, ``map.png``, ``confusion.png`` and ``index.html`` into ``out``; returns the page."""
    from .confusion import plot_confusion
    from .embedding import plot_map

    out = Path(out)
    write_tables(res, out)
    e = res.embedding
    if len(e.columns):
        rows = e["row"].to_numpy()
        plot_map(e[["x", "y"]].to_numpy(), ds.y[rows], ds.split_of(rows).astype(str), e["label_issue"].to_numpy(),
                 e["leak"].to_numpy(), ds.classes, out / "map.png", title=f"{ds.cache.name}: {res.summary['map']}")
    if proba is not None and len(res.confusion.columns):
        plot_confusion(y, proba, ds.classes, out / "confusion.png")
    thumbs = _Thumbs(96)
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(res.summary))
    csvs = " · ".join(f'<a href="{n}">{n}</a>' for n in ("duplicates.csv", "duplicate_clusters.csv",
                      "label_issues.csv", "outliers.csv", "confusion.csv", "map.csv") if (out / n).exists())
    confusion = ""
    if len(res.confusion.columns):
        head = res.confusion.head(10)
        rows_html = "".join(f"<tr><td>{html.escape(str(r.class_a))}</td><td>{html.escape(str(r.class_b))}</td>"
                            f"<td>{r.a_as_b}</td><td>{r.b_as_a}</td><td>{r.rate:.3f}</td><td>{r.overlap:.3f}</td></tr>"
                            for _, r in head.iterrows())
        confusion = ('<section><h2>Class confusion</h2><p class="about">class pairs the out-of-fold model mixes up '
                     'most</p><table><tr><th>class a</th><th>class b</th><th>a as b</th><th>b as a</th><th>rate</th>'
                     f'<th>overlap</th></tr>{rows_html}</table>{_img(out / "confusion.png")}</section>')
    map_html = ""
    if len(e.columns):
        map_html = ('<section><h2>Map</h2><p class="about">every row in 2-D (' + html.escape(res.summary["map"] or "")
                    + '): colour = class, ○ train □ val △ test, red ring = label issue, black ring = leak. Hover a '
                    'point for its thumbnail and path.</p><div id="map-wrap"><canvas id="map" width="860" '
                    'height="640"></canvas><div id="tip"></div></div><details><summary>static PNG</summary>'
                    + _img(out / "map.png") + "</details></section>")
        data = script_json(_map_data(res, thumbs, ds.classes))
    else:
        data = "null"
    page = _fill(PAGE, title=html.escape(f"featcache inspect: {ds.cache.name}"), style=STYLE,
                       cache=html.escape(str(ds.cache)), summary=summary, csvs=csvs, map=map_html,
                       galleries=_galleries(res, thumbs), confusion=confusion, data=data, script=SCRIPT)
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
