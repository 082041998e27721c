"""Ring 1: Arrow columns -> the model matrix, and the training profile, on hand-built tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from batchscore.features import (
    CategoricalProfile,
    FeatureSchema,
    NumericProfile,
    TrainingProfile,
    unseen_mask,
)

NAN = math.nan


def _table() -> pa.Table:
    # Deliberately not in feature order: the schema decides the matrix's column order.
    return pa.table(
        {
            "plan": pa.array(["basic", None, "gold", "premium"], pa.string()),
            "count": pa.array([3, None, -2, 7], pa.int64()),
            "ratio": pa.array([0.5, NAN, None, 2.25], pa.float64()),
            "small": pa.array([1, 2, None, 4], pa.int8()),
        }
    )


SCHEMA = FeatureSchema(("count", "ratio", "small", "plan"), {"plan": ("basic", "premium")})


def test_to_matrix_encodes_numbers_and_categories_in_feature_order():
    matrix = SCHEMA.to_matrix(_table())

    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(
        matrix,
        [
            [3.0, 0.5, 1.0, 0.0],  # basic -> position 0 in the vocabulary
            [NAN, NAN, 2.0, NAN],  # null int -> NaN, NaN stays NaN, null category -> NaN
            [-2.0, NAN, NAN, 2.0],  # gold is unseen -> len(vocabulary)
            [7.0, 2.25, 4.0, 1.0],  # premium -> position 1
        ],
    )


def test_column_order_follows_features_not_the_table():
    reordered = FeatureSchema(("plan", "small", "count"), {"plan": ("basic", "premium")})

    np.testing.assert_array_equal(
        reordered.to_matrix(_table()),
        [[0.0, 1.0, 3.0], [NAN, 2.0, NAN], [2.0, NAN, -2.0], [1.0, 4.0, 7.0]],
    )


def test_a_dictionary_encoded_category_encodes_like_a_plain_string():
    table = _table()
    encoded = table.set_column(
        table.schema.get_field_index("plan"), "plan", pc.dictionary_encode(table.column("plan"))
    )
    assert pa.types.is_dictionary(encoded.schema.field("plan").type)

    np.testing.assert_array_equal(SCHEMA.to_matrix(encoded), SCHEMA.to_matrix(table))
    np.testing.assert_array_equal(SCHEMA.to_matrix(encoded)[:, 3], [0.0, NAN, 2.0, 1.0])


def test_an_integer_category_is_looked_up_by_its_text():
    schema = FeatureSchema(("region",), {"region": ("1", "2", "30")})
    table = pa.table({"region": pa.array([30, 1, None, 4, 2], pa.int32())})

    np.testing.assert_array_equal(schema.to_matrix(table)[:, 0], [2.0, 0.0, NAN, 3.0, 1.0])


def test_unseen_mask_marks_only_present_values_outside_the_vocabulary():
    column = pa.array(["basic", None, "gold", "premium", "gold"])

    np.testing.assert_array_equal(
        unseen_mask(column, ("basic", "premium")), [False, False, True, False, True]
    )


def test_schema_properties_name_the_categorical_features_and_their_positions():
    assert SCHEMA.categorical == ("plan",)
    assert SCHEMA.categorical_indices == [3]


def test_training_profile_fit_records_range_missing_and_sorted_category_counts():
    table = pa.table(
        {
            "x": pa.array([2.0, -1.5, None, NAN, math.inf, 4.0]),
            "n": pa.array([5, 5, 5, 5, 5, 5], pa.int64()),
            "plan": pa.array(["gold", "basic", None, "gold", "premium", "gold"]),
        }
    )

    profile = TrainingProfile.fit(table, ["x", "n", "plan"], ["plan"])

    # inf is neither the range nor missing; null and NaN are both missing.
    assert profile.numeric == {
        "x": NumericProfile(min=-1.5, max=4.0, n=6, n_missing=2),
        "n": NumericProfile(min=5.0, max=5.0, n=6, n_missing=0),
    }
    assert profile.categorical == {
        "plan": CategoricalProfile(counts={"basic": 1, "gold": 3, "premium": 1}, n=6, n_missing=1)
    }
    assert list(profile.categorical["plan"].counts) == ["basic", "gold", "premium"]
    assert profile.schema(["plan", "x", "n"]) == FeatureSchema(
        ("plan", "x", "n"), {"plan": ("basic", "gold", "premium")}
    )


def test_training_profile_fit_refuses_a_feature_without_a_finite_value():
    table = pa.table({"x": pa.array([None, NAN, math.inf], pa.float64())})

    with pytest.raises(ValueError) as info:
        TrainingProfile.fit(table, ["x"], [])
    assert str(info.value) == "feature 'x' has no finite value in the training data"


@pytest.mark.parametrize(
    ("profile", "factor", "band"),
    [
        (NumericProfile(0.0, 10.0, 5, 0), 1.0, (-10.0, 20.0)),
        (NumericProfile(0.0, 10.0, 5, 0), 0.5, (-5.0, 15.0)),
        (NumericProfile(0.0, 10.0, 5, 0), 0.0, (0.0, 10.0)),
        (NumericProfile(-4.0, -2.0, 5, 0), 2.0, (-8.0, 2.0)),
        # Constant in training: widened by |value| ...
        (NumericProfile(5.0, 5.0, 5, 0), 1.0, (0.0, 10.0)),
        (NumericProfile(-3.0, -3.0, 5, 0), 2.0, (-9.0, 3.0)),
        # ... or by 1 when the value is smaller than 1 in magnitude.
        (NumericProfile(0.0, 0.0, 5, 0), 1.0, (-1.0, 1.0)),
        (NumericProfile(0.25, 0.25, 5, 0), 2.0, (-1.75, 2.25)),
    ],
)
def test_numeric_band_widens_the_training_range(profile, factor, band):
    assert profile.band(factor) == pytest.approx(band)


def test_feature_schema_round_trips_through_json():
    text = json.dumps(SCHEMA.to_json())

    assert json.loads(text) == {
        "features": ["count", "ratio", "small", "plan"],
        "vocabularies": {"plan": ["basic", "premium"]},
    }
    assert FeatureSchema.from_json(json.loads(text)) == SCHEMA


def test_training_profile_round_trips_through_json():
    profile = TrainingProfile.fit(_table(), ["count", "ratio", "small", "plan"], ["plan"])

    restored = TrainingProfile.from_json(json.loads(json.dumps(profile.to_json())))

    assert restored == profile
    assert restored.numeric["ratio"] == NumericProfile(0.5, 2.25, 4, 2)
    assert restored.categorical["plan"].counts == {"basic": 1, "gold": 1, "premium": 1}


def test_feature_columns_convert_one_column_when_it_is_read(monkeypatch):
    """Drift counting reads a batch's features through `FeatureColumns`: asking whether a
    feature is there converts nothing, reading it converts that column only, and the values
    are those of `feature_columns`."""
    from batchscore import features

    table = pa.table(
        {
            "n": pa.array([1.5, None, -2.0]),
            "i": pa.array([1, 2, None], pa.int32()),
            "c": pa.array(["a", None, "b"]).dictionary_encode(),
        }
    )
    converted = []
    real = features.numeric_values
    monkeypatch.setattr(
        features, "numeric_values", lambda column: converted.append(1) or real(column)
    )
    lazy = features.FeatureColumns(table, ["n", "i", "c", "gone"], ["c"])
    assert "n" in lazy and "c" in lazy and "gone" not in lazy and "other" not in lazy
    assert converted == []
    np.testing.assert_array_equal(lazy["i"], [1.0, 2.0, np.nan])
    assert converted == [1]
    eager = features.feature_columns(table, ["n", "i", "c"], ["c"])
    np.testing.assert_array_equal(lazy["n"], eager["n"])
    assert lazy["c"].to_pylist() == eager["c"].to_pylist() == ["a", None, "b"]
    # Only the kept rows, column by column, as if the table had been filtered first.
    kept = features.FeatureColumns(table, ["n", "i", "c"], ["c"], np.array([True, False, True]))
    np.testing.assert_array_equal(kept["n"], [1.5, -2.0])
    np.testing.assert_array_equal(kept["i"], [1.0, np.nan])
    assert kept["c"].to_pylist() == ["a", "b"]
