"""`batchscore drift`: two Parquet files (or folders) compared through the CLI, checked
against the same statistics computed directly with the `drift` package; `drift show`.

Real files in a temporary folder, the real command (`batchscore.cli.main`), no Prefect.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.cli import main
from drift import DRIFT_REPORT_SCHEMA, ReferenceProfile, evaluate

ROWS = 6_000


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _table(seed: int, shifted: bool, rows: int = ROWS) -> pa.Table:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(3 + (0.4 if shifted else 0), 1, rows)
    income[rng.random(rows) < 0.05] = np.nan
    age = rng.integers(18, 80 if not shifted else 90, rows)
    plans = np.array(["basic", "standard", "premium"] + (["gold"] if shifted else []))
    plan = plans[rng.integers(0, plans.size, rows)].astype(object)
    plan[rng.random(rows) < 0.02] = None
    region = pa.array(np.array(["north", "south", "east", "west"])[rng.integers(0, 4, rows)])
    return pa.table(
        {
            "income": pa.array(income, pa.float64()),  # NaN stays NaN (missing)
            "age": pa.array(age, pa.int32()),
            "active": pa.array(rng.random(rows) < (0.7 if shifted else 0.5)),
            "plan": pa.array(plan, pa.string()),
            "region": region.dictionary_encode(),
            "seen_at": pa.array(
                [dt.datetime(2026, 1, 1)] * rows, pa.timestamp("us")
            ),  # not comparable: skipped with a note
            **({"only_here": pa.array(np.zeros(rows))} if not shifted else {}),
        }
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    reference, current = _table(1, False), _table(2, True)
    paths = {"a": tmp_path / "a.parquet", "b": tmp_path / "b.parquet", "dir": tmp_path / "b_dir"}
    pq.write_table(reference, paths["a"], row_group_size=1_000)
    pq.write_table(current, paths["b"], row_group_size=1_000)
    paths["dir"].mkdir()
    pq.write_table(current.slice(0, 2_500), paths["dir"] / "part-0.parquet")
    pq.write_table(current.slice(2_500), paths["dir"] / "part-1.parquet")
    (paths["dir"] / "_SUCCESS").write_text("{}")  # ignored, like pyarrow.dataset does
    return paths


def _direct(features: list[str], categorical: list[str], a: Path, b: Path, **thresholds):
    """The same statistics straight through the drift package, on whole columns."""
    ref, cur = pq.read_table(a), pq.read_table(b)
    profile = ReferenceProfile.fit({f: ref.column(f) for f in features}, categorical)
    counts = profile.count({f: cur.column(f) for f in features})
    results = evaluate(profile, counts, thresholds)
    return {(r.feature, r.method): r for r in results}


def _report(path: Path) -> dict[tuple[str, str], dict]:
    table = pq.read_table(path)
    assert table.schema == DRIFT_REPORT_SCHEMA
    return {(r["feature"], r["method"]): r for r in table.to_pylist()}


def test_drift_command_matches_the_drift_package(files, tmp_path):
    out = tmp_path / "reports" / "r.parquet"
    code, stdout, stderr = _run(
        "drift",
        "--reference",
        str(files["a"]),
        "--current",
        str(files["b"]),
        "--out",
        str(out),
        "--partition",
        "2026-10-12",
    )
    assert code == 0, stderr
    report = _report(out)
    expected = _direct(
        ["income", "age", "active", "plan", "region"], ["plan", "region"], files["a"], files["b"]
    )
    assert set(report) == set(expected)
    for key, result in expected.items():
        row = report[key]
        assert row["statistic"] == result.statistic, key
        assert row["p_value"] == result.p_value, key
        assert row["drifted"] == result.drifted, key
        assert (row["n_reference"], row["n_current"]) == (result.n_reference, result.n_current)
    rows = list(report.values())
    assert {r["partition"] for r in rows} == {dt.date(2026, 10, 12)}
    assert {r["reference"] for r in rows} == {f"file:{files['a']}"}
    assert {r["kind"] for r in rows if r["feature"] in ("plan", "region")} == {"categorical"}
    assert {r["kind"] for r in rows if r["feature"] in ("income", "age", "active")} == {"numeric"}

    # The terminal table: skipped columns noted, drifted rows first.
    assert "note: skipped seen_at: type timestamp[us] is neither numeric nor a string" in stdout
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("feature"))
    body = [line for line in lines[header + 2 :] if line and not line[0].isdigit()]
    flags = [line.split()[4] == "DRIFTED" for line in body]
    assert any(flags) and flags == sorted(flags, reverse=True)
    assert "plan" in lines[-1] and str(out.name) in lines[-1]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_drift_command_reads_a_folder_in_record_batches(files, tmp_path):
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    base = ["drift", "--reference", str(files["a"]), "--out"]
    assert _run(*base, str(one), "--current", str(files["b"]))[0] == 0
    assert _run(*base, str(two), "--current", str(files["dir"]))[0] == 0
    first, second = _report(one), _report(two)
    assert first.keys() == second.keys()
    for key in first:
        for column in ("statistic", "p_value", "n_current", "drifted"):
            assert first[key][column] == second[key][column], (key, column)


def test_drift_command_with_a_config_uses_its_features_and_thresholds(files, tmp_path):
    config = tmp_path / "drift.toml"
    config.write_text(
        "[dataset]\n"
        'name = "files"\nid_columns = ["id"]\nfeatures = ["income", "plan"]\n'
        'categorical = ["plan"]\nlabel = "y"\ntask = "binary"\n\n'
        '[storage]\nsource = "src"\nstore = "store"\n\n'
        "[drift]\nks = 0.05\n\n[drift.features.plan]\npsi = 0.5\n"
    )
    out = tmp_path / "r.parquet"
    code, _, stderr = _run(
        "drift",
        "--reference",
        str(files["a"]),
        "--current",
        str(files["b"]),
        "--out",
        str(out),
        "--config",
        str(config),
    )
    assert code == 0, stderr
    report = _report(out)
    expected = _direct(["income", "plan"], ["plan"], files["a"], files["b"])
    assert set(report) == set(expected)
    assert report["income", "ks"]["threshold"] == 0.05
    assert report["income", "psi"]["threshold"] == 0.2
    assert report["plan", "psi"]["threshold"] == 0.5
    for key, result in expected.items():
        assert report[key]["statistic"] == result.statistic
    assert {r["partition"] for r in report.values()} == {dt.datetime.now(dt.UTC).date()}


@pytest.mark.parametrize("which", ["reference", "current"])
def test_unreadable_input_exits_2_naming_the_path(files, tmp_path, which):
    missing = tmp_path / "nowhere.parquet"
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    for bad in (missing, broken):
        paths = {"reference": str(files["a"]), "current": str(files["b"]), which: str(bad)}
        code, stdout, stderr = _run(
            "drift",
            "--reference",
            paths["reference"],
            "--current",
            paths["current"],
            "--out",
            str(tmp_path / "r.parquet"),
        )
        assert code == 2
        assert str(bad) in stderr and stdout == ""
    assert not (tmp_path / "r.parquet").exists()


def test_no_shared_column_exits_2(tmp_path):
    pq.write_table(pa.table({"x": [1.0, 2.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"y": [1.0, 2.0]}), tmp_path / "b.parquet")
    code, _, stderr = _run(
        "drift",
        "--reference",
        str(tmp_path / "a.parquet"),
        "--current",
        str(tmp_path / "b.parquet"),
        "--out",
        str(tmp_path / "r.parquet"),
    )
    assert code == 2 and "share no column" in stderr


def test_config_feature_missing_from_the_data_exits_2(files, tmp_path):
    config = tmp_path / "drift.toml"
    config.write_text(
        '[dataset]\nname = "files"\nid_columns = ["id"]\nfeatures = ["income", "tenure"]\n'
        'label = "y"\ntask = "binary"\n\n[storage]\nsource = "src"\nstore = "store"\n'
    )
    code, _, stderr = _run(
        "drift",
        "--reference",
        str(files["a"]),
        "--current",
        str(files["b"]),
        "--out",
        str(tmp_path / "r.parquet"),
        "--config",
        str(config),
    )
    assert code == 2 and "tenure" in stderr


def test_missing_arguments_exit_2():
    code, _, stderr = _run("drift", "--reference", "a.parquet")
    assert code == 2 and "--current --out required" in stderr


def test_drift_show_says_when_there_is_no_report(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[dataset]\nname = "m"\nid_columns = ["id"]\nfeatures = ["x"]\nlabel = "y"\n'
        'task = "binary"\n\n[storage]\nsource = "src"\nstore = "store"\n'
    )
    code, stdout, stderr = _run("drift", "show", "--config", str(config))
    assert code == 1 and stdout == ""
    assert "no drift report under" in stderr and os.fspath(tmp_path / "store") in stderr


def test_drift_show_takes_its_config_before_show_too(tmp_path, monkeypatch):
    """`batchscore drift --config F show`: argparse gives an option written before `show` to
    `drift`'s own --config, and show read batchscore.toml from the working folder instead
    (`batchscore.toml: config file not found`, the user's --config ignored)."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[dataset]\nname = "m"\nid_columns = ["id"]\nfeatures = ["x"]\nlabel = "y"\n'
        'task = "binary"\n\n[storage]\nsource = "src"\nstore = "store"\n'
    )
    monkeypatch.chdir(tmp_path)  # no batchscore.toml here
    code, stdout, stderr = _run("drift", "--config", str(config), "show")
    assert code == 1 and stdout == ""
    assert stderr == (
        f"batchscore: no drift report under {tmp_path / 'store'}/drift/ (none scored yet)\n"
    )


