"""Ring 2: the model registry on a local folder, with a tiny real LightGBM model.

ModelRef.load is cached per ref (store, name, version, sha256); every test uses its own
tmp_path store, so no test sees another's cached model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pytest

from batchscore.features import TrainingProfile
from batchscore.registry import (
    LISTED,
    SCORED,
    ModelIntegrityError,
    ModelRef,
    Registry,
    RegistryError,
)
from batchscore.storage import UnreadableJSON

FEATURES = ["x", "z", "kind"]


@pytest.fixture(scope="module")
def trained() -> dict:
    """A small binary LightGBM model with the metadata `batchscore models list` prints."""
    rng = np.random.default_rng(7)
    n = 200
    table = pa.table(
        {
            "x": rng.normal(size=n),
            "z": rng.uniform(0, 10, size=n),
            "kind": rng.choice(["a", "b", "c"], size=n),
        }
    )
    profile = TrainingProfile.fit(table, FEATURES, ["kind"])
    schema = profile.schema(FEATURES)
    X = schema.to_matrix(table)
    y = (X[:, 0] + 0.2 * X[:, 1] + (X[:, 2] == 1) + rng.normal(0, 0.5, n) > 1.0).astype(float)
    params = {
        "objective": "binary",
        "num_leaves": 4,
        "min_data_in_leaf": 5,
        "num_threads": 1,
        "deterministic": True,
        "verbose": -1,
    }
    data = lgb.Dataset(X, y, feature_name=FEATURES, categorical_feature=schema.categorical_indices)
    booster = lgb.train(params, data, num_boost_round=10)
    metadata = {
        "task": "binary",
        "schema": schema.to_json(),
        "profile": profile.to_json(),
        "metrics": {"auc": 0.9, "log_loss": 0.3},
        "training_window": {"from": "2026-10-01", "to": "2026-10-10"},
        "reason": "test",
    }
    return {
        "text": booster.model_to_string(),
        "metadata": metadata,
        "X": X,
        "predictions": booster.predict(X),
        "schema": schema,
        "profile": profile,
    }


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(str(tmp_path / "store"), "churn")


def _model_dir(registry: Registry, version: str) -> Path:
    return Path(registry.root.path(version))


DROP = object()  # `_edit`: remove the key


def _edit(path: Path, changes: dict | None) -> None:
    """Rewrite a JSON document of the store with `changes` (None: as `{}`)."""
    data = {} if changes is None else {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not DROP}))


def test_registering_twice_gives_v0001_then_v0002(registry: Registry, trained: dict):
    assert registry.versions() == []

    first = registry.register(trained["text"], trained["metadata"])
    second = registry.register(trained["text"], {**trained["metadata"], "reason": "again"})

    assert (first, second) == ("v0001", "v0002")
    assert registry.versions() == ["v0001", "v0002"]
    meta = registry.metadata("v0002")
    assert meta["version"] == "v0002"
    assert meta["name"] == "churn"
    assert meta["reason"] == "again"
    assert meta["sha256"] == hashlib.sha256(trained["text"].encode()).hexdigest()
    assert dt.datetime.fromisoformat(meta["created_at"]).tzinfo is not None
    assert (_model_dir(registry, "v0001") / "model.txt").read_text() == trained["text"]


def test_there_is_no_champion_until_one_is_promoted(registry: Registry, trained: dict):
    registry.register(trained["text"], trained["metadata"])

    assert registry.champion() is None
    with pytest.raises(RegistryError) as info:
        registry.champion_ref()
    assert str(info.value) == (
        f"model 'churn' has no champion under {registry.root.uri}: train one with "
        "`batchscore train --config F` or promote a version with "
        "`batchscore models promote VERSION --config F`"
    )


def test_no_champion_and_no_version_suggests_the_store_path_may_be_wrong(tmp_path: Path):
    """A config pointing at another store than the one trained into (a typo in [storage]
    store) met the same "train one" as a fresh store; training would have started a second
    registry beside the first. Without any version the message says what to check."""
    registry = Registry(str(tmp_path / "stroe"), "churn")
    with pytest.raises(RegistryError) as info:
        registry.champion_ref()
    assert str(info.value) == (
        f"model 'churn' has no champion under {registry.root.uri}, nor any version (if you "
        "trained one, check [storage] store and [dataset] name): train one with "
        "`batchscore train --config F` or promote a version with "
        "`batchscore models promote VERSION --config F`"
    )


def test_promote_and_rollback_move_the_alias_and_leave_an_audit_trail(
    registry: Registry, trained: dict
):
    for _ in range(2):
        registry.register(trained["text"], trained["metadata"])

    registry.promote("v0001", "first model", run_id="run-1")
    assert registry.champion() == "v0001"
    registry.promote("v0002", "better auc")
    assert registry.champion() == "v0002"
    assert registry.champion_ref() == ModelRef(
        registry.store, "churn", "v0002", registry.metadata("v0002")["sha256"]
    )

    assert registry.rollback("v0002 misbehaves") == "v0001"
    assert registry.champion() == "v0001"

    events = registry.audit()
    keys = ("action", "from", "to", "reason", "run_id")
    assert [tuple(e[k] for k in keys) for e in events] == [
        ("promote", None, "v0001", "first model", "run-1"),
        ("promote", "v0001", "v0002", "better auc", None),
        ("rollback", "v0002", "v0001", "v0002 misbehaves", None),
    ]
    for event in events:
        assert dt.datetime.fromisoformat(event["at"]).tzinfo is not None
    alias = json.loads((Path(registry.root.path()) / "champion.json").read_text())
    assert alias == {"version": "v0001", "since": events[-1]["at"], "reason": "v0002 misbehaves"}


def test_rollback_without_a_champion_fails(registry: Registry, trained: dict):
    registry.register(trained["text"], trained["metadata"])

    with pytest.raises(RegistryError) as info:
        registry.rollback()
    assert str(info.value) == "model 'churn' has no champion to roll back from"
    assert registry.audit() == []


def test_rollback_of_the_first_champion_fails(registry: Registry, trained: dict):
    registry.register(trained["text"], trained["metadata"])
    registry.promote("v0001", "first model")

    with pytest.raises(RegistryError) as info:
        registry.rollback()
    assert str(info.value) == "champion v0001 of 'churn' has no previous champion"
    assert registry.champion() == "v0001"
    assert len(registry.audit()) == 1


def test_rollback_after_promoting_the_champion_again_still_restores_the_previous_one(
    registry: Registry, trained: dict
):
    for _ in range(2):
        registry.register(trained["text"], trained["metadata"])
    registry.promote("v0001", "first model")
    registry.promote("v0002", "better")
    registry.promote("v0002", "retried the same command")

    assert registry.rollback() == "v0001"
    assert registry.champion() == "v0001"


def test_repeated_rollbacks_keep_going_back_through_the_champions(
    registry: Registry, trained: dict
):
    for _ in range(3):
        registry.register(trained["text"], trained["metadata"])
    for version in ("v0001", "v0002", "v0003"):
        registry.promote(version, "next")

    assert registry.rollback() == "v0002"
    assert registry.rollback() == "v0001"
    assert registry.champion_history() == ["v0001"]
    with pytest.raises(RegistryError, match="has no previous champion"):
        registry.rollback()
    registry.promote("v0003", "forward again")
    assert registry.rollback() == "v0001"


def test_promoting_an_unknown_version_names_the_known_ones(registry: Registry, trained: dict):
    for _ in range(2):
        registry.register(trained["text"], trained["metadata"])
    registry.promote("v0001", "first model")

    with pytest.raises(RegistryError) as info:
        registry.promote("v0009", "typo")
    assert str(info.value) == (
        f"model 'churn' has no version 'v0009' under {registry.root.uri}; known: v0001, v0002"
    )
    assert registry.champion() == "v0001"
    assert len(registry.audit()) == 1


def test_a_registered_model_loads_with_its_schema_and_profile(registry: Registry, trained: dict):
    version = registry.register(trained["text"], trained["metadata"])

    loaded = registry.ref(version).load()

    assert loaded.ref == registry.ref(version)
    assert loaded.task == "binary"
    assert loaded.schema == trained["schema"]
    assert loaded.profile == trained["profile"]
    assert loaded.booster.feature_name() == FEATURES
    np.testing.assert_allclose(loaded.booster.predict(trained["X"]), trained["predictions"])


def test_a_model_file_changed_after_registration_refuses_to_load(registry: Registry, trained: dict):
    version = registry.register(trained["text"], trained["metadata"])
    ref = registry.ref(version)
    model_file = _model_dir(registry, version) / "model.txt"
    tampered = trained["text"].replace("learning_rate", "learning_rate ", 1)
    assert tampered != trained["text"]
    model_file.write_text(tampered)

    with pytest.raises(ModelIntegrityError) as info:
        ref.load()
    actual = hashlib.sha256(tampered.encode()).hexdigest()
    assert str(info.value) == (
        f"model churn v0001: {model_file} has sha256 {actual}, but the registry recorded "
        f"{ref.sha256}; the file was changed after registration. Refusing to load it."
    )


def test_a_ref_with_a_stale_sha256_refuses_to_load(registry: Registry, trained: dict):
    registry.register(trained["text"], trained["metadata"])
    stale = ModelRef(registry.store, "churn", "v0001", "0" * 64)

    with pytest.raises(ModelIntegrityError, match="has sha256 [0-9a-f]{64}, but the registry"):
        stale.load()


def test_a_model_whose_trees_disagree_with_its_schema_refuses_to_load(
    registry: Registry, trained: dict
):
    metadata = {
        **trained["metadata"],
        "schema": {"features": ["x", "y", "kind"], "vocabularies": {}},
    }
    version = registry.register(trained["text"], metadata)

    with pytest.raises(ModelIntegrityError) as info:
        registry.ref(version).load()
    assert str(info.value) == (
        "model churn v0001: its trees use features ['x', 'z', 'kind'], "
        "its metadata lists ['x', 'y', 'kind']"
    )


def test_a_version_folder_is_complete_and_no_staging_is_left(registry: Registry, trained: dict):
    for _ in range(2):
        registry.register(trained["text"], trained["metadata"])
    registry.promote("v0002", "first model")

    root = Path(registry.root.path())
    assert sorted(p.name for p in root.iterdir()) == ["audit", "champion.json", "v0001", "v0002"]
    for version in ("v0001", "v0002"):
        assert sorted(p.name for p in (root / version).iterdir()) == ["metadata.json", "model.txt"]
    # No hidden staging folder or temporary file anywhere under the model's root.
    assert [p for p in root.rglob(".*")] == []


def test_registrations_from_several_threads_at_once_get_distinct_versions(
    registry: Registry, trained: dict
):
    threads = 6
    start = threading.Barrier(threads)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            start.wait()
            results[i] = registry.register(
                trained["text"], {**trained["metadata"], "reason": str(i)}
            )
        except BaseException as exc:  # reported below, with the thread's index
            errors.append(exc)

    workers = [threading.Thread(target=register, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)

    assert errors == []
    expected = [f"v{i:04d}" for i in range(1, threads + 1)]
    assert sorted(results.values()) == expected
    assert registry.versions() == expected
    for i, version in results.items():
        meta = registry.metadata(version)
        assert (meta["version"], meta["reason"]) == (version, str(i))
    assert [p for p in Path(registry.root.path()).rglob(".*")] == []


def test_an_unreadable_or_missing_metadata_json_is_named_as_such(registry: Registry, trained: dict):
    """A truncated metadata.json was a bare JSONDecodeError; a deleted one said the version
    did not exist while listing it among the known ones."""
    for _ in range(2):
        registry.register(trained["text"], trained["metadata"])
    meta = _model_dir(registry, "v0002") / "metadata.json"
    meta.write_text('{"name": "churn", ')

    with pytest.raises(ModelIntegrityError) as info:
        registry.ref("v0002").load()
    assert str(info.value).startswith(
        f"model churn v0002: {meta}: not valid JSON (18 bytes): Expecting property name"
    )
    assert str(info.value).endswith(
        "Restore the file, or promote another version with "
        "`batchscore models promote VERSION --config F`."
    )

    meta.unlink()
    with pytest.raises(ModelIntegrityError) as info:
        registry.metadata("v0002")
    assert str(info.value).startswith(
        f"model churn v0002: {meta} is missing: its registration did not finish, or the "
        "file was deleted."
    )
    assert registry.metadata("v0001")["version"] == "v0001"


PROMOTE_ANOTHER = (
    "Restore the file, or promote another version with "
    "`batchscore models promote VERSION --config F`."
)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (None, "key 'sha256' is missing"),
        ({"sha256": DROP}, "key 'sha256' is missing"),
        ({"sha256": None}, "key 'sha256' holds null, not a string"),
        ({"schema": DROP}, "key 'schema' is missing"),
        ({"schema": "x"}, """key 'schema' holds a string ("x"), not an object"""),
        (
            {"schema": {"features": ["x", 2], "vocabularies": {}}},
            "key 'schema.features[1]' holds a number (2), not a string",
        ),
        ({"task": 1}, 'key \'task\' holds a number (1), not one of "binary", "regression"'),
        ({"files": "x"}, """key 'files' holds a string ("x"), not an object"""),
        ({"profile": []}, "key 'profile' holds an array ([]), not an object"),
        ({"metrics": {"auc": "0.9"}}, """key 'metrics.auc' holds a string ("0.9"), not a"""),
    ],
)
def test_a_metadata_json_without_a_key_or_with_another_type_there_is_named_as_unreadable(
    registry: Registry, trained: dict, changes: dict | None, problem: str
):
    """`{}` was KeyError: 'sha256' from `batchscore score` and `models list`; a string for
    `schema` or `files` a TypeError; a wrong `profile` or `task` failed later, in the
    workers. Such a file is refused as an unreadable one is, naming the key and its value."""
    registry.register(trained["text"], trained["metadata"])
    meta = _model_dir(registry, "v0001") / "metadata.json"
    _edit(meta, changes)

    for read in (lambda: registry.ref("v0001").load(), lambda: registry.metadata("v0001", SCORED)):
        with pytest.raises(ModelIntegrityError) as info:
            read()
        assert str(info.value).startswith(f"model churn v0001: {meta}: {problem}")
        assert str(info.value).endswith(PROMOTE_ANOTHER)
        assert isinstance(info.value.__cause__, UnreadableJSON)


def test_a_version_without_the_keys_of_one_use_is_refused_for_that_use_only(
    registry: Registry, trained: dict
):
    """A version registered without a profile loads (training compares a challenger with
    it) but is not scored with (validation needs it); one without metrics scores but is
    listed as unreadable."""
    registry.register(trained["text"], trained["metadata"])
    meta = _model_dir(registry, "v0001") / "metadata.json"
    _edit(meta, {"profile": DROP, "metrics": DROP})

    assert registry.ref("v0001").load().schema == trained["schema"]
    for needs, key in ((SCORED, "profile"), (LISTED, "metrics")):
        with pytest.raises(ModelIntegrityError) as info:
            registry.metadata("v0001", needs)
        assert f"{meta}: key '{key}' is missing. " in str(info.value)


@pytest.mark.parametrize("name", ["model.txt", "reference.json"])
def test_a_deleted_model_file_is_named_missing_not_changed(
    registry: Registry, trained: dict, name: str
):
    version = registry.register(trained["text"], trained["metadata"], {"reference.json": b"{}"})
    ref = registry.ref(version)
    (_model_dir(registry, version) / name).unlink()

    with pytest.raises(ModelIntegrityError) as info:
        registry.verify(ref)
    assert str(info.value) == (
        f"model churn v0001: {_model_dir(registry, version) / name} is missing; it was deleted "
        "after registration. Refusing to score with it."
    )


def test_an_unreadable_champion_alias_is_named_and_a_promotion_replaces_it(
    registry: Registry, trained: dict
):
    registry.register(trained["text"], trained["metadata"])
    registry.promote("v0001", "first model")
    alias = Path(registry.root.path("champion.json"))
    alias.write_text("garbage\n")

    message = (
        f"model 'churn': its champion alias {alias}: not valid JSON (8 bytes): Expecting "
        "value: line 1 column 1 (char 0). Promote a version to replace it: "
        "`batchscore models promote VERSION --config F`"
    )
    with pytest.raises(RegistryError) as info:
        registry.champion_ref()
    assert str(info.value) == message
    assert registry.champion_problem() == message

    registry.promote("v0001", "replace the alias")
    assert registry.champion() == "v0001" and registry.champion_problem() is None
    assert registry.audit()[-1]["from"] is None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (None, "key 'version' is missing"),
        ({"version": 5}, "key 'version' holds a number (5), not a string"),
    ],
)
def test_a_champion_alias_without_a_version_is_named_as_an_unreadable_one(
    registry: Registry, trained: dict, changes: dict | None, problem: str
):
    registry.register(trained["text"], trained["metadata"])
    registry.promote("v0001", "first model")
    alias = Path(registry.root.path("champion.json"))
    _edit(alias, changes)

    message = (
        f"model 'churn': its champion alias {alias}: {problem}. Promote a version to replace "
        "it: `batchscore models promote VERSION --config F`"
    )
    with pytest.raises(RegistryError) as info:
        registry.champion_ref()
    assert str(info.value) == message
    assert registry.champion_problem() == message


def test_a_champion_alias_naming_a_version_that_is_not_there_says_so(
    registry: Registry, trained: dict
):
    registry.register(trained["text"], trained["metadata"])
    registry.promote("v0001", "first model")
    alias = Path(registry.root.path("champion.json"))
    alias.write_text(alias.read_text().replace("v0001", "v0009"))

    message = (
        f"model 'churn': its champion alias {alias} names v0009, which is not a version under "
        f"{registry.root.uri} (known: v0001). Promote one with "
        "`batchscore models promote VERSION --config F`"
    )
    with pytest.raises(RegistryError) as info:
        registry.champion_ref()
    assert str(info.value) == message
    assert registry.champion_problem() == message


def _with_records(registry: Registry, trained: dict) -> Path:
    """Two versions promoted in turn (two audit records) and two retrain records; the
    registry's folder."""
    for _ in range(2):
        registry.register(trained["text"], trained["metadata"])
    registry.promote("v0001", "first model")
    registry.promote("v0002", "second model")
    for parent, version in (("v0001", "v0002"), ("v0002", "v0003")):
        registry.record_retrain(
            {"status": "promoted", "parent": parent, "version": version, "decision": "better"}
        )
    return Path(registry.root.path())


