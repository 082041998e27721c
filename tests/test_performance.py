"""Realised performance's bookkeeping: which labelled partitions need it (`performance.pending`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE, write_config

from batchscore import performance
from batchscore.config import load_config
from batchscore.storage import Location

DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")


def _labelled_config(tmp_path: Path):
    """Three labelled days, scored and measured: none pending."""
    config = load_config(
        write_config(
            tmp_path / "batchscore.toml",
            (SAMPLE.parent.parent / "batchscore.toml").read_text(),
            storage={"source": "source", "store": "store"},
        )
    )
    store = Location(config.store)
    for day in DAYS:
        labels = tmp_path / "source" / "labels" / f"dt={day}"
        labels.mkdir(parents=True)
        pq.write_table(pa.table({"customer_id": [1, 2], "churned": [0, 1]}), labels / "a.parquet")
        store.write_json(
            {"run_id": "r1", "model_version": "v0001"}, "scores", f"dt={day}", "_SUCCESS"
        )
    for day in DAYS:
        computed_from = performance._fingerprint(config, day)
        store.write_json({"computed_from": computed_from}, "performance", f"dt={day}", "_SUCCESS")
    assert performance.pending(config) == []
    return config


def test_an_unreadable_manifest_is_named_and_does_not_stop_the_others(tmp_path: Path):
    """A truncated performance `_SUCCESS` is computed again; a truncated scores `_SUCCESS`
    waits for the partition to be scored again. Either was a bare JSONDecodeError that
    failed the score run after every partition was published."""
    config = _labelled_config(tmp_path)
    scores = Path(config.store) / "scores" / f"dt={DAYS[0]}" / "_SUCCESS"
    measured = Path(config.store) / "performance" / f"dt={DAYS[1]}" / "_SUCCESS"
    scores.write_text("")
    measured.write_text('{"computed_from": {"scores_run_id": "r')

    assert performance.pending(config) == [DAYS[1]]
    unreadable: list[str] = []
    assert performance.pending(config, unreadable) == [DAYS[1]]

    assert unreadable[0] == (
        f"{scores}: not valid JSON (0 bytes): Expecting value: line 1 column 1 (char 0); "
        "no realised performance until it is scored again"
    )
    assert unreadable[1].startswith(f"{measured}: not valid JSON (38 bytes): Unterminated string")
    assert unreadable[1].endswith("; computing the realised performance again")
    assert len(unreadable) == 2


@pytest.mark.parametrize(
    ("scores_text", "measured_text", "problems"),
    [
        (
            "{}",
            "{}",
            ("key 'run_id' is missing", "key 'computed_from' is missing"),
        ),
        (
            '{"run_id": "r1", "model_version": null}',
            '{"computed_from": "x"}',
            (
                "key 'model_version' holds null, not a string",
                """key 'computed_from' holds a string ("x"), not an object""",
            ),
        ),
    ],
)
def test_a_manifest_without_a_key_it_needs_is_named_as_an_unreadable_one(
    tmp_path: Path, scores_text: str, measured_text: str, problems: tuple[str, str]
):
    """A scores `_SUCCESS` of `{}` was KeyError: 'run_id' for the score run's realised
    performance step; a performance `_SUCCESS` of `{}` was computed again without a word."""
    config = _labelled_config(tmp_path)
    scores = Path(config.store) / "scores" / f"dt={DAYS[0]}" / "_SUCCESS"
    measured = Path(config.store) / "performance" / f"dt={DAYS[1]}" / "_SUCCESS"
    scores.write_text(scores_text)
    measured.write_text(measured_text)

    unreadable: list[str] = []
    assert performance.pending(config, unreadable) == [DAYS[1]]

    assert unreadable == [
        f"{scores}: {problems[0]}; no realised performance until it is scored again",
        f"{measured}: {problems[1]}; computing the realised performance again",
    ]
