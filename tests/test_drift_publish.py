"""Publishing a partition's drift: the report, `_COUNTS.json` and `_report.html` appear
together; `rolling:N` merges earlier partitions' stored counts; `<store>/drift/` reads as one
table; `batchscore drift show` prints a stored report.

A real (tiny) LightGBM model with a real reference profile is registered in a temporary
store, and `publish_partition` is given chunk results whose drift counts were made with that
profile, as score workers make them. No Prefect server is needed.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from helpers import write_config

from batchscore.cli import main
from batchscore.config import ConfigError, load_config
from batchscore.drift_store import COUNTS_FILE, HTML_FILE, REPORT_FILE
from batchscore.partitions import Chunk, PartitionPlan, Piece
from batchscore.registry import Registry
from batchscore.scoring import ChunkResult, publish_partition, staging_location
from batchscore.storage import Location
from drift import DRIFT_REPORT_SCHEMA, ReferenceProfile, evaluate, merge_all

FEATURES = ["amount", "channel"]
DAYS = ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"]
CONFIG = """
[dataset]
name = "toy"
id_columns = ["id"]
features = ["amount", "channel"]
categorical = ["channel"]
label = "y"
task = "binary"

[storage]
source = "source"
store = "store"
"""


def _columns(rng: np.random.Generator, n: int, shift: float) -> dict[str, np.ndarray]:
    amount = rng.normal(50 + shift, 10, n)
    amount[rng.random(n) < 0.03] = np.nan
    channels = np.array(["web", "app", "shop", "phone"])
    p = np.array([0.4, 0.3, 0.2, 0.1]) + np.array([-1, 0, 0, 1]) * min(shift, 20) / 100
    return {"amount": amount, "channel": channels[rng.choice(4, n, p=p)].astype(object)}


@pytest.fixture
def store(tmp_path: Path):
    """A registered champion (tiny LightGBM + fitted reference) and a config; returns both."""
    rng = np.random.default_rng(7)
    reference = _columns(rng, 5_000, 0.0)
    scores = rng.beta(2, 5, 5_000)
    profile = ReferenceProfile.fit(reference, ["channel"], scores)
    x = np.column_stack([np.nan_to_num(reference["amount"]), rng.integers(0, 4, 5_000)])
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 4},
        lgb.Dataset(x, (rng.random(5_000) < 0.3).astype(int), feature_name=FEATURES),
        num_boost_round=2,
    )
    config_path = write_config(tmp_path / "toy.toml", CONFIG)
    config = load_config(config_path)
    registry = Registry(config.store, "toy")
    version = registry.register(
        booster.model_to_string(),
        {"schema": {"features": FEATURES, "vocabularies": {}}, "task": "binary"},
        {"reference.json": profile.to_json().encode()},
    )
    registry.promote(version, "test")
    return {"config_path": config_path, "profile": profile, "model": registry.ref(version)}


def _day_counts(profile: ReferenceProfile, day_index: int) -> list[dict]:
    """Two chunks' partial counts for one day, the later days shifted further."""
    rng = np.random.default_rng(100 + day_index)
    parts = []
    for n in (1_500, 2_500):
        columns = _columns(rng, n, shift=4.0 * day_index)
        parts.append(profile.count(columns, rng.beta(2 + 0.1 * day_index, 5, n)))
    return parts


def _publish(config, model, day: str, parts: list[dict]):
    rows = [next(iter(p.values())).n for p in parts]
    pieces = [Piece(f"incoming/dt={day}/part-{i}.parquet", (0,), n) for i, n in enumerate(rows)]
    chunks = tuple(Chunk(day, i, (p,)) for i, p in enumerate(pieces))
    plan = PartitionPlan(day, tuple(p.file for p in pieces), sum(rows), chunks)
    results = [
        ChunkResult(day, i, n, n, 0, drift_counts={f: c.to_dict() for f, c in p.items()})
        for i, (n, p) in enumerate(zip(rows, parts, strict=True))
    ]
    staging = staging_location(config, plan, model)
    for r in results:  # publishing checks a finished chunk's files are staged
        staging.write_parquet(
            pa.table({"score": pa.array([], pa.float64())}), "scores", f"part-{r.index:05d}.parquet"
        )
    return publish_partition(config, plan, model, results, run_id="test-run")


