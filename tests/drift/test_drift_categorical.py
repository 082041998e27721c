"""Categorical PSI and chi2 against direct implementations and scipy's chi2_contingency."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from drift import CategoricalReference
from drift.methods import PSI, Chi2


def categories(n: int, labels: list[str | None], p: list[float], seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    picked = generator.choice(len(labels), size=n, p=p)
    return np.array([labels[i] for i in picked], dtype=object)


def direct_bins(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference categories (sorted), then unseen, then missing - counted with Counter."""
    known = sorted({v for v in reference if v is not None})

    def bins(values: np.ndarray) -> np.ndarray:
        tally = Counter(values.tolist())
        missing = tally.pop(None, 0)
        unseen = sum(n for category, n in tally.items() if category not in known)
        return np.array([tally.get(c, 0) for c in known] + [unseen, missing], dtype=float)

    return bins(reference), bins(current)


def psi_direct(reference: np.ndarray, current: np.ndarray) -> float:
    ref_bins, cur_bins = direct_bins(reference, current)
    r = ref_bins / ref_bins.sum()
    c = cur_bins / cur_bins.sum()
    r[r == 0] = 1e-4
    c[c == 0] = 1e-4
    return float(np.sum((c - r) * np.log(c / r)))


LABELS = ["basic", "plus", "pro", "team", None]
CASES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "similar": (
        categories(20_000, LABELS, [0.4, 0.3, 0.2, 0.1, 0.0], 1),
        categories(8_000, LABELS, [0.41, 0.29, 0.2, 0.1, 0.0], 2),
    ),
    "shifted": (
        categories(20_000, LABELS, [0.4, 0.3, 0.2, 0.1, 0.0], 3),
        categories(8_000, LABELS, [0.1, 0.2, 0.3, 0.4, 0.0], 4),
    ),
    "with_missing": (
        categories(20_000, LABELS, [0.35, 0.3, 0.2, 0.1, 0.05], 5),
        categories(8_000, LABELS, [0.3, 0.3, 0.2, 0.05, 0.15], 6),
    ),
    "unseen_in_current": (
        categories(20_000, LABELS, [0.4, 0.3, 0.3, 0.0, 0.0], 7),  # no "team" in reference
        categories(8_000, [*LABELS, "enterprise"], [0.3, 0.3, 0.2, 0.1, 0.05, 0.05], 8),
    ),
    "reference_category_absent_now": (
        categories(20_000, LABELS, [0.4, 0.3, 0.2, 0.1, 0.0], 9),
        categories(8_000, LABELS, [0.5, 0.5, 0.0, 0.0, 0.0], 10),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_categorical_psi_matches_direct_formula(case: str) -> None:
    reference, current = CASES[case]
    fitted = CategoricalReference.fit(reference)
    result = PSI.compute("plan", "categorical", fitted, fitted.count(current), 0.2)
    assert result.status == "ok"
    assert result.statistic == pytest.approx(psi_direct(reference, current), abs=1e-9)
    assert result.n_reference == reference.size and result.n_current == current.size


@pytest.mark.parametrize("case", sorted(CASES))
def test_chi2_matches_chi2_contingency(case: str) -> None:
    reference, current = CASES[case]
    fitted = CategoricalReference.fit(reference)
    result = Chi2.compute("plan", "categorical", fitted, fitted.count(current), 0.1)
    ref_bins, cur_bins = direct_bins(reference, current)
    table = np.vstack([ref_bins, cur_bins])
    table = table[:, table.sum(axis=0) > 0]
    expected = stats.chi2_contingency(table, correction=False)
    cramers_v = math.sqrt(expected.statistic / (table.sum() * (min(table.shape) - 1)))
    assert result.statistic == pytest.approx(cramers_v, rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert result.drifted is (cramers_v > 0.1)


def test_unseen_and_missing_bins() -> None:
    reference, current = CASES["unseen_in_current"]
    fitted = CategoricalReference.fit(reference)
    assert fitted.categories_ == ("basic", "plus", "pro")
    assert fitted.counts_[-2] == 0  # unseen bin is empty in the reference by construction
    counts = fitted.count(current)
    expected_unseen = sum(v in ("team", "enterprise") for v in current)
    assert counts.n_unseen == expected_unseen
    assert counts.n_missing == sum(v is None for v in current)


def test_chi2_not_computed_with_a_single_bin() -> None:
    fitted = CategoricalReference.fit(np.array(["a"] * 50, dtype=object))
    counts = fitted.count(np.array(["a"] * 20, dtype=object))
    result = Chi2.compute("plan", "categorical", fitted, counts, 0.1)
    assert result.status == "not_computed"
    assert result.reason is not None and "one non-empty bin" in result.reason
    assert PSI.compute("plan", "categorical", fitted, counts, 0.2).statistic == 0.0


@pytest.mark.parametrize("method", [PSI, Chi2])
def test_empty_current_is_not_computed(method) -> None:
    fitted = CategoricalReference.fit(CASES["similar"][0])
    result = method.compute("plan", "categorical", fitted, fitted.count([]), 0.1)
    assert result.status == "not_computed"
    assert result.reason == "current data is empty"
    assert result.statistic is None and result.p_value is None and result.drifted is None


def test_all_current_missing_is_computable() -> None:
    reference = CASES["with_missing"][0]
    current = np.array([None] * 100, dtype=object)
    fitted = CategoricalReference.fit(reference)
    counts = fitted.count(current)
    result = PSI.compute("plan", "categorical", fitted, counts, 0.2)
    assert result.statistic == pytest.approx(psi_direct(reference, current), abs=1e-9)
    assert Chi2.compute("plan", "categorical", fitted, counts, 0.1).status == "ok"


def test_pyarrow_inputs_count_like_numpy() -> None:
    reference, current = CASES["unseen_in_current"]
    fitted = CategoricalReference.fit(reference)
    expected = fitted.count(current)
    as_list = current.tolist()
    for given in (
        pa.array(as_list),
        pa.array(as_list).dictionary_encode(),
        pa.chunked_array([as_list[:100], as_list[100:]]),
        as_list,
        np.array([np.nan if v is None else v for v in as_list], dtype=object),
    ):
        assert fitted.count(given) == expected
    assert CategoricalReference.fit(pa.array(reference.tolist())).counts_.tolist() == (
        fitted.counts_.tolist()
    )


def test_categories_compared_as_strings() -> None:
    fitted = CategoricalReference.fit(np.array([1, 2, 2, 3]))
    assert fitted.categories_ == ("1", "2", "3")
    assert fitted.count(np.array(["2", 3, None, "x"], dtype=object)).bin_counts.tolist() == [
        0,
        1,
        1,
        1,
        1,
    ]


def _window(training: np.ndarray, days: list[np.ndarray]) -> CategoricalReference:
    """A rolling reference as the pipeline makes it: days counted in the training profile's
    categories (JSON round trip included, as `_COUNTS.json` stores them), merged."""
    from drift import counts_from_dict, merge_all

    fitted = CategoricalReference.fit(training)
    return fitted.with_counts(
        merge_all(counts_from_dict(fitted.count(day).to_dict()) for day in days)
    )


ROLLING = {
    # the helper's case: the window added "student", the current day "senior" instead
    "a new category each": (
        [categories(3_000, ["basic", "plus", "student", None], [0.5, 0.4, 0.08, 0.02], 11)],
        categories(3_000, ["basic", "plus", "senior", None], [0.5, 0.4, 0.08, 0.02], 12),
    ),
    # a training category the window never holds comes back in the current data
    "a category comes back": (
        [categories(2_000, ["basic", "plus"], [0.6, 0.4], 13)] * 2,
        categories(2_000, ["basic", "plus", "pro", "student"], [0.5, 0.3, 0.1, 0.1], 14),
    ),
    "the same categories": (
        [categories(2_500, LABELS, [0.4, 0.3, 0.2, 0.05, 0.05], 15 + i) for i in range(3)],
        categories(2_500, LABELS, [0.3, 0.3, 0.3, 0.05, 0.05], 19),
    ),
}


@pytest.mark.parametrize("case", sorted(ROLLING))
def test_a_rolling_window_has_its_own_categories_exactly(case: str) -> None:
    """DESIGN.md: one bin per reference category, one for categories unseen in the
    reference, one for missing; the reference being the window, not training."""
    training = categories(10_000, LABELS, [0.4, 0.3, 0.2, 0.1, 0.0], 10)
    days, current = ROLLING[case]
    window = _window(training, days)
    counts = CategoricalReference.fit(training).count(current)
    pooled = np.concatenate(days)

    got = PSI.compute("plan", "categorical", window, counts, 0.2)
    assert got.status == "ok"
    assert got.statistic == pytest.approx(psi_direct(pooled, current), rel=1e-12, abs=1e-15)
    ref_bins, cur_bins = direct_bins(pooled, current)
    table = np.vstack([ref_bins, cur_bins])
    table = table[:, table.sum(axis=0) > 0]
    expected = stats.chi2_contingency(table, correction=False)
    v = math.sqrt(expected.statistic / (table.sum() * (min(table.shape) - 1)))
    chi2 = Chi2.compute("plan", "categorical", window, counts, 0.1)
    assert chi2.statistic == pytest.approx(v, rel=1e-12)
    assert chi2.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    if case == "a new category each":
        assert got.drifted and got.statistic > 1.0  # it used to be ~0: both "unseen"


def test_unseen_names_past_the_limit_are_not_guessed() -> None:
    """More than UNSEEN_NAMES distinct new categories in the window: kept as a total only,
    and the methods say why they are not computed instead of lumping them."""
    from drift.counts import UNSEEN_NAMES

    training = categories(1_000, ["a", "b"], [0.5, 0.5], 20)
    many = np.array([f"new{i}" for i in range(UNSEEN_NAMES + 1)], dtype=object)
    window = _window(training, [many[: UNSEEN_NAMES // 2], many[UNSEEN_NAMES // 2 :]])
    assert window.unseen is None and window.counts_[-2] == UNSEEN_NAMES + 1
    counts = CategoricalReference.fit(training).count(categories(500, ["a", "x"], [0.5, 0.5], 21))
    for method in (PSI, Chi2):
        result = method.compute("c", "categorical", window, counts, 0.1)
        assert result.status == "not_computed" and "not known by name" in result.reason


@pytest.mark.parametrize(
    ("levels", "n_ref", "n_cur", "zipf"),
    [
        (10, 100, 100, 0.0),
        (600, 5_000, 5_000, 0.0),
        (600, 5_000, 5_000, 1.0),
        (2_000, 160_000, 20_000, 1.2),
    ],
)
def test_the_chance_levels_are_near_the_statistics_on_samples_without_drift(
    levels, n_ref, n_cur, zipf
):
    """Two samples of one distribution: the median PSI and V over 30 draws are within 25% of
    `chance_levels`, uniform or Zipf-like, 10 to 2,000 categories."""
    from drift.methods import chance_levels, chi2_homogeneity, psi

    p = 1 / np.arange(1, levels + 1) ** zipf
    p /= p.sum()
    rng = np.random.default_rng(levels + n_cur)
    psis, vs, levels_seen = [], [], []
    for _ in range(30):
        r, c = rng.multinomial(n_ref, p), rng.multinomial(n_cur, p)
        psis.append(psi(r, c))
        vs.append(chi2_homogeneity(r, c)[0])
        levels_seen.append(chance_levels(r, c))
    assert np.median([lv["psi"][0] for lv in levels_seen]) == pytest.approx(
        np.median(psis), rel=0.25
    )
    assert np.median([lv["chi2"][0] for lv in levels_seen]) == pytest.approx(
        np.median(vs), rel=0.25
    )


def test_a_statistic_that_sampling_alone_brings_near_its_threshold_says_so():
    """600 categories, 5,000 values on each side, one distribution: PSI and V pass their
    thresholds (DRIFTED) by chance alone; the report's `reason` says how large chance makes
    them here. Five categories with 20,000 and 8,000 values: no note."""
    labels = [f"c{i}" for i in range(600)]
    uniform = [1 / 600] * 600
    reference = categories(5_000, labels, uniform, 11)
    current = categories(5_000, labels, uniform, 12)
    fitted = CategoricalReference.fit(reference)
    counts = fitted.count(current)

    psi_result = PSI.compute("merchant", "categorical", fitted, counts, 0.2)
    chi2_result = Chi2.compute("merchant", "categorical", fitted, counts, 0.1)

    assert psi_result.drifted and chi2_result.drifted  # DESIGN's statistics, as they are
    filled = int(np.count_nonzero(fitted.psi_counts(counts)[0]))
    assert psi_result.reason == (
        f"with no drift at all, sampling alone gives psi about "
        f"{(filled - 1) * (2 / 5_000):.2g} here ({filled:,} bins the reference fills, 5,000 "
        "reference and 5,000 current values; threshold 0.2): a flag says little at these sizes"
    )
    assert chi2_result.reason.startswith(
        "with no drift at all, sampling alone gives chi2 about 0.2"
    )
    similar = CASES["similar"]
    fitted = CategoricalReference.fit(similar[0])
    for method, threshold in ((PSI, 0.2), (Chi2, 0.1)):
        result = method.compute("plan", "categorical", fitted, fitted.count(similar[1]), threshold)
        assert result.reason is None and not result.drifted


def test_a_ks_on_few_values_says_how_large_chance_makes_d():
    """KS D of 200 current values against 20,000: about 0.06 by chance alone, more than
    half the 0.1 threshold; with 20,000 current values, no note."""
    from drift import NumericReference
    from drift.methods import KS

    rng = np.random.default_rng(5)
    fitted = NumericReference.fit(rng.normal(size=20_000))
    small = KS.compute("x", "numeric", fitted, fitted.count(rng.normal(size=200)), 0.1)
    large = KS.compute("x", "numeric", fitted, fitted.count(rng.normal(size=20_000)), 0.1)

    assert small.reason == (
        "with no drift at all, sampling alone gives ks about 0.062 here (20,000 reference "
        "and 200 current values; threshold 0.1): a flag says little at these sizes"
    )
    assert large.reason is None
