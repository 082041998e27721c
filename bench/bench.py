"""Benchmark: `batchscore score` against the naive one-process pipeline and bare LightGBM.

    make bench                                  # N = 5,000,000 rows, RSS at 2M and 10M
    .venv/bin/python bench/bench.py --rows 1000000 --rss-sizes 2000000,10000000

In a temporary folder it generates one daily partition of N rows (an id, 20 numeric and 2
categorical features; ~0.002% of rows invalid, ~0.1% with an unseen category, some missing
values), written as pandas/pyarrow write it (row groups of 1,048,576 rows), trains a
200-tree LightGBM model (200 fixed rounds, 31 leaves, on 200k rows of the same generator),
registers it as champion of a temporary store with a config TOML (product defaults for
everything else), then measures, each in its own process:

  (a) naive: pandas.read_parquet, Great Expectations on the whole DataFrame with the same
      expectations (batchscore.validation.build_rules + the id uniqueness check), drop the
      rejected rows, Booster.predict (all cores), DataFrame.to_parquet. One process.
  (b) `batchscore score --config ...`: plan, validate, score, drift, write, publish, with
      its worker processes and the Prefect API it starts; the compiled model is already in
      the on-disk cache (compiled once per model version, timed separately below).
  (c) Booster.predict on the in-memory float64 matrix (all cores), no I/O.
  (e) `batchscore score` of one small partition (20k rows).
  (b') and (e') the same two runs against a Prefect API that is already running, the way a
      deployment's worker or `make up` runs them: the difference is the server's start-up.
  (f) (b') with `[scoring] runner = "process"`, and twice with `"dask"` on one
      distributed.LocalCluster of as many single-threaded worker processes: its first run
      (each worker imports at its first task) and the next (bench/runners.py; --skip-dask
      skips it).

Each of (a), (b), (b'), (c), (e), (e') and (b) at the two RSS sizes runs `--repeat` times
(default 3; the runs of (b) after the first rescore the partition) and the run with the
median time is reported, with every run's time beside it: on a shared machine a single
run is a draw. (a), (b) and (c) run
in rounds (a, b, c, a, b, c, ...), so that a slow stretch of the machine slows one run of
each rather than all the runs of one; b/a is also printed round by round.

Peak RSS: each measurement runs under a small runner process that reports
getrusage(RUSAGE_CHILDREN).ru_maxrss (the largest single process of the tree) and samples
the whole tree's RSS sum from /proc every 0.2 s. CPU: the runner is the tree's subreaper,
so RUSAGE_CHILDREN's CPU time covers every process of the run; its split by process (the
command, its Prefect server, the fork server, the workers; for (b') also the API server
that was already running) is sampled with RSS. Nothing here is tuned to the data: the
config is the product's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARTITION = "2026-01-01"
NUMERIC = [f"x{i:02d}" for i in range(20)]
CATEGORICAL = ["segment", "region"]
FEATURES = [*NUMERIC, *CATEGORICAL]
SEGMENTS = [f"seg_{i}" for i in range(6)]
REGIONS = [f"region_{i:02d}" for i in range(30)]
ROW_GROUP = 1_048_576  # pyarrow's (and so pandas') default maximum row group size
TREES = 200


# --- data and model ----------------------------------------------------------------------


def generate(n: int, seed: int, first_id: int = 0, scoring: bool = True):
    """A table of n rows; the label is a noisy function of the features."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {"id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64))}
    numeric = np.empty((n, len(NUMERIC)))
    for j in range(len(NUMERIC)):
        kind = j % 4
        if kind == 0:
            v = rng.normal(50, 15, n)
        elif kind == 1:
            v = rng.exponential(10, n)
        elif kind == 2:
            v = rng.integers(0, 100, n).astype(np.float64)
        else:
            v = rng.uniform(-1, 1, n)
        numeric[:, j] = v
    seg = rng.integers(0, len(SEGMENTS), n)
    reg = np.minimum(rng.zipf(1.6, n) - 1, len(REGIONS) - 1)
    logit = (
        0.04 * (numeric[:, 0] - 50)
        - 0.08 * numeric[:, 1]
        + 1.5 * numeric[:, 3] * numeric[:, 7]
        + 0.02 * numeric[:, 2]
        - 0.3 * (seg == 2)
        + 0.5 * (reg == 1)
        - 1.0
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    masks = {}
    for j in (4, 9, 13):  # features that have missing values (in training too)
        masks[j] = rng.random(n) < 0.02
    for j, name in enumerate(NUMERIC):
        cols[name] = pa.array(numeric[:, j], mask=masks.get(j))
    seg_values = np.asarray(SEGMENTS, dtype=object)[seg]
    reg_values = np.asarray(REGIONS, dtype=object)[reg]
    if scoring:
        unseen = rng.random(n) < 0.001
        reg_values[unseen] = "region_new"
        bad = rng.random(n) < 0.00002  # impossible values: quarantined by validation
        numeric_bad = numeric[:, 0].copy()
        numeric_bad[bad] = 1e9
        cols["x00"] = pa.array(numeric_bad)
    cols["segment"] = pa.array(seg_values, pa.string())
    cols["region"] = pa.array(reg_values, pa.string(), mask=rng.random(n) < 0.01)
    if not scoring:
        cols["label"] = pa.array(label)
    return pa.table(cols)


def write_partition(folder: Path, rows: int, seed: int) -> Path:
    import pyarrow.parquet as pq

    out = folder / "incoming" / f"dt={PARTITION}" / "part-0.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    done = 0
    while done < rows:
        n = min(ROW_GROUP, rows - done)
        table = generate(n, seed + done, first_id=1_000_000_000 + done)
        if writer is None:
            writer = pq.ParquetWriter(out, table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP)
        done += n
    writer.close()
    return out


def write_config(folder: Path, source: Path, store: Path) -> Path:
    from batchscore.config import RetrainConfig

    lines = [
        "[dataset]",
        'name = "bench"',
        'id_columns = ["id"]',
        "features = [" + ", ".join(f'"{f}"' for f in FEATURES) + "]",
        "categorical = [" + ", ".join(f'"{f}"' for f in CATEGORICAL) + "]",
        'label = "label"',
        'task = "binary"',
        "",
        "[storage]",
        f'source = "{source}"',
        f'store = "{store}"',
        "",
    ]
    if "on_drift" in RetrainConfig.model_fields:  # the benchmark measures scoring only
        lines += ["[retrain]", 'on_drift = "off"', ""]
    path = folder / "bench.toml"
    path.write_text("\n".join(lines))
    return path


def train_and_register(config_path: Path) -> dict:
    """200 fixed rounds, 31 leaves, 200k rows; registered as champion with its profile."""
    import lightgbm as lgb
    import numpy as np

    from batchscore.config import load_config
    from batchscore.features import TrainingProfile
    from batchscore.registry import Registry
    from batchscore.training import fit_reference

    config = load_config(config_path)
    started = time.perf_counter()
    data = generate(200_000, seed=7, scoring=False)
    profile = TrainingProfile.fit(data, FEATURES, CATEGORICAL)
    schema = profile.schema(FEATURES)
    X = schema.to_matrix(data)
    y = data.column("label").to_numpy().astype(np.float64)
    params = {
        "objective": "binary",
        "num_leaves": 31,
        "learning_rate": 0.05,
        "min_data_in_leaf": 50,
        "seed": 42,
        "deterministic": True,
        "force_col_wise": True,
        "verbose": -1,
    }
    booster = lgb.train(
        params,
        lgb.Dataset(X, y, feature_name=FEATURES, categorical_feature=schema.categorical_indices),
        num_boost_round=TREES,
    )
    scores = booster.predict(X[-20_000:])
    reference = fit_reference(data, FEATURES, CATEGORICAL, scores)
    registry = Registry(config.store, config.dataset.name)
    metadata = {
        "task": "binary",
        "label": "label",
        "id_columns": ["id"],
        "schema": schema.to_json(),
        "profile": profile.to_json(),
        "training_window": {"from": PARTITION, "to": PARTITION, "partitions": [PARTITION]},
        "rows": {"fit": 200_000},
        "metrics": {},
        "params": params,
        "lightgbm_version": lgb.__version__,
        "parent": None,
        "reason": "benchmark",
    }
    version = registry.register(
        booster.model_to_string(), metadata, {"reference.json": reference.to_json().encode()}
    )
    registry.promote(version, "benchmark")
    return {
        "version": version,
        "trees": booster.num_trees(),
        "seconds": time.perf_counter() - started,
    }


# --- the measured programs (each runs in its own process) --------------------------------


def _naive(workdir: Path) -> dict:
    """What a user would write: pandas + GX + Booster.predict + to_parquet, one process."""
    t0 = time.perf_counter()
    import great_expectations as gx
    import numpy as np
    import pandas as pd

    from batchscore.config import load_config
    from batchscore.registry import Registry
    from batchscore.validation import build_rules

    config = load_config(workdir / "bench.toml")
    model = Registry(config.store, config.dataset.name).champion_ref().load()
    booster, schema = model.booster, model.schema
    t_import = time.perf_counter()

    frame = pd.read_parquet(Path(config.source) / "incoming" / f"dt={PARTITION}")
    t_read = time.perf_counter()

    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("naive")
        .add_dataframe_asset("partition")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name="naive")
    for rule in build_rules(config, model.profile):
        suite.add_expectation(rule.expectation())
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeUnique(column="id"))
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    bad = np.zeros(len(frame), dtype=bool)
    for res in result.results:
        rows = res.result.get("unexpected_index_list") or []
        bad[list(rows)] = True
    good = frame[~bad]
    t_validate = time.perf_counter()

    X = np.empty((len(good), len(schema.features)))
    for j, name in enumerate(schema.features):
        if name in schema.vocabularies:
            vocab = list(schema.vocabularies[name])
            codes = pd.Categorical(good[name], categories=vocab).codes.astype(np.float64)
            codes[(codes < 0) & good[name].notna().to_numpy()] = len(vocab)
            codes[good[name].isna().to_numpy()] = np.nan
            X[:, j] = codes
        else:
            X[:, j] = good[name].to_numpy(dtype=np.float64, na_value=np.nan)
    scores = booster.predict(X)
    t_predict = time.perf_counter()

    out = good[["id"]].copy()
    out["score"] = scores
    out["model_version"] = model.ref.version
    out["scored_at"] = pd.Timestamp.now(tz="UTC")
    out["run_id"] = "naive"
    folder = workdir / "naive-out"
    folder.mkdir(exist_ok=True)
    out.to_parquet(folder / "scores.parquet", index=False)
    if bad.any():
        frame[bad].to_parquet(folder / "quarantine.parquet", index=False)
    t_write = time.perf_counter()
    return {
        "rows": len(frame),
        "rows_scored": len(good),
        "import_seconds": t_import - t0,
        "read_seconds": t_read - t_import,
        "validate_seconds": t_validate - t_read,
        "predict_seconds": t_predict - t_validate,
        "write_seconds": t_write - t_predict,
        "work_seconds": t_write - t_import,
    }