def _rows(store: Path, day: str) -> dict[tuple[str, str], dict]:
    table = pads.dataset(store / "drift" / f"dt={day}", format="parquet").to_table()
    return {(r["feature"], r["method"]): r for r in table.to_pylist()}


def test_rolling_reference_merges_the_previous_partitions_counts(store, tmp_path):
    config = load_config(
        write_config(store["config_path"], CONFIG, drift={"reference": "rolling:2"})
    )
    profile, model = store["profile"], store["model"]
    root = Path(config.store)
    # A partition scored by another model version: never part of this version's window.
    foreign = root / "drift" / "dt=2026-09-30"
    foreign.mkdir(parents=True)
    (foreign / COUNTS_FILE).write_text(
        json.dumps({"format": "batchscore.drift.counts/1", "model_version": "v0099", "counts": {}})
    )

    merged = {}
    outcomes = {}
    for i, day in enumerate(DAYS):
        parts = _day_counts(profile, i)
        merged[day] = {f: merge_all(p[f] for p in parts) for f in profile}
        outcomes[day] = _publish(config, model, day, parts)

    # The first day has no earlier partition of this version: the training reference.
    first = _rows(root, DAYS[0])
    assert {r["reference"] for r in first.values()} == {f"training:{model.version}"}
    assert all("no partition before 2026-10-01" in r["reason"] for r in first.values())
    assert outcomes[DAYS[0]].drift_warnings
    # The second has one: rolling:2 over what there is, said in the reason column.
    second = _rows(root, DAYS[1])
    assert {r["reference"] for r in second.values()} == {"rolling:2"}
    assert all("only 1 partition(s)" in r["reason"] for r in second.values())
    # Later days: exactly the statistics of the two previous days' merged counts.
    for day, window in ((DAYS[2], DAYS[0:2]), (DAYS[3], DAYS[1:3])):
        reference = ReferenceProfile(
            {f: profile[f].with_counts(merge_all(merged[w][f] for w in window)) for f in profile}
        )
        expected = evaluate(reference, merged[day])
        rows = _rows(root, day)
        assert len(rows) == len(expected) == 2 * 3  # amount, channel, __score__ x 2 methods
        assert all(r.status == "ok" for r in expected if r.method != "ks")
        for result in expected:
            row = rows[result.feature, result.method]
            assert row["reference"] == "rolling:2" and not outcomes[day].drift_warnings
            # A KS the training grid cannot resolve for this window is not computed, with why
            # (drift.methods.ks_error_bound); everything else is a number.
            assert (row["status"], row["reason"]) == (result.status, result.reason)
            assert result.status == "ok" or "cannot resolve" in result.reason
            assert row["statistic"] == result.statistic
            assert row["p_value"] == result.p_value
            assert row["n_reference"] == result.n_reference
            assert row["drifted"] == result.drifted

    # The stored counts are the partition's merged counts, in the champion's bins.
    stored = json.loads((root / "drift" / f"dt={DAYS[3]}" / COUNTS_FILE).read_text())
    assert stored["model_version"] == model.version and stored["rows"] == 4_000
    assert stored["counts"]["amount"] == merged[DAYS[3]]["amount"].to_dict()


@pytest.mark.parametrize("keep", [0.0, 0.5])
def test_a_truncated_counts_file_is_left_out_of_the_rolling_reference_and_named(store, keep):
    """A `_COUNTS.json` truncated after its model version failed the publishing of every
    later partition with a bare JSONDecodeError, and one truncated before it was left out
    without a word; neither qualifies now, and the report's warning names it."""
    config, counts, window = _rolling_with_damaged_counts(
        store, lambda data: data[: int(len(data) * keep)]
    )

    assert window.name == "rolling:2" and window.partitions == (DAYS[0], DAYS[1])
    assert window.warning.startswith(f"rolling:2: left out {counts}: not valid JSON ")
    outcome = _publish(config, store["model"], DAYS[3], _day_counts(store["profile"], 3))
    assert any(str(counts) in w for w in outcome.drift_warnings)


