"""Drift statistics (KS, PSI, chi-square) computed from a reference and merged counts.

This module owns the formulas of DESIGN.md "Drift report", the one result type
(`DriftResult`), the method registry (`METHODS`, `get_method`) and `evaluate`, which applies
the configured methods to every feature of a `ReferenceProfile`. Everything here works on
small count arrays only; raw data never reaches this module.

For every method a higher statistic means more drift (KS D, PSI, Cramer's V), and a result
that cannot be computed carries status 'not_computed' and a reason instead of a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from drift.counts import CategoricalCounts, Counts, NumericCounts
from drift.distributions import chi2_sf, kstwo_sf
from drift.reference import (
    SCORE_FEATURE,
    CategoricalReference,
    NumericReference,
    Reference,
    ReferenceProfile,
)

Kind = Literal["numeric", "categorical", "prediction"]
Status = Literal["ok", "not_computed"]

PSI_FLOOR = 1e-4
"""A zero proportion becomes this before PSI's log ratio (DESIGN.md)."""


@dataclass(frozen=True)
class DriftResult:
    """One feature x method drift measurement (one row of the drift report).

    `statistic` is oriented so that higher means more drift for every method
    (`HIGHER_MEANS_DRIFT`), and `drifted` is `statistic > threshold`. `n_reference` and
    `n_current` are the sample sizes the statistic used: non-missing values for KS, all
    values (missing bin included) for PSI and chi2. When `status` is 'not_computed',
    `statistic`, `p_value` and `drifted` are None and `reason` says why.
    """

    feature: str
    kind: Kind
    method: str
    statistic: float | None
    p_value: float | None
    threshold: float
    drifted: bool | None
    n_reference: int
    n_current: int
    status: Status
    reason: str | None = None

    HIGHER_MEANS_DRIFT: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.status == "ok":
            if self.statistic is None or not math.isfinite(self.statistic):
                raise ValueError("an 'ok' result needs a finite statistic")
        elif self.status == "not_computed":
            if self.statistic is not None or self.drifted is not None or not self.reason:
                raise ValueError("a 'not_computed' result has no statistic and needs a reason")
        else:
            raise ValueError(f"unknown status {self.status!r}")


# --- pure statistics on count arrays ------------------------------------------------------


def warm_up() -> None:
    """Load now what evaluating drift and writing its report load at first use: the
    p-values' distributions (`scipy.special` and scipy's KS code, 0.2 s), and pandas, which
    pyarrow imports (when installed) the first time it converts Python objects to an array,
    as the report's table does (0.3 s). Scoring workers only count values and never need
    them; a process about to evaluate drift can load them ahead, in a thread. And the
    compiled counting kernel (`drift._native`, ~40 ms), which scoring workers do need:
    the fork server compiles it once for all of them."""
    import pyarrow as pa

    from drift import _native

    _native.build()
    kstwo_sf(0.5, 10)
    chi2_sf(1.0, 1)
    pa.array([0.0])


def ks_statistic(reference_cells: np.ndarray, current_cells: np.ndarray) -> float:
    """Two-sided KS D from counts in the same ordered cells (sketch cells of one reference).

    Evaluates F_ref - F_cur after every cell, i.e. at every grid point and its left limit,
    with the same arithmetic as `scipy.stats.ks_2samp` (count / n, then difference), so D is
    bit-identical to scipy's whenever the sketch resolves the maximising point.
    """
    n_ref = reference_cells.sum()
    n_cur = current_cells.sum()
    if n_ref == 0 or n_cur == 0:
        raise ValueError("KS needs at least one value on each side")
    differences = np.cumsum(reference_cells) / n_ref - np.cumsum(current_cells) / n_cur
    largest_above = float(differences.max())
    largest_below = float(np.clip(-differences.min(), 0, 1))
    return max(largest_above, largest_below)


# DESIGN.md: "a binned/sketched computation must stay within 1e-3 of the exact D".
KS_TOLERANCE = 1e-3