def _bare(workdir: Path) -> dict:
    """Booster.predict (and, for reference, the compiled engine) on an in-memory matrix."""
    import pyarrow.parquet as pq

    from batchscore.config import load_config
    from batchscore.engine import get_predictor
    from batchscore.registry import Registry

    config = load_config(workdir / "bench.toml")
    model = Registry(config.store, config.dataset.name).champion_ref().load()
    table = pq.read_table(Path(config.source) / "incoming" / f"dt={PARTITION}")
    X = model.schema.to_matrix(table)
    del table
    cores = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    model.booster.predict(X, num_threads=cores)
    lightgbm_seconds = time.perf_counter() - t0
    out = {"rows": len(X), "predict_seconds": lightgbm_seconds, "threads": cores}
    try:
        predictor = get_predictor(model, "compiled", cores)
        t0 = time.perf_counter()
        predictor.predict(X)
        out["compiled_predict_seconds"] = time.perf_counter() - t0
    except Exception as exc:  # informational only
        out["compiled_error"] = str(exc)
    return out


def _compile(workdir: Path) -> dict:
    """Compile the champion once (what registration or the first use does)."""
    from batchscore.config import load_config
    from batchscore.engine import get_predictor
    from batchscore.registry import Registry

    config = load_config(workdir / "bench.toml")
    model = Registry(config.store, config.dataset.name).champion_ref().load()
    t0 = time.perf_counter()
    try:
        predictor = get_predictor(model, "compiled", 1)
    except Exception as exc:
        return {"seconds": time.perf_counter() - t0, "error": str(exc)}
    return {
        "seconds": time.perf_counter() - t0,
        "origin": predictor.origin,
        "probe_max_diff": predictor.probe_max_diff,
    }


