"""Benchmark: what `batchscore score` costs once the store holds years of scored partitions.

    .venv/bin/python bench/history.py --sizes 30,365,1000 [--s3] [--workdir DIR]

Trains the sample's model, scores one 300-row partition (with labels, so it has realised
performance) in a temporary store, then copies that partition's source and outputs under N
earlier dates, each `_SUCCESS` naming its own date's files (sizes kept), and each
performance `_SUCCESS` computed from its own labels (the last 5 days have none). Then, for
each N, times finding the work in this process (`find work`: discover, `partitions.pending`
and `performance.pending`, the median of three, requests per one), then two
`batchscore score` runs against a Prefect API already running: one with nothing pending,
and one after a new 300-row partition arrived. With `--s3` the source and store are on a
moto S3 server on 127.0.0.1, and the requests each run made are counted by method (a GET
with `list-type` is a LIST) from the server's log. Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # helpers, objectstore
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
BIN = ROOT / ".venv" / "bin" / "batchscore"
FIRST = dt.date(2020, 1, 1)
UNLABELLED = 5  # the newest days without labels yet


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds the command took, and its last line of output."""
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout.strip().rsplit("\n", 1)[-1]


def base(work: Path) -> Path:
    """A trained model and one scored 300-row partition (dt=FIRST), in `work`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from helpers import SAMPLE, write_config

    shutil.copytree(SAMPLE, work / "sample")
    write_config(
        work / "cfg.toml",
        (ROOT / "batchscore.toml").read_text(),
        storage={"source": "sample", "store": "store"},
    )
    run([str(BIN), "train", "--config", "cfg.toml"], work)
    rows = pq.read_table(SAMPLE / "incoming/dt=2026-10-01").slice(0, 300)
    labels = pq.read_table(SAMPLE / "labels/dt=2026-10-01")
    labels = labels.filter(pc.is_in(labels["customer_id"], rows["customer_id"]))
    for kind, table in (("incoming", rows), ("labels", labels)):
        (work / "one" / kind / f"dt={FIRST}").mkdir(parents=True)
        pq.write_table(table, work / "one" / kind / f"dt={FIRST}" / "part-0.parquet")
    text = (work / "cfg.toml").read_text().replace('source = "sample"', 'source = "one"')
    (work / "cfg.toml").write_text(text)
    run([str(BIN), "score", "--config", "cfg.toml"], work)
    return work


def history(work: Path, n: int, into: Path) -> None:
    """`into`/source and `into`/store: the base partition under n dates from FIRST on."""
    one, store = work / "one", work / "store"
    shutil.copytree(store / "models", into / "store" / "models")
    day0 = FIRST.isoformat()
    for i in range(n):
        day = (FIRST + dt.timedelta(days=i)).isoformat()
        for kind in ("incoming", "labels") if i < n - UNLABELLED else ("incoming",):
            shutil.copytree(one / kind / f"dt={day0}", into / "source" / kind / f"dt={day}")
        kinds = ("scores", "drift", "performance") if i < n - UNLABELLED else ("scores", "drift")
        for kind in kinds:
            target = into / "store" / kind / f"dt={day}"
            shutil.copytree(store / kind / f"dt={day0}", target)
            for manifest in ("_SUCCESS", "_COUNTS.json"):
                if (target / manifest).exists():  # its files, paths and partition: day's
                    text = (target / manifest).read_text().replace(day0, day)
                    (target / manifest).write_text(text)


def fix_performance(config_path: Path, n: int) -> None:
    """Each performance `_SUCCESS` computed from its labels as they are now listed (a copy
    or an upload has new modification times, which the fingerprint holds)."""
    from batchscore import performance
    from batchscore.config import load_config
    from batchscore.storage import Location

    config = load_config(str(config_path))
    store = Location(config.store)
    for i in range(n - UNLABELLED):
        day = (FIRST + dt.timedelta(days=i)).isoformat()
        done = store.read_json("performance", f"dt={day}", "_SUCCESS")
        done["computed_from"] = performance._fingerprint(config, day)
        store.write_json(done, "performance", f"dt={day}", "_SUCCESS")


def find_work(config_path: Path) -> float:
    """Seconds this process takes to find what a run would do (the find-partitions and
    find-labelled-partitions steps), the median of three."""
    from batchscore import partitions, performance
    from batchscore.config import load_config
    from batchscore.registry import Registry

    config = load_config(str(config_path))
    model = Registry(config.store, config.dataset.name).champion_ref()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        found = partitions.discover(config)
        files = {"listed": found.files} if hasattr(found, "files") else {}
        partitions.pending(config, model, found.partitions, False, **files)
        performance.pending(config)
        times.append(time.perf_counter() - started)
    return sorted(times)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30,365,1000")
    parser.add_argument("--s3", action="store_true", help="source and store on moto S3")
    parser.add_argument("--workdir", help="keep the data here instead of a temporary folder")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-history-"))
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    if not (work / "base" / "store").exists():
        base(work / "base")
    from contextlib import ExitStack

    from batchscore.prefect_api import one_api

    with ExitStack() as stack:
        os.environ["PREFECT_API_URL"] = stack.enter_context(one_api())
        from objectstore import RequestCounter

        requests = RequestCounter()
        if args.s3:
            from objectstore import moto_s3

            stack.enter_context(moto_s3())
            access = logging.getLogger("werkzeug")
            access.setLevel(logging.INFO)
            access.addHandler(requests)
        print("partitions  run            wall s  requests")
        for n in [int(s) for s in args.sizes.split(",")]:
            into = work / f"n{n}"
            shutil.rmtree(into, ignore_errors=True)
            history(work / "base", n, into)
            source, store = "source", "store"
            if args.s3:
                from objectstore import new_bucket, upload

                bucket = new_bucket()
                source, store = f"s3://{bucket}/source", f"s3://{bucket}/store"
                upload(into / "source", source)
                upload(into / "store", store)
            text = (work / "base" / "cfg.toml").read_text().replace('source = "one"', "")
            text = text.replace('store = "store"', f'source = "{source}"\nstore = "{store}"')
            (into / "cfg.toml").write_text(text)
            fix_performance(into / "cfg.toml", n)
            new = (FIRST + dt.timedelta(days=n)).isoformat()
            requests.seen.clear()
            found = find_work(into / "cfg.toml")
            seen = ", ".join(f"{k} {v // 3}" for k, v in sorted(requests.seen.items()))
            print(f"{n:>10}  {'find work':<12} {found:>8.2f}  {seen or '-'}", flush=True)
            for name in ("nothing new", "one new"):
                if name == "one new":
                    folder = work / "base" / "one" / "incoming" / f"dt={FIRST}"
                    if args.s3:
                        from objectstore import upload

                        upload(folder, f"{source}/incoming/dt={new}")
                    else:
                        shutil.copytree(folder, into / "source" / "incoming" / f"dt={new}")
                requests.seen.clear()
                seconds, said = run([str(BIN), "score", "--config", "cfg.toml"], into)
                seen = ", ".join(f"{k} {v}" for k, v in sorted(requests.seen.items()))
                print(f"{n:>10}  {name:<12} {seconds:>8.2f}  {seen or '-'}  ({said})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
