"""Drift statistics for batchscore: reference summaries, partial counts, KS / PSI / chi2.

Plain numpy, scipy and pyarrow - no Prefect, Great Expectations or LightGBM - so it can be
read, tested and reused alone; llvmlite, where it is installed, compiles the numeric counting
(`drift._native`), and the same counts come from a sort where it is not. The flow of data:

    profile = ReferenceProfile.fit(columns, categorical, scores)   # once, stored with the model
    parts = [profile.count(chunk_columns, chunk_scores) for each chunk]  # in the workers
    counts = {f: merge_all(p[f] for p in parts) for f in parts[0]}       # exact
    results = evaluate(profile, counts)                                  # list[DriftResult]
    table = results_to_table(results, partition, "training:v0003", ...) # drift report rows
"""

from drift.counts import (
    CategoricalCounts,
    Counts,
    NumericCounts,
    counts_from_dict,
    counts_from_json,
    expect_to_count,
    merge,
    merge_all,
)
from drift.methods import (
    METHODS,
    DriftMethod,
    DriftResult,
    chi2_homogeneity,
    evaluate,
    get_method,
    ks_p_value,
    ks_statistic,
    psi,
)
from drift.reference import (
    SCORE_FEATURE,
    CategoricalReference,
    NumericReference,
    Reference,
    ReferenceProfile,
    reference_from_dict,
)
from drift.table import DRIFT_REPORT_SCHEMA, results_to_table

__all__ = [
    "DRIFT_REPORT_SCHEMA",
    "METHODS",
    "SCORE_FEATURE",
    "CategoricalCounts",
    "CategoricalReference",
    "Counts",
    "DriftMethod",
    "DriftResult",
    "NumericCounts",
    "NumericReference",
    "Reference",
    "ReferenceProfile",
    "chi2_homogeneity",
    "counts_from_dict",
    "counts_from_json",
    "evaluate",
    "expect_to_count",
    "get_method",
    "ks_p_value",
    "ks_statistic",
    "merge",
    "merge_all",
    "psi",
    "reference_from_dict",
    "results_to_table",
]
