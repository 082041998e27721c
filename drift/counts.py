"""Partial counts of one chunk of data against a fitted reference: counting, merging, JSON.

This module owns what a scoring worker returns for drift: small int64 arrays of counts in the
reference's bins (PSI bins, KS sketch cells, categories). Counts of any number of chunks add
up exactly to the counts of the whole partition (`merge`, `merge_all`), and stored counts of
earlier partitions merge into a rolling reference. Counts carry the `reference_id` of the bins
they were made with, so counts made against different bins can never be added together.

Counting is vectorised: numeric values are searched into the bins by compiled code
(`drift._native`), or, where that cannot be built, sorted once with the bin boundaries
searched into them (`np.sort` + `np.searchsorted`); categorical values go through pyarrow's
`value_counts` + `index_in`; so no Python loop ever runs per row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from drift import _native
from drift._encoding import JsonForm, decode_ints, encode_ints, frozen, loads

ArrayLike = np.ndarray | pa.Array | pa.ChunkedArray

# Categories unseen in the reference are also counted by name, up to this many distinct ones
# (beyond, by their total only): a rolling window's categories are the training's plus the
# names it saw (`drift.reference.CategoricalReference.with_counts`).
UNSEEN_NAMES = 1_000

# A process compiles the native counting kernel (~40 ms) for a call of at least this many
# values, which repays it (~4.5 ms saved per 131,072); the fork server compiles it for the
# scoring workers ahead (`drift._native`).
NATIVE_BUILD_AT = 1_000_000


def expect_to_count(values: int) -> None:
    """Say that this process is about to count `values` numeric values, in calls of any
    size: the compiled kernel is built now when that repays it (a scoring worker's chunk,
    counted batch by batch, on a Dask worker or wherever no fork server built it)."""
    if values >= NATIVE_BUILD_AT:
        _native.build()


def as_float64(values: ArrayLike | Iterable[Any]) -> np.ndarray:
    """A 1-D float64 view of numeric values with every missing value (null/None/NaN) as NaN."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if not pa.types.is_floating(values.type):
            # Casting first turns nulls of int/bool columns into NaN instead of object None.
            # Unsafe: an int64 beyond 2**53 becomes the nearest float, as in numpy.
            values = pc.cast(values, pa.float64(), safe=False)
        out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        array = np.asarray(values)
        if array.dtype == object:
            # None in an object array: let pyarrow map None/NaN to null, then null to NaN.
            array = pc.cast(pa.array(array, from_pandas=True), pa.float64(), safe=False).to_numpy(
                zero_copy_only=False
            )
        out = np.asarray(array, dtype=np.float64)
    if out.ndim != 1:
        raise ValueError(f"expected a 1-D array of values, got shape {out.shape}")
    return out


def as_strings(values: ArrayLike | Iterable[Any]) -> pa.Array:
    """A pyarrow string array of categorical values; None/null (and NaN) become null.

    Categories are compared by their string form, so the reference and the current data
    must spell a category the same way (an int 1 and a str "1" are the same category).
    """
    if isinstance(values, pa.ChunkedArray):
        array = values.combine_chunks()
    elif isinstance(values, pa.Array):
        array = values
    else:
        np_values = np.asarray(values)
        if np_values.ndim != 1:
            raise ValueError(f"expected a 1-D array of values, got shape {np_values.shape}")
        try:
            array = pa.array(np_values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Mixed Python types (e.g. str and int) in one object column: fall back to str().
            array = pa.array([None if _is_missing(v) else str(v) for v in np_values], pa.string())
    if array.type != pa.string():
        array = pc.cast(array, pa.string())
    return array


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class _Binned:
    """Sizes read off `bin_counts`, whose last bin is the missing values' in every kind."""

    bin_counts: np.ndarray

    @property
    def n(self) -> int:
        """Number of values, missing included."""
        return int(self.bin_counts.sum())

    @property
    def n_missing(self) -> int:
        return int(self.bin_counts[-1])


@dataclass(frozen=True, eq=False)
class NumericCounts(_Binned, JsonForm):
    """Counts of one chunk of a numeric column in a `NumericReference`'s bins.

    `bin_counts`: one count per PSI bin (right-closed, outer bins open), then the missing bin.
    `sketch_counts`: one count per KS sketch cell, 2K+1 cells for K grid points
    (-inf, g1), {g1}, (g1, g2), ..., {gK}, (gK, +inf); missing values are not in the sketch.
    """

    reference_id: str
    bin_counts: np.ndarray
    sketch_counts: np.ndarray

    kind: ClassVar[str] = "numeric"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bin_counts", frozen(self.bin_counts, np.int64))
        object.__setattr__(self, "sketch_counts", frozen(self.sketch_counts, np.int64))
        if self.bin_counts.size < 2 or self.sketch_counts.size % 2 != 1:
            raise ValueError("malformed numeric counts: wrong number of bins or sketch cells")
        if int(self.sketch_counts.sum()) != self.n_present:
            raise ValueError("malformed numeric counts: sketch and PSI bins disagree on n")

    @property
    def n_present(self) -> int:
        """Number of non-missing values (the sample size KS uses)."""
        return self.n - self.n_missing

    def __add__(self, other: NumericCounts) -> NumericCounts:
        return merge(self, other)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, NumericCounts)
            and self.reference_id == other.reference_id
            and np.array_equal(self.bin_counts, other.bin_counts)
            and np.array_equal(self.sketch_counts, other.sketch_counts)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: not hashable

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reference_id": self.reference_id,
            "bin_counts": encode_ints(self.bin_counts),
            "sketch_counts": encode_ints(self.sketch_counts),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> NumericCounts:
        _check_kind(payload, cls.kind)
        return cls(
            reference_id=str(payload["reference_id"]),
            bin_counts=decode_ints(payload["bin_counts"]),
            sketch_counts=decode_ints(payload["sketch_counts"]),
        )