def test_an_unreadable_audit_or_retrain_record_is_named_and_left_out_where_that_is_safe(
    registry: Registry, trained: dict
):
    """A truncated record under audit/ or retrains/ was a bare JSONDecodeError for `models
    list`, rollback and the drift policy's cooldown (after every partition was published)."""
    root = _with_records(registry, trained)
    first_audit = sorted((root / "audit").glob("*.json"))[0]
    last_retrain = sorted((root / "retrains").glob("*.json"))[-1]
    kept_at = json.loads(sorted((root / "retrains").glob("*.json"))[0].read_text())["at"]
    first_audit.write_text('{"action": "prom')
    last_retrain.write_text("")

    # Rollback needs every move: it refuses, naming the file and what to do instead.
    with pytest.raises(RegistryError) as info:
        registry.rollback()
    assert str(info.value).startswith(
        f"model 'churn': its audit record {first_audit}: not valid JSON (16 bytes): "
    )
    assert "no previous champion to roll back to. Promote the version you want" in str(info.value)
    assert registry.champion() == "v0002"
    # A listing and the cooldown do with the others.
    unreadable: list[str] = []
    assert [e["to"] for e in registry.audit(unreadable)] == ["v0002"]
    assert len(unreadable) == 1
    assert unreadable[0].startswith(f"{first_audit}: not valid JSON (16 bytes): Unterminated")
    unreadable = []
    assert registry.last_retrain_at(unreadable) == dt.datetime.fromisoformat(kept_at)
    assert unreadable[0].startswith(f"{last_retrain}: not valid JSON (0 bytes): Expecting value")


