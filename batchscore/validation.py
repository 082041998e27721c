"""Validation (DESIGN.md, Validation): reject what is impossible or unreadable, not the unusual.

Two levels:
- file level, from the Parquet footer alone (pyarrow): unreadable files, missing columns,
  types that cannot be cast safely. Any of these holds the whole partition.
- row level, with a Great Expectations suite built in code from the dataset config and the
  model's training profile, run on each chunk already in memory: null ids, numbers outside
  the wide band around the training range (inf included), missing values where training
  never saw one, over-long strings, and (only when configured) unseen categories. The
  suite uses four GX expectation types; `[validation] engine = "arrow"` (default) evaluates
  them with Arrow compute kernels on the chunk's columns, with GX's semantics (a null or NaN
  fails only the not-null expectation), "great_expectations" runs GX's pandas engine on a
  pandas copy. GX's engine cost ~1 s per 250k-row batch here (a fixed ~0.3 s per call,
  building its metric graph, plus pandas work per expectation) and seconds of import per
  process: most of a chunk's time. Both engines give the same rows, counts and reasons
  (tests/test_validation.py compares them on adversarial chunks).
- partition level, in the plan step: duplicate ids, found in one sorted int64 array for one
  integer id column (`find_duplicate_int_ids`), with Arrow's hash grouping otherwise (the
  one check that needs every row of the partition; GX's uniqueness expectation needed a
  pandas copy of them and its import in the planning process, seconds before any chunk
  could start). Rows holding a duplicated id are then rejected chunk by chunk, with the
  other row-level reasons. Id columns that cannot be compared across the files (integers
  in one, strings in another) hold the partition.

Every rejected row gets a readable reason naming the column and the value.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchscore.config import Config
from batchscore.features import TrainingProfile
from drift.counts import to_pylist_escaped

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass(frozen=True)
class FileProblem:
    file: str
    reason: str


@dataclass
class RowVerdict:
    """Which rows of one batch failed which expectation and why, and per-expectation counts.

    Kept as one `(rows, reasons)` pair per failed expectation, in the suite's order (row
    positions, and a string array of as many reasons), and joined into one reason per row
    with Arrow kernels only for the rows quarantined. A dict of Python lists per row, and a
    join per row, cost ~1.6 µs a row and reason: seconds for a partition whose every row
    fails (a column gone null, a unit changed, a file written twice).
    """

    failures: list[tuple[np.ndarray, pa.Array]] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)

    def add(self, rows, reasons: pa.Array, expectation: str) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(reasons):
            raise ValueError(f"{expectation}: {len(rows)} rows, {len(reasons)} reasons")
        if len(rows):
            self.failures.append((rows, reasons))
            self.failed[expectation] = self.failed.get(expectation, 0) + len(rows)

    def bad_mask(self, n_rows: int) -> np.ndarray:
        mask = np.zeros(n_rows, dtype=bool)
        for rows, _ in self.failures:
            mask[rows] = True
        return mask

    def reason_column(self, rows: np.ndarray) -> pa.Array:
        """Each of `rows`' reasons, joined by "; " in the suite's order ("" for a row that
        failed nothing)."""
        rows = np.asarray(rows, dtype=np.int64)
        joined = pa.nulls(len(rows), pa.string())
        for failed, reasons in self.failures:
            at = np.full(max(int(rows.max(initial=-1)), int(failed.max())) + 1, -1, np.int64)
            at[failed] = np.arange(len(failed))
            which = at[rows]
            reason = reasons.take(pa.array(which, mask=which < 0))
            # Not `null_handling="skip"`: with pyarrow 26 it drops the rows where every
            # input is null, and the column would no longer line up with `rows`.
            both = pc.binary_join_element_wise(joined, reason, "; ")
            joined = pc.coalesce(both, joined, reason)
        return joined.fill_null("")

    @property
    def reasons(self) -> dict[int, list[str]]:
        """Row position -> its reasons, in the suite's order (a view for reading, built on
        each call)."""
        out: dict[int, list[str]] = {}
        for rows, reasons in self.failures:
            for row, reason in zip(rows.tolist(), reasons.to_pylist(), strict=True):
                out.setdefault(row, []).append(reason)
        return out


# --- file level ----------------------------------------------------------------------------


def _is_numeric(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
    )


def _is_categorical(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
        or pa.types.is_string_view(t)
    )


def _is_id(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (
        pa.types.is_integer(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or pa.types.is_date(t)
        or pa.types.is_null(t)
    )


def check_schema(
    schema: pa.Schema, file: str, config: Config
) -> tuple[list[FileProblem], list[str]]:
    """Problems that hold the partition, and the extra columns (ignored, reported)."""
    ds = config.dataset
    names = set(schema.names)
    # Two columns of one name hold the file whatever the column: for an id or a feature,
    # nothing says which one holds the values (Arrow finds neither by name); for any other,
    # quarantined rows are kept whole, and pyarrow.dataset cannot read a file with two
    # columns of one name ("Multiple matches for FieldRef"): the quarantine would be unreadable.
    repeated = {c: n for c, n in Counter(schema.names).items() if n > 1}
    problems = [
        FileProblem(file, f"column {c!r} appears {n} times; column names must be unique")
        for c, n in repeated.items()
    ]
    missing = [c for c in [*ds.id_columns, *ds.features] if c not in names]
    if missing:
        problems.append(FileProblem(file, _missing_columns(missing, schema.names, config)))
    for col, allowed, kind in (
        *((c, _is_id, "an id (integer or string)") for c in ds.id_columns),
        *((c, _is_numeric, "a numeric feature") for c in ds.numeric),
        *(
            (c, _is_categorical, "a categorical feature (string or integer)")
            for c in ds.categorical
        ),
    ):
        if col in names and col not in repeated and not allowed(schema.field(col).type):
            problems.append(
                FileProblem(
                    file,
                    f"column {col!r} has type {schema.field(col).type}, which cannot be "
                    f"cast safely to {kind}",
                )
            )
    wanted = {*ds.id_columns, *ds.features, ds.label}
    extra = [c for c in dict.fromkeys(schema.names) if c not in wanted]
    return problems, extra


def _missing_columns(missing: list[str], names: list[str], config: Config) -> str:
    """One reason for all of a file's missing columns, with the file's columns whose names
    are close to one of them (`contract` for `contract_type`): a column renamed by an
    export, or a config written from memory, is then one message away from fixed."""
    ds = config.dataset
    unused = [n for n in dict.fromkeys(names) if n not in {*ds.id_columns, *ds.features}]
    close = {}
    for column in missing:
        match = [n for n in unused if n.casefold() == column.casefold()]
        match = match or difflib.get_close_matches(column, unused, n=1, cutoff=0.75)
        if match:
            close[column] = match[0]
            unused.remove(match[0])
    if len(missing) == 1:
        reason = f"missing column {missing[0]!r} (required as an id or feature"
    else:
        listed = ", ".join(repr(c) for c in missing[:-1]) + f" and {missing[-1]!r}"
        reason = f"missing columns {listed} (required as ids or features"
    if close:
        pairs = ", ".join(f"{found!r}, close to {column!r}" for column, found in close.items())
        reason += f"; the file has {pairs}"
    return reason + ")"


def check_category_kinds(
    schema: pa.Schema,
    file: str,
    categorical: list[str],
    vocabularies: Callable[[], dict[str, tuple[str, ...]]],
    model: str,
) -> list[FileProblem]:
    """Categorical features a file writes as numbers (or booleans) while the model's
    categories for them (`vocabularies()`, asked only then) are all text: categories are
    matched by their text ("3" is 3), so not one value could match, and every row would be
    scored as an unseen category (the partition scored, its scores meaningless: a
    categorical column exported as its codes). Such a file holds the partition."""
    problems = []
    for name in categorical:
        at = schema.get_field_index(name)
        if at < 0:
            continue
        t = schema.field(at).type
        t = t.value_type if pa.types.is_dictionary(t) else t
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
            continue
        vocabulary = vocabularies().get(name) or ()
        if not vocabulary:
            continue
        if pa.types.is_boolean(t):
            matchable = {"true", "false"} & set(vocabulary)
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            matchable = [v for v in vocabulary if _is_number(v)]
        else:
            continue
        if not matchable:
            shown = ", ".join(repr(v) for v in vocabulary[:4])
            more = ", ..." if len(vocabulary) > 4 else ""
            problems.append(
                FileProblem(
                    file,
                    f"column {name!r} has type {t}, but {model} was trained on text "
                    f"categories for it ({shown}{more}): no value could match one, and every "
                    "row would be scored as an unseen category (a column exported as its "
                    "codes?)",
                )
            )
    return problems


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- row level -----------------------------------------------------------------------------

# The Great Expectations expectation types the suite is made of (their GX names, which are
# also the keys of `_SUCCESS`'s failed_expectations).
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
LENGTHS = "expect_column_value_lengths_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"


@lru_cache(maxsize=1)
def _batch_definition():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("batchscore").add_dataframe_asset("chunk")
    return asset.add_batch_definition_whole_dataframe("chunk")


def warm_up_validation(engine: str = "great_expectations") -> None:
    """With GX's engine, import Great Expectations and make its context now rather than in
    the first chunk (seconds); the Arrow engine needs nothing."""
    if engine == "great_expectations":
        _batch_definition()


@dataclass(frozen=True)
class _Reason:
    """How a failure is worded: `prefix`, the failing value as `show` writes it (`None`: the
    same words for every row), then `suffix`. The words around the value are formatted once,
    and joined to the values in Arrow, a batch at a time: formatting each row's whole reason
    in Python took ~1.6 µs a row."""

    prefix: str
    suffix: str = ""
    show: Callable[[object], str] | None = repr

    def of(self, count: int, values: list | None = None) -> pa.Array:
        """The reasons of `count` failing rows, whose values are `values` (Python values,
        needed unless `show` is None)."""
        if self.show is None:
            return pa.repeat(pa.scalar(self.prefix + self.suffix, pa.string()), count)
        shown = pa.array(list(map(self.show, values)), pa.string())
        return pc.binary_join_element_wise(self.prefix, shown, self.suffix, "")


@dataclass(frozen=True)
class _Rule:
    """One expectation of the suite, and how to word a failure of it."""

    type: str  # the GX expectation type: NOT_NULL | BETWEEN | LENGTHS | IN_SET
    column: str
    reason: _Reason
    min_value: float | None = None
    max_value: float | None = None
    value_set: tuple[str, ...] = ()

    def expectation(self):
        """The Great Expectations expectation object (imports GX)."""
        import great_expectations as gx

        E, c = gx.expectations, self.column
        if self.type == NOT_NULL:
            return E.ExpectColumnValuesToNotBeNull(column=c)
        if self.type == BETWEEN:
            return E.ExpectColumnValuesToBeBetween(
                column=c, min_value=self.min_value, max_value=self.max_value
            )
        if self.type == LENGTHS:
            return E.ExpectColumnValueLengthsToBeBetween(column=c, max_value=self.max_value)
        return E.ExpectColumnValuesToBeInSet(column=c, value_set=list(self.value_set))

    def unexpected(self, column: pa.ChunkedArray) -> np.ndarray:
        """Positions of the rows that fail this expectation, as GX's pandas engine finds
        them: a null (or NaN) fails only NOT_NULL, and is ignored by the other three."""
        if self.type == NOT_NULL:
            mask = pc.is_null(column, nan_is_null=True)
        elif self.type == BETWEEN:
            values = pc.cast(column, pa.float64(), safe=False)  # NaN compares false
            mask = pc.or_(pc.less(values, self.min_value), pc.greater(values, self.max_value))
        elif self.type == LENGTHS:
            mask = pc.greater(pc.utf8_length(column), self.max_value)
        else:
            mask = pc.invert(pc.is_in(column, value_set=pa.array(self.value_set, pa.string())))
            mask = pc.and_(mask, pc.is_valid(column))
        if not pc.any(mask).as_py():  # null when every row is null: nothing unexpected
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(mask.fill_null(False).to_numpy(zero_copy_only=False))


def _never_missing(col: str) -> _Rule:
    return _Rule(
        NOT_NULL, col, _Reason(f"{col} is missing, and was never missing in training", show=None)
    )


def _long_value(value) -> str:
    text = str(value)
    return f"{len(text):,} characters ({text[:24]!r}...)"


def build_rules(config: Config, profile: TrainingProfile) -> list[_Rule]:
    factor = config.validation.band_width_factor
    rules: list[_Rule] = []
    for col in config.dataset.id_columns:
        rules.append(_Rule(NOT_NULL, col, _Reason(f"null id {col}", show=None)))
    for col, prof in profile.numeric.items():
        lo, hi = prof.band(factor)
        rules.append(
            _Rule(
                BETWEEN,
                col,
                _Reason(
                    f"{col}=",
                    f" outside the validation band [{lo:.6g}, {hi:.6g}] "
                    f"(training range [{prof.min:.6g}, {prof.max:.6g}])",
                ),
                min_value=lo,
                max_value=hi,
            )
        )
        if prof.n_missing == 0:
            rules.append(_never_missing(col))
    longest = config.validation.max_string_length
    for col, prof in profile.categorical.items():
        rules.append(
            _Rule(
                LENGTHS,
                col,
                _Reason(
                    f"{col} holds a value of ",
                    f", more than [validation] max_string_length = {longest:,}",
                    show=_long_value,
                ),
                max_value=longest,
            )
        )
        if prof.n_missing == 0:
            rules.append(_never_missing(col))
        if config.validation.quarantine_unseen_categories:
            rules.append(
                _Rule(
                    IN_SET,
                    col,
                    _Reason(f"{col}=", " is a category unseen in training"),
                    value_set=tuple(prof.counts),
                )
            )
    return rules


def _suite(rules: list[_Rule]):
    import great_expectations as gx

    suite = gx.ExpectationSuite(name="batchscore")
    for rule in rules:
        suite.add_expectation(rule.expectation())
    return suite


def _run_gx(table: pa.Table, rules: list[_Rule], verdict: RowVerdict) -> None:
    """The suite run by Great Expectations itself, on a pandas copy of the chunk."""
    frame = table.to_pandas()
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(_suite(rules), result_format={"result_format": "COMPLETE"})
    for rule, res in zip(rules, result.results, strict=True):
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"Great Expectations could not evaluate "
                f"{res.expectation_config.type} on column {rule.column!r}: "
                f"{res.exception_info.get('exception_message')}"
            )
        if res.success:
            continue
        rows = res.result.get("unexpected_index_list") or []
        # Each row's value is read from the frame: GX's unexpected_list leaves nulls out, so
        # it does not line up with the index list when a column has many of them.
        column = frame[rule.column]
        values = None
        if rule.reason.show is not None:
            values = [_plain(column.iloc[r]) for r in rows]
        verdict.add(
            rows,
            rule.reason.of(len(rows), values),
            f"{res.expectation_config.type}({rule.column})",
        )


def _run_arrow(table: pa.Table, rules: list[_Rule], verdict: RowVerdict) -> None:
    """The same suite evaluated on the Arrow columns in memory: no pandas copy, no GX call
    (whose fixed cost per call and per-row pandas work were most of a chunk's time)."""
    for rule in rules:
        column = table.column(rule.column)
        rows = rule.unexpected(column)
        if len(rows):
            values = None
            if rule.reason.show is not None:  # the failing values, for their reasons' text
                taken = column.take(pa.array(rows))
                if pa.types.is_floating(taken.type) and taken.type.bit_width < 64:
                    # As written (5658.1), not a float32's float64 expansion (5658.099609375).
                    taken = pc.cast(pc.cast(taken, pa.string()), pa.float64())
                values = to_pylist_escaped(taken)
            verdict.add(rows, rule.reason.of(len(rows), values), f"{rule.type}({rule.column})")


def _plain(value):
    if isinstance(value, np.floating) and value.itemsize < 8:
        return float(str(value))  # as written, as the Arrow engine says it (`_run_arrow`)
    if isinstance(value, np.generic):
        return value.item()
    return value


def validate_chunk(
    table: pa.Table, config: Config, profile: TrainingProfile, duplicate_ids: AbstractSet
) -> RowVerdict:
    """Row-level validation of one chunk; `duplicate_ids` comes from the partition's plan.

    `[validation] engine` chooses who evaluates the suite: "arrow" (default) evaluates each
    expectation with Arrow compute kernels, "great_expectations" hands a pandas copy of the
    chunk to GX. Both reject the same rows with the same reasons (tests/test_validation.py
    holds them to it on adversarial chunks).
    """
    rules = build_rules(config, profile)
    needed = list(dict.fromkeys(r.column for r in rules))
    # Categories are compared as strings, the form their training vocabulary is kept in
    # (an integer-coded category 7 is the string "7" in the profile).
    checked = table.select(needed)
    for i, name in enumerate(checked.column_names):
        if name in profile.categorical:
            checked = checked.set_column(i, name, pc.cast(checked.column(name), pa.string()))
    verdict = RowVerdict()
    if config.validation.engine == "great_expectations":
        _run_gx(checked, rules, verdict)
    else:
        _run_arrow(checked, rules, verdict)
    if duplicate_ids:
        rows = _rows_with_ids(table, config.dataset.id_columns, duplicate_ids)
        ids = config.dataset.id_columns
        keys = id_keys(table.take(pa.array(rows, pa.int64())), ids)
        verdict.add(rows, _duplicate_reason(ids).of(len(rows), keys), "duplicate_id")
    return verdict


def _rows_with_ids(table: pa.Table, id_columns: list[str], ids: AbstractSet) -> np.ndarray:
    """Positions of the rows whose id is in `ids` (one integer id column: a binary search;
    another: one Arrow lookup)."""
    if len(id_columns) == 1:
        column = _decoded(table.column(id_columns[0]))
        if pa.types.is_null(column.type):  # ids all null: rejected as such, never duplicates
            return np.empty(0, dtype=np.int64)
        if isinstance(ids, IntIds):
            return ids.rows_of(column)
        wanted = pa.array(_ids_of_type(ids, column.type), column.type)
        return np.flatnonzero(pc.is_in(column, value_set=wanted).to_numpy(zero_copy_only=False))
    keys = id_keys(table, id_columns)
    return np.array([i for i, k in enumerate(keys) if k in ids], dtype=np.int64)


def _ids_of_type(ids: frozenset, id_type: pa.DataType) -> list:
    """The ids a column of `id_type` can hold. The plan finds duplicates across the files of
    a partition, whose integer types may differ: an id repeated in a file of int64 ids
    (5,000,000,000, or -1) cannot be in a chunk of int32 (or uint32) ids, and does not convert
    to its type."""
    if not pa.types.is_integer(id_type):
        return list(ids)
    bounds = np.iinfo(id_type.to_pandas_dtype())
    return [i for i in ids if bounds.min <= i <= bounds.max]


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary-encoded column as its values; any other column as it is."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def id_keys(table: pa.Table, id_columns: list[str]) -> list:
    columns = [table.column(c).to_pylist() for c in id_columns]
    return columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))