def ks_error_bound(reference_cells: np.ndarray, current_cells: np.ndarray) -> tuple[float, int]:
    """How much higher than the sketched D the exact D can be, and in which sketch cell.

    Inside an open cell (between two grid points, or beyond the outer ones) each CDF rises by
    its share m of the values in the cell, so with d the gap F_ref - F_cur at the cell's
    left end and d' at its right limit, F_ref - F_cur stays <= min(d + m_ref, d' + m_cur)
    and F_cur - F_ref <= min(-d + m_cur, -d' + m_ref) in it. The exact D is at most the
    largest of these over the cells, or the sketched D itself. For a reference fitted on raw
    values the answer is below 1/sketch_points (see `NumericReference`); a rolling window
    counted in the training grid can put any share of its values into one cell (all of them,
    beyond the training maximum), and its D is then not known.
    """
    n_ref, n_cur = reference_cells.sum(), current_cells.sum()
    gaps = np.cumsum(reference_cells) / n_ref - np.cumsum(current_cells) / n_cur
    sketched = max(float(gaps.max()), float(-gaps.min()), 0.0)
    left = np.concatenate([[0.0], gaps[1::2]])  # the gap at each open cell's left end
    right = gaps[0::2]  # ... and at its right limit
    m_ref, m_cur = reference_cells[0::2] / n_ref, current_cells[0::2] / n_cur
    highest = np.maximum(
        np.minimum(left + m_ref, right + m_cur), np.minimum(-left + m_cur, -right + m_ref)
    )
    cell = int(np.argmax(highest))
    return max(float(highest[cell]) - sketched, 0.0), 2 * cell


def ks_p_value(statistic: float, n_reference: int, n_current: int) -> float | None:
    """Asymptotic two-sided p-value exactly as `ks_2samp(method='asymp')` computes it.

    scipy uses the one-sample distribution `kstwo` with the effective size
    en = m * n / (m + n), rounded; the result is clipped to [0, 1]. Returns None where that
    is undefined (both samples of size 1 round en to 0).
    """
    m, n = sorted([float(n_reference), float(n_current)], reverse=True)
    en = m * n / (m + n)
    p = float(np.clip(kstwo_sf(statistic, float(np.round(en))), 0, 1))
    return p if math.isfinite(p) else None


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI = sum (c - r) * ln(c / r) over the bins, zero proportions replaced by 1e-4."""
    n_ref = reference_counts.sum()
    n_cur = current_counts.sum()
    if n_ref == 0 or n_cur == 0:
        raise ValueError("PSI needs at least one value on each side")
    r = reference_counts / n_ref
    c = current_counts / n_cur
    r = np.where(r == 0, PSI_FLOOR, r)
    c = np.where(c == 0, PSI_FLOOR, c)
    return float(np.sum((c - r) * np.log(c / r)))


# The mean of Kolmogorov's distribution, sqrt(pi / 2) ln 2: with no drift,
# sqrt(n m / (n + m)) D tends to it (continuous values).
KOLMOGOROV_MEAN = math.sqrt(math.pi / 2) * math.log(2)


def chance_levels(
    reference_counts: np.ndarray, current_counts: np.ndarray
) -> dict[str, tuple[float, int]]:
    """Each statistic's typical value on two samples of one distribution (no drift), with
    the number of bins it depends on: PSI about (k - 1)(1/n + 1/m) over the k bins the
    reference fills; Cramer's V about sqrt((k - 1)/(n + m)) over the k bins either fills
    (chi2 of k - 1 degrees of freedom has mean k - 1). Many categories and few values make
    both large by chance alone: two samples of 5,000 of one 600-category distribution
    gave PSI 0.25 and V 0.24, both over their default thresholds (0.2, 0.1). Within ~20%
    of simulated medians from 10 to 2,000 bins, uniform or Zipf-like (tests)."""
    n, m = int(reference_counts.sum()), int(current_counts.sum())
    filled = int(np.count_nonzero(reference_counts))
    either = int(np.count_nonzero(reference_counts + current_counts))
    return {
        "psi": ((filled - 1) * (1 / n + 1 / m), filled),
        "chi2": (math.sqrt(max(either - 1, 0) / (n + m)), either),
    }


def ks_chance_level(n_reference: int, n_current: int) -> float:
    """KS D's typical value on two samples of one continuous distribution (no drift)."""
    return KOLMOGOROV_MEAN * math.sqrt(1 / n_reference + 1 / n_current)