def test_the_cooldown_reads_retrain_records_newest_first_up_to_the_last_retrain(
    registry: Registry, monkeypatch
):
    """Every scoring run asks when the last retrain was: a year of nightly attempts was a
    year of reads (one GET each on S3). Attempts that trained nothing (skipped, failed) and
    the first model are not retrains, and are read past."""
    from batchscore.storage import Location

    def record(status: str, parent: str | None, **more) -> None:
        registry.record_retrain(
            {"status": status, "parent": parent, "version": None, "decision": "-", **more}
        )

    for day in range(40):
        record("promoted", "v0001", day=day)
    record("skipped", "v0001")
    record("failed", "v0001")
    newest = sorted(Path(registry.root.path("retrains")).glob("*.json"))
    expected = json.loads(newest[-3].read_text())
    assert expected["day"] == 39
    reads: list[str] = []
    real = Location.read_json
    monkeypatch.setattr(
        Location,
        "read_json",
        lambda self, *parts, **kw: reads.append(parts[-1]) or real(self, *parts, **kw),
    )

    assert registry.last_retrain_at() == dt.datetime.fromisoformat(expected["at"])
    assert reads == [p.name for p in reversed(newest[-3:])]
    # With nothing but a first model and skipped attempts, there was no retrain.
    for path in newest[:-2]:
        path.unlink()
    record("promoted", None)
    assert registry.last_retrain_at() is None


