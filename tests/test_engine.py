"""Scoring engines (batchscore/engine.py): the compiled engine agrees with LightGBM to 1e-9,
`auto` falls back with a logged reason, compiled code is cached on disk and per process, and
a partition larger than a chunk is never read, validated or scored whole. No timings.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# At the module's import: Prefect configures logging when `flow` is first imported, which
# takes pytest's capture handler off the root logger if it happens inside a test.
from prefect import flow, task

from batchscore import engine
from batchscore.config import load_config, parse_config
from batchscore.engine import CompiledPredictor, EngineError, LightGBMPredictor, get_predictor
from batchscore.features import TrainingProfile
from batchscore.registry import Registry
from batchscore.training import fit_reference, train

ROOT = Path(__file__).resolve().parent.parent
NUMERIC = ["a", "b", "never_missing", "integers"]
CATEGORICAL = ["small_cat", "big_cat"]
FEATURES = [*NUMERIC, *CATEGORICAL]
BIG_VOCAB = [f"c{i:02d}" for i in range(40)]  # > 32 categories: a bitset of two words


@pytest.fixture(autouse=True)
def _fresh_predictors():
    engine.clear_cache()
    yield
    engine.clear_cache()


def _table(n: int, seed: int, unseen: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, n)
    b = rng.exponential(2, n)
    b[rng.random(n) < 0.3] = 0.0  # zeros: LightGBM's zero_as_missing path
    ints = rng.integers(-5, 6, n).astype(np.float64)
    small = rng.choice(["x", "y", "z"], n).astype(object)
    big = rng.choice(BIG_VOCAB, n).astype(object)
    if unseen:
        small[rng.random(n) < 0.05] = "new_small"
        big[rng.random(n) < 0.05] = "new_big"
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "a": pa.array(a, mask=rng.random(n) < 0.1),
            "b": pa.array(b, mask=rng.random(n) < 0.1),
            "never_missing": pa.array(rng.uniform(-3, 3, n)),
            "integers": pa.array(ints, mask=rng.random(n) < 0.05),
            "small_cat": pa.array(small, pa.string(), mask=rng.random(n) < 0.05),
            "big_cat": pa.array(big, pa.string(), mask=rng.random(n) < 0.05),
        }
    )


def _config(tmp_path: Path, task: str = "binary", **scoring):
    data = {
        "dataset": {
            "name": "gen",
            "id_columns": ["id"],
            "features": FEATURES,
            "categorical": CATEGORICAL,
            "label": "y",
            "task": task,
        },
        "storage": {"source": str(tmp_path / "source"), "store": str(tmp_path / "store")},
        "scoring": {"workers": 1, **scoring},
    }
    return parse_config(data, str(tmp_path / "gen.toml"))


def _register(config, params: dict | None = None, rounds: int = 60):
    """A LightGBM model on generated data with categoricals and missing values, registered
    as champion with its schema, profile and drift reference; returns the LoadedModel."""
    task = config.dataset.task
    table = _table(6_000, seed=1)
    profile = TrainingProfile.fit(table, FEATURES, CATEGORICAL)
    schema = profile.schema(FEATURES)
    X = schema.to_matrix(table)
    rng = np.random.default_rng(2)
    signal = (
        np.nan_to_num(X[:, 0])
        + 0.3 * np.nan_to_num(X[:, 1])
        - np.abs(X[:, 2])
        + 0.2 * np.nan_to_num(X[:, 3])
        + (X[:, 4] == 1)
        + np.isin(X[:, 5], [0, 3, 7, 33, 39])
        + 0.5 * np.isnan(X[:, 5])
    )
    y = signal + rng.normal(0, 0.3, len(X))
    if task == "binary":
        y = (y > np.median(y)).astype(np.float64)
    booster = lgb.train(
        {
            "objective": task,
            "num_leaves": 15,
            "min_data_in_leaf": 20,
            "min_data_per_group": 5,
            "cat_smooth": 1,
            "deterministic": True,
            "num_threads": 1,
            "verbose": -1,
            **(params or {}),
        },
        lgb.Dataset(X, y, feature_name=FEATURES, categorical_feature=schema.categorical_indices),
        num_boost_round=rounds,
    )
    registry = Registry(config.store, config.dataset.name)
    reference = fit_reference(table, FEATURES, CATEGORICAL, booster.predict(X[:1000]))
    version = registry.register(
        booster.model_to_string(),
        {"task": task, "schema": schema.to_json(), "profile": profile.to_json()},
        {"reference.json": reference.to_json().encode()},
    )
    registry.promote(version, "test")
    return registry.champion_ref().load()


def _scoring_matrix(model, n: int = 20_000) -> np.ndarray:
    """Rows as scoring sees them: unseen categories (code len(vocab)), NaN everywhere, NaN
    where training never had one, and values beyond the training range."""
    X = model.schema.to_matrix(_table(n, seed=3, unseen=True))
    rng = np.random.default_rng(4)
    X[rng.random(n) < 0.05, 2] = np.nan  # never missing in training
    X[rng.random(n) < 0.02, 0] = 1e6
    X[rng.random(n) < 0.02, 1] = -1e6
    return X


MODELS = {
    "binary": ("binary", None),
    "regression": ("regression", None),
    "binary-zero-as-missing": ("binary", {"zero_as_missing": True}),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_compiled_agrees_with_lightgbm_on_categoricals_unseen_codes_and_missing(tmp_path, kind):
    task, params = MODELS[kind]
    model = _register(_config(tmp_path, task), params)
    X = _scoring_matrix(model)
    vocab = model.schema.vocabularies
    assert (X[:, 4] == len(vocab["small_cat"])).any() and (X[:, 5] == len(vocab["big_cat"])).any()
    assert np.isnan(X[:, 5]).any() and np.isnan(X[:, 2]).any()
    # The model does split on the categoricals, with bitsets wider than one 32-bit word.
    text = model.booster.model_to_string()
    assert "cat_threshold=" in text

    predictor = get_predictor(model, "compiled", threads=2)
    assert isinstance(predictor, CompiledPredictor)
    assert predictor.probe_max_diff <= 1e-9
    compiled = predictor.predict(X)
    expected = model.booster.predict(X)
    assert compiled.dtype == np.float64 and compiled.shape == expected.shape
    assert np.max(np.abs(compiled - expected)) <= 1e-9
    # Unseen codes and codes far beyond the vocabulary go where LightGBM sends them.
    odd = X.copy()
    odd[:, 5] = np.where(np.arange(len(odd)) % 3 == 0, 1000.0, odd[:, 5])
    odd[:, 4] = np.where(np.arange(len(odd)) % 4 == 0, np.nan, odd[:, 4])
    assert np.max(np.abs(predictor.predict(odd) - model.booster.predict(odd))) <= 1e-9
    if task == "binary":
        # Probabilities (the objective's sigmoid applied), not raw margins.
        assert compiled.min() >= 0 and compiled.max() <= 1
        raw = model.booster.predict(X, raw_score=True)
        assert np.max(np.abs(compiled - raw)) > 0.1


@pytest.mark.parametrize("engine_name", ["compiled", "lightgbm"])
def test_scoring_the_kept_rows_of_a_batch_gives_the_bits_of_scoring_them_alone(
    tmp_path, monkeypatch, engine_name
):
    """`predict(..., keep)` drops rows from each block's matrix instead of copying the
    filtered batch first: the scores are those of the filtered table, bit for bit, across
    blocks with some rows dropped, none, or all."""
    from batchscore import scoring

    monkeypatch.setattr(scoring, "PREDICT_BLOCK_ROWS", 1_000)
    model = _register(_config(tmp_path))
    table = _table(4_500, seed=5, unseen=True)
    keep = np.random.default_rng(6).random(4_500) > 0.2
    keep[1_000:2_000] = True
    keep[2_000:3_000] = False
    filtered = table.filter(pa.array(keep))
    kept = scoring.predict(model, table, 1, engine_name, keep)
    alone = scoring.predict(model, filtered, 1, engine_name)
    assert kept.dtype == np.float64 and len(kept) == keep.sum() == filtered.num_rows
    assert kept.tobytes() == alone.tobytes()
    assert len(scoring.predict(model, table, 1, engine_name, np.zeros(4_500, bool))) == 0


def test_compiled_agrees_with_lightgbm_on_the_sample(sample):
    config = load_config(sample)
    train(config)
    model = Registry(config.store, config.dataset.name).champion_ref().load()
    table = pa.concat_tables(
        pq.read_table(p) for p in sorted((Path(config.source) / "incoming").glob("dt=*/*.parquet"))
    )
    X = model.schema.to_matrix(table)
    predictor = get_predictor(model, "compiled", threads=2)
    assert isinstance(predictor, CompiledPredictor)
    diff = np.max(np.abs(predictor.predict(X) - model.booster.predict(X)))
    assert diff <= 1e-9, diff
    # `auto` picks the same compiled predictor; `lightgbm` is Booster.predict itself.
    assert get_predictor(model, "auto", threads=2).engine == "compiled"
    assert np.array_equal(
        get_predictor(model, "lightgbm", threads=2).predict(X), model.booster.predict(X)
    )


def test_auto_falls_back_to_lightgbm_when_the_compiler_cannot_import(tmp_path, monkeypatch, caplog):
    model = _register(_config(tmp_path))
    monkeypatch.setitem(sys.modules, "lleaves", None)  # `import lleaves` raises ImportError
    with caplog.at_level(logging.WARNING, logger="batchscore.engine"):
        predictor = get_predictor(model, "auto", threads=1)
    assert isinstance(predictor, LightGBMPredictor)
    assert "cannot import lleaves" in predictor.reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "engine = 'auto' uses LightGBM" in w and "cannot import lleaves" in w for w in warnings
    )
    X = _scoring_matrix(model, 500)
    assert np.array_equal(predictor.predict(X), model.booster.predict(X))
    engine.clear_cache()
    with pytest.raises(EngineError, match="cannot import lleaves"):
        get_predictor(model, "compiled", threads=1)


def test_auto_falls_back_when_compiling_fails(tmp_path, monkeypatch, caplog):
    import lleaves

    model = _register(_config(tmp_path))

    def broken(self, *args, **kwargs):
        raise RuntimeError("LLVM ran out of registers")

    monkeypatch.setattr(lleaves.Model, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="batchscore.engine"):
        predictor = get_predictor(model, "auto", threads=1)
    assert isinstance(predictor, LightGBMPredictor)
    assert "compiling the model failed" in caplog.text and "out of registers" in caplog.text
    engine.clear_cache()
    with pytest.raises(EngineError, match="out of registers"):
        get_predictor(model, "compiled", threads=1)


def test_a_failed_verification_refuses_the_compiled_engine(tmp_path, monkeypatch, caplog):
    model = _register(_config(tmp_path))
    monkeypatch.setattr(engine, "TOLERANCE", -1.0)  # no difference can pass
    with caplog.at_level(logging.WARNING, logger="batchscore.engine"):
        predictor = get_predictor(model, "auto", threads=1)
    assert isinstance(predictor, LightGBMPredictor)
    assert "differs from LightGBM" in predictor.reason and "probe rows" in predictor.reason
    assert "differs from LightGBM" in caplog.text
    engine.clear_cache()
    with pytest.raises(EngineError, match="differs from LightGBM"):
        get_predictor(model, "compiled", threads=1)


class _Wrong:
    """Stands in for compiled code that passed the probe but is wrong on real rows."""

    def __init__(self, compiled):
        self.compiled = compiled

    def predict(self, matrix, n_jobs=1):
        return self.compiled.predict(matrix, n_jobs=n_jobs) + 1e-6


def test_the_first_real_batch_is_checked_too(tmp_path, caplog):
    model = _register(_config(tmp_path))
    X = _scoring_matrix(model, 3_000)
    auto = get_predictor(model, "auto", threads=1)
    assert isinstance(auto, CompiledPredictor)
    auto.compiled = _Wrong(auto.compiled)
    with caplog.at_level(logging.WARNING, logger="batchscore.engine"):
        scores = auto.predict(X)
    assert np.array_equal(scores, model.booster.predict(X))  # LightGBM's, not the wrong ones
    assert "first batch" in caplog.text
    strict = get_predictor(model, "compiled", threads=1)
    strict.compiled = _Wrong(strict.compiled)
    with pytest.raises(EngineError, match="first batch"):
        strict.predict(X)


def test_the_compiled_code_evaluates_about_512_decision_nodes_of_trees_at_a_time():
    def model(*leaves: int) -> bytes:
        trees = "".join(f"Tree={i}\nnum_leaves={n}\nnum_cat=0\n\n" for i, n in enumerate(leaves))
        return f"tree\nversion=v4\nnum_class=1\n\n{trees}end of trees\n".encode()

    assert engine.trees_per_block(model(*[31] * 200)) == 17  # 512 / 30 nodes
    assert engine.trees_per_block(model(*[127] * 200)) == 4
    assert engine.trees_per_block(model(*[15] * 200)) == 37
    assert engine.trees_per_block(model(*[15, 47] * 100)) == 17  # by the mean
    assert engine.trees_per_block(model(*[255] * 10)) == 2
    assert engine.trees_per_block(model(*[2] * 50)) == 50  # never more than the trees
    assert engine.trees_per_block(model(1, 1, 1)) == 3
    assert engine.trees_per_block(model(*[1023] * 5)) == 1


def test_compiled_code_is_cached_on_disk_and_per_process(tmp_path):
    config = _config(tmp_path)
    model = _register(config)
    before = engine.COMPILE_COUNT
    first = get_predictor(model, "compiled", threads=1)
    assert first.origin == "compiled" and before + 1 == engine.COMPILE_COUNT
    cache = Path(first.cache_file)
    version_dir = Path(config.store) / "models" / "gen" / model.ref.version
    assert cache.parent == version_dir / ".compiled"
    identity = engine.compiler_identity()
    for part in (model.ref.sha256, identity["machine"], identity["cpu"], identity["llvmlite"]):
        assert part in cache.name
    sidecar = json.loads(cache.with_suffix(".json").read_text())
    assert sidecar["model_sha256"] == model.ref.sha256
    block = engine.trees_per_block(model.booster.model_to_string().encode())
    assert sidecar["trees_per_block"] == block and cache.name.endswith(f"-fblock{block}.o")
    mtime = cache.stat().st_mtime_ns

    # The same process: the same predictor object, nothing compiled or loaded again.
    assert get_predictor(model, "compiled", threads=1) is first
    assert before + 1 == engine.COMPILE_COUNT

    # A fresh process loads the cached file instead of compiling.
    script = textwrap.dedent(
        f"""
        import json
        from batchscore import engine
        from batchscore.registry import Registry
        model = Registry({config.store!r}, "gen").champion_ref().load()
        p = engine.get_predictor(model, "compiled", 2)
        print(json.dumps({{"origin": p.origin, "compiles": engine.COMPILE_COUNT}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"origin": "cache", "compiles": 0}
    assert cache.stat().st_mtime_ns == mtime

    # A damaged cache file is never loaded: it is compiled again.
    cache.write_bytes(cache.read_bytes()[:100])
    engine.clear_cache()
    again = get_predictor(model, "compiled", threads=1)
    assert again.origin == "compiled" and before + 2 == engine.COMPILE_COUNT


def test_a_compile_is_told_in_the_runs_log_and_loading_the_cache_is_not(
    tmp_path, prefect_api, caplog
):
    """A compile holds up a run's first chunks by seconds, once per model version and CPU:
    the run's log says so (a Prefect run logger's record). Loading it from the cache is
    routine and stays out of the run's log."""
    config = _config(tmp_path)
    model = _register(config)

    @task
    def build():
        return get_predictor(model, "compiled", threads=1).origin

    @flow
    def twice():
        first = build()
        engine.clear_cache()  # as a fresh process would: from the on-disk cache
        return first, build()

    with caplog.at_level(logging.INFO):
        assert twice() == ("compiled", "cache")
    told = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("prefect.task_runs") and "to native code" in r.getMessage()
    ]
    assert len(told) == 1, told
    assert told[0].startswith(f"compiled gen {model.ref.version} to native code in ")
    assert "later runs load it from" in told[0] and ".compiled" in told[0]


def test_the_engine_setting_is_validated(tmp_path):
    assert _config(tmp_path).scoring.engine == "auto"
    with pytest.raises(ValueError, match="engine"):
        _config(tmp_path, engine="fast")
    config = _config(tmp_path, workers=1)
    assert config.scoring.worker_count * config.scoring.threads <= max(
        len(os.sched_getaffinity(0)), 1
    )


@pytest.mark.parametrize(
    "row_group_rows, batch_rows", [(2_000, 2_000), (6_000, 2_000), (6_000, 1_500)]
)
def test_a_partition_larger_than_a_chunk_is_never_materialised_whole(
    tmp_path, monkeypatch, row_group_rows, batch_rows
):
    """What this proves: with 12,000 rows in row groups of 2,000 (one chunk each) or of
    6,000 (three times chunk_rows = 2,000: a writer's row groups can be any size), every
    Parquet read of feature columns, every validation and every prediction sees at most
    2,000 rows (or `scoring.BATCH_ROWS`, when smaller), and the only partition-wide read is
    the plan's read of the id column (for the uniqueness check). It drives
    plan/score/publish in-process, without Prefect, by wrapping the functions score_chunk
    calls."""
    from batchscore import partitions, scoring

    if batch_rows < 2_000:
        monkeypatch.setattr(scoring, "BATCH_ROWS", batch_rows)

    config = _config(tmp_path, chunk_rows=2_000, engine="auto")
    _register(config)
    folder = Path(config.source) / "incoming" / "dt=2026-01-01"
    folder.mkdir(parents=True)
    data = _table(12_000, seed=9, unseen=True)
    impossible = data.column("never_missing").to_numpy().copy()
    impossible[[5, 4_321, 11_999]] = 1e12  # rejected by validation: the quarantine path
    data = data.set_column(3, "never_missing", pa.array(impossible))
    pq.write_table(data, folder / "part-0.parquet", row_group_size=row_group_rows)

    reads: list[tuple[int, tuple[str, ...]]] = []
    seen: dict[str, list[int]] = {"validate": [], "predict": []}
    real_groups = pq.ParquetFile.read_row_groups
    real_read = pq.ParquetFile.read
    real_batches = pq.ParquetFile.iter_batches

    def read_row_groups(self, row_groups, *args, **kwargs):
        table = real_groups(self, row_groups, *args, **kwargs)
        reads.append((table.num_rows, tuple(table.column_names)))
        return table

    def read(self, *args, **kwargs):
        table = real_read(self, *args, **kwargs)
        reads.append((table.num_rows, tuple(table.column_names)))
        return table

    def iter_batches(self, *args, **kwargs):
        for batch in real_batches(self, *args, **kwargs):
            reads.append((batch.num_rows, tuple(batch.schema.names)))
            yield batch

    real_validate, real_predict = scoring.validate_chunk, scoring.predict

    def validate(table, *args, **kwargs):
        seen["validate"].append(table.num_rows)
        return real_validate(table, *args, **kwargs)

    def predict(model, table, *args, **kwargs):
        scores = real_predict(model, table, *args, **kwargs)
        seen["predict"].append(len(scores))  # rows scored: those that passed validation
        return scores

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", read_row_groups)
    monkeypatch.setattr(pq.ParquetFile, "read", read)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    monkeypatch.setattr(scoring, "validate_chunk", validate)
    monkeypatch.setattr(scoring, "predict", predict)

    ref = Registry(config.store, "gen").champion_ref()
    plan = partitions.plan_partition(config, "2026-01-01", ref)
    assert plan.rows_in == 12_000 and sum(c.rows for c in plan.chunks) == 12_000
    results = [scoring.score_chunk(config, c, ref, plan, "run") for c in plan.chunks]
    outcome = scoring.publish_partition(config, plan, ref, results, "run")
    assert outcome.rows_scored + outcome.rows_quarantined == 12_000
    assert outcome.rows_quarantined == 3

    feature_reads = [n for n, cols in reads if set(cols) & set(FEATURES)]
    assert max(feature_reads) == batch_rows
    whole = [cols for n, cols in reads if n > 2_000]
    assert whole == [("id",)]  # the plan's id column, nothing else
    assert sum(seen["validate"]) == 12_000 and max(seen["validate"]) == batch_rows
    assert sum(seen["predict"]) == 12_000 - 3 and max(seen["predict"]) <= batch_rows


def test_a_label_outside_0_and_1_is_named_with_its_folder_and_column(tmp_path):
    """Realised performance of a binary model refuses a label of 2, and says where it is."""
    from batchscore import partitions, performance, scoring

    config = _config(tmp_path)
    _register(config)
    folder = Path(config.source) / "incoming" / "dt=2026-01-01"
    folder.mkdir(parents=True)
    pq.write_table(_table(500, seed=4), folder / "part-0.parquet")
    ref = Registry(config.store, "gen").champion_ref()
    plan = partitions.plan_partition(config, "2026-01-01", ref)
    results = [scoring.score_chunk(config, c, ref, plan, "run") for c in plan.chunks]
    scoring.publish_partition(config, plan, ref, results, "run")
    labels = Path(config.source) / "labels" / "dt=2026-01-01"
    labels.mkdir(parents=True)
    y = np.zeros(500)
    y[::3], y[7] = 1.0, 2.0
    pq.write_table(pa.table({"id": np.arange(500, dtype=np.int64), "y": y}), labels / "l.parquet")

    with pytest.raises(ValueError) as raised:
        performance.measure(config, "2026-01-01", "run")
    message = str(raised.value)
    assert "labels/dt=2026-01-01" in message and "'y'" in message
    assert "binary labels must be 0 or 1; found [0.0, 1.0, 2.0]" in message


def test_an_integer_beyond_2_to_the_53_is_quarantined_not_a_failed_partition(tmp_path):
    """An int64 feature value that has no exact float64 (2**60 + 1) is a number outside the
    validation band: its row goes to quarantine and the rest are scored, with drift counted.
    A safe int-to-float cast raised on it, in the scoring matrix (which converts a whole
    block, rejected rows too) and in the drift counts, failing the whole partition."""
    from batchscore import partitions, scoring

    config = _config(tmp_path)
    _register(config)
    table = _table(500, seed=4)
    ints = table.column("integers").to_numpy(zero_copy_only=False)
    as_int = pa.array(np.nan_to_num(ints).astype(np.int64), mask=np.isnan(ints))
    as_int = pa.concat_arrays([as_int[:7], pa.array([2**60 + 1], pa.int64()), as_int[8:]])
    table = table.set_column(table.schema.get_field_index("integers"), "integers", as_int)
    folder = Path(config.source) / "incoming" / "dt=2026-01-01"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")

    ref = Registry(config.store, "gen").champion_ref()
    plan = partitions.plan_partition(config, "2026-01-01", ref)
    results = [scoring.score_chunk(config, c, ref, plan, "run") for c in plan.chunks]
    outcome = scoring.publish_partition(config, plan, ref, results, "run")
    assert (outcome.status, outcome.rows_scored, outcome.rows_quarantined) == ("scored", 499, 1)
    quarantined = pq.read_table(Path(config.store) / "quarantine" / "dt=2026-01-01")
    assert quarantined.column("id").to_pylist() == [7]
    assert "integers=1152921504606846977" in quarantined.column("reason")[0].as_py()
    assert "outside the validation band" in quarantined.column("reason")[0].as_py()
    report = pq.read_table(Path(config.store) / "drift" / "dt=2026-01-01").to_pylist()
    assert {r["status"] for r in report if r["feature"] == "integers"} == {"ok"}


def test_duplicate_ids_across_files_of_other_id_types_are_quarantined(tmp_path):
    """File a holds int32 ids, b int64 ids with 5,000,000,000 twice, c ids that are all null
    (Arrow's null type). The duplicates and the null ids go to quarantine, the rest is
    scored. Looking the plan's duplicates up in a chunk converted them to the chunk's id
    type, which raised on 5,000,000,000 in a's int32 chunk and on any id in c's null one,
    failing the partition."""
    from batchscore import partitions, scoring

    config = _config(tmp_path)
    _register(config)
    folder = Path(config.source) / "incoming" / "dt=2026-01-01"
    folder.mkdir(parents=True)
    a = _table(300, seed=4)
    b = _table(300, seed=5)
    c = _table(10, seed=6)
    pq.write_table(a.set_column(0, "id", a.column("id").cast(pa.int32())), folder / "a.parquet")
    ids = np.arange(1_000, 1_300)
    ids[[3, 200]] = 5_000_000_000
    pq.write_table(b.set_column(0, "id", pa.array(ids)), folder / "b.parquet")
    pq.write_table(c.set_column(0, "id", pa.nulls(10)), folder / "c.parquet")

    ref = Registry(config.store, "gen").champion_ref()
    plan = partitions.plan_partition(config, "2026-01-01", ref)
    assert (plan.duplicate_ids, plan.duplicate_rows) == (frozenset({5_000_000_000}), 2)
    results = [scoring.score_chunk(config, chunk, ref, plan, "run") for chunk in plan.chunks]
    outcome = scoring.publish_partition(config, plan, ref, results, "run")

    assert (outcome.status, outcome.rows_scored, outcome.rows_quarantined) == ("scored", 598, 12)
    quarantined = pq.read_table(Path(config.store) / "quarantine" / "dt=2026-01-01")
    reasons = quarantined.column("reason").to_pylist()
    duplicate = "duplicate id id=5000000000: the partition holds this id more than once"
    assert sorted(reasons) == [duplicate] * 2 + ["null id id"] * 10
    # Each file's chunks are written with the partition's one id type (int64 here), so each
    # output folder reads as one table: a's int32 parts and c's null-typed ones did not.
    assert plan.id_types == ("int64",)
    for output in ("scores", "quarantine"):
        files = sorted((Path(config.store) / output / "dt=2026-01-01").glob("part-*.parquet"))
        assert len(files) == len(plan.chunks) or output == "quarantine"
        assert {pq.read_schema(f).field("id").type for f in files} == {pa.int64()}
    scores = pq.read_table(Path(config.store) / "scores" / "dt=2026-01-01")
    assert scores.num_rows == 598 and 5_000_000_000 not in scores.column("id").to_pylist()


def test_string_ids_of_several_encodings_are_written_as_one_type(tmp_path):
    """Dictionary-encoded string ids in one file, plain strings in another: the outputs hold
    one string type (large_string), and an id in both files is a duplicate."""
    from batchscore import partitions, scoring

    config = _config(tmp_path)
    _register(config)
    folder = Path(config.source) / "incoming" / "dt=2026-01-01"
    folder.mkdir(parents=True)
    a, b = _table(200, seed=4), _table(200, seed=5)
    ids_a = pa.array([f"a{i}" for i in range(200)]).dictionary_encode()
    ids_b = pa.array(["a7"] + [f"b{i}" for i in range(199)])
    pq.write_table(a.set_column(0, "id", ids_a), folder / "a.parquet")
    pq.write_table(b.set_column(0, "id", ids_b), folder / "b.parquet")

    ref = Registry(config.store, "gen").champion_ref()
    plan = partitions.plan_partition(config, "2026-01-01", ref)
    assert plan.duplicate_ids == frozenset({"a7"}) and plan.id_types == ("large_string",)
    results = [scoring.score_chunk(config, chunk, ref, plan, "run") for chunk in plan.chunks]
    outcome = scoring.publish_partition(config, plan, ref, results, "run")
    assert (outcome.rows_scored, outcome.rows_quarantined) == (398, 2)
    for output in ("scores", "quarantine"):
        table = pq.read_table(Path(config.store) / output / "dt=2026-01-01")
        assert table.schema.field("id").type == pa.large_string()


def test_input_columns_named_like_quarantine_columns_are_kept_as_input_columns(tmp_path):
    """An export with its own `reason` and `run_id` columns: the quarantine file had two
    columns of each name, and pyarrow could not read it."""
    from batchscore import partitions, scoring

    config = _config(tmp_path)
    _register(config)
    folder = Path(config.source) / "incoming" / "dt=2026-01-01"
    folder.mkdir(parents=True)
    table = _table(300, seed=4)
    never = table.column("never_missing").to_numpy().copy()
    never[[5, 9]] = np.nan  # never missing in training: these two rows are rejected
    table = table.set_column(3, "never_missing", pa.array(never))
    table = table.append_column("reason", pa.array([f"upstream {i}" for i in range(300)]))
    table = table.append_column("run_id", pa.array(np.arange(300) * 10))
    pq.write_table(table, folder / "part-0.parquet")

    ref = Registry(config.store, "gen").champion_ref()
    plan = partitions.plan_partition(config, "2026-01-01", ref)
    results = [scoring.score_chunk(config, c, ref, plan, "run-1") for c in plan.chunks]
    scoring.publish_partition(config, plan, ref, results, "run-1")

    quarantined = pq.read_table(Path(config.store) / "quarantine" / "dt=2026-01-01")
    assert quarantined.column("input_reason").to_pylist() == ["upstream 5", "upstream 9"]
    assert quarantined.column("input_run_id").to_pylist() == [50, 90]
    assert quarantined.column("run_id").to_pylist() == ["run-1", "run-1"]
    assert all("never_missing is missing" in r for r in quarantined.column("reason").to_pylist())
