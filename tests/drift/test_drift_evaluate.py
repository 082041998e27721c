"""evaluate(), the method registry, DriftResult invariants and the drift report table."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drift import (
    DRIFT_REPORT_SCHEMA,
    METHODS,
    SCORE_FEATURE,
    DriftResult,
    NumericReference,
    ReferenceProfile,
    evaluate,
    get_method,
    results_to_table,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    generator = np.random.default_rng(11)
    columns = {
        "age": generator.normal(40, 10, 5_000),
        "plan": np.array(generator.choice(["a", "b", "c"], 5_000), dtype=object),
    }
    return ReferenceProfile.fit(columns, {"plan"}, scores=generator.beta(2, 5, 5_000))


def current_counts(profile: ReferenceProfile, shift: float) -> dict:
    generator = np.random.default_rng(12)
    columns = {
        "age": generator.normal(40 + shift, 10, 2_000),
        "plan": np.array(generator.choice(["a", "b", "c"], 2_000), dtype=object),
    }
    return profile.count(columns, generator.beta(2, 5, 2_000))


def test_evaluate_runs_every_configured_method(profile) -> None:
    results = evaluate(profile, current_counts(profile, shift=8.0))
    got = {(r.feature, r.kind, r.method) for r in results}
    assert got == {
        ("age", "numeric", "ks"),
        ("age", "numeric", "psi"),
        ("plan", "categorical", "psi"),
        ("plan", "categorical", "chi2"),
        (SCORE_FEATURE, "prediction", "ks"),
        (SCORE_FEATURE, "prediction", "psi"),
    }
    by_key = {(r.feature, r.method): r for r in results}
    assert by_key[("age", "ks")].drifted is True
    assert by_key[("age", "ks")].threshold == 0.1
    assert by_key[("age", "psi")].threshold == 0.2
    assert by_key[("plan", "chi2")].threshold == 0.1
    assert by_key[("plan", "chi2")].drifted is False
    assert all(r.status == "ok" for r in results)


def test_thresholds_override_per_feature_and_method(profile) -> None:
    counts = current_counts(profile, shift=8.0)
    results = evaluate(profile, counts, thresholds={("age", "ks"): 0.9})
    ks = next(r for r in results if (r.feature, r.method) == ("age", "ks"))
    assert ks.threshold == 0.9 and ks.drifted is False
    with pytest.raises(ValueError, match="not evaluated"):
        evaluate(profile, counts, thresholds={("agee", "ks"): 0.9})


def test_missing_counts_are_not_computed(profile) -> None:
    counts = current_counts(profile, shift=0.0)
    del counts["plan"]
    results = evaluate(profile, counts)
    plan = [r for r in results if r.feature == "plan"]
    assert {r.status for r in plan} == {"not_computed"}
    assert all(r.reason and r.statistic is None and r.drifted is None for r in plan)


def test_empty_current_partition_is_not_computed_everywhere(profile) -> None:
    counts = profile.count({"age": np.empty(0), "plan": np.empty(0, dtype=object)}, np.empty(0))
    results = evaluate(profile, counts)
    assert {r.status for r in results} == {"not_computed"}
    assert {r.reason for r in results} == {"current data is empty"}


def test_evaluate_rejects_mistakes(profile) -> None:
    counts = current_counts(profile, shift=0.0)
    with pytest.raises(ValueError, match="not in the reference profile"):
        evaluate(profile, {**counts, "ghost": counts["age"]})
    with pytest.raises(ValueError, match="other bins"):
        other = NumericReference.fit(np.arange(10.0))
        evaluate(profile, {**counts, "age": other.count(np.arange(5.0))})
    with pytest.raises(ValueError, match="does not apply to categorical"):
        evaluate(profile, counts, categorical=("ks",))
    with pytest.raises(ValueError, match="does not apply to numeric"):
        evaluate(profile, counts, numeric=("chi2",))


def test_registry_and_unknown_method() -> None:
    assert set(METHODS) == {"ks", "psi", "chi2"}
    assert {name: m.default_threshold for name, m in METHODS.items()} == {
        "ks": 0.1,
        "psi": 0.2,
        "chi2": 0.1,
    }
    assert get_method("psi").name == "psi"
    with pytest.raises(ValueError, match="known methods: chi2, ks, psi"):
        get_method("wasserstein")


def test_drift_result_refuses_nan_and_half_filled_states() -> None:
    common = dict(feature="x", kind="numeric", method="ks", threshold=0.1, n_reference=1)
    with pytest.raises(ValueError):
        DriftResult(**common, statistic=float("nan"), p_value=None, drifted=False,
                    n_current=1, status="ok")  # fmt: skip
    with pytest.raises(ValueError):
        DriftResult(**common, statistic=None, p_value=None, drifted=None, n_current=0,
                    status="not_computed")  # fmt: skip
    assert DriftResult.HIGHER_MEANS_DRIFT is True


def test_results_to_table_schema_and_order(profile, tmp_path: Path) -> None:
    counts = current_counts(profile, shift=8.0)
    del counts["plan"]
    results = evaluate(profile, counts)
    computed_at = dt.datetime(2024, 6, 1, 4, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    table = results_to_table(
        results, dt.date(2024, 5, 31), "training:v0003", "v0003", "run-1", computed_at
    )
    assert table.schema == DRIFT_REPORT_SCHEMA
    assert table.column_names == [
        "partition", "feature", "kind", "method", "statistic", "p_value", "threshold",
        "drifted", "reference", "n_reference", "n_current", "model_version", "run_id",
        "computed_at", "status", "reason",
    ]  # fmt: skip
    rows = table.to_pylist()
    ranks = [{True: 0, False: 1, None: 2}[r["drifted"]] for r in rows]
    assert ranks == sorted(ranks)
    assert rows[0]["drifted"] is True
    for rank in set(ranks):
        keys = [(r["feature"], r["method"]) for r, k in zip(rows, ranks, strict=True) if k == rank]
        assert keys == sorted(keys)
    plan_rows = [r for r in rows if r["feature"] == "plan"]
    assert all(r["statistic"] is None and r["drifted"] is None for r in plan_rows)
    assert all(r["status"] == "not_computed" and r["reason"] for r in plan_rows)
    assert rows[0]["computed_at"] == dt.datetime(2024, 6, 1, 2, 30, tzinfo=dt.UTC)
    assert rows[0]["partition"] == dt.date(2024, 5, 31)

    pq.write_table(table, tmp_path / "drift.parquet")
    assert pq.read_table(tmp_path / "drift.parquet").equals(table)


def test_results_to_table_edge_cases() -> None:
    empty = results_to_table([], dt.date(2024, 1, 1), "r", "v", "run", dt.datetime.now(dt.UTC))
    assert empty.num_rows == 0 and empty.schema == DRIFT_REPORT_SCHEMA
    with pytest.raises(ValueError, match="timezone-aware"):
        results_to_table([], dt.date(2024, 1, 1), "r", "v", "run", dt.datetime(2024, 1, 1))
    with pytest.raises(TypeError, match="date"):
        now = dt.datetime.now(dt.UTC)
        results_to_table([], now, "r", "v", "run", now)
    assert isinstance(empty, pa.Table)


FRAMEWORKS = ("prefect", "great_expectations", "lightgbm")


@pytest.mark.parametrize("forbidden", [FRAMEWORKS, ("pandas",)], ids=["frameworks", "pandas"])
def test_importing_drift_pulls_in_no_framework(forbidden: tuple[str, ...]) -> None:
    # pandas is checked at import time only: pyarrow itself imports pandas lazily (when it
    # is installed) the first time it converts Python objects, which drift cannot prevent.
    code = (
        f"import drift, sys; forbidden = {forbidden!r}; "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in forbidden); "
        "assert not loaded, loaded"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr


def test_drift_sources_import_only_numpy_scipy_pyarrow_and_stdlib() -> None:
    import ast

    allowed = {"numpy", "scipy", "pyarrow", "drift"} | set(sys.stdlib_module_names)
    for source in (ROOT / "drift").glob("*.py"):
        tree = ast.parse(source.read_text())
        here = allowed
        if source.name == "_native.py":
            # The compiled counting kernel's compiler, optional: imported when the kernel
            # is built, and counting sorts instead where it cannot import.
            top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
            assert not [n for n in top if "llvmlite" in ast.dump(n)], "llvmlite at top level"
            here = allowed | {"llvmlite"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in here, f"{source.name} imports {name}"