@pytest.mark.parametrize(
    ("folder", "changes", "problem"),
    [
        ("audit", None, "key 'action' is missing"),
        ("audit", {"to": DROP}, "key 'to' is missing"),
        ("audit", {"action": 1}, "key 'action' holds a number (1), not a string"),
        ("audit", {"from": ["v0001"]}, """key 'from' holds an array (["v0001"]), not a"""),
        ("retrains", None, "key 'status' is missing"),
        ("retrains", {"at": 5}, "key 'at' holds a number (5), not a time (ISO 8601)"),
        ("retrains", {"at": "yesterday"}, """key 'at' holds a string ("yesterday"), not a time"""),
        ("retrains", {"status": None}, "key 'status' holds null, not a string"),
    ],
)
def test_an_audit_or_retrain_record_without_a_key_is_named_and_left_out_as_an_unreadable_one(
    registry: Registry, trained: dict, folder: str, changes: dict | None, problem: str
):
    """A record without `to` or `action` was a KeyError for rollback and `models list`; a
    retrain record whose `at` is a number a TypeError in the drift policy's cooldown,
    after every partition of the run was published (and one that is not a time, a
    ValueError)."""
    root = _with_records(registry, trained)
    record = sorted((root / folder).glob("*.json"))[-1]
    kept_at = json.loads(sorted((root / "retrains").glob("*.json"))[0].read_text())["at"]
    _edit(record, changes)

    unreadable: list[str] = []
    if folder == "audit":
        with pytest.raises(RegistryError) as info:
            registry.rollback()
        assert str(info.value).startswith(f"model 'churn': its audit record {record}: {problem}")
        assert [e["to"] for e in registry.audit(unreadable)] == ["v0001"]
    else:
        assert registry.last_retrain_at(unreadable) == dt.datetime.fromisoformat(kept_at)
    assert len(unreadable) == 1 and unreadable[0].startswith(f"{record}: {problem}")


