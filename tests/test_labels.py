"""Labels as delivered, not as hoped: files delivered twice, conflicting labels, and the
rule that training, its holdout and realised performance count the same rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE, copy_sample, write_config

from batchscore import partitions, performance, scoring
from batchscore.config import load_config
from batchscore.labels import LabelError
from batchscore.registry import Registry
from batchscore.training import TrainingError, train
from flows.score import score

DAYS = ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"]  # fit, fit, validation, holdout


@pytest.fixture
def four_days(tmp_path: Path):
    """The sample's first four labelled days, trained fast: the labels are under test."""
    copy_sample(tmp_path / "source", DAYS)
    path = write_config(
        tmp_path / "batchscore.toml",
        (SAMPLE.parent.parent / "batchscore.toml").read_text(),
        storage={"source": "source", "store": "store"},
        retrain={"lightgbm": {"max_rounds": 30}, "on_drift": "off"},
    )
    return load_config(path)


def _labels(config, day: str) -> Path:
    return Path(config.source) / "labels" / f"dt={day}"


def _deliver_twice(config, day: str, flip: int = 0) -> pa.Table:
    """A second copy of the day's labels file, its first `flip` labels turned over."""
    original = pq.read_table(_labels(config, day) / "part-0.parquet")
    label = config.dataset.label
    values = original.column(label)
    flipped = pa.concat_arrays(
        [pc.subtract(pa.scalar(1, values.type), values.slice(0, flip)).combine_chunks()]
        + [values.slice(flip).combine_chunks()]
    )
    copy = original.set_column(original.schema.get_field_index(label), label, flipped)
    pq.write_table(copy, _labels(config, day) / "part-0-again.parquet")
    return original


def _score(config, day: str) -> None:
    """Score and publish one day in this process, as the flow's tasks do."""
    ref = Registry(config.store, config.dataset.name).champion_ref()
    plan = partitions.plan_partition(config, day, ref)
    results = [scoring.score_chunk(config, c, ref, plan, "run") for c in plan.chunks]
    scoring.publish_partition(config, plan, ref, results, "run")


def test_a_labels_file_delivered_twice_counts_once_in_training_holdout_and_performance(
    four_days,
):
    config = four_days
    clean = train(config, reason="clean labels")
    assert clean.promoted and not clean.warnings
    _score(config, DAYS[1])
    before = performance.measure(config, DAYS[1], "run").rows

    for day in (DAYS[1], DAYS[-1]):  # a fit day and the holdout day
        _deliver_twice(config, day)
    again = train(config, reason="labels delivered twice")
    # The same rows, so the same model: nothing dropped, nothing counted twice.
    assert again.rows == clean.rows
    assert again.challenger_metrics == pytest.approx(clean.challenger_metrics, rel=1e-12)
    assert again.window == {"from": DAYS[0], "to": DAYS[-1]}
    assert [w.split(":")[0] for w in again.warnings] == [f"labels/dt={d}" for d in DAYS[1::2]]
    assert "repeat an earlier row's id and label" in again.warnings[0]
    meta = Registry(config.store, config.dataset.name).metadata(again.version)
    assert meta["warnings"] == again.warnings

    measured = performance.measure(config, DAYS[1], "run")
    assert [(r["metric"], r["n_labelled"], r["n_joined"]) for r in measured.rows] == [
        (r["metric"], r["n_labelled"], r["n_joined"]) for r in before
    ]
    assert [r["value"] for r in measured.rows] == pytest.approx([r["value"] for r in before])
    assert measured.notes and "count once" in measured.notes[0]


def test_ids_with_conflicting_labels_are_left_out_counted_and_named(four_days):
    config = four_days
    clean = train(config, reason="clean labels")
    _score(config, DAYS[0])
    before = performance.measure(config, DAYS[0], "run").rows[0]
    original = _deliver_twice(config, DAYS[0], flip=3)

    result = train(config, reason="three conflicting labels")
    assert result.rows["fit"] == clean.rows["fit"] - 3
    ids = original.column("customer_id").slice(0, 3).to_pylist()
    repeated, warning = result.warnings
    rows = original.num_rows
    assert repeated == (
        f"labels/dt={DAYS[0]}: {rows - 3:,} row(s) repeat an earlier row's id and label "
        "(a file delivered twice?) and count once"
    )
    assert warning == (
        f"labels/dt={DAYS[0]}: 3 id(s) have conflicting labels in column 'churned' and are "
        f"left out: customer_id {', '.join(map(str, sorted(ids)))}"
    )

    measured = performance.measure(config, DAYS[0], "run")
    row = measured.rows[0]
    assert row["n_labelled"] == before["n_labelled"] - 3
    assert row["n_joined"] == before["n_joined"] - 3
    assert measured.notes[-1] == warning


