"""Feature schema and training profile: how Arrow columns become the model's input matrix.

The schema is fixed at training and stored in the model's metadata: feature order, and for
each categorical feature its vocabulary, whose position is the integer code LightGBM saw.
A category outside the vocabulary gets the code `len(vocabulary)`, which no split names, so
LightGBM sends it down the default branch; a missing category is NaN. The same schema object
encodes training and scoring data, so the two can never disagree.

The profile records what training saw per feature (range, missing values, category counts):
validation bands are built from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class NumericProfile:
    min: float
    max: float
    n: int
    n_missing: int

    def band(self, width_factor: float) -> tuple[float, float]:
        """The validation band: the training range widened by `width_factor` x its width.

        A feature that was constant in training has no width; its band is widened by the
        magnitude of the constant (or 1) instead, so ordinary values are not rejected.
        """
        width = self.max - self.min
        if width <= 0:
            width = max(abs(self.min), 1.0)
        return self.min - width_factor * width, self.max + width_factor * width


@dataclass(frozen=True)
class CategoricalProfile:
    counts: dict[str, int]
    n: int
    n_missing: int


@dataclass(frozen=True)
class FeatureSchema:
    features: tuple[str, ...]
    vocabularies: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(f for f in self.features if f in self.vocabularies)

    @property
    def categorical_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if f in self.vocabularies]

    def to_matrix(self, table: pa.Table) -> np.ndarray:
        """The float64 model input, one column per feature in training order."""
        out = np.empty((table.num_rows, len(self.features)), dtype=np.float64)
        for j, name in enumerate(self.features):
            column = table.column(name)
            if name in self.vocabularies:
                out[:, j] = encode_categorical(column, self.vocabularies[name])
            else:
                out[:, j] = numeric_values(column)
        return out

    def to_json(self) -> dict:
        return {
            "features": list(self.features),
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> FeatureSchema:
        return cls(tuple(data["features"]), {k: tuple(v) for k, v in data["vocabularies"].items()})


def numeric_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 values with nulls as NaN."""
    # Unsafe: an int64 beyond 2**53 becomes the nearest float, as numpy and LightGBM make it
    # (a safe cast raises, and one such row failed its whole partition).
    as_float = pc.cast(column, pa.float64(), safe=False)
    return pc.fill_null(as_float, np.nan).to_numpy(zero_copy_only=False)


def encode_categorical(
    column: pa.ChunkedArray | pa.Array, vocabulary: tuple[str, ...]
) -> np.ndarray:
    strings = pc.cast(column, pa.string())
    codes = pc.index_in(strings, value_set=pa.array(vocabulary, pa.string()))
    unseen = pc.and_(pc.is_null(codes), pc.is_valid(strings))
    codes = pc.if_else(unseen, len(vocabulary), codes)
    return pc.fill_null(pc.cast(codes, pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def feature_columns(table: pa.Table, features: list[str], categorical: list[str]) -> dict:
    """Columns as drift counts them: numbers as float64 (NaN missing), categories as strings."""
    return dict(FeatureColumns(table, features, categorical))


class FeatureColumns(Mapping):
    """`feature_columns` of a table (of its rows where `keep` is true, if given), each
    converted when it is read and not kept: counting a batch's drift holds one converted
    column at a time, not a copy of every feature."""

    def __init__(
        self,
        table: pa.Table,
        features: list[str],
        categorical: list[str],
        keep: np.ndarray | None = None,
    ):
        self._table, self._features, self._categorical = table, features, set(categorical)
        self._keep = None if keep is None else pa.array(keep)

    def __getitem__(self, name: str):
        if name not in self._features:
            raise KeyError(name)
        column = self._table.column(name)
        if self._keep is not None:
            column = pc.filter(column, self._keep)
        if name in self._categorical:
            return pc.cast(column, pa.string()).combine_chunks()
        return numeric_values(column)

    def __contains__(self, name: object) -> bool:  # Mapping's would convert the column
        return name in self._features and name in self._table.column_names

    def __iter__(self) -> Iterator[str]:
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)


def unseen_mask(column: pa.ChunkedArray | pa.Array, vocabulary: tuple[str, ...]) -> np.ndarray:
    strings = pc.cast(column, pa.string())
    known = pc.is_in(strings, value_set=pa.array(vocabulary, pa.string()))
    return pc.and_(pc.invert(known), pc.is_valid(strings)).to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class TrainingProfile:
    """What training saw, per feature; validation bands and missing-value rules come from it."""

    numeric: dict[str, NumericProfile]
    categorical: dict[str, CategoricalProfile]

    @classmethod
    def fit(cls, table: pa.Table, features: list[str], categorical: list[str]) -> TrainingProfile:
        numeric: dict[str, NumericProfile] = {}
        cats: dict[str, CategoricalProfile] = {}
        for name in features:
            column = table.column(name)
            n_missing = column.null_count
            if name in categorical:
                counts = pc.value_counts(pc.drop_null(pc.cast(column, pa.string())))
                by_value = {v["values"].as_py(): v["counts"].as_py() for v in counts}
                cats[name] = CategoricalProfile(
                    dict(sorted(by_value.items())), len(column), n_missing
                )
            else:
                values = numeric_values(column)
                finite = values[np.isfinite(values)]
                if finite.size == 0:
                    raise ValueError(f"feature {name!r} has no finite value in the training data")
                numeric[name] = NumericProfile(
                    float(finite.min()),
                    float(finite.max()),
                    len(values),
                    int(np.isnan(values).sum()),
                )
        return cls(numeric, cats)

    def schema(self, features: list[str]) -> FeatureSchema:
        # Codes follow the sorted vocabulary, fixed here once and stored with the model.
        return FeatureSchema(
            tuple(features), {k: tuple(v.counts) for k, v in self.categorical.items()}
        )

    def to_json(self) -> dict:
        return {
            "numeric": {k: asdict(v) for k, v in self.numeric.items()},
            "categorical": {k: asdict(v) for k, v in self.categorical.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> TrainingProfile:
        return cls(
            {k: NumericProfile(**v) for k, v in data["numeric"].items()},
            {k: CategoricalProfile(**v) for k, v in data["categorical"].items()},
        )