@dataclass(frozen=True, eq=False)
class CategoricalCounts(_Binned, JsonForm):
    """Counts of one chunk of a categorical column in a `CategoricalReference`'s bins.

    `bin_counts`: one count per reference category (in `categories_` order), then the unseen
    bin (categories absent from the reference), then the missing bin.
    `unseen`: the unseen bin by category name; None when not known (more than
    `UNSEEN_NAMES` distinct names, or counts written before names were kept).
    """

    reference_id: str
    bin_counts: np.ndarray
    unseen: dict[str, int] | None = None

    kind: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bin_counts", frozen(self.bin_counts, np.int64))
        if self.bin_counts.size < 2:
            raise ValueError("malformed categorical counts: needs unseen and missing bins")
        if self.unseen is not None:
            names = {str(k): int(v) for k, v in sorted(self.unseen.items()) if int(v)}
            object.__setattr__(self, "unseen", names)
            if sum(names.values()) != self.n_unseen:
                raise ValueError("malformed categorical counts: unseen names and bin disagree")

    @property
    def n_unseen(self) -> int:
        return int(self.bin_counts[-2])

    def __add__(self, other: CategoricalCounts) -> CategoricalCounts:
        return merge(self, other)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CategoricalCounts)
            and self.reference_id == other.reference_id
            and np.array_equal(self.bin_counts, other.bin_counts)
            and self.unseen == other.unseen
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reference_id": self.reference_id,
            "bin_counts": encode_ints(self.bin_counts),
            **({} if self.unseen is None else {"unseen": self.unseen}),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> CategoricalCounts:
        _check_kind(payload, cls.kind)
        return cls(
            reference_id=str(payload["reference_id"]),
            bin_counts=decode_ints(payload["bin_counts"]),
            unseen=payload.get("unseen"),
        )


Counts = NumericCounts | CategoricalCounts
C = TypeVar("C", NumericCounts, CategoricalCounts)


def merge(a: C, b: C) -> C:
    """Exact sum of two partial counts made against the same reference bins."""
    if type(a) is not type(b):
        raise TypeError(f"cannot merge {type(a).__name__} with {type(b).__name__}")
    if a.reference_id != b.reference_id:
        raise ValueError(
            f"cannot merge counts made against different references "
            f"({a.reference_id} and {b.reference_id})"
        )
    if isinstance(a, NumericCounts):
        assert isinstance(b, NumericCounts)
        return NumericCounts(
            a.reference_id, a.bin_counts + b.bin_counts, a.sketch_counts + b.sketch_counts
        )
    assert isinstance(b, CategoricalCounts)
    unseen = None
    if a.unseen is not None and b.unseen is not None:
        unseen = dict(a.unseen)
        for name, n in b.unseen.items():
            unseen[name] = unseen.get(name, 0) + n
        if len(unseen) > UNSEEN_NAMES:  # the distinct names only grow: any order agrees
            unseen = None
    return CategoricalCounts(a.reference_id, a.bin_counts + b.bin_counts, unseen)  # type: ignore[return-value]


def merge_all(parts: Iterable[C]) -> C:
    """Exact sum of any number (at least one) of partial counts of the same reference."""
    items = list(parts)
    if not items:
        raise ValueError("merge_all needs at least one counts object (the bins come from it)")
    total = items[0]
    for part in items[1:]:
        total = merge(total, part)
    return total


def counts_from_dict(payload: dict[str, Any]) -> Counts:
    """Decode either kind of counts from its `to_dict()` form."""
    kind = payload.get("kind")
    if kind == NumericCounts.kind:
        return NumericCounts.from_dict(payload)
    if kind == CategoricalCounts.kind:
        return CategoricalCounts.from_dict(payload)
    raise ValueError(f"unknown counts kind {kind!r}; expected 'numeric' or 'categorical'")