def test_a_day_whose_every_label_conflicts_is_left_out_with_the_reason(four_days):
    config = four_days
    _deliver_twice(config, DAYS[1], flip=10**9)  # every label turned over
    result = train(config, reason="one day unusable")
    window = Registry(config.store, config.dataset.name).metadata(result.version)
    assert window["training_window"]["partitions"] == [DAYS[0], *DAYS[2:]]
    assert result.warnings[0].startswith(f"labels/dt={DAYS[1]}: ")
    assert "have conflicting labels" in result.warnings[0]
    assert result.warnings[1].startswith(f"dt={DAYS[1]}: no labelled rows (0 usable label(s)")
    assert result.warnings[1].endswith("left out of training")

    shutil.rmtree(_labels(config, DAYS[0]))  # now too few days: nothing trained, and why
    skipped = train(config, reason="too few days")
    assert skipped.status == "skipped"
    assert "2 labelled partition(s)" in skipped.decision
    assert f"(1 more left out: {DAYS[1]})" in skipped.decision


def test_a_labels_file_without_the_label_column_is_named_with_the_columns_it_has(four_days):
    config = four_days
    train(config, reason="clean labels")
    _score(config, DAYS[2])
    path = _labels(config, DAYS[2]) / "part-0.parquet"
    pq.write_table(pq.read_table(path).rename_columns(["customer_id", "label"]), path)
    message = (
        f"labels/dt={DAYS[2]}/part-0.parquet has no column 'churned' ([dataset] label); "
        "it has: customer_id, label"
    )
    with pytest.raises(TrainingError) as trained:
        train(config, reason="renamed label")
    assert str(trained.value) == message
    with pytest.raises(LabelError) as measured:
        performance.measure(config, DAYS[2], "run")
    assert str(measured.value) == message

    pq.write_table(pa.table({"id": [1], "y": [0]}), path)
    with pytest.raises(LabelError, match="has no column 'customer_id' .* no column 'churned'"):
        performance.measure(config, DAYS[2], "run")


def test_label_ids_of_another_integer_type_join_and_string_ids_are_named_with_both_types(
    four_days,
):
    config = four_days
    clean = train(config, reason="clean labels")
    _score(config, DAYS[2])
    before = performance.measure(config, DAYS[2], "run").rows[0]
    path = _labels(config, DAYS[2]) / "part-0.parquet"
    labels = pq.read_table(path)
    ids = labels.column("customer_id")

    # int32 ids are the same ids as the rows' int64 (Arrow joins identical types only).
    pq.write_table(labels.set_column(0, "customer_id", ids.cast(pa.int32())), path)
    assert performance.measure(config, DAYS[2], "run").rows[0]["n_joined"] == before["n_joined"]
    assert train(config, reason="int32 label ids").rows == clean.rows

    as_text = pa.array([str(i) for i in ids.to_pylist()])
    pq.write_table(labels.set_column(0, "customer_id", as_text), path)
    problem = (
        "id column 'customer_id' has type string, but {} has int64: integer and string ids "
        "never compare equal, so no label would match a row; fix the labels' export"
    )
    with pytest.raises(TrainingError) as trained:
        train(config, reason="string label ids")
    assert str(trained.value) == (
        f"labels/dt={DAYS[2]}/part-0.parquet: " + problem.format(f"incoming/dt={DAYS[2]}")
    )
    with pytest.raises(LabelError) as measured:
        performance.measure(config, DAYS[2], "run")
    assert str(measured.value) == (
        f"labels/dt={DAYS[2]}/part-0.parquet: " + problem.format(f"scores/dt={DAYS[2]}")
    )


