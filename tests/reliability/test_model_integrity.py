"""A tampered model, a missing champion alias, a model for other features: refused, with a
clear error, before anything is scored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import write_config

from batchscore.config import load_config
from batchscore.registry import ModelIntegrityError, RegistryError
from batchscore.training import train
from flows.score import score
from tasks.scoring import resolve_champion


@pytest.fixture
def trained(sample):
    path = write_config(sample, sample.read_text(), retrain={"lightgbm": {"max_rounds": 30}})
    config = load_config(path)
    train(config)
    return path, config, Path(config.store) / "models" / "churn"


@pytest.mark.parametrize("name", ["model.txt", "reference.json"])
def test_a_tampered_model_file_is_refused_and_nothing_is_scored(trained, prefect_api, name):
    path, config, models = trained
    target = models / "v0001" / name
    target.write_bytes(target.read_bytes().replace(b"1", b"2", 1))

    state = score(config=str(path), return_state=True)

    assert state.is_failed()
    assert f"model churn v0001: {target} has sha256 " in state.message
    assert "the file was changed after registration. Refusing to score with it." in state.message
    assert not (Path(config.store) / "scores").exists()


def test_a_missing_champion_alias_is_refused(trained):
    _, config, models = trained
    (models / "champion.json").unlink()
    train = re.escape(f"`batchscore train --config {config.path}`")  # the config as given
    with pytest.raises(RegistryError, match=f"model 'churn' has no champion under .*{train}"):
        resolve_champion.fn(config)


def test_a_model_trained_on_other_features_is_refused(trained, tmp_path):
    path, config, _ = trained
    text = path.read_text().replace('"payment_delay_days", ', "")
    other = load_config(
        write_config(
            tmp_path / "fewer.toml", text, storage={"source": config.source, "store": config.store}
        )
    )
    with pytest.raises(
        ModelIntegrityError,
        match=r"champion churn v0001 was trained on features "
        r"\[.*'payment_delay_days'.*\] .* the config "
        r"lists \[",
    ):
        resolve_champion.fn(other)
