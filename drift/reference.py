"""Reference summaries fitted once on the reference window and stored beside the model.

This module owns what is learned from the reference data (scikit-learn style: `fit` once,
learned attributes end in `_`): PSI bin edges and counts, the KS sketch (grid and cell
counts) for numeric columns, the category list and counts for categorical columns, and the
`ReferenceProfile` that holds one summary per feature plus `__score__` for the model's scores.
No raw reference values are kept; JSON round trips are exact.

Bins come from the reference alone (never pooled with current data), so PSI values of
different days are comparable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from drift._encoding import (
    JsonForm,
    decode_floats,
    decode_ints,
    encode_floats,
    encode_ints,
    fingerprint,
    frozen,
)
from drift.counts import (
    UNSEEN_NAMES,
    ArrayLike,
    CategoricalCounts,
    Counts,
    NumericCounts,
    as_float64,
    as_strings,
    count_categorical,
    count_numeric,
)

SCORE_FEATURE = "__score__"
"""Name under which the model's scores are profiled and reported (prediction drift)."""

PROFILE_FORMAT = "batchscore.drift.profile/1"

# A rolling window's PSI edges are taken at grid points (`NumericReference.window_edges`);
# each may be this far (a share of the window's values) from its exact decile, and no more.
PSI_EDGE_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)
class NumericReference(JsonForm):
    """Fitted summary of a numeric reference column: PSI bins and a KS sketch.

    Learned attributes:
      `edges_`  inner PSI edges e1 < ... < ek: `numpy.quantile` (default linear method) of the
                non-missing reference at 1/bins, ..., (bins-1)/bins, duplicates dropped. Bins
                are (-inf, e1], (e1, e2], ..., (ek, +inf), right-closed like `pandas.cut`.
      `counts_` reference count per PSI bin, then the missing (NaN) bin.
      `grid_`   KS sketch grid g1 < ... < gK: the distinct values among the reference's
                inverted-CDF quantiles at 0, 1/S, ..., 1 (S = `sketch_points`), so every grid
                point is an actual reference value, g1 its min and gK its max.
      `sketch_counts_` reference count per sketch cell (-inf, g1), {g1}, (g1, g2), ...,
                {gK}, (gK, +inf): 2K+1 cells, missing values excluded.

    KS error bound. Cell counts give both empirical CDFs exactly at every grid point and at
    its left limit. Inside one open cell (g_j, g_j+1) each CDF moves monotonically, so the
    sketched D can miss the exact `ks_2samp` D by at most min(reference mass, current mass)
    strictly inside that cell, and never overestimates it. With inverted-CDF grid points the
    reference mass strictly between consecutive grid points is < 1/S (g_j+1 is the smallest
    value whose CDF reaches (i+1)/S, so anything below it has CDF < (i+1)/S, while
    F(g_j) >= i/S), and there is no reference mass below g1 or above gK. Hence
    0 <= D_exact - D_sketch < 1/S, i.e. < 4.9e-4 for the default S = 2048, whatever the
    current data look like. (A reference rebuilt from merged counts with `with_counts` keeps
    the grid but not this guarantee: `drift.methods.ks_error_bound` computes its bound for each
    current partition, and `drift.methods.KS` checks it against DESIGN.md's 1e-3 before it
    reports a D.)

    `window`: counts merged from partitions (`with_counts`, a rolling reference) rather than
    fitted on raw values. Its PSI bins are then the window's own deciles, as DESIGN.md's
    "bins from the reference alone" asks, taken at the sketch grid's resolution
    (`psi_counts`): the training deciles would measure the window in someone else's bins.
    """

    edges_: np.ndarray
    counts_: np.ndarray
    grid_: np.ndarray
    sketch_counts_: np.ndarray
    bins: int = 10
    sketch_points: int = 2048
    window: bool = False

    kind: ClassVar[str] = "numeric"

    def __post_init__(self) -> None:
        for name, dtype in (
            ("edges_", np.float64),
            ("counts_", np.int64),
            ("grid_", np.float64),
            ("sketch_counts_", np.int64),
        ):
            object.__setattr__(self, name, frozen(getattr(self, name), dtype))
        if self.counts_.size != self.edges_.size + 2:
            raise ValueError("counts_ needs one count per PSI bin plus the missing bin")
        if self.sketch_counts_.size != 2 * self.grid_.size + 1:
            raise ValueError("sketch_counts_ needs 2K+1 cells for K grid points")
        for name in ("edges_", "grid_"):
            points = getattr(self, name)
            if np.isnan(points).any() or np.any(np.diff(points) <= 0):
                raise ValueError(f"{name} must be strictly increasing and free of NaN")
        if int(self.sketch_counts_.sum()) != int(self.counts_[:-1].sum()):
            raise ValueError("sketch and PSI counts disagree on the number of present values")

    @classmethod
    def fit(
        cls, values: ArrayLike | Iterable[Any], bins: int = 10, sketch_points: int = 2048
    ) -> NumericReference:
        """Learn PSI edges and the KS sketch from reference values (NaN/null = missing)."""
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if sketch_points < 1:
            raise ValueError(f"sketch_points must be >= 1, got {sketch_points}")
        x = as_float64(values)
        present = np.sort(x[~np.isnan(x)])
        n = present.size
        if n:
            probabilities = np.array([i / bins for i in range(1, bins)], dtype=np.float64)
            edges = _linear_quantiles(present, probabilities)
            # inverted_cdf quantile at p = i/S is the sorted value at index ceil(n*i/S) - 1;
            # integer arithmetic keeps the grid exact (and the error bound true) for any n.
            i = np.arange(sketch_points + 1, dtype=np.int64)
            index = np.maximum((n * i + sketch_points - 1) // sketch_points - 1, 0)
            grid = np.unique(present[index])
        else:
            # An all-missing reference: one open bin and one open cell; KS says not computable.
            edges = np.empty(0, dtype=np.float64)
            grid = np.empty(0, dtype=np.float64)
        reference_id = _numeric_id(edges, grid)
        counts = count_numeric(x, edges, grid, reference_id)
        return cls(
            edges_=edges,
            counts_=counts.bin_counts,
            grid_=grid,
            sketch_counts_=counts.sketch_counts,
            bins=bins,
            sketch_points=sketch_points,
        )

    @cached_property
    def reference_id(self) -> str:
        """Id of the bins (edges and grid); counts made with other bins are rejected."""
        return _numeric_id(self.edges_, self.grid_)

    @property
    def n_(self) -> int:
        """Number of reference values, missing included."""
        return int(self.counts_.sum())

    @property
    def n_missing_(self) -> int:
        return int(self.counts_[-1])

    @property
    def n_present_(self) -> int:
        return self.n_ - self.n_missing_

    def count(self, values: ArrayLike | Iterable[Any]) -> NumericCounts:
        """Partial counts of a chunk of current values in this reference's bins."""
        return count_numeric(values, self.edges_, self.grid_, self.reference_id)

    def reference_counts(self) -> NumericCounts:
        """The reference's own counts, as a counts object (e.g. to merge into a window)."""
        return NumericCounts(self.reference_id, self.counts_, self.sketch_counts_)

    def with_counts(self, counts: NumericCounts) -> NumericReference:
        """Same grid, counts replaced: a rolling reference built from merged partition counts
        (`window`: its PSI bins are re-derived from those counts, see `psi_counts`)."""
        _check_same_bins(self.reference_id, counts)
        return NumericReference(
            edges_=self.edges_,
            counts_=counts.bin_counts,
            grid_=self.grid_,
            sketch_counts_=counts.sketch_counts,
            bins=self.bins,
            sketch_points=self.sketch_points,
            window=True,
        )

    def psi_counts(self, counts: NumericCounts) -> tuple[np.ndarray, np.ndarray]:
        """Reference and current counts in the PSI bins, the missing bin last.

        Fitted on raw values: the stored edges (exact `numpy.quantile`s). A `window`: the
        edges of `window_edges`, and both sides' counts summed from their sketch cells,
        exact for those bins.
        """
        if not self.window:
            return self.counts_, counts.bin_counts
        points, _ = self.window_edges
        bounds = np.concatenate([[0], 2 * points + 2])  # a bin ends with its point's cell

        def rebinned(sketch: np.ndarray, missing: int) -> np.ndarray:
            return np.append(np.add.reduceat(sketch, bounds), missing).astype(np.int64)

        return (
            rebinned(self.sketch_counts_, int(self.counts_[-1])),
            rebinned(counts.sketch_counts, int(counts.bin_counts[-1])),
        )

    def window_problem(self, counts: NumericCounts) -> str | None:
        """Why `psi_counts` cannot build a window's bins; None when it can."""
        if not self.window:
            return None
        _, error = self.window_edges
        if error <= PSI_EDGE_TOLERANCE:
            return None
        return (
            "the reference's grid cannot place this window's deciles: one is off by up to "
            f"{error:.2%} of the window's values, which lie between two grid points (a "
            "rolling window counted in the training grid, with values where training had "
            "few): measure against the training reference, or retrain"
        )

    @cached_property
    def window_edges(self) -> tuple[np.ndarray, float]:
        """A window's PSI edges as grid indices, and how far they can be from its exact
        deciles, as a share of its present values.

        The value of rank i/bins of the window lies in one sketch cell. In a grid point's cell
        ({g}, a point mass) the decile is g itself: exact. Strictly between two grid points the
        nearer point (by the window's counts) is taken, off by at most the window's share in
        that open cell; `drift.methods.PSI` reports nothing when that exceeds 1e-3.
        """
        cells = self.sketch_counts_
        n = int(cells.sum())
        if n == 0 or self.grid_.size == 0:
            return np.empty(0, dtype=np.int64), 0.0
        cumulative = np.cumsum(cells)
        targets = np.arange(1, self.bins) / self.bins * n
        cell = np.searchsorted(cumulative, targets)  # the first cell that reaches the rank
        points, error = [], 0.0
        for target, c in zip(targets, cell, strict=True):
            if c % 2:  # {g_j}: the decile is g_j
                points.append((c - 1) // 2)
                continue
            below = cumulative[c - 1] if c > 0 else 0  # values <= the grid point below
            above = cumulative[c]  # values below the grid point above
            lower, upper = c // 2 - 1, c // 2  # grid indices of the points around the cell
            if upper >= self.grid_.size or (lower >= 0 and target - below <= above - target):
                points.append(lower)
                error = max(error, (target - below) / n)
            else:
                points.append(upper)
                error = max(error, (above - target) / n)
        chosen = np.unique([p for p in points if p >= 0])  # duplicate edges dropped
        return chosen.astype(np.int64), error

    def cell_text(self, cell: int) -> str:
        """Sketch cell `cell` (even: an open interval) as text, for a reason."""
        j, grid = cell // 2, self.grid_
        low = f"{grid[j - 1]:.6g}" if j > 0 else "-inf"
        high = f"{grid[j]:.6g}" if j < grid.size else "+inf"
        return f"({low}, {high})"

    def to_dict(self) -> dict[str, Any]:
        # Only inner edges are stored: the outer bins are open, so +-inf never needs writing.
        return {
            "kind": self.kind,
            "bins": self.bins,
            "sketch_points": self.sketch_points,
            "edges": encode_floats(self.edges_),
            "counts": encode_ints(self.counts_),
            "grid": encode_floats(self.grid_),
            "sketch_counts": encode_ints(self.sketch_counts_),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> NumericReference:
        _check_kind(payload, cls.kind)
        return cls(
            edges_=decode_floats(payload["edges"]),
            counts_=decode_ints(payload["counts"]),
            grid_=decode_floats(payload["grid"]),
            sketch_counts_=decode_ints(payload["sketch_counts"]),
            bins=int(payload["bins"]),
            sketch_points=int(payload["sketch_points"]),
        )


@dataclass(frozen=True, eq=False)
class CategoricalReference(JsonForm):
    """Fitted summary of a categorical reference column.

    Learned attributes:
      `categories_` the reference's distinct non-missing categories (as strings), sorted.
      `counts_`     reference count per category, then the unseen bin (0 when fitted on raw
                    data; non-zero only for a rolling reference), then the missing bin.

    `window`: counts merged from partitions (`with_counts`, a rolling reference), with
    `unseen` the window's categories unseen in training, by name (None: not known). Its
    categories are then those the window holds, as DESIGN.md's "one bin per reference
    category" asks (`psi_counts`): the training's would lump every newer category into one
    unseen bin, where two different ones cancel out.
    """

    categories_: tuple[str, ...]
    counts_: np.ndarray
    window: bool = False
    unseen: dict[str, int] | None = None

    kind: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories_", tuple(str(c) for c in self.categories_))
        object.__setattr__(self, "counts_", frozen(self.counts_, np.int64))
        if self.counts_.size != len(self.categories_) + 2:
            raise ValueError("counts_ needs one count per category plus unseen and missing")
        if list(self.categories_) != sorted(set(self.categories_)):
            raise ValueError("categories_ must be sorted and distinct")

    @classmethod
    def fit(cls, values: ArrayLike | Iterable[Any]) -> CategoricalReference:
        """Learn the categories and their counts (None/null = missing)."""
        array = as_strings(values)
        distinct = pc.unique(array.drop_null())
        # Arrow sorts strings by UTF-8 bytes, which is code-point order, same as Python's.
        categories = tuple(sorted(distinct.to_pylist()))
        reference_id = _categorical_id(categories)
        counts = count_categorical(array, pa.array(categories, pa.string()), reference_id)
        return cls(categories_=categories, counts_=counts.bin_counts)

    @cached_property
    def reference_id(self) -> str:
        return _categorical_id(self.categories_)

    @cached_property
    def _category_array(self) -> pa.Array:
        return pa.array(self.categories_, pa.string())

    @property
    def n_(self) -> int:
        return int(self.counts_.sum())

    @property
    def n_missing_(self) -> int:
        return int(self.counts_[-1])

    def count(self, values: ArrayLike | Iterable[Any]) -> CategoricalCounts:
        """Partial counts of a chunk of current values in this reference's bins."""
        return count_categorical(values, self._category_array, self.reference_id)

    def reference_counts(self) -> CategoricalCounts:
        return CategoricalCounts(self.reference_id, self.counts_)

    def with_counts(self, counts: CategoricalCounts) -> CategoricalReference:
        """Same categories, counts replaced: a rolling reference from merged partition counts."""
        _check_same_bins(self.reference_id, counts)
        return CategoricalReference(
            categories_=self.categories_,
            counts_=counts.bin_counts,
            window=True,
            unseen=counts.unseen,
        )

    def window_problem(self, counts: CategoricalCounts) -> str | None:
        """Why `psi_counts` cannot build a window's bins for `counts`; None when it can."""
        if not self.window:
            return None
        if self.unseen is None and self.counts_[-2]:
            return (
                "the window holds categories unseen in training that are not known by name "
                f"(more than {UNSEEN_NAMES:,} of them, or counted by an older batchscore)"
            )
        if counts.unseen is None and counts.n_unseen and self.unseen:
            return (
                f"the current data hold more than {UNSEEN_NAMES:,} categories unseen in "
                "training, not known by name, to compare with the window's"
            )
        return None

    def psi_counts(self, counts: CategoricalCounts) -> tuple[np.ndarray, np.ndarray]:
        """Reference and current counts per reference category, then the unseen bin, then
        missing. A `window`'s categories are the training categories it holds and the newer
        ones it saw (by name); anything else in the current data is unseen."""
        if not self.window:
            return self.counts_, counts.bin_counts
        held = self.counts_[:-2] > 0
        names = sorted(self.unseen or {})
        reference = np.concatenate(
            [self.counts_[:-2][held], [self.unseen[n] for n in names], [0, self.counts_[-1]]]
        )
        current_named = [(counts.unseen or {}).get(n, 0) for n in names]
        unseen = counts.n_unseen - sum(current_named) + int(counts.bin_counts[:-2][~held].sum())
        current = np.concatenate(
            [counts.bin_counts[:-2][held], current_named, [unseen, counts.bin_counts[-1]]]
        )
        return reference.astype(np.int64), current.astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "categories": list(self.categories_),
            "counts": encode_ints(self.counts_),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> CategoricalReference:
        _check_kind(payload, cls.kind)
        return cls(
            categories_=tuple(payload["categories"]),
            counts_=decode_ints(payload["counts"]),
        )


Reference = NumericReference | CategoricalReference


class ReferenceProfile(JsonForm, Mapping[str, Reference]):
    """One fitted reference per feature, plus `__score__` (the model's holdout scores).

    A read-only mapping feature -> reference, serialised as one JSON document stored beside
    the model file.
    """

    def __init__(self, references: Mapping[str, Reference]) -> None:
        self._references: dict[str, Reference] = dict(references)
        score = self._references.get(SCORE_FEATURE)
        if score is not None and not isinstance(score, NumericReference):
            raise TypeError(f"{SCORE_FEATURE} must be a NumericReference")

    @classmethod
    def fit(
        cls,
        columns: Mapping[str, ArrayLike],
        categorical: Iterable[str] = (),
        scores: ArrayLike | None = None,
        bins: int = 10,
        sketch_points: int = 2048,
    ) -> ReferenceProfile:
        """Fit every column (categorical ones as categories) and, if given, the scores."""
        categorical = set(categorical)
        if SCORE_FEATURE in columns:
            raise ValueError(f"{SCORE_FEATURE!r} is reserved for the model's scores")
        unknown = sorted(categorical - set(columns))
        if unknown:
            raise ValueError(f"categorical features not among the columns: {unknown}")
        references: dict[str, Reference] = {}
        for name, values in columns.items():
            if name in categorical:
                references[name] = CategoricalReference.fit(values)
            else:
                references[name] = NumericReference.fit(values, bins, sketch_points)
        if scores is not None:
            references[SCORE_FEATURE] = NumericReference.fit(scores, bins, sketch_points)
        return cls(references)

    def __getitem__(self, feature: str) -> Reference:
        return self._references[feature]

    def __iter__(self) -> Iterator[str]:
        return iter(self._references)

    def __len__(self) -> int:
        return len(self._references)

    def __repr__(self) -> str:
        return f"ReferenceProfile({list(self._references)})"

    @property
    def features(self) -> list[str]:
        """Profiled input features, `__score__` excluded."""
        return [name for name in self._references if name != SCORE_FEATURE]

    @property
    def score(self) -> NumericReference | None:
        score = self._references.get(SCORE_FEATURE)
        assert score is None or isinstance(score, NumericReference)
        return score

    def count(
        self, columns: Mapping[str, ArrayLike], scores: ArrayLike | None = None
    ) -> dict[str, Counts]:
        """Partial counts of one chunk: every profiled feature, plus `__score__` if given."""
        absent = [name for name in self.features if name not in columns]
        if absent:
            raise ValueError(f"columns missing from the chunk: {absent}")
        counts: dict[str, Counts] = {
            name: self._references[name].count(columns[name]) for name in self.features
        }
        if scores is not None:
            if self.score is None:
                raise ValueError("scores given but the profile has no __score__ reference")
            counts[SCORE_FEATURE] = self.score.count(scores)
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "references": {name: ref.to_dict() for name, ref in self._references.items()},
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ReferenceProfile:
        if payload.get("format") != PROFILE_FORMAT:
            raise ValueError(
                f"not a reference profile: format {payload.get('format')!r}, "
                f"expected {PROFILE_FORMAT!r}"
            )
        return cls({name: reference_from_dict(ref) for name, ref in payload["references"].items()})


def reference_from_dict(payload: dict[str, Any]) -> Reference:
    """Decode either kind of reference from its `to_dict()` form."""
    kind = payload.get("kind")
    if kind == NumericReference.kind:
        return NumericReference.from_dict(payload)
    if kind == CategoricalReference.kind:
        return CategoricalReference.from_dict(payload)
    raise ValueError(f"unknown reference kind {kind!r}; expected 'numeric' or 'categorical'")


def _linear_quantiles(sorted_values: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """`numpy.quantile` (linear), distinct values only, and never NaN.

    Linear interpolation between two equal infinities (or from an infinity at weight 0)
    gives NaN in numpy; there the 'nearest' quantile is the value the interpolation means.
    """
    if probabilities.size == 0:
        return np.empty(0, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        edges = np.quantile(sorted_values, probabilities)
    undefined = np.isnan(edges)
    if undefined.any():
        nearest = np.quantile(sorted_values, probabilities[undefined], method="nearest")
        edges[undefined] = nearest
    return np.unique(edges)


def _numeric_id(edges: np.ndarray, grid: np.ndarray) -> str:
    return fingerprint(
        {"kind": "numeric", "edges": encode_floats(edges), "grid": encode_floats(grid)}
    )


def _categorical_id(categories: Iterable[str]) -> str:
    return fingerprint({"kind": "categorical", "categories": list(categories)})


def _check_same_bins(reference_id: str, counts: Counts) -> None:
    if counts.reference_id != reference_id:
        raise ValueError(
            f"counts were made against reference {counts.reference_id}, not {reference_id}"
        )


def _check_kind(payload: dict[str, Any], kind: str) -> None:
    if payload.get("kind") != kind:
        raise ValueError(f"expected a {kind} reference, got kind {payload.get('kind')!r}")