def test_feature_names_are_read_from_the_model_as_lightgbm_reads_them(registry: Registry):
    """LightGBM keeps a tab, a form feed or a no-break space in a feature name and splits its
    `feature_names=` line on single spaces; `str.split()` (and `splitlines`) cut such names
    apart, and the model's check refused a model LightGBM itself reads well."""
    from batchscore.registry import _feature_names

    names = ["tenure\tmonths", "a\x0cb", "plan\u00a0type", "em\u2003space", "月额.b", "<b>"]
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, len(names)))
    y = (X[:, 0] + X[:, 5] > 0).astype(float)
    params = {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y, feature_name=names), num_boost_round=3)
    text = booster.model_to_string()
    assert lgb.Booster(model_str=text).feature_name() == names

    assert _feature_names(text) == names
    schema = {"features": names, "vocabularies": {}}
    version = registry.register(text, {"task": "binary", "schema": schema})
    assert registry.ref(version).load().metadata["schema"]["features"] == names


def test_retrains_since_a_time_reads_only_the_records_written_from_then_on(registry: Registry):
    """`batchscore score` prints the retrains its run started: the records written since it
    began, found by their names, without reading (on S3, a GET each) the older ones."""
    registry.record_retrain({"status": "skipped", "version": None, "decision": "first"})
    older = sorted((Path(registry.root.path()) / "retrains").glob("*.json"))[0]
    older.write_text("{")  # were it read, it would be named in `unreadable`
    time.sleep(1.1)  # the next second: records are found to the second, as their `at`
    since = dt.datetime.now(dt.UTC)
    registry.record_retrain({"status": "skipped", "version": None, "decision": "second"})

    unreadable: list[str] = []
    assert [r["decision"] for r in registry.retrains(unreadable, since=since)] == ["second"]
    assert unreadable == []
    assert [r["decision"] for r in registry.retrains(unreadable)] == ["second"]
    assert len(unreadable) == 1 and unreadable[0].startswith(str(older))
