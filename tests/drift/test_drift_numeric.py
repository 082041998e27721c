"""KS and numeric PSI against scipy's exact KS and a direct implementation of DESIGN.md PSI."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from drift import NumericReference
from drift.methods import KS, PSI, ks_p_value

RNG_SEED = 20240611


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(RNG_SEED + offset)


def psi_direct(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """DESIGN.md PSI written out independently: quantile edges, right-closed bins, missing bin."""
    present = reference[~np.isnan(reference)]
    edges = np.unique(np.quantile(present, [i / bins for i in range(1, bins)]))

    def proportions(values: np.ndarray) -> np.ndarray:
        missing = np.isnan(values)
        # side='left' puts x == e_j into bin j, i.e. bins (e_j-1, e_j] like pandas.cut.
        bin_of = np.searchsorted(edges, values[~missing], side="left")
        counts = np.bincount(bin_of, minlength=edges.size + 1).astype(float)
        counts = np.append(counts, missing.sum())
        share = counts / values.size
        return np.where(share == 0, 1e-4, share)

    r, c = proportions(reference), proportions(current)
    return float(np.sum((c - r) * np.log(c / r)))


def with_missing(values: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    out = values.astype(float).copy()
    out[rng(seed).random(out.size) < fraction] = np.nan
    return out


CASES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "normal_vs_shifted": (rng(1).normal(0, 1, 50_000), rng(2).normal(0.3, 1, 20_000)),
    "same_normal": (rng(3).normal(0, 1, 30_000), rng(4).normal(0, 1, 30_000)),
    "student_t_df1": (rng(5).standard_t(1, 40_000), 1.5 * rng(6).standard_t(1, 15_000)),
    "cauchy": (rng(7).standard_cauchy(40_000), rng(8).standard_cauchy(25_000) + 0.5),
    "ties_0_to_5": (
        rng(9).integers(0, 6, 30_000).astype(float),
        rng(10).choice(6, 12_000, p=[0.1, 0.1, 0.2, 0.2, 0.2, 0.2]).astype(float),
    ),
    "constant_reference": (np.full(5_000, 3.0), rng(11).normal(3, 1, 4_000)),
    "constant_both": (np.full(5_000, 3.0), np.full(700, 3.0)),
    "with_missing": (
        with_missing(rng(12).lognormal(0, 1, 30_000), 0.1, 13),
        with_missing(rng(14).lognormal(0.2, 1, 10_000), 0.3, 15),
    ),
    "reference_200k_current_20k": (
        rng(16).gamma(2.0, 1.0, 200_000),
        rng(17).gamma(2.2, 1.0, 20_000),
    ),
    "current_above_reference": (rng(18).normal(0, 1, 20_000), rng(19).normal(100, 1, 5_000)),
    "current_below_reference": (rng(20).normal(0, 1, 20_000), rng(21).normal(-100, 1, 5_000)),
    "mixed_ties_and_continuous": (
        np.concatenate([np.zeros(10_000), rng(22).exponential(1, 10_000)]),
        np.concatenate([np.zeros(2_000), rng(23).exponential(1.3, 8_000)]),
    ),
    "tiny_current": (rng(24).normal(0, 1, 10_000), rng(25).normal(0.5, 1, 7)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ks_matches_exact_ks_2samp(case: str, check_ks) -> None:
    reference, current = CASES[case]
    check_ks(reference, current)


def test_ks_with_infinite_values(check_ks) -> None:
    reference = rng(30).normal(0, 1, 10_000)
    reference[:50] = np.inf
    reference[50:80] = -np.inf
    current = rng(31).normal(0.2, 1, 5_000)
    current[:400] = np.inf
    check_ks(reference, current)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("sketch_points", [1, 4, 16])
def test_ks_error_bound_holds_for_coarse_sketches(seed: int, sketch_points: int) -> None:
    """0 <= D_exact - D_sketch < 1/S, the bound NumericReference documents, on coarse grids."""
    generator = rng(1000 + seed)
    reference = generator.normal(0, 1, int(generator.integers(20, 3_000)))
    if seed % 3 == 0:
        reference = np.round(reference, 1)  # ties in the reference too
    current = generator.normal(generator.normal(0, 0.5), 1, int(generator.integers(5, 2_000)))
    fitted = NumericReference.fit(reference, sketch_points=sketch_points)
    d = KS.compute("x", "numeric", fitted, fitted.count(current), 0.1).statistic
    exact = float(stats.ks_2samp(reference, current).statistic)
    assert d is not None
    assert -1e-12 <= exact - d < 1 / sketch_points


def test_ks_p_value_matches_asymptotic_ks_2samp_when_d_is_exact() -> None:
    reference, current = CASES["ties_0_to_5"]
    fitted = NumericReference.fit(reference)
    result = KS.compute("x", "numeric", fitted, fitted.count(current), 0.1)
    exact = stats.ks_2samp(reference, current, method="asymp")
    # Few distinct values: the sketch holds every one of them, so D is bit-identical.
    assert result.statistic == float(exact.statistic)
    assert result.p_value == pytest.approx(float(exact.pvalue), abs=1e-6)
    assert result.p_value == pytest.approx(float(exact.pvalue), rel=1e-12)


@pytest.mark.parametrize(("n1", "n2", "d"), [(30, 20, 0.3), (1000, 17, 0.25), (5, 5, 0.6)])
def test_ks_p_value_formula(n1: int, n2: int, d: float) -> None:
    generator = rng(40)
    # Build samples whose exact D is d-ish and compare p through scipy directly.
    a = generator.normal(0, 1, n1)
    b = generator.normal(d, 1, n2)
    exact = stats.ks_2samp(a, b, method="asymp")
    assert ks_p_value(float(exact.statistic), n1, n2) == pytest.approx(float(exact.pvalue))


def test_ks_drifted_flag_follows_threshold() -> None:
    reference, current = CASES["normal_vs_shifted"]
    fitted = NumericReference.fit(reference)
    counts = fitted.count(current)
    d = KS.compute("x", "numeric", fitted, counts, 0.1).statistic
    assert d is not None
    assert KS.compute("x", "numeric", fitted, counts, d - 1e-9).drifted is True
    assert KS.compute("x", "numeric", fitted, counts, d).drifted is False


def test_current_outside_reference_gives_d_one() -> None:
    reference, current = CASES["current_above_reference"]
    fitted = NumericReference.fit(reference)
    result = KS.compute("x", "numeric", fitted, fitted.count(current), 0.1)
    assert result.statistic == 1.0
    assert result.drifted is True


@pytest.mark.parametrize("case", sorted(CASES))
def test_psi_matches_direct_formula(case: str) -> None:
    reference, current = CASES[case]
    fitted = NumericReference.fit(reference)
    result = PSI.compute("x", "numeric", fitted, fitted.count(current), 0.2)
    assert result.status == "ok"
    assert result.p_value is None
    assert result.statistic == pytest.approx(psi_direct(reference, current), abs=1e-9)
    assert result.drifted is (result.statistic > 0.2)


def test_psi_bins_are_right_closed_like_pandas_cut() -> None:
    reference = np.arange(1.0, 11.0)  # quantiles 0.1..0.9 of 1..10 are 1.9, 2.8, ..., 9.1
    fitted = NumericReference.fit(reference, bins=2)  # single edge at the median, 5.5
    assert fitted.edges_.tolist() == [5.5]
    counts = fitted.count(np.array([5.5, 5.5000001, -np.inf, np.inf, np.nan]))
    # 5.5 belongs to (-inf, 5.5]; just above it and +inf to (5.5, inf); NaN to missing.
    assert counts.bin_counts.tolist() == [2, 2, 1]


def test_psi_all_current_missing_is_computable() -> None:
    reference = with_missing(rng(50).normal(0, 1, 2_000), 0.05, 51)
    current = np.full(300, np.nan)
    fitted = NumericReference.fit(reference)
    counts = fitted.count(current)
    result = PSI.compute("x", "numeric", fitted, counts, 0.2)
    assert result.status == "ok"
    assert result.statistic == pytest.approx(psi_direct(reference, current), abs=1e-9)
    ks = KS.compute("x", "numeric", fitted, counts, 0.1)
    assert ks.status == "not_computed"
    assert ks.reason == "all current values are missing"
    assert ks.statistic is None and ks.p_value is None and ks.drifted is None


@pytest.mark.parametrize("method", [KS, PSI])
def test_empty_current_is_not_computed(method) -> None:
    fitted = NumericReference.fit(rng(52).normal(0, 1, 1_000))
    result = method.compute("x", "numeric", fitted, fitted.count(np.empty(0)), 0.1)
    assert result.status == "not_computed"
    assert result.reason == "current data is empty"
    assert result.statistic is None and result.p_value is None and result.drifted is None
    assert result.n_current == 0


def test_all_missing_reference() -> None:
    fitted = NumericReference.fit(np.full(100, np.nan))
    assert fitted.edges_.size == 0 and fitted.grid_.size == 0
    counts = fitted.count(rng(53).normal(0, 1, 50))
    ks = KS.compute("x", "numeric", fitted, counts, 0.1)
    assert ks.status == "not_computed"
    assert ks.reason == "all reference values are missing"
    # PSI still compares the missing shares: all reference mass missing, none current.
    psi = PSI.compute("x", "numeric", fitted, counts, 0.2)
    assert psi.statistic == pytest.approx((1 - 1e-4) * np.log(1 / 1e-4) * 2, abs=1e-9)


def test_empty_reference_is_not_computed() -> None:
    fitted = NumericReference.fit(np.empty(0))
    counts = fitted.count(np.array([1.0, 2.0]))
    assert KS.compute("x", "numeric", fitted, counts, 0.1).reason == "reference is empty"
    assert PSI.compute("x", "numeric", fitted, counts, 0.2).reason == "reference is empty"


def test_infinite_reference_values_give_finite_or_infinite_edges_never_nan() -> None:
    reference = np.array([-np.inf] * 3 + [1.0, 2, 3, 4, 5] + [np.inf] * 4)
    fitted = NumericReference.fit(reference)
    assert not np.isnan(fitted.edges_).any()
    assert fitted.edges_[0] == -np.inf and fitted.edges_[-1] == np.inf
    assert fitted.grid_[0] == -np.inf and fitted.grid_[-1] == np.inf
    assert fitted.count(reference).bin_counts.tolist() == fitted.counts_.tolist()


def test_grid_points_are_reference_values_with_small_open_cells() -> None:
    reference = rng(54).standard_cauchy(100_003)
    fitted = NumericReference.fit(reference, sketch_points=2048)
    assert np.isin(fitted.grid_, reference).all()
    open_cells = fitted.sketch_counts_[0::2]
    assert open_cells[0] == 0 and open_cells[-1] == 0  # grid spans min..max
    assert open_cells.max() / reference.size < 1 / 2048


def test_accepts_pyarrow_and_object_arrays() -> None:
    import pyarrow as pa

    values = [1.0, None, 3.0, 2.0, None, 7.0]
    expected = NumericReference.fit(np.array([1.0, np.nan, 3.0, 2.0, np.nan, 7.0]))
    for given in (
        pa.array(values),
        pa.chunked_array([values[:2], values[2:]]),
        np.array(values, dtype=object),
        pa.array([1, None, 3, 2, None, 7]),
    ):
        fitted = NumericReference.fit(given)
        assert fitted.reference_id == expected.reference_id
        assert fitted.counts_.tolist() == expected.counts_.tolist()
        assert expected.count(given) == expected.reference_counts()


def test_fit_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="bins"):
        NumericReference.fit(np.arange(10.0), bins=0)
    with pytest.raises(ValueError, match="sketch_points"):
        NumericReference.fit(np.arange(10.0), sketch_points=0)
    with pytest.raises(ValueError, match="1-D"):
        NumericReference.fit(np.zeros((3, 3)))


def _window(training: np.ndarray, days: list[np.ndarray]) -> NumericReference:
    """A rolling reference as the pipeline makes it: the days counted in the training
    profile's bins, merged, and put in place of the training counts."""
    from drift import merge_all

    fitted = NumericReference.fit(training)
    return fitted.with_counts(merge_all(fitted.count(day) for day in days))


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
def test_a_rolling_window_is_measured_in_its_own_deciles_and_within_1e_3_of_exact_ks(shift):
    """DESIGN.md: PSI bins come from the reference (here the window), KS within 1e-3. The
    window and the current day drift away from training; both stay inside its range."""
    training = with_missing(rng(1).normal(0, 1, 50_000), 0.02, 2)
    days = [with_missing(rng(3 + i).normal(shift, 1.1, 8_000), 0.02, 9 + i) for i in range(3)]
    current = with_missing(rng(7).normal(shift + 0.2, 1.2, 9_000), 0.05, 8)
    window = _window(training, days)
    pooled = np.concatenate(days)
    counts = NumericReference.fit(training).count(current)

    ks = KS.compute("x", "numeric", window, counts, 0.1)
    exact = stats.ks_2samp(pooled[~np.isnan(pooled)], current[~np.isnan(current)]).statistic
    assert ks.status == "ok" and 0 <= exact - ks.statistic <= 1e-3
    got = PSI.compute("x", "numeric", window, counts, 0.2)
    assert got.status == "ok"
    # Edges within 1e-3 of the window's exact deciles (in rank): PSI within a few 1e-3.
    assert got.statistic == pytest.approx(psi_direct(pooled, current), abs=3e-3)
    if shift >= 0.3:  # the training bins, which the window used to be measured in, miss it
        in_training_bins = psi_direct(training, current) - psi_direct(training, pooled)
        assert abs(in_training_bins - psi_direct(pooled, current)) > 10 * 3e-3


def test_a_rolling_window_beyond_the_training_range_is_not_measured_in_its_grid():
    """A window and a current day both above the training maximum, in different ranges:
    total drift (exact D = 1) that the training grid, one open cell up there, showed as
    D = 0 and PSI = 0. Now both say why they are not computed."""
    training = rng(1).uniform(20, 120, 20_000)
    window = _window(training, [rng(2).uniform(150, 185, 5_000)])
    current = NumericReference.fit(training).count(rng(3).uniform(185, 220, 5_000))

    ks = KS.compute("monthly_charges", "numeric", window, current, 0.1)
    assert ks.status == "not_computed" and ks.statistic is None
    assert "cannot resolve these data" in ks.reason and "up to 1.0000 above" in ks.reason
    assert f"({training.max():.6g}, +inf)" in ks.reason
    psi_result = PSI.compute("monthly_charges", "numeric", window, current, 0.2)
    assert psi_result.status == "not_computed"
    assert "cannot place this window's deciles" in psi_result.reason