def counts_from_json(text: str) -> Counts:
    return counts_from_dict(loads(text))


def count_numeric(
    values: ArrayLike | Iterable[Any], edges: np.ndarray, grid: np.ndarray, reference_id: str
) -> NumericCounts:
    """Count numeric values into PSI bins (plus missing) and KS sketch cells.

    PSI bins (-inf, e1], (e1, e2], ..., (ek, +inf) are right-closed like `pandas.cut`;
    sketch cells are (-inf, g1), {g1}, (g1, g2), ..., {gK}, (gK, +inf); +-inf land in the
    outer bins and cells, NaN only in the missing bin.

    Each value is searched into the edges and the grid by compiled code (`drift._native`,
    ~4x faster), when it is compiled in this process or the call is large enough to repay
    compiling it. Otherwise the values are sorted once and the few edges / grid points are
    binary-searched into them: "how many values are <= e" and "< g" at each boundary are
    then cumulative counts, whose differences are the bin counts (numpy's `searchsorted` of
    a million unsorted values into a 2049-point grid costs ~10x more). Both give the same
    counts.
    """
    x = as_float64(values)
    expect_to_count(x.size)
    if _native.ready():
        bin_counts, sketch_counts = _native.count(x, edges, grid)
        return NumericCounts(reference_id, bin_counts, sketch_counts)
    return _count_sorted(x, edges, grid, reference_id)


def _count_sorted(
    x: np.ndarray, edges: np.ndarray, grid: np.ndarray, reference_id: str
) -> NumericCounts:
    """`count_numeric` by sorting the values."""
    ordered = np.sort(x)  # NaN sorts last, -inf first, +inf before NaN
    n_missing = int(np.count_nonzero(np.isnan(ordered)))
    n_present = ordered.size - n_missing
    present = ordered[:n_present]

    # Right-closed bins: bin j ends at "count of values <= e_j".
    at_most_edge = np.searchsorted(present, edges, side="right")
    bin_counts = np.diff(np.concatenate([[0], at_most_edge, [n_present]]))
    bin_counts = np.append(bin_counts, n_missing)

    # Cell boundaries in order: (< g1), (<= g1), (< g2), (<= g2), ..., (<= gK), then all.
    below = np.searchsorted(present, grid, side="left")
    at_most = np.searchsorted(present, grid, side="right")
    boundaries = np.empty(2 * grid.size + 1, dtype=np.int64)
    boundaries[0:-1:2] = below
    boundaries[1:-1:2] = at_most
    boundaries[-1] = n_present
    sketch_counts = np.diff(boundaries, prepend=0)
    return NumericCounts(reference_id, bin_counts, sketch_counts)


def count_categorical(
    values: ArrayLike | Iterable[Any], categories: pa.Array, reference_id: str
) -> CategoricalCounts:
    """Count categorical values into the reference categories, the unseen bin and missing."""
    array = as_strings(values)
    n_missing = array.null_count
    distinct = pc.value_counts(array.drop_null())
    distinct_counts = distinct.field("counts").to_numpy(zero_copy_only=False).astype(np.int64)
    position = pc.index_in(distinct.field("values"), value_set=categories)
    position_np = pc.fill_null(position, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    bin_counts = np.zeros(len(categories) + 2, dtype=np.int64)
    known = position_np >= 0
    # value_counts yields each distinct value once, so plain assignment is an exact count.
    bin_counts[position_np[known]] = distinct_counts[known]
    bin_counts[-2] = int(distinct_counts[~known].sum())
    bin_counts[-1] = n_missing
    unseen = None
    if int((~known).sum()) <= UNSEEN_NAMES:
        names = distinct.field("values").filter(pa.array(~known))
        unseen = {}
        for name, n in zip(to_pylist_escaped(names), distinct_counts[~known].tolist(), strict=True):
            unseen[name] = unseen.get(name, 0) + n  # two spellings could escape alike
    return CategoricalCounts(reference_id, bin_counts, unseen)


def to_pylist_escaped(values: pa.Array | pa.ChunkedArray) -> list:
    """`values.to_pylist()`, except that strings that are not UTF-8 (a writer that did not
    validate leaves such bytes; Arrow carries them, Python cannot decode them) come out with
    the bad bytes escaped (`basic\\xff`) instead of raising."""
    try:
        return values.to_pylist()
    except UnicodeDecodeError:
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        raw = values.cast(pa.large_binary()).to_pylist()
        return [None if v is None else v.decode("utf-8", "backslashreplace") for v in raw]


def _check_kind(payload: dict[str, Any], kind: str) -> None:
    if payload.get("kind") != kind:
        raise ValueError(f"expected {kind} counts, got kind {payload.get('kind')!r}")
