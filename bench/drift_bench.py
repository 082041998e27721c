"""Benchmark: the whole `batchscore drift` command on 1M vs 1M rows x 22 columns.

Generates 20 numeric (float64, a few NaN, three of them shifted in the current data) and 2
categorical string columns, writes both sides to Parquet in a temporary folder, then runs
`batchscore drift --reference A --current B --out R` as a subprocess and prints its wall
seconds and peak RSS (targets: under 2 s and under 1 GB). A breakdown of the same work
in-process (imports, fit, count, evaluate + write) shows what dominates.

    uv run python bench/drift_bench.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NUMERIC = 20
CATEGORIES = {"plan": ["basic", "standard", "premium", "family", "student"], "region": None}


def make_table(rows: int, seed: int, shifted: bool) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {}
    for i in range(NUMERIC):
        values = rng.normal(loc=i, scale=1 + i / 10, size=rows)
        if shifted and i < 3:
            values = values + 0.3 * (1 + i / 10)  # three numeric features drift
        values[rng.random(rows) < 0.01] = np.nan
        columns[f"x{i:02d}"] = pa.array(values, pa.float64(), from_pandas=True)
    plan_p = np.array([0.35, 0.3, 0.15, 0.1, 0.1] if not shifted else [0.2, 0.3, 0.2, 0.2, 0.1])
    columns["plan"] = pa.array(np.array(CATEGORIES["plan"])[rng.choice(5, rows, p=plan_p)])
    regions = np.array([f"region-{k:02d}" for k in range(40)])
    columns["region"] = pa.array(regions[rng.integers(0, 40, rows)])
    return pa.table(columns)


def command() -> list[str]:
    script = Path(sys.executable).parent / "batchscore"
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchscore.cli"]


def run_once(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"batchscore drift failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stdout


def breakdown(ref: Path, cur: Path, out: Path) -> dict[str, float]:
    """The command's phases, timed in this process (imports in fresh interpreters)."""

    def import_seconds(statement: str) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", statement], check=True)
            best = min(best, time.perf_counter() - t0)
        return best

    imports = import_seconds("import batchscore.cli, batchscore.drift_compare")
    scipy_stats = import_seconds("import scipy.stats")
    dataset = import_seconds("import pyarrow.dataset")
    parquet = import_seconds("import pyarrow.parquet")

    import datetime as dt

    import pyarrow.dataset as pads

    from batchscore.drift_compare import (
        _write,
        count_current,
        fit_reference,
        select_columns,
    )
    from drift import evaluate, results_to_table

    a, b = pads.dataset(str(ref)), pads.dataset(str(cur))
    features, categorical, _ = select_columns(a.schema, b.schema, None)
    t1 = time.perf_counter()
    profile = fit_reference(a, features, categorical, str(ref))
    t2 = time.perf_counter()
    counts = count_current(b, profile, str(cur))
    t3 = time.perf_counter()
    results = evaluate(profile, counts)
    table = results_to_table(
        results, dt.date.today(), "file:a", "", "bench", dt.datetime.now(dt.UTC)
    )
    _write(table, str(out))
    t4 = time.perf_counter()
    return {
        "start-up (imports, fresh interpreter; best of 3)": imports,
        "  of which alone: import scipy.stats (drift.methods)": scipy_stats,
        "  of which alone: import pyarrow.dataset (pulls in pandas)": dataset,
        "  for comparison: import pyarrow.parquet": parquet,
        "fit reference (read A column by column + fit)": t2 - t1,
        "count current (stream B in batches + count)": t3 - t2,
        "evaluate + write report": t4 - t3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    try:
        t0 = time.perf_counter()
        ref, cur, out = (
            folder / "reference.parquet",
            folder / "current.parquet",
            folder / "r.parquet",
        )
        pq.write_table(make_table(args.rows, 1, shifted=False), ref)
        pq.write_table(make_table(args.rows, 2, shifted=True), cur)
        print(
            f"data: {args.rows:,} vs {args.rows:,} rows x {NUMERIC + len(CATEGORIES)} columns "
            f"({NUMERIC} float64, {len(CATEGORIES)} string); "
            f"{(ref.stat().st_size + cur.stat().st_size) / 2**20:.0f} MiB of Parquet, "
            f"written in {time.perf_counter() - t0:.1f} s"
        )
        argv = [*command(), "drift", "--reference", str(ref), "--current", str(cur)]
        argv += ["--out", str(out)]
        walls = []
        stdout = ""
        for _ in range(args.repeat):
            seconds, stdout = run_once(argv)
            walls.append(seconds)
        # ru_maxrss of children: the largest peak of any child so far (KiB on Linux).
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        drifted = [line.split()[0] for line in stdout.splitlines() if "DRIFTED" in line]
        print(f"command: {' '.join(argv[:2])} ... ({os.cpu_count()} cores)")
        print(f"drifted rows reported: {len(drifted)} ({', '.join(sorted(set(drifted)))})")
        print(
            f"wall seconds: best {min(walls):.2f}, median {statistics.median(walls):.2f} "
            f"over {len(walls)} runs  (target < 2 s: {'met' if min(walls) < 2 else 'MISSED'})"
        )
        print(
            f"peak RSS: {peak_mib:,.0f} MiB  (target < 1 GB: "
            f"{'met' if peak_mib * 2**20 < 1e9 else 'MISSED'})"
        )
        print("breakdown (in-process, same work):")
        for phase, seconds in breakdown(ref, cur, out).items():
            print(f"  {phase:<60} {seconds:6.2f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