# --- the runner: one measured command, its wall time and peak memory ---------------------


def _tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


# The roles of the processes a command starts, by what their command line runs.
ROLES = (
    ("batchscore.api_server", "Prefect server"),
    ("multiprocessing.forkserver", "fork server"),
)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> tuple[int, float] | None:
    """A process's parent and its CPU seconds so far (user + system), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _role(pid: int, ppid: int, root: int, roles: dict[int, str]) -> str:
    """The command itself, its Prefect server, the fork server, a worker (a child of the
    fork server) or other (multiprocessing's resource tracker). A fork server the command
    forked from itself (`batchscore.workers._fork_here`) has the command's command line."""
    if pid == root:
        return "command"
    if roles.get(ppid) == "fork server":
        return "workers"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        if ppid == root:
            with open(f"/proc/{root}/cmdline", "rb") as fh:
                if fh.read() == cmdline:
                    return "fork server"
    except OSError:
        return "other"
    text = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return next((role for marker, role in ROLES if marker in text), "other")


def _descendants_cpu(root: int) -> float:
    """The CPU seconds of `root`'s descendants alive now."""
    return sum(c[1] for pid in _tree(root)[1:] if (c := _cpu(pid)) is not None)


def _rss_kb(pids: list[int]) -> tuple[int, int]:
    """The processes' RSS sum and the largest RSS (kB), from `statm`: cheap to read."""
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    total = largest = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                rss = int(fh.read().split()[1]) * page_kb
        except (OSError, IndexError, ValueError):
            continue
        total, largest = total + rss, max(largest, rss)
    return total, largest


def _pss_kb(pids: list[int]) -> int:
    """The processes' PSS sum (kB). Forked workers share their fork server's pages, which
    RSS counts once per process; PSS splits each shared page among its sharers, so its sum
    is the memory the tree really holds. Reading it makes the kernel walk every page table:
    ~40 ms for (b)'s six processes."""
    pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                pss += next(int(line.split()[1]) for line in fh if line.startswith("Pss:"))
        except (OSError, IndexError, ValueError, StopIteration):
            continue
    return pss


def _anon_kb() -> int:
    """The machine's anonymous memory (kB, `AnonPages` of /proc/meminfo): process memory
    not backed by a file, each page counted once however many processes share it."""
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("AnonPages:"))