def test_labels_that_cannot_be_measured_do_not_fail_the_score_run(four_days, prefect_api):
    config = four_days
    store = Path(config.store)
    train(config, reason="first")
    path = _labels(config, DAYS[1]) / "part-0.parquet"
    labels = pq.read_table(path)
    as_text = pa.array([str(i) for i in labels.column("customer_id").to_pylist()])
    pq.write_table(labels.set_column(0, "customer_id", as_text), path)

    state = score(config=config.path, return_state=True)
    assert state.is_completed(), state.message
    assert sorted(o["partition"] for o in state.result() if o["status"] == "scored") == DAYS
    assert all((store / "scores" / f"dt={d}" / "_SUCCESS").exists() for d in DAYS)
    assert state.message.startswith(
        f"4 partition(s) scored; realised performance not measured for 1 partition(s) "
        f"({DAYS[1]}): {DAYS[1]}: labels/dt={DAYS[1]}/part-0.parquet: id column 'customer_id' "
        f"has type string, but scores/dt={DAYS[1]} has int64"
    )
    measured = sorted(p.name for p in (store / "performance").iterdir())
    assert measured == [f"dt={d}" for d in DAYS if d != DAYS[1]]


def _strict_json(path: Path) -> dict:
    """A JSON file as any parser reads it: NaN and Infinity are not JSON."""

    def refuse(constant: str):
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_holdout_of_one_class_records_auc_as_null_with_the_reason_and_the_gate_says_why(
    four_days,
):
    config = four_days
    train(config, reason="first")
    _score(config, DAYS[-1])
    path = _labels(config, DAYS[-1]) / "part-0.parquet"
    labels = pq.read_table(path)
    no_churn = pa.array([0] * labels.num_rows, labels.column("churned").type)
    pq.write_table(labels.set_column(1, "churned", no_churn), path)
    why = "the labels hold one class only (0); AUC needs both"

    result = train(config, reason="holdout of one class")
    assert result.status == "registered"
    assert result.challenger_metrics["auc"] is None and result.champion_metrics["auc"] is None
    assert result.undefined_metrics == {"auc": why}
    assert result.decision == (
        f"auc: undefined on the holdout {DAYS[-1]}: {why}. v0002 not promoted: it cannot be "
        "compared with champion v0001 (train with --force to promote it, or set [retrain] "
        "metric to one the holdout defines); v0002 is the same model as v0001, byte for byte"
    )  # only the holdout's labels changed: the rows it is fitted and stopped on did not
    models = Path(config.store) / "models" / "churn"
    meta = _strict_json(models / "v0002" / "metadata.json")
    assert meta["metrics"]["auc"] is None and meta["champion_metrics"]["auc"] is None
    assert meta["undefined_metrics"] == {"auc": why}
    assert meta["metrics"]["brier"] > 0
    records = [_strict_json(p) for p in sorted((models / "retrains").glob("*.json"))]
    assert records[-1]["challenger_metrics"]["auc"] is None
    assert records[-1]["undefined_metrics"] == {"auc": why}

    forced = train(config, reason="on purpose", force=True)
    assert forced.promoted
    assert forced.decision == "forced: on purpose; v0003 is the same model as v0001, byte for byte"

    measured = performance.measure(config, DAYS[-1], "run")
    assert {r["metric"]: r["value"] for r in measured.rows}["auc"] is None
    assert f"dt={DAYS[-1]}, scores of v0001: auc undefined: {why}" in measured.notes
    done = _strict_json(Path(config.store) / "performance" / f"dt={DAYS[-1]}" / "_SUCCESS")
    assert done["undefined_metrics"] == {"v0001": {"auc": why}}


def test_a_day_without_incoming_rows_or_without_label_files_is_left_out_with_a_warning(four_days):
    config = four_days
    incoming = Path(config.source) / "incoming" / f"dt={DAYS[0]}"
    shutil.rmtree(incoming)
    result = train(config, reason="a day's rows removed")
    assert result.promoted and result.window == {"from": DAYS[1], "to": DAYS[-1]}
    assert result.warnings == [
        f"dt={DAYS[0]}: labels, but no incoming rows (no Parquet files under {incoming}); "
        "left out of training"
    ]

    # A labels folder without files yet (made before its files were copied in): the same.
    _score(config, DAYS[1])
    for path in _labels(config, DAYS[1]).iterdir():
        path.unlink()
    assert DAYS[1] not in performance.pending(config)
    skipped = train(config, reason="two days left out")
    assert skipped.status == "skipped"
    assert f"(2 more left out: {DAYS[0]}, {DAYS[1]})" in skipped.decision
    assert skipped.warnings[1] == (
        f"dt={DAYS[1]}: no labels (no Parquet files under {_labels(config, DAYS[1])}); "
        "left out of training"
    )


