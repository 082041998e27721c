"""Drift p-values without importing scipy.stats, bit for bit what scipy.stats answers."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats

from drift.distributions import _scipy_ksstats, chi2_sf, kstwo_sf
from drift.methods import chi2_homogeneity, ks_p_value

# Sizes on either side of every switch in scipy's kolmogn (n <= 140: exact methods;
# n <= 100,000: the Durbin matrix for small n * x**1.5), and statistics from 0 to 1 on a
# grid fine near 0 (t = n * x <= 1: Ruben-Gambino) and across n * x**2 = 0.75, 2.2, 4, 18,
# 370 (Durbin, Pomeranz, Pelz-Good, 2 * smirnov, 0).
SIZES = [1, 2, 3, 7, 50, 140, 141, 999, 100_000, 100_001, 2_500_000]


def statistics_for(n: int) -> np.ndarray:
    near_zero = np.array([0.25, 0.5, 0.5000001, 0.75, 1.0, 1.5]) / n
    switches = np.sqrt(np.array([0.5, 0.754693, 0.76, 2.2, 3.9, 4.1, 17.9, 18.1, 369, 371]) / n)
    return np.unique(
        np.concatenate(
            [[0.0, 1.0, 1.2, 0.5, 1 - 1 / n], near_zero, switches, np.linspace(0, 1, 41)]
        )
    )


def test_kstwo_uses_scipys_own_code_without_scipy_stats() -> None:
    # The fallback (importing scipy.stats) would pass the comparisons below too, and cost
    # 0.45 s of CPU in every fork server: a SciPy laid out otherwise must be noticed.
    assert _scipy_ksstats() is not None


@pytest.mark.parametrize("n", SIZES)
def test_kstwo_sf_is_scipys_bit_for_bit(n: int) -> None:
    for d in statistics_for(n):
        ours = kstwo_sf(float(d), float(n))
        theirs = float(stats.kstwo.sf(d, n))
        assert ours == theirs or (math.isnan(ours) and math.isnan(theirs)), (n, d, ours, theirs)


def test_kstwo_sf_outside_its_shapes_is_nan() -> None:
    assert math.isnan(kstwo_sf(0.5, 0.0))
    assert math.isnan(float(stats.kstwo.sf(0.5, 0)))
    assert math.isnan(kstwo_sf(0.5, 2.5))
    assert math.isnan(float(stats.kstwo.sf(0.5, 2.5)))


@pytest.mark.parametrize("sizes", [(30, 20), (1000, 17), (5, 5), (200_000, 150_000), (1, 1)])
def test_ks_p_value_is_ks_2samp_asymp_bit_for_bit(sizes: tuple[int, int]) -> None:
    generator = np.random.default_rng(sum(sizes))
    a = generator.normal(0, 1, sizes[0])
    b = generator.normal(0.05, 1, sizes[1])
    exact = stats.ks_2samp(a, b, method="asymp")
    ours = ks_p_value(float(exact.statistic), *sizes)
    if sizes == (1, 1):  # en rounds to 0: undefined (scipy answers NaN)
        assert ours is None and math.isnan(exact.pvalue)
    else:
        assert ours == float(exact.pvalue)


@pytest.mark.parametrize("seed", range(12))
def test_chi2_homogeneity_is_chi2_contingency_bit_for_bit(seed: int) -> None:
    generator = np.random.default_rng(seed)
    bins = int(generator.integers(2, 30))
    scale = 10 ** int(generator.integers(1, 7))
    reference = generator.integers(0, scale, bins)
    current = generator.integers(0, scale, bins)
    reference[0] += 1  # two non-empty rows
    current[-1] += 1
    table = np.vstack([reference, current])
    expected = stats.chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
    _, statistic, p_value = chi2_homogeneity(reference, current)
    assert statistic == float(expected.statistic)
    assert p_value == float(expected.pvalue)


def test_chi2_sf_is_scipys() -> None:
    for dof in (1.0, 2.0, 7.0, 40.0):
        for x in (0.0, 0.1, 1.0, 3.84, 50.0, 1e4):
            assert chi2_sf(x, dof) == float(stats.chi2.sf(x, dof))


def test_publishing_drift_never_imports_scipy_stats() -> None:
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from drift.methods import chi2_homogeneity, ks_p_value, warm_up
        warm_up()
        print(ks_p_value(0.01, 5_000_000, 200_000))
        print(chi2_homogeneity(np.array([5, 9]), np.array([7, 3])))
        assert "scipy.stats" not in sys.modules, "scipy.stats was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
