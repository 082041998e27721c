"""Ring 1: the TOML config is validated once, and every error names the file, table and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_config

from batchscore.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "batchscore.toml"
SAMPLE_TEXT = SAMPLE_CONFIG.read_text()

SAMPLE_FEATURES = [
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "num_support_calls",
    "avg_session_minutes",
    "days_since_last_login",
    "num_devices",
    "age",
    "payment_delay_days",
    "discount_pct",
    "data_usage_gb",
    "satisfaction_score",
    "plan",
    "contract",
    "payment_method",
    "region",
]
SAMPLE_CATEGORICAL = ["plan", "contract", "payment_method", "region"]

MINIMAL = """\
[dataset]
name = "m"
id_columns = ["id"]
features = ["a", "b"]
label = "y"
task = "regression"

[storage]
source = "src"
store = "out"
"""


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def _invalid(path: Path, *lines: str) -> str:
    """The message load_config gives for a file that parses but does not validate."""
    return f"{path.resolve()}: invalid configuration:\n  " + "\n  ".join(lines)


def test_the_sample_config_loads_with_its_values_and_the_defaults():
    config = load_config(SAMPLE_CONFIG)

    assert config.path == str(SAMPLE_CONFIG.resolve())
    ds = config.dataset
    assert (ds.name, ds.id_columns, ds.label, ds.task) == (
        "churn",
        ["customer_id"],
        "churned",
        "binary",
    )
    assert ds.features == SAMPLE_FEATURES
    assert ds.categorical == SAMPLE_CATEGORICAL
    assert ds.numeric == SAMPLE_FEATURES[:12]
    assert (config.scoring.chunk_rows, config.scoring.workers) == (10_000, 2)
    assert config.scoring.worker_count == 2
    assert config.validation.max_bad_row_fraction == 0.05
    assert config.validation.quarantine_unseen_categories is False
    retrain = config.retrain
    assert (retrain.window_days, retrain.validation_days, retrain.holdout_days) == (30, 1, 1)
    assert (config.metric, retrain.min_drifted_features, retrain.on_drift) == ("auc", 2, "auto")
    # Not written in the sample file: the documented defaults.
    assert config.retrain.lightgbm.num_leaves == 31
    assert config.retrain.lightgbm.max_rounds == 500
    assert config.source == str(ROOT / "data" / "sample")
    assert config.store == str(ROOT / ".batchscore")


def test_defaults_fill_every_optional_table(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL)
    config = load_config(path)

    assert config.dataset.categorical == []
    assert config.dataset.numeric == ["a", "b"]
    assert config.scoring.chunk_rows == 250_000
    assert config.scoring.workers == 0
    assert config.validation.max_bad_row_fraction == 0.05
    assert config.validation.band_width_factor == 1.0
    assert (config.retrain.window_days, config.retrain.validation_days) == (30, 1)


def test_relative_storage_paths_resolve_against_the_config_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    folder = tmp_path / "project" / "conf"
    folder.mkdir(parents=True)
    path = write_config(
        folder / "c.toml", MINIMAL, storage={"source": "data/in", "store": "../store"}
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(path)

    assert config.source == str(folder / "data" / "in")
    assert config.store == str(tmp_path / "project" / "store")


def test_absolute_paths_and_uris_are_kept_as_written(tmp_path: Path):
    path = write_config(
        tmp_path / "c.toml",
        MINIMAL,
        storage={"source": "s3://bucket/prefix/src", "store": "/srv/batchscore"},
    )
    config = load_config(path)

    assert config.source == "s3://bucket/prefix/src"
    assert config.store == "/srv/batchscore"


def test_an_unknown_key_in_a_table_is_named_with_its_table(tmp_path: Path):
    path = write_config(tmp_path / "c.toml", SAMPLE_TEXT, scoring={"chunk_row": 5})

    assert _error(path) == _invalid(
        path, "[scoring] unknown key 'chunk_row' (did you mean 'chunk_rows'?)"
    )


def test_an_unknown_key_in_a_nested_table_is_named_with_its_dotted_table(tmp_path: Path):
    path = write_config(tmp_path / "c.toml", SAMPLE_TEXT, retrain={"lightgbm": {"num_leavs": 7}})

    assert _error(path) == _invalid(
        path, "[retrain.lightgbm] unknown key 'num_leavs' (did you mean 'num_leaves'?)"
    )


def test_an_unknown_table_is_named(tmp_path: Path):
    path = write_config(tmp_path / "c.toml", SAMPLE_TEXT, scorin={"chunk_rows": 5})

    assert _error(path) == _invalid(path, "unknown key 'scorin' (did you mean 'scoring'?)")


def test_an_unknown_key_like_no_known_one_is_named_with_the_keys_its_table_takes(
    tmp_path: Path,
):
    path = write_config(tmp_path / "c.toml", SAMPLE_TEXT, dataset={"owner": "risk-team"})

    assert _error(path) == _invalid(
        path,
        "[dataset] unknown key 'owner' (the table takes: name, id_columns, features, "
        "categorical, label, task)",
    )


@pytest.mark.parametrize(
    ("tables", "line"),
    [
        (
            {"scoring": {"chunk_rows": -5}},
            "[scoring] chunk_rows: Input should be greater than 0 (got -5)",
        ),
        (
            {"dataset": {"task": "multiclass"}},
            "[dataset] task: Input should be 'binary' or 'regression' (got 'multiclass')",
        ),
        (
            {"validation": {"max_bad_row_fraction": 2}},
            "[validation] max_bad_row_fraction: Input should be less than or equal to 1 (got 2)",
        ),
        (
            {"scoring": {"workers": -1}},
            "[scoring] workers: Input should be greater than or equal to 0 (got -1)",
        ),
        (
            {"storage": {"store": "  "}},
            "[storage] store: must not be empty (got '  ')",
        ),
        (
            {"scoring": {"runner": "spark"}},
            "[scoring] runner: Input should be 'process' or 'dask' (got 'spark')",
        ),
        (
            {"scoring": {"runner": "dask"}},
            '[scoring]: runner = "dask" needs dask_address, the scheduler to run on, e.g. '
            '"tcp://dask-scheduler:8786"',
        ),
        # Values of the wrong TOML type are named, not coerced (true was taken as 1).
        (
            {"scoring": {"chunk_rows": True}},
            "[scoring] chunk_rows: Input should be a valid integer (got True)",
        ),
        (
            {"scoring": {"workers": "2"}},
            "[scoring] workers: Input should be a valid integer (got '2')",
        ),
        (
            {"validation": {"quarantine_unseen_categories": "yes"}},
            "[validation] quarantine_unseen_categories: Input should be a valid boolean "
            "(got 'yes')",
        ),
        (
            {"drift": {"features": {"monthly_charges": {"psi": -0.3}}}},
            "[drift.features.monthly_charges] psi: Input should be greater than 0 (got -0.3)",
        ),
        (
            {"storage": {"store": "gs://bucket/x"}},
            "[storage] store: must be a local path or an s3://bucket/prefix URI "
            "(got 'gs://bucket/x')",
        ),
        (
            {"storage": {"source": "s3:/lake/churn"}},
            "[storage] source: must be a local path or an s3://bucket/prefix URI "
            "(got 's3:/lake/churn')",
        ),
        (
            {"dataset": {"name": ".."}},
            "[dataset] name: String should match pattern '^[A-Za-z0-9_\\-][A-Za-z0-9_.\\-]*$' "
            "(got '..')",
        ),
    ],
)
def test_a_bad_value_is_named_with_its_key_and_value(tmp_path: Path, tables: dict, line: str):
    path = write_config(tmp_path / "c.toml", SAMPLE_TEXT, **tables)

    assert _error(path) == _invalid(path, line)


def test_every_bad_value_is_reported_not_only_the_first(tmp_path: Path):
    path = write_config(
        tmp_path / "c.toml",
        SAMPLE_TEXT,
        scoring={"chunk_rows": -5},
        validation={"max_bad_row_fraction": 2},
    )

    assert _error(path) == _invalid(
        path,
        "[scoring] chunk_rows: Input should be greater than 0 (got -5)",
        "[validation] max_bad_row_fraction: Input should be less than or equal to 1 (got 2)",
    )


@pytest.mark.parametrize(
    ("dataset", "line"),
    [
        (
            {"categorical": ["plan", "nope"]},
            "[dataset]: categorical ['nope'] are not in features",
        ),
        (
            {"id_columns": ["customer_id", "age"]},
            "[dataset]: id_columns ['age'] are also features",
        ),
        (
            {"label": "age"},
            "[dataset]: label 'age' is also a feature or an id column",
        ),
        (
            {"label": "customer_id"},
            "[dataset]: label 'customer_id' is also a feature or an id column",
        ),
        (
            {"features": [*SAMPLE_FEATURES, "age", "plan"]},
            "[dataset]: features lists ['age', 'plan'] more than once",
        ),
        (
            {"id_columns": ["customer_id", "customer_id"]},
            "[dataset]: id_columns lists ['customer_id'] more than once",
        ),
    ],
)
def test_inconsistent_dataset_columns_are_rejected_naming_the_columns(
    tmp_path: Path, dataset: dict, line: str
):
    path = write_config(tmp_path / "c.toml", SAMPLE_TEXT, dataset=dataset)

    assert _error(path) == _invalid(path, line)


def test_a_missing_dataset_table_is_named(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[storage]\nsource = "src"\nstore = "out"\n')

    assert _error(path) == _invalid(path, "[dataset] table: Field required")


def test_a_missing_key_is_named_with_its_table(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL.replace('label = "y"\n', ""))

    assert _error(path) == _invalid(path, "[dataset] label: Field required")


@pytest.mark.parametrize("validation_days", [29, 30])
def test_validation_and_holdout_days_must_be_smaller_than_window_days(
    tmp_path: Path, validation_days: int
):
    path = write_config(
        tmp_path / "c.toml",
        SAMPLE_TEXT,
        retrain={"window_days": 30, "validation_days": validation_days},
    )

    assert _error(path) == _invalid(
        path,
        f"[retrain]: validation_days ({validation_days}) + holdout_days (1) must be smaller "
        "than window_days (30)",
    )


def test_a_missing_file_is_named(tmp_path: Path):
    path = tmp_path / "nowhere.toml"

    assert _error(path) == f"{path}: config file not found"


def test_a_text_file_that_is_not_toml_is_named(tmp_path: Path):
    path = tmp_path / "notes.toml"
    path.write_text("# notes\nthis is not toml\n")

    assert _error(path) == (
        f"{path}: not valid TOML: Expected '=' after a key in a key/value pair "
        "(at line 2, column 6)"
    )


def test_a_binary_file_is_a_config_error_naming_the_path(tmp_path: Path):
    path = tmp_path / "part-0.parquet"
    path.write_bytes(b"PAR1\x15\xe6\x00\xff\xfe binary")

    assert _error(path).startswith(f"{path}: not valid TOML")


def test_a_folder_is_a_config_error_naming_the_path(tmp_path: Path):
    assert _error(tmp_path).startswith(f"{tmp_path}: ")


def test_a_top_level_path_key_is_refused(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('path = "/elsewhere"\n' + MINIMAL)

    assert _error(path) == f"{path}: unknown top-level key 'path'"


def _with_features(tmp_path: Path, *features: str) -> Path:
    """MINIMAL with these features, written with TOML's escapes (a line break or NUL
    cannot be written in a TOML string as it is; JSON's escapes are TOML's)."""
    path = tmp_path / "c.toml"
    listed = ", ".join(json.dumps(f) for f in features)
    path.write_text(MINIMAL.replace('features = ["a", "b"]', f"features = [{listed}]"))
    return path


def _features_error(tmp_path: Path, feature: str) -> str:
    path = _with_features(tmp_path, "a", feature)
    return _error(path).removeprefix(_invalid(path))


@pytest.mark.parametrize("char", list('",:[]{}'))
def test_a_feature_name_with_a_character_lightgbm_refuses_is_named_at_load(
    tmp_path: Path, char: str
):
    """LightGBM refused it only after every row of the training window was read, with
    "Do not support special JSON characters in feature name." and no name."""
    name = f"rate{char}pct"
    assert _features_error(tmp_path, name) == (
        f"[dataset]: features lists {name!r}: its {char!r} (a JSON special character) LightGBM "
        "refuses in a feature name: training would fail, after reading all its data. Rename "
        "the column upstream (and in [dataset])"
    )


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (
            "tenure months",
            "its ' ' (a space) LightGBM saves as '_' in the model, whose features then never "
            "match these: it could not score",
        ),
        ("tenure\nmonths", "its '\\n' (a line break) LightGBM refuses in a feature name"),
        ("tenure\rmonths", "its '\\r' (a line break) LightGBM refuses in a feature name"),
        ("tenure\x00months", "its '\\x00' (NUL) ends the name for LightGBM"),
    ],
)
def test_a_feature_name_lightgbm_would_rewrite_or_cut_is_named_at_load(
    tmp_path: Path, name: str, said: str
):
    """A space made a champion that could never score: LightGBM saved 'tenure_months', and
    every chunk failed the check of the model's features against its metadata."""
    error = _features_error(tmp_path, name)
    assert error.startswith(f"[dataset]: features lists {name!r}: {said}"), error
    assert error.endswith(". Rename the column upstream (and in [dataset])")


