"""Partial counts: exact merging of uneven chunks, JSON round trips, speed of counting."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from drift import (
    SCORE_FEATURE,
    CategoricalCounts,
    NumericCounts,
    NumericReference,
    ReferenceProfile,
    counts_from_json,
    evaluate,
    merge,
    merge_all,
)


def make_columns(n: int, seed: int, shift: float = 0.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    generator = np.random.default_rng(seed)
    tenure = generator.gamma(2.0 + shift, 10.0, n)
    tenure[generator.random(n) < 0.05] = np.nan
    charges = np.round(generator.normal(70 + 10 * shift, 20, n), 2)
    charges[:3] = [np.inf, -np.inf, np.inf]
    plans = np.array(["basic", "plus", "pro", "team", "enterprise"], dtype=object)
    p = [0.4, 0.3, 0.2, 0.1, 0.0] if shift == 0 else [0.3, 0.3, 0.2, 0.1, 0.1]
    plan = plans[generator.choice(5, n, p=p)]
    plan[generator.random(n) < 0.02] = None
    scores = generator.beta(2 + shift, 5, n)
    return {"tenure": tenure, "charges": charges, "plan": plan}, scores


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    columns, scores = make_columns(50_000, 1)
    return ReferenceProfile.fit(columns, categorical={"plan"}, scores=scores)


@pytest.fixture(scope="module")
def current() -> tuple[dict[str, np.ndarray], np.ndarray]:
    return make_columns(30_011, 2, shift=0.4)


def test_merging_seven_uneven_chunks_equals_counting_whole(profile, current) -> None:
    columns, scores = current
    whole = profile.count(columns, scores)
    cuts = [0, 1, 17, 4_000, 4_001, 12_345, 29_000, 30_011]  # 7 chunks, one of a single row
    parts = [
        profile.count({k: v[a:b] for k, v in columns.items()}, scores[a:b])
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    merged = {feature: merge_all(part[feature] for part in parts) for feature in whole}
    assert merged == whole
    pairwise = {feature: parts[0][feature] for feature in whole}
    for part in parts[1:]:
        pairwise = {feature: merge(pairwise[feature], part[feature]) for feature in whole}
    assert pairwise == whole
    # Same counts, same statistics - exactly, not approximately.
    assert evaluate(profile, merged) == evaluate(profile, whole)


def test_profile_json_round_trip_gives_identical_results(profile, current) -> None:
    text = profile.to_json()
    json.loads(text, parse_constant=_reject_constant)  # plain JSON: no Infinity/NaN tokens
    restored = ReferenceProfile.from_json(text)
    assert list(restored) == list(profile)
    for feature in profile:
        assert restored[feature].reference_id == profile[feature].reference_id
        assert restored[feature].to_dict() == profile[feature].to_dict()
    columns, scores = current
    assert evaluate(restored, restored.count(columns, scores)) == evaluate(
        profile, profile.count(columns, scores)
    )


def test_counts_json_round_trip(profile, current) -> None:
    columns, scores = current
    for feature, counts in profile.count(columns, scores).items():
        text = counts.to_json()
        json.loads(text, parse_constant=_reject_constant)
        restored = counts_from_json(text)
        assert type(restored) is type(counts)
        assert restored == counts
        assert type(counts).from_json(text) == counts, feature


def test_reference_json_keeps_infinite_grid_points() -> None:
    values = np.array([-np.inf, 1.0, 2.0, np.inf, np.inf, np.nan])
    fitted = NumericReference.fit(values)
    restored = NumericReference.from_json(fitted.to_json())
    assert restored.grid_.tolist() == fitted.grid_.tolist()
    assert restored.count(values) == fitted.count(values)


def test_merge_rejects_counts_of_other_bins(profile) -> None:
    other = NumericReference.fit(np.arange(100.0))
    a = profile["tenure"].count(np.arange(5.0))
    b = other.count(np.arange(5.0))
    with pytest.raises(ValueError, match="different references"):
        merge(a, b)
    with pytest.raises(TypeError):
        merge(a, profile["plan"].count(["basic"]))  # type: ignore[type-var]
    with pytest.raises(ValueError, match="at least one"):
        merge_all([])


def test_rolling_reference_from_merged_counts(profile, current) -> None:
    """Stored counts of earlier partitions merge into a reference with the same bins."""
    columns, _ = current
    earlier = [profile["tenure"].count(columns["tenure"][i::3]) for i in range(3)]
    rolling = profile["tenure"].with_counts(merge_all(earlier))
    assert rolling.reference_id == profile["tenure"].reference_id
    assert rolling.n_ == columns["tenure"].size
    assert rolling.reference_counts() == profile["tenure"].count(columns["tenure"])
    plan_counts = profile["plan"].count(columns["plan"])
    rolling_plan = profile["plan"].with_counts(plan_counts)
    assert rolling_plan.counts_[-2] > 0  # "enterprise" was unseen in training


def test_counts_are_small_int64_arrays(profile, current) -> None:
    columns, _ = current
    counts = profile["charges"].count(columns["charges"])
    assert isinstance(counts, NumericCounts)
    assert counts.bin_counts.dtype == np.int64 and counts.sketch_counts.dtype == np.int64
    assert counts.n == columns["charges"].size
    assert counts.sketch_counts.size == 2 * profile["charges"].grid_.size + 1
    plan = profile["plan"].count(columns["plan"])
    assert isinstance(plan, CategoricalCounts)
    assert plan.bin_counts.dtype == np.int64


def test_counting_one_million_values_is_fast(note) -> None:
    generator = np.random.default_rng(7)
    fitted = NumericReference.fit(generator.normal(0, 1, 200_000))
    values = generator.normal(0.1, 1.1, 1_000_000)
    values[generator.random(values.size) < 0.01] = np.nan
    fitted.count(values)  # warm-up
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        fitted.count(values)
        timings.append(time.perf_counter() - start)
    best, median = min(timings), float(np.median(timings))
    message = f"counting 1M numeric values: best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms"
    print(message)
    note(message)


def test_profile_shape(profile) -> None:
    assert profile.features == ["tenure", "charges", "plan"]
    assert profile.score is not None
    assert list(profile)[-1] == SCORE_FEATURE
    with pytest.raises(ValueError, match="reserved"):
        ReferenceProfile.fit({SCORE_FEATURE: np.zeros(3)})
    with pytest.raises(ValueError, match="categorical features not among"):
        ReferenceProfile.fit({"a": np.zeros(3)}, categorical={"b"})
    with pytest.raises(ValueError, match="columns missing"):
        profile.count({"tenure": np.zeros(3)})


def _reject_constant(token: str) -> float:
    raise AssertionError(f"non-standard JSON constant {token}")


def test_integers_without_an_exact_float64_are_read_as_the_nearest_float() -> None:
    """An int64 beyond 2**53 is a number like any other (numpy's `astype(float)`): counting
    it, or fitting a reference on it, used to raise on pyarrow's safe cast."""
    import pyarrow as pa

    from drift.counts import as_float64

    values = pa.chunked_array([pa.array([2**60 + 1, None, 3, -(2**62) - 1], pa.int64())])
    np.testing.assert_array_equal(as_float64(values), np.array([2.0**60, np.nan, 3.0, -(2.0**62)]))
    np.testing.assert_array_equal(
        as_float64(np.array([2**60 + 1, None], dtype=object)), [2.0**60, np.nan]
    )
    reference = NumericReference.fit(as_float64(values))
    assert reference.count(as_float64(values)).n == 4


def _sorted_and_native(values, edges, grid):
    from drift import _native
    from drift.counts import _count_sorted

    assert _native.build(), "the native counting kernel did not compile (llvmlite?)"
    want = _count_sorted(np.asarray(values, dtype=np.float64), edges, grid, "r")
    bins, cells = _native.count(np.asarray(values, dtype=np.float64), edges, grid)
    return want, bins, cells


def test_native_counting_gives_the_sorts_counts_on_every_kind_of_value() -> None:
    """`drift._native` (compiled, no sort) and the sort give the same integers: values tied
    with grid points and edges, +-inf, -0.0, NaN, heavy tails, one-point grids, no edges,
    and every tail length the kernel's vector width leaves."""
    generator = np.random.default_rng(11)
    reference = generator.normal(size=20_000)
    fitted = NumericReference.fit(reference)
    coarse = NumericReference.fit(np.round(reference, 1))  # few grid points, many ties
    constant = NumericReference.fit(np.full(100, 3.0))  # one grid point, edges collapsed
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3.0])
    for trial in range(120):
        ref = (fitted, coarse, constant)[trial % 3]
        n = int(generator.integers(0, 70)) if trial % 4 else int(generator.integers(0, 5_000))
        kind = trial % 5
        if kind == 0:
            values = generator.normal(size=n)
        elif kind == 1:  # exactly on grid points and edges
            values = generator.choice(np.concatenate([ref.grid_, ref.edges_, specials]), n)
        elif kind == 2:
            values = np.round(generator.normal(size=n), 1)
        elif kind == 3:
            values = generator.standard_cauchy(n) * 1e6
        else:
            values = generator.choice(specials, n)
        if n:
            values[generator.random(n) < 0.1] = np.nan
        want, bins, cells = _sorted_and_native(values, ref.edges_, ref.grid_)
        assert np.array_equal(bins, want.bin_counts), (trial, n, bins, want.bin_counts)
        assert np.array_equal(cells, want.sketch_counts), (trial, n)
        assert want.n == n