def chance_note(
    method: str, threshold: float, n_reference: int, n_current: int, level: float, bins: str
) -> str | None:
    """A note for the report's `reason` when sampling alone would bring the statistic to half
    its threshold or more: a drifted flag there says little, as the sample is too small
    for the threshold (too few values, or too many categories for them). None otherwise."""
    if level < threshold / 2:
        return None
    return (
        f"with no drift at all, sampling alone gives {method} about {level:.2g} here "
        f"({bins}{n_reference:,} reference and {n_current:,} current values; threshold "
        f"{threshold:g}): a flag says little at these sizes"
    )


def chi2_homogeneity(
    reference_counts: np.ndarray, current_counts: np.ndarray
) -> tuple[float, float, float]:
    """Chi-square test of homogeneity on the bins non-empty on either side.

    Returns (Cramer's V, chi2, p-value). V = sqrt(chi2 / (n_total * (min(rows, cols) - 1)))
    does not grow with the sample size, unlike the p-value, which flags trivial differences
    at millions of rows; so V is what gets compared with the threshold.
    """
    table = np.vstack([reference_counts, current_counts]).astype(np.int64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        raise ValueError("chi2 needs two non-empty rows and at least two non-empty bins")
    # As `scipy.stats.chi2_contingency(table, correction=False)` computes it, operation for
    # operation (its expected frequencies, Pearson's terms, their sum, `chdtrc`): the same
    # floats without importing scipy.stats (`drift.distributions`).
    observed = table.astype(np.float64)
    margins = [np.apply_over_axes(np.sum, observed, [1]), np.apply_over_axes(np.sum, observed, [0])]
    expected = margins[0] * margins[1] / observed.sum()
    dof = expected.size - sum(expected.shape) + expected.ndim - 1
    chi2 = float(np.sum((observed - expected) ** 2 / expected, axis=None))
    n_total = int(table.sum())
    cramers_v = math.sqrt(chi2 / (n_total * (min(table.shape) - 1)))
    return cramers_v, chi2, chi2_sf(chi2, float(dof))


# --- methods: one class each, registered by name -----------------------------------------


class DriftMethod:
    """A drift method: its name, default threshold, the kinds it applies to, `compute`."""

    name: ClassVar[str]
    default_threshold: ClassVar[float]
    kinds: ClassVar[frozenset[str]]

    @classmethod
    def compute(
        cls, feature: str, kind: Kind, reference: Reference, counts: Counts, threshold: float
    ) -> DriftResult:
        raise NotImplementedError

    @classmethod
    def _ok(
        cls,
        feature: str,
        kind: Kind,
        statistic: float,
        p_value: float | None,
        threshold: float,
        n_reference: int,
        n_current: int,
        chance: tuple[float, str] | None = None,
    ) -> DriftResult:
        """`chance`: the statistic's typical value with no drift at all, from sampling alone,
        and what it depends on (`chance_note`)."""
        return DriftResult(
            feature=feature,
            kind=kind,
            method=cls.name,
            statistic=statistic,
            p_value=p_value,
            threshold=threshold,
            drifted=bool(statistic > threshold),
            n_reference=n_reference,
            n_current=n_current,
            status="ok",
            reason=chance_note(cls.name, threshold, n_reference, n_current, *chance)
            if chance
            else None,
        )

    @classmethod
    def _not_computed(
        cls,
        feature: str,
        kind: Kind,
        threshold: float,
        n_reference: int,
        n_current: int,
        reason: str,
    ) -> DriftResult:
        return not_computed(feature, kind, cls.name, threshold, n_reference, n_current, reason)


class KS(DriftMethod):
    """Kolmogorov-Smirnov D on non-missing values, from the reference's KS sketch."""

    name = "ks"
    default_threshold = 0.1
    kinds = frozenset({"numeric", "prediction"})

    @classmethod
    def compute(
        cls, feature: str, kind: Kind, reference: Reference, counts: Counts, threshold: float
    ) -> DriftResult:
        assert isinstance(reference, NumericReference) and isinstance(counts, NumericCounts)
        n_ref, n_cur = reference.n_present_, counts.n_present
        reason = None
        if counts.n == 0:
            reason = "current data is empty"
        elif n_cur == 0:
            reason = "all current values are missing"
        elif reference.n_ == 0:
            reason = "reference is empty"
        elif n_ref == 0:
            reason = "all reference values are missing"
        if reason is None:
            bound, cell = ks_error_bound(reference.sketch_counts_, counts.sketch_counts)
            # A fitted reference's own guarantee is 1/sketch_points (below 1e-3 by default).
            tolerance = max(KS_TOLERANCE, 1 / reference.sketch_points)
            if bound > tolerance:
                reason = (
                    "the reference's KS grid cannot resolve these data: between two of its "
                    f"points, in {reference.cell_text(cell)}, the exact D could be up to "
                    f"{bound:.4f} above the sketch's (more than {tolerance:g}); a rolling "
                    "window counted in the training grid, with values where training had "
                    "few: measure against the training reference, or retrain"
                )
        if reason is not None:
            return cls._not_computed(feature, kind, threshold, n_ref, n_cur, reason)
        d = ks_statistic(reference.sketch_counts_, counts.sketch_counts)
        chance = (ks_chance_level(n_ref, n_cur), "")
        p_value = ks_p_value(d, n_ref, n_cur)
        return cls._ok(feature, kind, d, p_value, threshold, n_ref, n_cur, chance)


class PSI(DriftMethod):
    """Population stability index over the reference's bins, missing bin included."""

    name = "psi"
    default_threshold = 0.2
    kinds = frozenset({"numeric", "categorical", "prediction"})

    @classmethod
    def compute(
        cls, feature: str, kind: Kind, reference: Reference, counts: Counts, threshold: float
    ) -> DriftResult:
        n_ref, n_cur = reference.n_, counts.n
        reason = None
        if n_cur == 0:
            reason = "current data is empty"
        elif n_ref == 0:
            reason = "reference is empty"
        if reason is None:
            reason = reference.window_problem(counts)  # type: ignore[arg-type]
        if reason is not None:
            return cls._not_computed(feature, kind, threshold, n_ref, n_cur, reason)
        bins = reference.psi_counts(counts)
        level, k = chance_levels(*bins)["psi"]
        chance = (level, f"{k:,} bins the reference fills, ")
        return cls._ok(feature, kind, psi(*bins), None, threshold, n_ref, n_cur, chance)


class Chi2(DriftMethod):
    """Chi-square homogeneity test on the categorical bins; statistic is Cramer's V."""

    name = "chi2"
    default_threshold = 0.1
    kinds = frozenset({"categorical"})

    @classmethod
    def compute(
        cls, feature: str, kind: Kind, reference: Reference, counts: Counts, threshold: float
    ) -> DriftResult:
        assert isinstance(reference, CategoricalReference)
        assert isinstance(counts, CategoricalCounts)
        n_ref, n_cur = reference.n_, counts.n
        reason = None
        if n_cur == 0:
            reason = "current data is empty"
        elif n_ref == 0:
            reason = "reference is empty"
        else:
            reason = reference.window_problem(counts)
        if reason is None:
            bins = reference.psi_counts(counts)
            if int(np.count_nonzero(bins[0] + bins[1])) < 2:
                reason = "only one non-empty bin in reference and current together"
        if reason is not None:
            return cls._not_computed(feature, kind, threshold, n_ref, n_cur, reason)
        cramers_v, _, p_value = chi2_homogeneity(*bins)
        level, k = chance_levels(*bins)["chi2"]
        chance = (level, f"{k:,} bins, ")
        return cls._ok(feature, kind, cramers_v, p_value, threshold, n_ref, n_cur, chance)


METHODS: dict[str, type[DriftMethod]] = {"ks": KS, "psi": PSI, "chi2": Chi2}


def get_method(name: str) -> type[DriftMethod]:
    """The method registered under `name`; an unknown name fails listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown drift method {name!r}; known methods: {', '.join(sorted(METHODS))}"
        ) from None


def not_computed(
    feature: str,
    kind: Kind,
    method: str,
    threshold: float,
    n_reference: int,
    n_current: int,
    reason: str,
) -> DriftResult:
    return DriftResult(
        feature=feature,
        kind=kind,
        method=method,
        statistic=None,
        p_value=None,
        threshold=threshold,
        drifted=None,
        n_reference=n_reference,
        n_current=n_current,
        status="not_computed",
        reason=reason,
    )


def evaluate(
    reference: ReferenceProfile,
    counts: Mapping[str, Counts],
    thresholds: Mapping[tuple[str, str], float] | None = None,
    numeric: Sequence[str] = ("ks", "psi"),
    categorical: Sequence[str] = ("psi", "chi2"),
    prediction: Sequence[str] = ("ks", "psi"),
) -> list[DriftResult]:
    """Every configured method for every profiled feature (and `__score__` if profiled).

    `counts` maps feature -> merged counts of the current data; a profiled feature without
    counts gets 'not_computed' results. `thresholds` overrides the methods' defaults per
    (feature, method). Features in `counts` but not in the profile, counts made against
    other bins, unknown methods, methods that do not apply to a kind and threshold keys that
    match nothing are errors: they are bugs or configuration mistakes, not drift.
    """
    thresholds = dict(thresholds or {})
    methods_by_kind: dict[str, list[type[DriftMethod]]] = {
        "numeric": _methods_for("numeric", numeric),
        "categorical": _methods_for("categorical", categorical),
        "prediction": _methods_for("prediction", prediction),
    }
    unknown = sorted(set(counts) - set(reference))
    if unknown:
        raise ValueError(f"counts for features that are not in the reference profile: {unknown}")

    results: list[DriftResult] = []
    used_thresholds: set[tuple[str, str]] = set()
    for feature, feature_reference in reference.items():
        kind: Kind = "prediction" if feature == SCORE_FEATURE else feature_reference.kind  # type: ignore[assignment]
        feature_counts = counts.get(feature)
        if feature_counts is not None and (
            feature_counts.kind != feature_reference.kind
            or feature_counts.reference_id != feature_reference.reference_id
        ):
            raise ValueError(
                f"counts for {feature!r} were made against other bins "
                f"({feature_counts.reference_id}) than the profile's "
                f"({feature_reference.reference_id})"
            )
        for method in methods_by_kind[kind]:
            key = (feature, method.name)
            threshold = float(thresholds.get(key, method.default_threshold))
            used_thresholds.add(key)
            if feature_counts is None:
                results.append(
                    not_computed(
                        feature,
                        kind,
                        method.name,
                        threshold,
                        _n_for(method, feature_reference),
                        0,
                        "no counts for this feature in the current data",
                    )
                )
            else:
                results.append(
                    method.compute(feature, kind, feature_reference, feature_counts, threshold)
                )
    stray = sorted(set(thresholds) - used_thresholds)
    if stray:
        raise ValueError(f"thresholds given for (feature, method) pairs not evaluated: {stray}")
    return results


def _methods_for(kind: str, names: Iterable[str]) -> list[type[DriftMethod]]:
    methods = [get_method(name) for name in names]
    for method in methods:
        if kind not in method.kinds:
            raise ValueError(
                f"method {method.name!r} does not apply to {kind} features "
                f"(it applies to: {', '.join(sorted(method.kinds))})"
            )
    return methods


def _n_for(method: type[DriftMethod], reference: Reference) -> int:
    if method is KS and isinstance(reference, NumericReference):
        return reference.n_present_
    return reference.n_