def test_a_labelled_days_file_without_a_feature_or_of_another_type_is_named_by_training(
    four_days,
):
    """Training reads every labelled day's incoming files; one that lacks a feature, or
    holds one of a type no feature can have, is named with its column, as a score run
    names it when it holds the partition. (It failed in pyarrow's read with "No match for
    FieldRef.Name(...)" and the file's schema, or, for types that pass each file's check
    but do not combine, with an uncaught ArrowTypeError.)"""
    config = four_days
    incoming = Path(config.source) / "incoming" / f"dt={DAYS[1]}"
    rows = pq.read_table(incoming / "part-0.parquet")
    half = rows.num_rows // 2
    pq.write_table(rows.slice(0, half), incoming / "part-0.parquet")
    pq.write_table(rows.slice(half).drop_columns(["age"]), incoming / "part-1.parquet")
    with pytest.raises(TrainingError) as trained:
        train(config, reason="a feature missing from one file")
    assert str(trained.value) == (
        f"cannot train on incoming/dt={DAYS[1]}: part-1.parquet: missing column 'age' "
        "(required as an id or feature). Fix the files (or [dataset] in the config), or move "
        f"its labels (labels/dt={DAYS[1]}) aside to train without that day"
    )

    at = rows.schema.get_field_index("age")
    text = pc.cast(rows.column("age"), pa.string())[half:]
    as_text = rows.slice(half).set_column(at, "age", text)
    pq.write_table(as_text, incoming / "part-1.parquet")
    with pytest.raises(TrainingError, match=r": part-1.parquet: column 'age' has type string, "):
        train(config, reason="a feature of another type in one file")

    # Each file passes on its own (a categorical may be text or integers), together not.
    at = rows.schema.get_field_index("plan")
    codes = pc.cast(pc.utf8_length(rows.column("plan")), pa.int64())[half:]
    pq.write_table(rows.slice(half).set_column(at, "plan", codes), incoming / "part-1.parquet")
    with pytest.raises(TrainingError, match=r"its files' columns have types that do not combine"):
        train(config, reason="a categorical as text in one file, integers in another")

    # A reason every file shares (a column the config names and no file has) is said once.
    pq.write_table(rows.slice(0, half).drop_columns(["age"]), incoming / "part-0.parquet")
    pq.write_table(rows.slice(half).drop_columns(["age"]), incoming / "part-1.parquet")
    with pytest.raises(TrainingError) as trained:
        train(config, reason="a feature no file has")
    assert str(trained.value).startswith(
        f"cannot train on incoming/dt={DAYS[1]}: part-0.parquet, part-1.parquet: missing "
        "column 'age' (required as an id or feature). "
    )


def test_a_category_dictionary_encoded_in_some_files_or_days_trains_as_plain_text(four_days):
    """A pandas `category` column is written dictionary-encoded; a score run scores such a
    partition beside plain-text files. Training failed on it: within a day with "its files'
    columns have types that do not combine", across days with an uncaught ArrowTypeError
    (`batchscore train` exited 1 with a traceback)."""
    config = four_days
    clean = train(config, reason="plain text")

    incoming = Path(config.source) / "incoming"
    rows = pq.read_table(incoming / f"dt={DAYS[0]}" / "part-0.parquet")
    at, half = rows.schema.get_field_index("plan"), rows.num_rows // 2
    as_dictionary = rows.set_column(at, "plan", pc.dictionary_encode(rows.column("plan")))
    pq.write_table(as_dictionary.slice(0, half), incoming / f"dt={DAYS[0]}" / "part-0.parquet")
    large = rows.set_column(at, "plan", rows.column("plan").cast(pa.large_string()))
    pq.write_table(large.slice(half), incoming / f"dt={DAYS[0]}" / "part-1.parquet")
    day = pq.read_table(incoming / f"dt={DAYS[1]}" / "part-0.parquet")
    at = day.schema.get_field_index("contract")
    encoded = day.set_column(at, "contract", pc.dictionary_encode(day.column("contract")))
    pq.write_table(encoded, incoming / f"dt={DAYS[1]}" / "part-0.parquet")

    again = train(config, reason="dictionary-encoded categories")
    assert again.rows == clean.rows
    assert again.challenger_metrics == pytest.approx(clean.challenger_metrics, rel=1e-12)

    # Integers in one day where the others hold text are still refused, and named.
    codes = pc.cast(pc.utf8_length(day.column("contract")), pa.int64())
    as_codes = day.set_column(at, "contract", codes)
    pq.write_table(as_codes, incoming / f"dt={DAYS[1]}" / "part-0.parquet")
    with pytest.raises(TrainingError, match=rf"cannot train on incoming/dt={DAYS[1]}: its column"):
        train(config, reason="a categorical as integers on one day")