def _duplicate_reason(id_columns: list[str]) -> _Reason:
    """`duplicate id id=7: ...`; a composite id names each column (`id=1, day='mon'`)."""
    suffix = ": the partition holds this id more than once"
    if len(id_columns) == 1:
        return _Reason(f"duplicate id {id_columns[0]}=", suffix)
    return _Reason(
        "duplicate id ",
        suffix,
        show=lambda key: ", ".join(f"{c}={v!r}" for c, v in zip(id_columns, key, strict=True)),
    )


def find_duplicate_ids(ids: pa.Table, id_columns: list[str]) -> tuple[frozenset, int]:
    """Ids present more than once in a partition, and how many rows hold them.

    Rows with a null in any id column are left out: null ids are rejected by their own rule,
    and are not "duplicates" of each other. Keys are Python values (tuples for composite ids),
    as `validation.id_keys` makes them, so a chunk's rows can be looked up in the set.
    """
    ids = ids.select(id_columns)
    if ids.num_rows == 0:
        return frozenset(), 0
    for i, name in enumerate(id_columns):  # group_by wants plain columns
        ids = ids.set_column(i, name, _decoded(ids.column(name)))
    valid = None
    for name in id_columns:
        ok = pc.is_valid(ids.column(name))
        valid = ok if valid is None else pc.and_(valid, ok)
    if ids.num_rows - pc.sum(valid).as_py():
        ids = ids.filter(valid)
    counted = ids.group_by(id_columns).aggregate([([], "count_all")])
    repeated = counted.filter(pc.greater(counted.column("count_all"), 1))
    if repeated.num_rows == 0:
        return frozenset(), 0
    rows = pc.sum(repeated.column("count_all")).as_py()
    columns = [repeated.column(c).to_pylist() for c in id_columns]
    keys = columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))
    return frozenset(keys), rows