def _run_measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd` as our only child; wall seconds, the largest process's RSS (the children's
    max RSS, or the largest sampled where this process cannot be a subreaper: a fork
    server's workers are not our descendants once it is orphaned), sampled tree RSS and PSS
    peaks, and CPU seconds.

    RSS is sampled every 0.2 s. PSS costs ~40 ms of kernel time per sample, which on two
    busy cores slows the measured run itself (1.2 s of CPU over a 14 s (b)), so it is read
    once a second and whenever the RSS sum passes its highest value at a PSS reading by
    16 MiB (the PSS peak is where the RSS peak is). The machine's anonymous memory is
    sampled with RSS: its peak growth over its value before the run cross-checks the PSS
    sum (it also counts whatever else the machine did meanwhile).

    CPU: this process is the tree's subreaper (Linux), so a process the command leaves
    behind (its fork server, once the command has exited) is reparented here, not to init,
    and reaped here once the command is done: RUSAGE_CHILDREN's CPU time then covers every
    process of the run, exactly. Its split by process (the command, its Prefect server, the
    fork server, the workers) is sampled with RSS, so each process's last < 0.2 s is
    missing from it; that remainder is reported as not sampled."""
    peak = {"rss": 0, "largest": 0, "pss": 0, "anon": 0}
    cpu: dict[int, float] = {}
    roles: dict[int, str] = {}
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    anon_before = _anon_kb()
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        stop = threading.Event()

        def sample() -> None:
            pss_read, pss_read_at_rss = 0.0, 0
            while not stop.is_set():
                pids = _tree(proc.pid)
                in_tree = set(pids)
                # Parents before children (a worker is known by its parent, the fork
                # server); once the command has exited, what it left behind is no longer
                # in its tree.
                for pid in pids + [p for p in roles if p not in in_tree]:
                    if (seen := _cpu(pid)) is not None:
                        if pid not in roles:
                            roles[pid] = _role(pid, seen[0], proc.pid, roles)
                        cpu[pid] = max(cpu.get(pid, 0.0), seen[1])
                rss, largest = _rss_kb(pids)
                if rss > pss_read_at_rss + 16_384 or time.monotonic() - pss_read >= 1.0:
                    peak["pss"] = max(peak["pss"], _pss_kb(pids))
                    pss_read, pss_read_at_rss = time.monotonic(), max(pss_read_at_rss, rss)
                peak["rss"], peak["largest"] = max(peak["rss"], rss), max(peak["largest"], largest)
                peak["anon"] = max(peak["anon"], _anon_kb() - anon_before)
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - started
        _reap_orphans(deadline=time.monotonic() + 30)
        stop.set()
        sampler.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    by_role: dict[str, float] = {}
    for pid, seconds in cpu.items():
        by_role[roles[pid]] = by_role.get(roles[pid], 0.0) + seconds
    total = usage.ru_utime + usage.ru_stime
    by_role["not sampled"] = max(0.0, total - sum(by_role.values()))
    return {
        "returncode": code,
        "wall": wall,
        "maxrss_kb": max(usage.ru_maxrss, peak["largest"]),  # kB on Linux
        "tree_peak_kb": peak["rss"],
        "tree_pss_peak_kb": peak["pss"],
        "anon_growth_kb": peak["anon"],
        "cpu_seconds": total,
        "cpu_by_role": by_role,
    }


def _reap_orphans(deadline: float) -> None:
    """Wait for the processes the command left behind (reparented to this subreaper): its
    fork server ends when it notices the command is gone, its workers with it."""
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.05)


def measure(cmd: list[str], log: Path) -> dict:
    """Run `cmd` under a fresh runner process, so RUSAGE_CHILDREN covers `cmd` alone."""
    runner = [sys.executable, __file__, "_runner", str(log), "--", *cmd]
    done = subprocess.run(runner, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"runner failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["returncode"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result['returncode']}; see {log}")
    return result


def _child(kind: str, workdir: Path) -> list[str]:
    return [sys.executable, __file__, kind, str(workdir)]


def _batchscore_cmd(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "batchscore"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "batchscore.cli"]
    return [*base, "score", "--config", str(config)]


# --- the benchmark -----------------------------------------------------------------------


def setup(workdir: Path, rows: int) -> Path:
    source, store = workdir / "source", workdir / "store"
    shutil.rmtree(store, ignore_errors=True)  # a reused --workdir: start from an empty store
    t0 = time.perf_counter()
    write_partition(source, rows, seed=1)
    config = write_config(workdir, source, store)
    print(f"  generated {rows:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    return config


def run_b(workdir: Path, config: Path, label: str, rescore: bool = False) -> dict:
    from batchscore.config import load_config

    cmd = _batchscore_cmd(config) + (["--rescore"] if rescore else [])
    # An API server this process started ((b'), (e')) works for the run too.
    before = _descendants_cpu(os.getpid())
    result = measure(cmd, workdir / f"b-{label}.log")
    result["api_server_cpu"] = max(0.0, _descendants_cpu(os.getpid()) - before)
    cfg = load_config(config)
    manifest = json.loads((Path(cfg.store) / "scores" / f"dt={PARTITION}" / "_SUCCESS").read_text())
    workers = cfg.scoring.worker_count
    result["worker_seconds"] = manifest["seconds"]
    result["workers"] = workers
    result["chunks"] = manifest["chunks"]
    result["rows"] = manifest["rows_in"]
    result["rows_scored"] = manifest["rows_scored"]
    # Planning (footers, id columns, schemas, id uniqueness) and publishing (drift measured,
    # report and quarantine written and moved into place) are reading, validating, drift and
    # writing too, one after the other around the chunks: work, not orchestration. The
    # older measure, which counted them as overhead, is kept beside it.
    result["plan_seconds"] = manifest.get("plan_seconds", 0.0)
    result["publish_seconds"] = manifest.get("publish_seconds", 0.0)
    work = manifest["seconds"] / workers + result["plan_seconds"] + result["publish_seconds"]
    result["work_seconds"] = work
    result["overhead"] = 1 - work / result["wall"]
    result["overhead_chunks_only"] = 1 - (manifest["seconds"] / workers) / result["wall"]
    # The CPU of the run's processes other than the scoring workers (the command's imports
    # and Prefect engine, the Prefect server, the fork server's imports): were it and the
    # workers' CPU to fill the cores with no idle moment, the run would take their sum /
    # cores, and that CPU would be `cpu_floor` of it. The overhead can go below that only
    # by using less CPU, not by scheduling better. (A lower bound: the workers' own Prefect
    # engine, each task run's state changes, counts as the workers'.)
    roles = result["cpu_by_role"]
    result["cpu_outside_workers"] = result["api_server_cpu"] + sum(
        v for k, v in roles.items() if k not in WORKER_CPU
    )
    workers_cpu = sum(roles.get(k, 0.0) for k in WORKER_CPU)
    result["cores"] = len(os.sched_getaffinity(0))
    result["cpu_packed_wall"] = (workers_cpu + result["cpu_outside_workers"]) / result["cores"]
    result["cpu_floor"] = result["cpu_outside_workers"] / (
        workers_cpu + result["cpu_outside_workers"]
    )
    return result


# Sampled CPU that may be the workers': counted as theirs, so the share outside them is a
# lower bound.
WORKER_CPU = ("workers", "not sampled")


def median_of(runs: list[dict], key: str = "wall") -> dict:
    """The run with the median `key` (of an even count, the slower middle one), carrying
    every run's value of it: on a shared machine one run is a draw, not a measurement."""
    ordered = sorted(runs, key=lambda r: r[key])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["all"] = [r[key] for r in runs]
    return chosen


def run_b_repeated(workdir: Path, config: Path, label: str, repeat: int) -> dict:
    """(b) `repeat` times on the same partition (rescoring after the first), the median run."""
    runs = [run_b(workdir, config, f"{label}-{i}", rescore=i > 0) for i in range(repeat)]
    return median_of(runs)


def _child_run(kind: str, workdir: Path, i: int) -> dict:
    """A measured child, with the figures it wrote."""
    run = measure(_child(kind, workdir), workdir / f"{kind.strip('_')}-{i}.log")
    run.update(json.loads((workdir / f"{kind}.json").read_text()))
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the partition")
    parser.add_argument(
        "--rss-sizes",
        default="2000000,10000000",
        help="two partition sizes at which (b)'s peak RSS is measured ('' to skip)",
    )
    parser.add_argument("--small-rows", type=int, default=20_000, help="the small partition")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of (a), (b), (b'), (c), (e), (e') and (b) at the RSS sizes; the median run "
        "is reported",
    )
    parser.add_argument("--workdir", help="keep the data here instead of a temporary folder")
    parser.add_argument(
        "--skip-dask", action="store_true", help="skip (f), the process pool vs Dask comparison"
    )
    args = parser.parse_args(argv)

    import lightgbm
    import llvmlite

    from batchscore.config import ScoringConfig

    tmp = None
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bsbench-"))
    base.mkdir(parents=True, exist_ok=True)
    if not args.workdir:
        tmp = base
    sizes = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
    try:
        cores = len(os.sched_getaffinity(0))
        print(
            f"batchscore benchmark: N = {args.rows:,} rows, {cores} cores, "
            f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB; "
            f"lightgbm {lightgbm.__version__}, llvmlite {llvmlite.__version__}; "
            f"[scoring] defaults: chunk_rows {ScoringConfig().chunk_rows:,}, "
            f"workers {ScoringConfig().worker_count}, engine {ScoringConfig().engine}; "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        main_dir = base / f"n{args.rows}"
        main_dir.mkdir(exist_ok=True)
        print("setup:", flush=True)
        config = setup(main_dir, args.rows)
        model = train_and_register(config)
        print(
            f"  trained {model['trees']} trees in {model['seconds']:.1f} s, "
            f"registered as {model['version']}",
            flush=True,
        )
        compiled = measure(_child("_compile", main_dir), main_dir / "compile.log")
        info = json.loads((main_dir / "compile.json").read_text())
        print(
            f"  compiled once (lleaves), {info['seconds']:.1f} s"
            + (f" [{info['error']}]" if "error" in info else ", cached for every later run"),
            flush=True,
        )
        del compiled

        n = max(1, args.repeat)
        # In rounds of (a), (b), (c), not three (a)s then three (b)s: a slow stretch of a
        # shared machine then slows one run of each, instead of every run of one of them.
        runs: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
        for i in range(n):
            print(
                f"round {i + 1} of {n}: (a) naive pipeline, (b) batchscore score, "
                "(c) bare Booster.predict ...",
                flush=True,
            )
            runs["a"].append(_child_run("_naive", main_dir, i))
            runs["b"].append(run_b(main_dir, config, f"main-{i}", rescore=i > 0))
            runs["c"].append(_child_run("_bare", main_dir, i))
        a = median_of(runs["a"], "wall")
        b = median_of(runs["b"])
        c = median_of(runs["c"], "predict_seconds")
        pairs = zip(runs["a"], runs["b"], strict=True)
        b["round_ratios"] = [ra["wall"] / rb["wall"] for ra, rb in pairs]

        rss = {}
        for size in sizes:
            print(f"(b) at {size:,} rows (peak RSS) ...", flush=True)
            d = base / f"rss{size}"
            d.mkdir(exist_ok=True)
            cfg = setup(d, size)
            shutil.copytree(main_dir / "store" / "models", d / "store" / "models")
            rss[size] = run_b_repeated(d, cfg, f"rss{size}", n)

        print(f"(e) batchscore score of one small partition ({args.small_rows:,} rows) ...")
        small_dir = base / "small"
        small_dir.mkdir(exist_ok=True)
        small_cfg = setup(small_dir, args.small_rows)
        shutil.copytree(main_dir / "store" / "models", small_dir / "store" / "models")
        small = run_b_repeated(small_dir, small_cfg, "small", n)

        # The same two runs against a Prefect API that is already up (as with `make up` or a
        # deployment's worker): what is left is the run itself, not the server's start-up.
        print("(b') and (e') again, with a Prefect API already running ...", flush=True)
        from batchscore.prefect_api import one_api

        warm = {}
        with one_api():
            for label, src in (("main", main_dir), ("small", small_dir)):
                d = base / f"warm-{label}"
                d.mkdir(exist_ok=True)
                cfg = write_config(d, src / "source", d / "store")
                shutil.rmtree(d / "store", ignore_errors=True)
                shutil.copytree(main_dir / "store" / "models", d / "store" / "models")
                warm[label] = run_b_repeated(d, cfg, f"warm-{label}", n)
            if not args.skip_dask:
                # Issue 8: [scoring] runner = "process" vs "dask" (a LocalCluster) on the
                # main partition, both against this API (bench/runners.py).
                print("(f) process pool vs Dask LocalCluster ...", flush=True)
                import runners

                by_runner = runners.compare(
                    main_dir / "source", main_dir / "store" / "models", base / "runners"
                )

        report(args.rows, cores, info, a, b, c, rss, small, warm)
        if not args.skip_dask:
            print()
            runners.report(by_runner)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _mib(kb: int) -> str:
    return f"{kb / 1024:,.0f} MiB"


def _fixed_and_marginal(lo: dict, hi: dict) -> str:
    """How (b)'s overhead splits into a cost per run and a cost per row, from its runs at
    two sizes: the seconds outside the work at each, and the share of the extra wall time
    of the larger that is not extra work."""
    extra_wall, extra_work = hi["wall"] - lo["wall"], hi["work_seconds"] - lo["work_seconds"]
    return (
        f"(b) outside the work: {lo['wall'] - lo['work_seconds']:.2f} s at {lo['rows']:,} "
        f"rows, {hi['wall'] - hi['work_seconds']:.2f} s at {hi['rows']:,}; the larger run's "
        f"extra {extra_wall:.2f} s of wall are {extra_work:.2f} s of extra work: an overhead "
        f"of {1 - extra_work / extra_wall:.1%} on each added row, the rest a cost per run"
    )


def _cpu_account(name: str, run: dict) -> str:
    """Where a run's CPU went, and how much of its overhead that CPU is."""
    roles = run["cpu_by_role"]
    order = ["workers", "command", "Prefect server", "fork server", "other", "not sampled"]
    parts = [f"{k} {roles[k]:.2f}" for k in order if roles.get(k)]
    if run["api_server_cpu"]:
        parts.append(f"the API server already running {run['api_server_cpu']:.2f}")
    return (
        f"  {name} CPU seconds: {run['cpu_seconds'] + run['api_server_cpu']:.2f} "
        f"({', '.join(parts)}). Outside the workers {run['cpu_outside_workers']:.2f} s: "
        f"were all of it to fill the {run['cores']} cores with no idle moment, the run would "
        f"take {run['cpu_packed_wall']:.2f} s (not {run['wall']:.2f}), and the CPU outside "
        f"the workers would be {run['cpu_floor']:.1%} of it: an overhead below that needs "
        "less CPU, not better scheduling"
    )


def report(n, cores, info, a, b, c, rss, small, warm) -> None:
    rows = [
        (
            "(a) naive: pandas + GX + predict + to_parquet",
            a["rows"] / a["wall"],
            a["wall"],
            _mib(a["maxrss_kb"]),
            _mib(a["tree_peak_kb"]),
            _mib(a["tree_pss_peak_kb"]),
        ),
        (
            "(b) batchscore score (end to end)",
            b["rows"] / b["wall"],
            b["wall"],
            _mib(b["maxrss_kb"]),
            _mib(b["tree_peak_kb"]),
            _mib(b["tree_pss_peak_kb"]),
        ),
        (
            "(b') the same, Prefect API already running",
            warm["main"]["rows"] / warm["main"]["wall"],
            warm["main"]["wall"],
            _mib(warm["main"]["maxrss_kb"]),
            _mib(warm["main"]["tree_peak_kb"]),
            _mib(warm["main"]["tree_pss_peak_kb"]),
        ),
        (
            "(c) bare Booster.predict, in memory",
            c["rows"] / c["predict_seconds"],
            c["predict_seconds"],
            _mib(c["maxrss_kb"]),
            _mib(c["tree_peak_kb"]),
            _mib(c["tree_pss_peak_kb"]),
        ),
    ]
    print()
    print(f"N = {n:,} rows, {cores} cores")
    header = (
        "measurement",
        "rows/s",
        "wall s",
        "peak RSS (max process)",
        "peak RSS (tree sum)",
        "peak PSS (tree sum)",
    )
    widths = [46, 11, 8, 23, 20, 20]
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for name, rate, wall, r1, r2, r3 in rows:
        print(f"{name:<46}  {rate:>11,.0f}  {wall:>8.2f}  {r1:>23}  {r2:>20}  {r3:>20}")
    if "all" in b:

        def spread(run: dict) -> str:
            return ", ".join(f"{v:.2f}" for v in run["all"])

        print(
            f"each the median of {len(b['all'])} runs; seconds of every run: (a) {spread(a)}; "
            f"(b) {spread(b)}; (b') {spread(warm['main'])}; (c) {spread(c)}; "
            f"(e) {spread(small)}; (e') {spread(warm['small'])}"
        )
    print(
        "memory taken from the machine (growth of its anonymous memory, AnonPages, at the "
        f"peak): (a) {_mib(a['anon_growth_kb'])}, (b) {_mib(b['anon_growth_kb'])}, (b') "
        f"{_mib(warm['main']['anon_growth_kb'])}; the RSS sum counts a page shared by n "
        "processes n times (the fork server's imports in every worker), PSS once"
    )
    print()
    print(
        f"(a) inside its process: read {a['read_seconds']:.2f} s, validate (GX) "
        f"{a['validate_seconds']:.2f} s, predict {a['predict_seconds']:.2f} s, write "
        f"{a['write_seconds']:.2f} s = {a['work_seconds']:.2f} s of work "
        f"({a['rows'] / a['work_seconds']:,.0f} rows/s); imports {a['import_seconds']:.2f} s"
    )
    if "compiled_predict_seconds" in c:
        print(
            f"(c') the compiled engine on the same matrix: {c['compiled_predict_seconds']:.2f} s "
            f"({c['rows'] / c['compiled_predict_seconds']:,.0f} rows/s)"
        )
    print(
        f"(b) {b['chunks']} chunks on {b['workers']} workers; worker seconds (read + validate "
        f"+ score + write + drift, summed over chunks, from _SUCCESS) {b['worker_seconds']:.2f}"
    )
    print(f"compile (once per model version, before (b)): {info['seconds']:.2f} s")
    ratio_ba = (b["rows"] / b["wall"]) / (a["rows"] / a["wall"])
    ratio_ba_work = (b["rows"] / b["wall"]) / (a["rows"] / a["work_seconds"])
    ratio_bc = (b["rows"] / b["wall"]) / (c["rows"] / c["predict_seconds"])
    w = warm["main"]
    ratio_wa = (w["rows"] / w["wall"]) / (a["rows"] / a["wall"])
    ratio_wc = (w["rows"] / w["wall"]) / (c["rows"] / c["predict_seconds"])
    print()
    print(
        f"b/a rows/s: {ratio_ba:.2f}x  (against (a)'s work without imports: {ratio_ba_work:.2f}x)"
        + (
            "; round by round: " + ", ".join(f"{r:.2f}x" for r in b["round_ratios"])
            if "round_ratios" in b
            else ""
        )
    )
    print(f"b/c rows/s: {ratio_bc:.2f}x")
    print(f"with the Prefect API already running: b'/a {ratio_wa:.2f}x, b'/c {ratio_wc:.2f}x")
    print(
        f"orchestration overhead of (b): {b['overhead']:.1%}  "
        "= 1 - (worker seconds / workers + planning + publishing) / wall = 1 - "
        f"({b['worker_seconds']:.2f} / {b['workers']} + {b['plan_seconds']:.2f} + "
        f"{b['publish_seconds']:.2f}) / {b['wall']:.2f}"
    )
    print(
        "  (the share of (b)'s wall time spent outside reading, validating, scoring, writing "
        "and measuring drift: process and Prefect start-up, task dispatch, idle workers; "
        f"{b['overhead_chunks_only']:.1%} counting planning and publishing as overhead too, "
        "as the bench did up to commit d7d0dbf)"
    )
    print(_cpu_account("(b)", b))
    b_rss = {}
    for size, r in rss.items():
        b_rss[size] = r
        print(
            f"(b) peak RSS at {size:,} rows: max process {_mib(r['maxrss_kb'])}, "
            f"tree sum {_mib(r['tree_peak_kb'])}, tree PSS {_mib(r['tree_pss_peak_kb'])} "
            f"(the median run: wall {r['wall']:.1f} s of "
            f"{', '.join(f'{v:.1f}' for v in r.get('all', [r['wall']]))}; "
            f"{r['rows'] / r['wall']:,.0f} rows/s)"
        )
    if len(rss) == 2:
        print(_fixed_and_marginal(*(rss[s] for s in sorted(rss))))
    print(
        f"(b') orchestration overhead with the API already running: {w['overhead']:.1%} "
        f"= 1 - ({w['worker_seconds']:.2f} / {w['workers']} + {w['plan_seconds']:.2f} + "
        f"{w['publish_seconds']:.2f}) / {w['wall']:.2f} "
        f"({w['overhead_chunks_only']:.1%} with planning and publishing as overhead)"
    )
    print(_cpu_account("(b')", w))
    print(
        f"(e) batchscore score of one {small['rows']:,}-row partition: {small['wall']:.2f} s wall; "
        f"(e') with the API already running: {warm['small']['wall']:.2f} s"
    )
    print()
    print(
        f"load average at the end: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} "
        "(5 min): other work on the machine slows every measurement"
    )
    print("targets (2 cores):")
    checks = [
        ("(b) >= 3x the rows/s of (a)", ratio_ba >= 3, f"{ratio_ba:.2f}x"),
        ("(b) at least as fast as (c)", ratio_bc >= 1, f"{ratio_bc:.2f}x"),
        (
            "(b) peak memory <= 1/4 of (a)'s peak RSS (tree PSS sum)",
            b["tree_pss_peak_kb"] * 4 <= a["maxrss_kb"],
            f"tree PSS {b['tree_pss_peak_kb'] / a['maxrss_kb']:.3f} of (a), machine anonymous "
            f"memory growth {b['anon_growth_kb'] / a['anon_growth_kb']:.3f}, tree RSS sum "
            f"{b['tree_peak_kb'] / a['maxrss_kb']:.2f}, largest process "
            f"{b['maxrss_kb'] / a['maxrss_kb']:.2f}",
        ),
        (
            "orchestration overhead < 5%",
            b["overhead"] < 0.05,
            f"{b['overhead']:.1%} (API already running: {w['overhead']:.1%}; planning and "
            f"publishing counted as overhead: {b['overhead_chunks_only']:.1%})",
        ),
        (
            "small partition < 10 s wall",
            small["wall"] < 10,
            f"{small['wall']:.1f} s (API already running: {warm['small']['wall']:.1f} s)",
        ),
    ]
    if len(b_rss) == 2:
        lo, hi = (b_rss[s] for s in sorted(b_rss))
        growth = hi["tree_peak_kb"] / lo["tree_peak_kb"] - 1
        growth_max = hi["maxrss_kb"] / lo["maxrss_kb"] - 1
        growth_pss = hi["tree_pss_peak_kb"] / lo["tree_pss_peak_kb"] - 1
        checks.append(
            (
                f"(b) peak RSS within 10% between {min(b_rss):,} and {max(b_rss):,} rows",
                abs(growth) <= 0.10,
                f"tree sum {growth:+.1%}, tree PSS {growth_pss:+.1%}, max process "
                f"{growth_max:+.1%}",
            )
        )
    for name, ok, value in checks:
        print(f"  [{'met' if ok else 'NOT met'}] {name}: {value}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_runner":
        log, cmd = Path(sys.argv[2]), sys.argv[4:]
        print(json.dumps(_run_measured(cmd, log)))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] in ("_naive", "_bare", "_compile"):
        kind, workdir = sys.argv[1], Path(sys.argv[2])
        result = {"_naive": _naive, "_bare": _bare, "_compile": _compile}[kind](workdir)
        name = "compile.json" if kind == "_compile" else f"{kind}.json"
        (workdir / name).write_text(json.dumps(result))
        sys.exit(0)
    sys.exit(main())