def test_large_counts_use_the_native_kernel_and_agree_with_the_sort() -> None:
    """`count_numeric` of a large chunk (what a scoring worker counts) goes through the
    compiled kernel, with the sort's counts."""
    from drift import _native
    from drift.counts import NATIVE_BUILD_AT, count_numeric

    generator = np.random.default_rng(12)
    fitted = NumericReference.fit(generator.gamma(2.0, 10.0, 50_000))
    values = generator.gamma(2.1, 10.0, NATIVE_BUILD_AT + 13)
    values[generator.random(values.size) < 0.02] = np.nan
    got = count_numeric(values, fitted.edges_, fitted.grid_, fitted.reference_id)
    assert _native.ready()
    want, _, _ = _sorted_and_native(values, fitted.edges_, fitted.grid_)
    assert np.array_equal(got.bin_counts, want.bin_counts)
    assert np.array_equal(got.sketch_counts, want.sketch_counts)


def test_where_the_kernel_cannot_be_compiled_the_sort_counts(monkeypatch) -> None:
    """No llvmlite, or a compile that fails: `count_numeric` counts by sorting, and says
    nothing (the counts are the same)."""
    from drift import _native
    from drift.counts import NATIVE_BUILD_AT, count_numeric

    def unavailable():
        raise ImportError("No module named 'llvmlite'")

    monkeypatch.setattr(_native, "_compile", unavailable)
    # Both, so that the end of the test gives back the kernel with the engine owning its code.
    monkeypatch.setattr(_native, "_kernel", None)
    monkeypatch.setattr(_native, "_engine", None)
    generator = np.random.default_rng(13)
    fitted = NumericReference.fit(generator.normal(size=10_000))
    values = generator.normal(size=NATIVE_BUILD_AT)
    got = count_numeric(values, fitted.edges_, fitted.grid_, fitted.reference_id)
    assert not _native.ready() and not _native.build()
    assert got.n == values.size
    assert got.bin_counts.sum() == values.size


def test_the_kernel_is_built_for_a_chunk_worth_it(monkeypatch) -> None:
    """`expect_to_count`: a process that will count a chunk of a million values or more,
    batch by batch (a Dask worker, without a fork server to build it ahead), builds the
    kernel at once; a smaller one does not pay the compile."""
    from drift import _native, expect_to_count
    from drift.counts import NATIVE_BUILD_AT

    # Both, so that the end of the test gives back the kernel with the engine owning its code.
    monkeypatch.setattr(_native, "_kernel", None)
    monkeypatch.setattr(_native, "_engine", None)
    expect_to_count(NATIVE_BUILD_AT - 1)
    assert not _native.ready()
    expect_to_count(NATIVE_BUILD_AT)
    assert _native.ready()