def find_duplicate_int_ids(values: np.ndarray) -> tuple[IntIds, int]:
    """`find_duplicate_ids` for one integer id column without nulls, as an int64 array,
    which is sorted in place (no copy): ids held more than once, and the rows holding them.

    Ids already in ascending order (files written in key order, an auto-increment key) are
    not sorted again: checking the order took 10 ms for 5 million ids here, sorting them
    0.3 s. The check stops at the first block out of order, so other ids pay ~nothing."""
    if len(values) < 2:
        return IntIds(np.empty(0, np.int64)), 0
    if not _ascending(values):
        values.sort()
    repeated = values[1:] == values[:-1]
    if not repeated.any():
        return IntIds(np.empty(0, np.int64)), 0
    held = values[1:][repeated]  # sorted: each repeated id once per extra row
    keys = held[np.concatenate(([True], held[1:] != held[:-1]))]  # np.unique: 2 s for 5M
    rows = np.searchsorted(values, keys, "right") - np.searchsorted(values, keys, "left")
    return IntIds(keys), int(rows.sum())


class IntIds(AbstractSet):
    """A set of integer ids (a plan's repeated ids, when the id is one integer column), kept
    as a sorted int64 array.

    The plan goes to every chunk task, and a chunk looks its rows up in it batch by batch.
    As a frozenset of Python ints, each batch built an Arrow value set from it: 2,000,000
    rows holding every id twice took 16 worker seconds, where 5 is normal. Here an id is
    8 bytes and a batch's rows are found by binary search."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray):
        self.values = np.asarray(values, np.int64)  # ascending, each id once

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self):
        return iter(self.values.tolist())

    def __contains__(self, key) -> bool:
        if not isinstance(key, int | np.integer) or not -(2**63) <= key < 2**63:
            return False
        at = np.searchsorted(self.values, key)
        return bool(at < len(self.values) and self.values[at] == key)

    __hash__ = AbstractSet._hash

    def __repr__(self) -> str:
        shown = ", ".join(map(str, self.values[:10].tolist()))
        return f"IntIds({{{shown}{', ...' if len(self.values) > 10 else ''}}}: {len(self)} ids)"

    def rows_of(self, column: pa.ChunkedArray) -> np.ndarray:
        """Positions of the rows of an integer `column` whose id is in the set."""
        if not len(self.values) or not len(column):
            return np.empty(0, dtype=np.int64)
        ids = pc.cast(pc.fill_null(column, 0), pa.int64()).to_numpy()
        at = np.searchsorted(self.values, ids)
        np.minimum(at, len(self.values) - 1, out=at)
        found = self.values[at] == ids
        if column.null_count:  # a null id is rejected as such, never a duplicate
            found &= pc.is_valid(column).to_numpy(zero_copy_only=False)
        return np.flatnonzero(found)


def _ascending(values: np.ndarray, block: int = 1 << 16) -> bool:
    """Whether `values` never decrease, checked a block at a time."""
    for start in range(0, len(values) - 1, block):
        part = values[start : start + block + 1]
        if (part[1:] < part[:-1]).any():
            return False
    return True