def _rolling_with_damaged_counts(store, damage) -> tuple:
    """Three days published under `rolling:2`, the third's `_COUNTS.json` then damaged
    (`damage`: its bytes to what is written instead); the config, that file, and the
    rolling window the fourth day gets."""
    from batchscore.drift_store import rolling_reference

    config = load_config(
        write_config(store["config_path"], CONFIG, drift={"reference": "rolling:2"})
    )
    profile, model = store["profile"], store["model"]
    for i, day in enumerate(DAYS[:3]):
        _publish(config, model, day, _day_counts(profile, i))
    counts = Path(config.store) / "drift" / f"dt={DAYS[2]}" / COUNTS_FILE
    counts.write_bytes(damage(counts.read_bytes()))
    window = rolling_reference(Location(config.store), DAYS[3], profile, model.version, 2)
    return config, counts, window


def _first_count_as(value):
    def edit(document: dict) -> dict:
        feature = sorted(document["counts"])[0]
        counts = {**document["counts"][feature], "bin_counts": value}
        return {**document, "counts": {**document["counts"], feature: counts}}

    return edit


def _without_sketch(document: dict, feature: str) -> dict:
    return {k: v for k, v in document["counts"][feature].items() if k != "sketch_counts"}


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: {}, "key 'format' is missing"),
        (lambda d: {k: v for k, v in d.items() if k != "model_version"}, "key 'model_version' is"),
        (lambda d: {**d, "model_version": None}, "key 'model_version' holds null, not a string"),
        (lambda d: {**d, "counts": "x"}, """key 'counts' holds a string ("x"), not an object"""),
        (
            lambda d: {**d, "counts": {f: {} for f in d["counts"]}},
            "key 'counts.amount.kind' is missing",
        ),
        (_first_count_as("x"), """key 'counts.__score__.bin_counts' holds a string ("x"), not"""),
        (_first_count_as([1, None]), "key 'counts.__score__.bin_counts[1]' holds null, not an"),
        (  # numeric counts without their sketch: told apart from categorical ones by kind
            lambda d: {**d, "counts": {**d["counts"], "amount": _without_sketch(d, "amount")}},
            "key 'counts.amount.sketch_counts' is missing",
        ),
        (
            lambda d: {**d, "counts": {**d["counts"], "channel": {"kind": "categorical"}}},
            "key 'counts.channel.reference_id' is missing",
        ),
    ],
)
def test_a_counts_file_without_a_key_is_left_out_of_the_rolling_reference_and_named(
    store, damage, problem
):
    """A `_COUNTS.json` of `{}`, or without its model version, was left out without a word;
    one whose counts are not counts failed the publishing of every later partition with a
    bare AttributeError, ValueError or TypeError from decoding them."""
    config, counts, window = _rolling_with_damaged_counts(
        store, lambda data: json.dumps(damage(json.loads(data))).encode()
    )
    profile, model = store["profile"], store["model"]

    assert window.name == "rolling:2" and window.partitions == (DAYS[0], DAYS[1])
    assert window.warning.startswith(f"rolling:2: left out {counts}: {problem}")
    outcome = _publish(config, model, DAYS[3], _day_counts(profile, 3))
    assert any(str(counts) in w for w in outcome.drift_warnings)


@pytest.fixture
def published(store) -> dict:
    """Three days published with the training reference."""
    config = load_config(store["config_path"])
    outcomes = [
        _publish(config, store["model"], day, _day_counts(store["profile"], i))
        for i, day in enumerate(DAYS[:3])
    ]
    return {**store, "config": config, "outcomes": outcomes}


