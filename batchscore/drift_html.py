"""The static HTML drift report of one partition: a pure function from results to a string.

One self-contained page (inline CSS and inline SVG; no JavaScript, no fonts or images to
fetch) that opens offline from the store: a summary table, then one section per feature,
drifted ones first, each with its statistics and a reference-vs-current histogram over the
PSI bins (numeric: the reference's bins and the missing bin; categorical: the categories,
unseen and missing). Proportions come from counts the pipeline already holds (the
reference's counts and the partition's merged counts); no data is read here.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

from drift import (
    SCORE_FEATURE,
    CategoricalReference,
    Counts,
    DriftResult,
    NumericReference,
    Reference,
    ReferenceProfile,
)

MAX_BARS = 40
"""Categorical features with more bins show the largest ones and one 'other' bar."""

REFERENCE_COLOUR = "#4c78a8"
CURRENT_COLOUR = "#e45756"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 margin:0;background:#f6f8fa}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:0;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.meta{color:#57606a;margin:0 0 16px}
section{background:#fff;border:1px solid #d0d7de;border-left:6px solid #2da44e;
 border-radius:6px;padding:14px 18px;margin:0 0 16px}
section.drifted{border-left-color:#cf222e}
section.not_computed{border-left-color:#9a6700}
.badge{font-size:12px;font-weight:600;padding:2px 8px;border-radius:10px;color:#fff;
 background:#2da44e}
.badge.drifted{background:#cf222e}.badge.not_computed{background:#9a6700}
.kind{font-size:12px;color:#57606a;font-weight:400}
table{border-collapse:collapse;margin:10px 0;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid #d8dee4;text-align:right}
th{font-weight:600;color:#57606a;font-size:12px}
th:first-child,td:first-child{text-align:left}
td.reason,th.reason{text-align:left;color:#57606a}
tr.drifted td{color:#cf222e;font-weight:600}
.summary td a{color:inherit}
.summary td,.summary th{text-align:left}
.legend{display:flex;gap:16px;font-size:12px;color:#57606a;margin:6px 0 0}
.swatch{display:inline-block;width:10px;height:10px;margin-right:5px;vertical-align:-1px}
svg{display:block;width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:#57606a}
.note{color:#57606a;font-size:12px;margin:4px 0 0}
"""


@dataclass(frozen=True)
class _Bins:
    labels: list[str]
    reference: np.ndarray  # proportions
    current: np.ndarray | None  # proportions; None when there are no current counts
    note: str | None = None