def test_every_feature_name_problem_is_in_one_line(tmp_path: Path):
    error = _features_error(tmp_path, "a b").removesuffix(
        ". Rename the column upstream (and in [dataset])"
    )
    path = _with_features(tmp_path, "x:y", "ok", "a b")
    assert _error(path).count("\n") == 1
    assert "'x:y': its ':'" in _error(path) and "; 'a b': its ' '" in _error(path)
    assert error.startswith("[dataset]: features lists 'a b': its ' '")


@pytest.mark.parametrize(
    "name", ["tenure_é_月", "charges.eur", "<b>", "a=b", "tab\there", "no\u00a0break", "(x)"]
)
def test_feature_names_lightgbm_keeps_as_written_load(tmp_path: Path, name: str):
    assert load_config(_with_features(tmp_path, "a", name)).dataset.features == ["a", name]


def test_the_refused_characters_are_exactly_those_lightgbm_refuses_or_changes():
    """Pins what the config refuses to what the installed LightGBM does: every ASCII
    character and a few others in a feature name, trained, saved and read back (by LightGBM
    and by the registry's check). A LightGBM that changes this fails here, not in a run."""
    import warnings

    import lightgbm as lgb
    import numpy as np

    from batchscore.config import LIGHTGBM_NAME_CHARACTERS
    from batchscore.registry import _feature_names

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2))
    y = (X[:, 0] > 0).astype(float)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5}
    changed = set()
    for char in [*map(chr, range(128)), "é", "月", "\u00a0", "\u2028", "\U0001f600"]:
        names = [f"a{char}b", "other"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                booster = lgb.train(params, lgb.Dataset(X, y, feature_name=names), 1)
        except lgb.basic.LightGBMError:
            changed.add(char)
            continue
        text = booster.model_to_string()
        read = (booster.feature_name(), lgb.Booster(model_str=text).feature_name())
        if read != (names, names) or _feature_names(text) != names:
            changed.add(char)
    assert changed == set(LIGHTGBM_NAME_CHARACTERS)


def test_a_dotted_features_drift_table_without_quotes_is_told_to_quote_it(tmp_path: Path):
    """A feature may be named `risk.score` (README, Configuration); its drift overrides are
    then `[drift.features."risk.score"]`. Unquoted, TOML makes a table `score` inside a
    table `risk`, and pydantic said `'score'` is not a method and `risk` not a number."""
    path = tmp_path / "c.toml"
    path.write_text(
        MINIMAL.replace('features = ["a", "b"]', 'features = ["risk.score", "b"]')
        + "\n[drift.features.risk.score]\nks = 0.3\n\n[drift.features.b]\npsi = 0\n"
    )
    assert _error(path) == _invalid(
        path,
        "[drift.features.risk.score]: TOML reads the dots of the feature 'risk.score' as "
        'tables inside tables; quote its name: [drift.features."risk.score"]',
        "[drift.features.b] psi: Input should be greater than 0 (got 0)",
    )

    path.write_text(path.read_text().replace("features.risk.score]", 'features."risk.score"]'))
    path.write_text(path.read_text().replace("psi = 0\n", "psi = 0.3\n"))
    assert load_config(path).drift.threshold("risk.score", "ks") == 0.3


def test_checks_across_tables_name_their_tables_and_what_applies(tmp_path: Path):
    """A check that spans tables (the metric against the task, drift overrides against the
    features) was printed as `config: [retrain] metric 'auc' does not apply to task
    'regression'`: a `config:` that names nothing, and no word of what does apply."""
    path = write_config(tmp_path / "c.toml", MINIMAL, retrain={"metric": "auc"})
    assert _error(path) == _invalid(
        path,
        "[retrain] metric 'auc' does not apply to [dataset] task 'regression'; "
        "it takes 'rmse', 'mae'",
    )

    path = write_config(tmp_path / "c.toml", MINIMAL, drift={"features": {"c": {"ks": 0.2}}})
    assert _error(path) == _invalid(
        path, "[drift.features] names ['c'], which are not in [dataset] features (or __score__)"
    )


@pytest.mark.parametrize(
    ("source", "store", "where"),
    [
        ("lake", "lake", "the same folder as"),
        ("lake", "./lake/", "the same folder as"),
        ("lake", "lake/out", "inside"),
        ("lake", "{tmp}/link/out", "inside"),  # an absolute path through a link into it
        ("s3://bucket/churn", "s3://bucket/churn/out?region=eu-west-1", "inside"),
    ],
)
def test_a_store_at_or_inside_the_source_is_refused(tmp_path: Path, source, store, where):
    """With `store = source`, the first run replaced the `scores/dt=D/` folder a lake
    already held with its own: the pipeline wrote under the source, which it never does."""
    (tmp_path / "lake").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "lake")
    store = store.format(tmp=tmp_path)
    path = write_config(tmp_path / "c.toml", MINIMAL, storage={"source": source, "store": store})
    resolved = {
        "lake": str(tmp_path / "lake"),
        "./lake/": str(tmp_path / "lake"),
        "lake/out": str(tmp_path / "lake" / "out"),
    }
    shown = (
        f"[storage] store {store!r} ({resolved.get(store, store)}) is {where} [storage] "
        f"source {source!r} ({resolved.get(source, source)})"
    )
    assert _error(path).startswith(_invalid(path, shown))
    assert _error(path).endswith('outside the source (e.g. store = ".batchscore")')


@pytest.mark.parametrize(
    ("source", "store"),
    [
        ("lake", "lake-out"),  # a name that starts with the source's is not inside it
        ("lake/in", "lake"),  # the source inside the store: the pipeline writes its own folders
        ("s3://bucket/churn", "s3://bucket/churn-scores"),
        ("s3://bucket/churn", "/srv/churn"),
    ],
)
def test_a_store_beside_the_source_loads(tmp_path: Path, source, store):
    path = write_config(tmp_path / "c.toml", MINIMAL, storage={"source": source, "store": store})
    assert load_config(path).storage.store == store