def test_drift_folder_reads_as_one_table_with_html_beside_it(published):
    model = published["model"]
    root = Path(published["config"].store) / "drift"
    for day, outcome in zip(DAYS, published["outcomes"], strict=False):
        assert outcome.drift_report == str(root / f"dt={day}" / HTML_FILE)
        names = sorted(p.name for p in (root / f"dt={day}").iterdir())
        assert names == sorted([COUNTS_FILE, HTML_FILE, REPORT_FILE])
    # _COUNTS.json and _report.html start with "_": pyarrow.dataset skips them.
    table = pads.dataset(root, format="parquet", partitioning="hive").to_table()
    assert table.schema.names[: len(DRIFT_REPORT_SCHEMA)] == DRIFT_REPORT_SCHEMA.names
    assert table.num_rows == 3 * 6
    assert set(table.column("reference").to_pylist()) == {f"training:{model.version}"}
    html = (root / f"dt={DAYS[2]}" / HTML_FILE).read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and "<script" not in html


def test_readme_queries_find_the_drifted_rows_beside_not_computed_ones(published):
    """README's pandas and DuckDB queries, as written, on a folder where a feature could not
    be measured (`drifted` null): `query("drifted")` raised on the nulls."""
    import duckdb

    config, profile = published["config"], published["profile"]
    rng = np.random.default_rng(9)
    columns = _columns(rng, 2_000, shift=40.0)
    columns["amount"][:] = np.nan  # all missing: KS and PSI of amount are not_computed
    _publish(config, published["model"], DAYS[3], [profile.count(columns, rng.beta(2, 5, 2_000))])
    root = Path(config.store) / "drift"
    rows = pads.dataset(root, format="parquet", partitioning="hive").to_table().to_pylist()
    assert any(r["status"] == "not_computed" and r["drifted"] is None for r in rows)
    expected = sorted((str(r["dt"]), r["feature"], r["method"]) for r in rows if r["drifted"])
    assert expected  # the shifted days drift

    frame = pads.dataset(root, partitioning="hive").to_table().to_pandas().query("drifted == True")
    assert sorted(zip(frame.dt.astype(str), frame.feature, frame.method, strict=True)) == expected
    found = duckdb.sql(
        "select dt, feature, method, statistic, threshold "
        f"from read_parquet('{root}/*/*.parquet', hive_partitioning=true) where drifted"
    ).fetchall()
    assert sorted((str(dt), f, m) for dt, f, m, _, _ in found) == expected
    total = duckdb.sql(
        f"select count(*) from read_parquet('{root}/*/*.parquet', hive_partitioning=true)"
    ).fetchall()
    assert total == [(len(rows),)] and len(rows) == 4 * 6


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_drift_show_prints_the_latest_or_given_partition(published):
    store, config, model = published, published["config"], published["model"]
    code, stdout, stderr = _run("drift", "show", "--config", str(store["config_path"]))
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith(f"partition {DAYS[2]}  reference training:{model.version}")
    assert lines[1].split() == ["feature", "method", "statistic", "threshold", "drifted"]
    table = [line.split() for line in lines[3:9]]
    assert len(table) == 6
    flags = [row[4] == "DRIFTED" for row in table]
    assert flags == sorted(flags, reverse=True)
    assert any(flags), "day 3 is shifted enough to drift"
    assert lines[-1] == f"HTML report: {Path(config.store) / 'drift' / f'dt={DAYS[2]}' / HTML_FILE}"

    code, stdout, _ = _run(
        "drift", "show", "--config", str(store["config_path"]), "--partition", DAYS[0]
    )
    assert code == 0 and stdout.startswith(f"partition {DAYS[0]}")
    code, stdout, stderr = _run(
        "drift", "show", "--config", str(store["config_path"]), "--partition", "2026-12-31"
    )
    assert code == 1 and stdout == ""
    assert "no drift report for partition 2026-12-31" in stderr and DAYS[0] in stderr


@pytest.mark.parametrize("value", ["rolling:0", "rolling:", "rolling:x", "window"])
def test_bad_reference_window_is_a_config_error(tmp_path, value):
    path = write_config(tmp_path / "c.toml", CONFIG, drift={"reference": value})
    with pytest.raises(ConfigError, match=r"\[drift\] reference: must be \"training\" or"):
        load_config(path)
    assert (
        load_config(
            write_config(tmp_path / "ok.toml", CONFIG, drift={"reference": "rolling:7"})
        ).drift.rolling_window
        == 7
    )
    assert load_config(write_config(tmp_path / "t.toml", CONFIG)).drift.rolling_window is None