def render_report(
    results: Sequence[DriftResult],
    reference: ReferenceProfile,
    counts: Mapping[str, Counts],
    *,
    partition: str,
    reference_name: str,
    model_version: str = "",
    generated_at: dt.datetime | None = None,
) -> str:
    """The HTML page of one partition's drift results.

    `reference` is the profile the results were measured against (the training profile, or
    a rolling one) and `counts` the partition's merged counts in its bins.
    """
    by_feature: dict[str, list[DriftResult]] = {}
    for result in results:
        by_feature.setdefault(result.feature, []).append(result)
    features = sorted(by_feature, key=lambda f: _feature_order(f, by_feature[f]))
    n_drifted = sum(_status(by_feature[f]) == "drifted" for f in features)
    when = (generated_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    meta = [
        f"reference <b>{escape(reference_name)}</b>",
        f"model <b>{escape(model_version)}</b>" if model_version else "",
        f"{n_drifted} of {len(features)} feature(s) drifted",
        f"generated {when.isoformat(timespec='seconds')}",
    ]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>Drift report {escape(partition)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>Drift report &middot; {escape(partition)}</h1>",
        f'<p class="meta">{" &middot; ".join(m for m in meta if m)}</p>',
        _summary(features, by_feature),
    ]
    for i, feature in enumerate(features):
        ref = reference.get(feature)
        parts.append(_section(i, feature, by_feature[feature], ref, counts.get(feature)))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _status(results: Iterable[DriftResult]) -> str:
    results = list(results)
    if any(r.drifted for r in results):
        return "drifted"
    if all(r.status == "not_computed" for r in results):
        return "not_computed"
    return "ok"


def _feature_order(feature: str, results: list[DriftResult]) -> tuple[int, float, str]:
    rank = {"drifted": 0, "ok": 1, "not_computed": 2}[_status(results)]
    # Within a group, the feature furthest past (or closest to) its threshold first.
    severity = max(
        (r.statistic / r.threshold for r in results if r.statistic is not None and r.threshold),
        default=0.0,
    )
    return rank, -severity, feature


def _label(feature: str) -> str:
    return "model score (__score__)" if feature == SCORE_FEATURE else feature


def _summary(features: list[str], by_feature: dict[str, list[DriftResult]]) -> str:
    rows = []
    for i, feature in enumerate(features):
        status = _status(by_feature[feature])
        stats = ", ".join(
            f"{r.method} not computed"
            if r.statistic is None
            else f"{r.method} {_fmt_stat(r.statistic)} {'&gt;' if r.drifted else '&le;'} "
            f"{_fmt_stat(r.threshold)}"
            for r in by_feature[feature]
        )
        rows.append(
            f'<tr class="{status}"><td><a href="#f{i}">{escape(_label(feature))}</a></td>'
            f"<td>{escape(by_feature[feature][0].kind)}</td><td>{stats}</td>"
            f"<td>{_STATUS_TEXT[status]}</td></tr>"
        )
    return (
        '<table class="summary"><tr><th>feature</th><th>kind</th>'
        "<th>statistic vs threshold</th><th>status</th></tr>" + "".join(rows) + "</table>"
    )


_STATUS_TEXT = {"drifted": "drifted", "ok": "no drift", "not_computed": "not computed"}


def _section(
    index: int,
    feature: str,
    results: list[DriftResult],
    reference: Reference | None,
    counts: Counts | None,
) -> str:
    status = _status(results)
    kind = results[0].kind
    head = (
        f'<section id="f{index}" class="{status}" data-feature="{escape(feature)}" '
        f'data-status="{status}"><h2>{escape(_label(feature))}'
        f'<span class="badge {status}">{_STATUS_TEXT[status]}</span>'
        f'<span class="kind">{escape(kind)}</span></h2>'
    )
    body = [head, _stats_table(results)]
    if reference is not None:
        bins = _bins(reference, counts)
        body.append(_histogram(feature, bins))
        legend = [
            f'<span><span class="swatch" style="background:{REFERENCE_COLOUR}"></span>'
            f"reference (n={reference.n_:,})</span>"
        ]
        if counts is not None:
            legend.append(
                f'<span><span class="swatch" style="background:{CURRENT_COLOUR}"></span>'
                f"current (n={counts.n:,})</span>"
            )
        legend.append("<span>share of rows per PSI bin</span>")
        body.append(f'<div class="legend">{"".join(legend)}</div>')
        if bins.note:
            body.append(f'<p class="note">{escape(bins.note)}</p>')
    else:
        body.append('<p class="note">no reference summary for this feature</p>')
    body.append("</section>")
    return "".join(body)


def _stats_table(results: list[DriftResult]) -> str:
    rows = []
    for r in results:
        drifted = "-" if r.drifted is None else ("yes" if r.drifted else "no")
        rows.append(
            f'<tr class="{"drifted" if r.drifted else ""}"><td>{escape(r.method)}</td>'
            f"<td>{_fmt_stat(r.statistic)}</td><td>{_fmt_p(r.p_value)}</td>"
            f"<td>{_fmt_stat(r.threshold)}</td><td>{drifted}</td>"
            f"<td>{r.n_reference:,}</td><td>{r.n_current:,}</td>"
            f'<td class="reason">{escape(r.reason or "")}</td></tr>'
        )
    return (
        "<table><tr><th>method</th><th>statistic</th><th>p-value</th><th>threshold</th>"
        '<th>drifted</th><th>n reference</th><th>n current</th><th class="reason">note</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _proportions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(counts.size, dtype=np.float64)


def _bins(reference: Reference, counts: Counts | None) -> _Bins:
    current = counts.bin_counts if counts is not None else None
    note = None if counts is not None else "no current counts for this feature"
    if counts is not None and counts.n == 0:
        note = "the current data is empty"
    if isinstance(reference, NumericReference):
        edges = [_fmt_number(e) for e in reference.edges_]
        if edges:
            labels = [f"\u2264 {edges[0]}"]
            labels += [f"({a}, {b}]" for a, b in zip(edges, edges[1:], strict=False)]
            labels.append(f"> {edges[-1]}")
        else:
            labels = ["all values"]
        labels.append("missing")
        return _Bins(
            labels,
            _proportions(reference.counts_),
            _proportions(current) if current is not None else None,
            note,
        )
    assert isinstance(reference, CategoricalReference)
    labels = [*reference.categories_, "unseen", "missing"]
    ref = reference.counts_
    if len(reference.categories_) + 2 > MAX_BARS:
        # Keep the categories that weigh most on either side; fold the rest into one bar.
        r_p, c_p = _proportions(ref), _proportions(current) if current is not None else None
        weight = np.maximum(r_p, c_p) if c_p is not None else r_p
        n_cat = len(reference.categories_)
        keep = np.sort(np.argsort(-weight[:n_cat], kind="stable")[: MAX_BARS - 3])
        rest = np.setdiff1d(np.arange(n_cat), keep)
        index = [*keep.tolist(), n_cat, n_cat + 1]
        labels = [*(labels[i] for i in keep), f"other ({rest.size} categories)"]
        labels += ["unseen", "missing"]

        def fold(values: np.ndarray) -> np.ndarray:
            kept = values[index]
            return np.insert(kept, keep.size, values[rest].sum())

        extra = f"{rest.size} smaller categories are shown together as 'other'"
        return _Bins(
            labels,
            fold(r_p),
            fold(c_p) if c_p is not None else None,
            f"{note}; {extra}" if note else extra,
        )
    return _Bins(
        labels, _proportions(ref), _proportions(current) if current is not None else None, note
    )


def _histogram(feature: str, bins: _Bins) -> str:
    """Grouped bars (reference, current) per bin, with a y axis in percent of rows."""
    n = len(bins.labels)
    rotate = n > 10 or max(len(label) for label in bins.labels) > 12
    width, left, right, top = 1000.0, 52.0, 12.0, 14.0
    bottom = 96.0 if rotate else 30.0
    plot_h = 220.0
    height = top + plot_h + bottom
    plot_w = width - left - right
    highest = float(
        max(bins.reference.max(), bins.current.max() if bins.current is not None else 0.0)
    )
    step = _nice_step(max(highest, 0.01) / 4)
    y_max = step * max(1, math.ceil(highest / step - 1e-9))
    group = plot_w / n
    bar = group * (0.38 if bins.current is not None else 0.6)

    def y(value: float) -> float:
        return top + plot_h * (1 - value / y_max)

    out = [
        f'<svg viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{escape(feature)}: share of rows per bin, reference and current">'
    ]
    for k in range(round(y_max / step) + 1):
        tick = k * step
        ty = y(tick)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="#d8dee4" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">'
            f"{_fmt_percent(tick, step)}</text>"
        )
    for i, label in enumerate(bins.labels):
        x0 = left + i * group + (group - (2 * bar if bins.current is not None else bar)) / 2
        series = [("reference", bins.reference[i], REFERENCE_COLOUR)]
        if bins.current is not None:
            series.append(("current", bins.current[i], CURRENT_COLOUR))
        for j, (name, value, colour) in enumerate(series):
            top_y = y(float(value))
            out.append(
                f'<rect x="{x0 + j * bar:.1f}" y="{top_y:.1f}" width="{bar:.1f}" '
                f'height="{top + plot_h - top_y:.1f}" fill="{colour}">'
                f"<title>{escape(label)}: {name} {float(value):.2%}</title></rect>"
            )
        cx = left + (i + 0.5) * group
        shown = label if len(label) <= 22 else label[:21] + "\u2026"
        ly = top + plot_h + 14
        if rotate:
            out.append(
                f'<text x="{cx:.1f}" y="{ly:.1f}" text-anchor="end" '
                f'transform="rotate(-40 {cx:.1f} {ly:.1f})">{escape(shown)}'
                f"<title>{escape(label)}</title></text>"
            )
        else:
            out.append(
                f'<text x="{cx:.1f}" y="{ly:.1f}" text-anchor="middle">{escape(shown)}</text>'
            )
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'stroke="#57606a" stroke-width="1"/></svg>'
    )
    return "".join(out)


def _nice_step(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `value`: a readable tick step."""
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10 * power


def _fmt_number(value: float) -> str:
    if math.isinf(value):
        return "\u221e" if value > 0 else "-\u221e"
    return f"{value:.4g}"


def _fmt_stat(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _fmt_p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _fmt_percent(value: float, step: float) -> str:
    digits = 0 if step * 100 >= 1 and (step * 100).is_integer() else 1
    return f"{value * 100:.{digits}f}%"
