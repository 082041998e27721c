"""Benchmark: the same partition scored with `[scoring] runner = "process"` and `"dask"`.

    .venv/bin/python bench/runners.py --rows 2000000

Generates one partition and the benchmark's 200-tree model (bench/bench.py's generator),
starts one Prefect API for every run, then runs `batchscore score`, each run into its own
store: with the local process pool (`workers` = cores), then twice on one
`distributed.LocalCluster` of as many single-threaded worker processes (what a Dask cluster
of one machine gives). The first Dask run is a new cluster's: each worker imports Prefect,
batchscore, the compiled engine and LightGBM at its first task. The second is what a
long-lived cluster gives every later run. It prints rows/s, wall seconds and the
orchestration overhead of each. bench/bench.py runs the
same comparison at the end of `make bench`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (bench/bench.py: the generator, the model, the measuring runner)

# (runner, label): the Dask runs share one cluster, new at its first run.
RUNS = (("process", "process"), ("dask", "dask-new"), ("dask", "dask"))


def compare(source_dir: Path, models: Path, base: Path) -> dict[str, dict]:
    """`batchscore score` of `source_dir`'s partition with each runner; the model of
    `models` (a store's models/ folder) is copied into each run's store. Needs a Prefect API
    (PREFECT_API_URL) already running, so both runs pay the same start-up."""
    from distributed import LocalCluster

    from batchscore.config import ScoringConfig

    workers = ScoringConfig().worker_count
    results = {}
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        # The workers' task-run logs still go to the API; not to this terminal, where they
        # came between the benchmark's lines (the process pool's go to its command's log).
        env={"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"},
    ) as cluster:
        for runner, label in RUNS:
            d = base / f"runner-{label}"
            d.mkdir(parents=True, exist_ok=True)
            config = bench.write_config(d, source_dir, d / "store")
            with config.open("a") as fh:
                fh.write(f'[scoring]\nrunner = "{runner}"\n')
                if runner == "dask":
                    fh.write(f'dask_address = "{cluster.scheduler_address}"\n')
            shutil.rmtree(d / "store", ignore_errors=True)
            shutil.copytree(models, d / "store" / "models")
            results[label] = bench.run_b(d, config, f"runner-{label}")
    return results


def report(results: dict[str, dict]) -> None:
    print(f"{'runner':<44}{'rows/s':>10}{'wall s':>10}{'overhead':>10}")
    labels = {
        "process": "process pool (local, workers = cores)",
        "dask-new": "dask, a new LocalCluster's first run",
        "dask": "dask, the same cluster's next run",
    }
    for runner, r in results.items():
        print(
            f"{labels[runner]:<44}{r['rows'] / r['wall']:>10,.0f}{r['wall']:>10.2f}"
            f"{r['overhead']:>10.0%}"
        )
    p = results["process"]
    ratios = [
        f"{(r['rows'] / r['wall']) / (p['rows'] / p['wall']):.2f} ({name})"
        for name, r in (("new cluster", results["dask-new"]), ("next run", results["dask"]))
    ]
    print(f"dask / process rows/s: {', '.join(ratios)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the partition")
    args = parser.parse_args(argv)
    from batchscore.prefect_api import one_api

    base = Path(tempfile.mkdtemp(prefix="bsrunners-"))
    try:
        print(f"process pool vs Dask: N = {args.rows:,} rows, {len(os.sched_getaffinity(0))} cores")
        config = bench.setup(base, args.rows)
        bench.train_and_register(config)
        # Compiled once, as registration or a first run would: neither run pays for it.
        bench.measure(bench._child("_compile", base), base / "compile.log")
        with one_api():
            results = compare(base / "source", base / "store" / "models", base)
        report(results)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