def test_labels_delivered_as_booleans_in_some_files_or_days_count_as_0_and_1(four_days):
    """One export writes a binary label as booleans, another as 0/1: Arrow combines neither
    bool with int8, and `batchscore train` (and realised performance) failed with an
    uncaught ArrowTypeError ("Unable to merge: Field churned has incompatible types")."""
    config = four_days
    clean = train(config, reason="0/1 labels")
    _score(config, DAYS[1])
    before = performance.measure(config, DAYS[1], "run").rows

    def as_booleans(table: pa.Table) -> pa.Table:
        return table.set_column(1, "churned", table.column("churned").cast(pa.bool_()))

    path = _labels(config, DAYS[1]) / "part-0.parquet"
    labels = pq.read_table(path)
    half = labels.num_rows // 2
    pq.write_table(labels.slice(0, half), path)
    pq.write_table(as_booleans(labels.slice(half)), _labels(config, DAYS[1]) / "part-1.parquet")
    whole_day = _labels(config, DAYS[2]) / "part-0.parquet"
    pq.write_table(as_booleans(pq.read_table(whole_day)), whole_day)

    again = train(config, reason="boolean labels")
    assert again.rows == clean.rows
    assert again.challenger_metrics == pytest.approx(clean.challenger_metrics, rel=1e-12)
    measured = performance.measure(config, DAYS[1], "run").rows
    assert [(r["metric"], r["n_joined"]) for r in measured] == [
        (r["metric"], r["n_joined"]) for r in before
    ]
    assert [r["value"] for r in measured] == pytest.approx([r["value"] for r in before])

    # Labels of no common type (text beside numbers) are named, not a traceback.
    text = labels.slice(half).set_column(1, "churned", pa.array(["0"] * (labels.num_rows - half)))
    pq.write_table(text, _labels(config, DAYS[1]) / "part-1.parquet")
    with pytest.raises(TrainingError, match=rf"labels/dt={DAYS[1]}: its files' columns have"):
        train(config, reason="text labels")


def test_a_numeric_feature_of_other_types_in_some_files_or_days_trains_as_numbers(four_days):
    """A flag exported as booleans one day and as 0/1 another, or a count as a decimal in
    one file: a score run scores such files (every number is a float64 to the model), and
    training refused them ("bool vs int64", "Precision is not great enough") with exit 2."""
    config = four_days
    incoming = Path(config.source) / "incoming"

    def day(d: str) -> Path:
        return incoming / f"dt={d}" / "part-0.parquet"

    def retyped(table: pa.Table, name: str, values) -> pa.Table:
        return table.set_column(table.schema.get_field_index(name), name, values)

    for d in DAYS:  # a flag: the calls count as 0/1, int64 everywhere to begin with
        rows = pq.read_table(day(d))
        flag = pc.cast(pc.greater(rows.column("num_support_calls"), 0), pa.int64())
        pq.write_table(retyped(rows, "num_support_calls", flag), day(d))
    first = pq.read_table(day(DAYS[0]))
    half = first.num_rows // 2
    pq.write_table(first.slice(0, half), day(DAYS[0]))
    pq.write_table(first.slice(half), incoming / f"dt={DAYS[0]}" / "part-1.parquet")
    clean = train(config, reason="numbers of one type")

    second = pq.read_table(day(DAYS[1]))
    as_bool = pc.cast(second.column("num_support_calls"), pa.bool_())
    pq.write_table(retyped(second, "num_support_calls", as_bool), day(DAYS[1]))
    part = first.slice(0, half)  # within a day, beside a file of integers
    flags = pc.cast(part.column("num_support_calls"), pa.bool_())
    devices = pc.cast(part.column("num_devices"), pa.decimal128(19, 0))
    part = retyped(retyped(part, "num_support_calls", flags), "num_devices", devices)
    pq.write_table(part, day(DAYS[0]))

    again = train(config, reason="a flag as booleans, a count as decimals")
    assert again.status == clean.status and again.rows == clean.rows
    assert again.challenger_metrics == clean.challenger_metrics