def test_an_empty_current_file_is_reported_not_computed(files, tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(_table(2, True).slice(0, 0), empty)
    out = tmp_path / "r.parquet"
    code, stdout, stderr = _run(
        "drift", "--reference", str(files["a"]), "--current", str(empty), "--out", str(out)
    )
    assert code == 0, stderr
    rows = list(_report(out).values())
    assert {r["status"] for r in rows} == {"not_computed"}
    assert {r["reason"] for r in rows} == {"current data is empty"}
    assert {r["n_current"] for r in rows} == {0}
    assert "0 of 5 feature(s) drifted" in stdout


def test_a_folder_whose_files_disagree_is_read_with_one_type_per_column(files, tmp_path):
    """pyarrow.dataset takes a folder's schema from its first file: a file without a column
    gave nulls, reported as drift (PSI 1.8 on a column simply absent from a third of the
    rows), and a column of text in the first file and numbers in the others was skipped
    as "string in the current" though most of the current held numbers. A column some
    file lacks, or holds as another kind, is now named with the file (exit 2 when the
    config lists it as a feature); numbers of several types are compared as numbers, and
    text dictionary-encoded in one file and plain in another as text."""
    current = pq.read_table(files["b"])
    folder = tmp_path / "mixed"
    folder.mkdir()
    first, second, third = (
        current.slice(0, 2_000),
        current.slice(2_000, 2_000),
        current.slice(4_000),
    )
    pq.write_table(first, folder / "part-0.parquet")
    at = current.schema.get_field_index("age")
    second = second.set_column(at, "age", second.column("age").cast(pa.float64()))
    second = second.set_column(
        second.schema.get_field_index("plan"), "plan", second.column("plan").dictionary_encode()
    )
    pq.write_table(second.drop_columns(["income"]), folder / "part-1.parquet")
    pq.write_table(third, folder / "part-2.parquet")
    out = tmp_path / "r.parquet"
    base = ["drift", "--reference", str(files["a"]), "--current", str(folder), "--out", str(out)]

    code, stdout, stderr = _run(*base)

    assert (code, stderr) == (0, "")
    assert (
        f"note: skipped income: {folder / 'part-1.parquet'} has no column 'income', which "
        f"other files of {folder} have"
    ) in stdout.splitlines()
    report = _report(out)
    assert "income" not in {feature for feature, _ in report}
    whole = tmp_path / "whole.parquet"
    pq.write_table(current.drop_columns(["income"]), whole)
    direct = _direct(["age", "plan"], ["plan"], files["a"], whole)
    for key in [("age", "ks"), ("age", "psi"), ("plan", "psi"), ("plan", "chi2")]:
        assert report[key]["n_current"] == current.num_rows
        assert report[key]["statistic"] == pytest.approx(direct[key].statistic, abs=1e-12)

    config = tmp_path / "drift.toml"
    config.write_text(
        '[dataset]\nname = "files"\nid_columns = ["id"]\nfeatures = ["income", "plan"]\n'
        'categorical = ["plan"]\nlabel = "y"\ntask = "binary"\n\n'
        '[storage]\nsource = "src"\nstore = "store"\n'
    )
    code, stdout, stderr = _run(*base, "--config", str(config))
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"batchscore: {folder / 'part-1.parquet'} has no column 'income', which other files "
        f"of {folder} have. Every file must hold each [dataset] feature, as numbers in every "
        "file or as text in every file: fix the files, or compare those that agree\n"
    )

    pq.write_table(
        third.set_column(at, "age", third.column("age").cast(pa.string())),
        folder / "part-2.parquet",
    )
    code, stdout, _ = _run(*base)
    assert code == 0
    assert (
        f"note: skipped age: column 'age' has types of different kinds in {folder}: int32 in "
        f"{folder / 'part-0.parquet'}, double in {folder / 'part-1.parquet'}, string in "
        f"{folder / 'part-2.parquet'}"
    ) in stdout.splitlines()


@pytest.mark.parametrize(
    ("current", "option", "out", "what"),
    [
        ("b.parquet", "--current", "b.parquet", "the file"),
        ("b.parquet", "--reference", "a.parquet", "the file"),
        ("b.parquet", "--current", "b_dir/../b.parquet", "the file"),
        ("b_dir", "--current", "b_dir/report.parquet", "inside the folder"),
    ],
)
def test_an_out_that_is_an_input_or_inside_one_exits_2_and_the_input_stays(
    files, tmp_path, monkeypatch, current, option, out, what
):
    """`--current b.parquet --out b.parquet` replaced the user's data with the report (a
    5 KB drift table where 245 KB of rows had been); a report written into a folder being
    compared was read as one of its data files the next time."""
    monkeypatch.chdir(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, stdout, stderr = _run(
        "drift", "--reference", "a.parquet", "--current", current, "--out", out
    )
    assert code == 2 and stdout == ""
    read = tmp_path / ("a.parquet" if option == "--reference" else current)
    assert stderr == (
        f"batchscore: --out {out}: is {what} {option} reads ({read}); the report would "
        f"{'replace that data' if what == 'the file' else 'be read as part of it next time'}."
        " Write the report elsewhere: --out drift-report.parquet\n"
    )
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
