"""The static HTML drift report (batchscore.drift_html): parsed, not looked at.

Numeric, categorical, prediction and not-computed features in one page: drifted sections
first, an inline SVG histogram per feature over the PSI bins, nothing fetched or run.
"""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest

from batchscore.drift_html import MAX_BARS, render_report
from drift import ReferenceProfile, evaluate


class _Page(HTMLParser):
    """Sections (feature, status), and per section its SVG bars and axis labels."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self.tags: list[str] = []
        self._in_svg_text = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(
                {"feature": attrs["data-feature"], "status": attrs["data-status"], "rects": 0}
            )
            self.sections[-1]["labels"] = []
            self.sections[-1]["svg"] = 0
        elif tag == "svg" and self.sections:
            self.sections[-1]["svg"] += 1
        elif tag == "rect" and self.sections:
            self.sections[-1]["rects"] += 1
        self._in_svg_text = tag == "text"

    def handle_endtag(self, tag):
        if tag == "text":
            self._in_svg_text = False

    def handle_data(self, data):
        if self._in_svg_text and self.sections and "%" not in data:
            self.sections[-1]["labels"].append(data)


@pytest.fixture
def page() -> tuple[str, _Page]:
    rng = np.random.default_rng(3)
    n = 4_000
    reference = {
        "steady": rng.normal(0, 1, n),
        "moved": rng.normal(0, 1, n),
        "plan": rng.choice(["a", "b", "c"], n).astype(object),
        "gone": rng.normal(0, 1, n),
    }
    current = {
        "steady": rng.normal(0, 1, n),
        "moved": rng.normal(1.5, 1, n),
        "plan": rng.choice(["a", "b", "c", "z"], n).astype(object),
        "gone": np.full(n, np.nan),  # all missing: KS cannot be computed
    }
    reference["moved"][:100] = np.nan
    profile = ReferenceProfile.fit(reference, ["plan"], rng.beta(2, 5, n))
    counts = profile.count(current, rng.beta(2, 5, n))
    results = evaluate(profile, counts, {("gone", "psi"): 1e6})  # "gone" only not_computed/ok
    html = render_report(
        results, profile, counts, partition="2026-10-12", reference_name="training:v0007"
    )
    parsed = _Page()
    parsed.feed(html)
    return html, parsed


def test_drifted_sections_come_first_and_each_has_a_histogram(page):
    html, parsed = page
    order = [(s["feature"], s["status"]) for s in parsed.sections]
    statuses = [status for _, status in order]
    assert statuses[0] == "drifted"
    assert statuses == sorted(statuses, key=["drifted", "ok", "not_computed"].index)
    assert {f for f, s in order if s == "drifted"} >= {"moved", "plan"}
    assert dict(order)["steady"] == "ok"
    assert [f for f, _ in order].count("__score__") == 1
    for section in parsed.sections:
        assert section["svg"] == 1
        assert section["rects"] >= 4  # reference and current bars over at least two bins


def test_bins_are_the_psi_bins_with_missing_and_unseen(page):
    _, parsed = page
    by_feature = {s["feature"]: s for s in parsed.sections}
    numeric = by_feature["moved"]["labels"]
    assert numeric[0].startswith("\u2264 ") and numeric[-2].startswith("> ")
    assert numeric[-1] == "missing" and len(numeric) == 10 + 1  # 10 PSI bins + missing
    assert by_feature["moved"]["rects"] == 2 * 11
    assert by_feature["plan"]["labels"] == ["a", "b", "c", "unseen", "missing"]


def test_not_computed_feature_shows_its_reason(page):
    html, parsed = page
    gone = next(s for s in parsed.sections if s["feature"] == "gone")
    assert gone["status"] == "ok"  # PSI is computed (all current values in the missing bin)
    assert "all current values are missing" in html


def test_page_is_self_contained(page):
    html, _ = page
    assert "<script" not in html.lower()
    assert "http" not in html.lower()  # no stylesheet, font, image or link to fetch
    assert "<style>" in html and "<link" not in html


def test_a_feature_without_counts_is_not_computed_and_rendered():
    rng = np.random.default_rng(5)
    profile = ReferenceProfile.fit({"x": rng.normal(size=500), "y": rng.normal(size=500)})
    counts = profile.count({"x": rng.normal(2, 1, 500), "y": rng.normal(size=500)})
    del counts["y"]
    html = render_report(
        evaluate(profile, counts), profile, counts, partition="2026-10-01", reference_name="t"
    )
    parsed = _Page()
    parsed.feed(html)
    assert [(s["feature"], s["status"]) for s in parsed.sections] == [
        ("x", "drifted"),
        ("y", "not_computed"),
    ]
    assert parsed.sections[1]["rects"] == 10 + 1  # the reference's bars only
    assert "no counts for this feature in the current data" in html


def test_many_categories_fold_into_one_other_bar():
    rng = np.random.default_rng(9)
    names = np.array([f"c{i:03d}" for i in range(120)], dtype=object)
    profile = ReferenceProfile.fit({"city": names[rng.integers(0, 120, 6_000)]}, ["city"])
    counts = profile.count({"city": names[rng.integers(0, 60, 6_000)]})
    html = render_report(
        evaluate(profile, counts), profile, counts, partition="2026-10-01", reference_name="t"
    )
    parsed = _Page()
    parsed.feed(html)
    labels = parsed.sections[0]["labels"]
    assert len(labels) == MAX_BARS
    assert labels[-3:] == [f"other ({120 - (MAX_BARS - 3)} categories)", "unseen", "missing"]
