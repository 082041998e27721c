"""Crash safety and concurrent writers, with real processes killed with SIGKILL.

`batchscore score` runs as a subprocess against the session's Prefect API; it is killed at
seeded random moments (the flow process with its workers, or one worker), and after every
kill a reader of <store>/scores/ must see only complete partitions. A final run must then
give exactly the scores of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import write_config

from batchscore.config import load_config
from batchscore.training import train
from flows.score import score

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
BIN = Path(sys.executable).parent
DAYS = [f"2026-10-{d:02d}" for d in range(1, 7)]


@pytest.fixture
def stores(tmp_path, prefect_api):
    """Two stores holding the same trained model over the same six partitions."""
    source = tmp_path / "source"
    for day in DAYS:  # labelled too: the model is trained on them
        for kind in ("incoming", "labels"):
            shutil.copytree(SAMPLE / kind / f"dt={day}", source / kind / f"dt={day}")
    configs = {}
    for name in ("reference", "victim"):
        configs[name] = write_config(
            tmp_path / f"{name}.toml",
            (ROOT / "batchscore.toml").read_text(),
            storage={"source": str(source), "store": str(tmp_path / name)},
            scoring={"chunk_rows": 5_000, "workers": 2},
            retrain={"on_drift": "off", "lightgbm": {"max_rounds": 40}, "window_days": 6},
        )
    train(load_config(configs["reference"]))
    shutil.copytree(tmp_path / "reference" / "models", tmp_path / "victim" / "models")
    return {"configs": configs, "tmp": tmp_path}


def _start(config: Path) -> subprocess.Popen:
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}
    return subprocess.Popen(
        [str(BIN / "batchscore"), "score", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _assert_readers_see_only_complete_partitions(store: Path) -> None:
    for folder in sorted((store / "scores").glob("*")):
        manifest = json.loads((folder / "_SUCCESS").read_text())  # complete, or not there
        names = sorted(p.name for p in folder.iterdir())
        assert all(
            n == "_SUCCESS" or (n.startswith("part-") and n.endswith(".parquet")) for n in names
        ), names
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("*.parquet"))
        assert rows == manifest["rows_scored"]


def _scores(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for day in DAYS:
        table = pq.read_table(store / "scores" / f"dt={day}").sort_by("customer_id")
        out[day] = (table.column("customer_id").to_numpy(), table.column("score").to_numpy())
    return out


def test_kill_at_random_points_then_resume_gives_the_uninterrupted_scores(stores):
    configs = stores["configs"]
    victim = Path(load_config(configs["victim"]).store)
    assert score(config=str(configs["reference"]), return_state=True).is_completed()

    rng = np.random.default_rng(20261121)
    kills = []
    # First kill: as soon as a chunk has finished, so that the next run must reuse it.
    proc = _start(configs["victim"])
    deadline = time.time() + 180
    while not list((victim / "_staging").glob("*/chunks/*.json")) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kills.append("flow after first chunk")
    finished = {p.parent.parent.name for p in (victim / "_staging").glob("*/chunks/*.json")}
    assert finished, "no chunk finished before the first kill"
    _assert_readers_see_only_complete_partitions(victim)

    for i in range(5):
        proc = _start(configs["victim"])
        time.sleep(float(rng.uniform(2.0, 14.0)))
        if i % 2 == 0 and (workers := _children(proc.pid)):
            os.kill(int(rng.choice(workers)), signal.SIGKILL)  # one worker dies
            kills.append("worker")
            proc.wait(timeout=300)
        else:
            os.killpg(proc.pid, signal.SIGKILL)  # the flow process and its workers
            kills.append("flow")
            proc.wait()
        _assert_readers_see_only_complete_partitions(victim)

    final = _start(configs["victim"])
    output, _ = final.communicate(timeout=600)
    assert final.returncode == 0, output
    _assert_readers_see_only_complete_partitions(victim)
    assert len(kills) >= 6

    expected, actual = _scores(victim.parent / "reference"), _scores(victim)
    for day in DAYS:
        np.testing.assert_array_equal(actual[day][0], expected[day][0])
        np.testing.assert_array_equal(actual[day][1], expected[day][1])
    reused = sum(
        json.loads((victim / "scores" / f"dt={d}" / "_SUCCESS").read_text())["reused_chunks"]
        for d in DAYS
    )
    # The chunks finished before the first kill were reused by whichever attempt
    # published their partition, not recomputed.
    assert reused >= 1


def test_two_writers_never_score_the_same_partition_twice(stores):
    configs = stores["configs"]
    store = Path(load_config(configs["victim"]).store)
    first, second = _start(configs["victim"]), _start(configs["victim"])
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    scored = []
    for output in outputs:
        scored += [
            line.split()[0]
            for line in output.splitlines()
            if line[:4] == "2026" and line.split()[1] == "scored"
        ]
    assert sorted(scored) == DAYS  # every partition once, none by both
    run_ids = {
        json.loads((store / "scores" / f"dt={d}" / "_SUCCESS").read_text())["run_id"] for d in DAYS
    }
    assert 1 <= len(run_ids) <= 2
    for day in DAYS:
        table = pq.read_table(store / "scores" / f"dt={day}")
        assert len(set(table.column("customer_id").to_pylist())) == table.num_rows
