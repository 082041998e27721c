"""Training: labelled partitions -> a LightGBM model registered with its schema and profile.

Labels (`<source>/labels/dt=D/`, read by `batchscore.labels`) are joined to the same day's
incoming rows by the id columns. The newest `[retrain] validation_days` labelled days are
held out (a time-based split): early stopping watches them and the recorded metrics are
measured on them. Rows that validation would reject as impossible (null or duplicate ids)
are left out; a day left with no labelled rows is left out of the window, and a warning
(`TrainResult.warnings`) says why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchscore.config import HIGHER_IS_BETTER, Config
from batchscore.features import FeatureSchema, TrainingProfile, feature_columns
from batchscore.labels import LabelError, read_labels, with_join_types
from batchscore.metrics import metrics, undefined
from batchscore.registry import PROMOTION_LOCK, ModelIntegrityError, Registry, sha256_hex
from batchscore.storage import Location, lease, parse_partition_dir
from batchscore.validation import check_schema
from drift import ReferenceProfile

if TYPE_CHECKING:  # imported where it trains: the score flow imports this module, and
    import lightgbm as lgb  # LightGBM brings SciPy and pandas (half a second)


# How often a long step of training says where it is (`train`'s `progress`).
PROGRESS_SECONDS = 10.0


class TrainingError(RuntimeError):
    """Training cannot proceed; the message says what is missing."""


@dataclass(frozen=True)
class TrainResult:
    """What a (re)training run did: `status` is promoted, registered, skipped or failed
    (`not_trained`)."""

    status: str
    version: str | None
    champion: str | None
    decision: str  # why it was (not) promoted, or why nothing was trained
    metric: str
    # None for a metric undefined on the holdout (AUC of one class), and why in undefined_metrics
    challenger_metrics: dict[str, float | None] = field(default_factory=dict)
    champion_metrics: dict[str, float | None] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    window: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # labels or days left out, and why
    undefined_metrics: dict[str, str] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


def labelled_partitions(config: Config) -> list[str]:
    days = (parse_partition_dir(e.base_name) for e in Location(config.source).list("labels"))
    return sorted(d.isoformat() for d in days if d is not None)


def _read_folder(config: Config, location: Location, folder: str) -> pa.Table | None:
    """The folder's data files as one table of the id and feature columns; None when it
    has none (or does not exist).

    Each file's schema is checked first, as planning a score run does
    (`validation.check_schema`): a file without a feature, or with one of a type that
    cannot be a feature, is named with the column instead of failing in pyarrow's read
    ("No match for FieldRef.Name(...)" and the file's whole schema) or its concatenation
    (an uncaught ArrowTypeError)."""
    columns = [*config.dataset.id_columns, *config.dataset.features]
    tables, problems = [], []
    for entry in location.data_files(folder):
        try:
            with location.fs.open_input_file(entry.path) as fh:  # its footer read once
                parquet = pq.ParquetFile(fh)
                found, _ = check_schema(parquet.schema_arrow, f"{folder}/{entry.base_name}", config)
                problems += found
                if not found:
                    tables.append(_decoded(parquet.read(columns=columns).select(columns)))
        except (pa.ArrowInvalid, OSError, KeyError) as exc:
            raise TrainingError(f"cannot read {entry.path}: {exc}") from exc
    if problems:
        # One reason once, with every file it applies to: a column the config names that
        # no file has (or of a type none can have) is one mistake, not one per file.
        files: dict[str, list[str]] = {}
        for p in problems:
            files.setdefault(p.reason, []).append(p.file.removeprefix(f"{folder}/"))
        raise TrainingError(
            f"cannot train on {folder}: "
            + "; ".join(f"{', '.join(names)}: {reason}" for reason, names in files.items())
            + ". Fix the files (or [dataset] in the config), or move its labels "
            f"(labels/{folder.removeprefix('incoming/')}) aside to train without that day"
        )
    try:
        return _concatenated(tables, _numeric(config)) if tables else None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TrainingError(
            f"cannot train on {folder}: its files' columns have types that do not combine "
            f"({exc}). Fix the export, or move its labels aside to train without that day"
        ) from exc


def _decoded(table: pa.Table) -> pa.Table:
    """`table` with its dictionary-encoded columns as their values. pandas writes a
    `category` column dictionary-encoded, and Arrow combines a dictionary with plain values
    of no type ("Unable to merge: Field plan has incompatible types"), so a day with one
    such file, or a window with one such day, could not be trained on; a score run reads
    the same values either way."""
    for at, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(at, f.name, table.column(at).cast(f.type.value_type))
    return table


def _numeric(config: Config) -> list[str]:
    return [f for f in config.dataset.features if f not in config.dataset.categorical]


def _concatenated(tables: list[pa.Table], numeric: list[str]) -> pa.Table:
    """`tables` as one table. A numeric feature of types Arrow does not combine (booleans
    beside integers, decimals beside integers, uint64 beyond int64) is taken as float64 in
    every table, as the model sees it (`FeatureSchema.to_matrix`): a score run scores such
    files, and training refused them. Categories of other kinds (text in one table,
    integers in another) still do not combine: codes beside names are an export's mistake."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    return pa.concat_tables(
        [_numbers_as_float(t, numeric) for t in tables], promote_options="permissive"
    )


def _numbers_as_float(table: pa.Table, numeric: list[str]) -> pa.Table:
    for name in numeric:
        at = table.schema.get_field_index(name)
        if at >= 0 and not pa.types.is_float64(table.schema.field(at).type):
            # Unsafe as `numeric_values`: an int64 beyond 2**53 is the nearest float.
            as_float = pc.cast(table.column(at), pa.float64(), safe=False)
            table = table.set_column(at, name, as_float)
    return table


def _combined_days(tables: list[pa.Table], days: list[str], numeric: list[str]) -> pa.Table:
    """The labelled days' rows as one table (`_concatenated`); a day whose column types do
    not combine with the days before it (a categorical as text, then as integers) is
    named."""
    try:
        return _concatenated(tables, numeric)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        problem = exc
    tables = [_numbers_as_float(t, numeric) for t in tables]
    schema = tables[0].schema
    for table, day in zip(tables[1:], days[1:], strict=True):
        try:
            schema = pa.unify_schemas([schema, table.schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise TrainingError(
                f"cannot train on incoming/dt={day}: its column types do not combine with "
                f"the labelled days before it ({exc}). Fix the export, or move its labels "
                f"(labels/dt={day}) aside to train without that day"
            ) from exc
    raise TrainingError(
        f"cannot train on the labelled days {days[0]}..{days[-1]}: their column types do "
        f"not combine ({problem}). Fix the export"
    ) from problem


def labelled_rows(config: Config, partition: str) -> tuple[pa.Table, list[str]]:
    """One day's incoming rows with their label, rows with null or duplicate ids left out,
    and warnings saying what else was left out (an empty table: the whole day, and why)."""
    ds = config.dataset
    source = Location(config.source)
    incoming = f"incoming/dt={partition}"
    if not source.data_files(f"labels/dt={partition}"):  # a folder made before its files
        return pa.table({}), [
            f"dt={partition}: no labels (no Parquet files under "
            f"{source.path(f'labels/dt={partition}')}); left out of training"
        ]
    rows = _read_folder(config, source, incoming)
    if rows is None:  # removed, or not delivered: the labels have nothing to label
        return pa.table({}), [
            f"dt={partition}: labels, but no incoming rows (no Parquet files under "
            f"{source.path(incoming)}); left out of training"
        ]
    rows = with_join_types(rows, ds.id_columns)
    try:
        labels = read_labels(config, partition, rows.schema, incoming)
    except LabelError as exc:
        raise TrainingError(str(exc)) from exc
    rows = _drop_duplicate_ids(rows.filter(_ids_valid(rows, ds.id_columns)), ds.id_columns)
    joined = rows.join(labels.table, keys=ds.id_columns, join_type="inner")
    if ds.task == "binary":
        values = pc.unique(joined.column(ds.label)).to_pylist()
        bad = [v for v in values if v not in (0, 1, True, False)]
        if bad:
            raise TrainingError(
                f"labels/dt={partition}: label column {ds.label!r} holds "
                f"{bad[:5]}; task = 'binary' needs 0/1"
            )
    notes = list(labels.notes)
    if joined.num_rows == 0:
        notes.append(
            f"dt={partition}: no labelled rows ({labels.table.num_rows:,} usable label(s) of "
            f"{labels.rows_read:,} read, {rows.num_rows:,} incoming row(s), none in both); "
            "left out of training"
        )
    return joined.append_column("__partition__", pa.array([partition] * joined.num_rows)), notes


def _ids_valid(table: pa.Table, id_columns: list[str]) -> pa.Array:
    mask = pc.is_valid(table.column(id_columns[0]))
    for c in id_columns[1:]:
        mask = pc.and_(mask, pc.is_valid(table.column(c)))
    return mask


def _drop_duplicate_ids(table: pa.Table, id_columns: list[str]) -> pa.Table:
    counts = table.group_by(id_columns).aggregate([([], "count_all")])
    dupes = counts.filter(pc.greater(counts.column("count_all"), 1))
    if dupes.num_rows == 0:
        return table
    return table.join(dupes.select(id_columns), keys=id_columns, join_type="left anti")


def champion_to_compare(registry: Registry, parent: str | None, force: bool):
    """The champion a challenger is compared with, loaded (None without one), and what the
    decision says when it could not be: a changed model file cannot be scored nor compared
    with, and forcing is how to replace it (its versions may be the only ones there are)."""
    if parent is None:
        return None, ""
    try:
        return registry.ref(parent).load(), ""
    except ModelIntegrityError as exc:
        if not force:
            raise ModelIntegrityError(
                f"{exc} To replace it, train with --force: the new version is then promoted "
                "without a comparison."
            ) from exc
        return None, f"; champion {parent} not compared: {exc}"


def train(
    config: Config,
    reason: str = "manual",
    force: bool = False,
    run_id: str | None = None,
    trigger: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a challenger on the labelled window; register it; promote it through the gate.

    The window is split by time: fit | validation_days (early stopping) | holdout_days.
    Challenger and champion are both scored on the holdout; the challenger is promoted when
    it beats the champion on the configured metric by at least `min_improvement` (or when
    there is no champion, or with `force`), and only if the champion it was compared with is
    still the champion: of two retrains racing, at most one promotes.

    `progress` is told each step as it ends (the days read, the fit, the holdout, the
    registration), and, while a step takes longer, where it is every `PROGRESS_SECONDS`:
    training on a year of labels takes minutes, and a run that says nothing for minutes
    looks hung.
    """
    say = progress or (lambda message: None)
    started = time.perf_counter()
    ds, rt = config.dataset, config.retrain
    registry = Registry.for_config(config)
    # The champion this run competes with is the one in place when it starts: a champion
    # promoted while it trains (by a racing retrain) makes its comparison stale.
    parent = registry.champion()
    window = labelled_partitions(config)[-rt.window_days :]
    needed = rt.validation_days + rt.holdout_days + 1
    tables, days, warnings = [], [], []
    told = started
    for i, day in enumerate(window):
        table, notes = labelled_rows(config, day)
        warnings += notes
        if table.num_rows:
            tables.append(table)
            days.append(day)
        if time.perf_counter() - told >= PROGRESS_SECONDS and i + 1 < len(window):
            told = time.perf_counter()
            say(f"reading labelled days: {i + 1} of {len(window)} read, up to {day}")
    left_out = [d for d in window if d not in days]

    def skip(why: str) -> TrainResult:
        return not_trained(config, "skipped", why, reason, run_id, trigger, warnings)

    if len(days) < needed:
        source = Location(config.source)
        # No such folder at all: as often a [storage] source written wrong as no labels yet.
        missing = "" if source.exists("labels") else " (no such folder: check [storage] source)"
        return skip(
            f"{len(days)} labelled partition(s) under {source.path('labels')}{missing}"
            + (f" ({len(left_out)} more left out: {', '.join(left_out)})" if left_out else "")
            + f"; training needs at least {needed} (validation_days + holdout_days + 1)",
        )
    data = _combined_days(tables, days, _numeric(config))
    if data.num_rows < rt.min_labelled_rows:
        return skip(
            f"{data.num_rows} labelled rows in {days[0]}..{days[-1]}; "
            f"[retrain] min_labelled_rows = {rt.min_labelled_rows}",
        )
    holdout_days = days[-rt.holdout_days :]
    valid_days = days[-(rt.holdout_days + rt.validation_days) : -rt.holdout_days]
    fit_days = days[: -(rt.holdout_days + rt.validation_days)]
    part = data.column("__partition__")
    in_holdout = pc.is_in(part, pa.array(holdout_days)).to_numpy(zero_copy_only=False)
    in_valid = pc.is_in(part, pa.array(valid_days)).to_numpy(zero_copy_only=False)
    in_fit = ~(in_holdout | in_valid)
    say(
        f"read {len(days)} labelled day(s), {days[0]}..{days[-1]}: {data.num_rows:,} rows "
        f"in {time.perf_counter() - started:.1f} s; fitting on {int(in_fit.sum()):,} rows "
        f"({fit_days[0]}..{fit_days[-1]}), early stopping on {int(in_valid.sum()):,} "
        f"({', '.join(valid_days)}), at most {rt.lightgbm.max_rounds} rounds"
    )

    profile = TrainingProfile.fit(data, ds.features, ds.categorical)
    schema = profile.schema(ds.features)
    X = schema.to_matrix(data)
    y = data.column(ds.label).to_numpy(zero_copy_only=False).astype(np.float64)
    booster = _fit(config, schema, X[in_fit], y[in_fit], X[in_valid], y[in_valid], say)
    best = booster.best_iteration or None
    held_out = in_valid | in_holdout
    challenger_metrics = metrics(
        ds.task, y[in_holdout], booster.predict(X[in_holdout], num_iteration=best)
    )
    not_defined = undefined(ds.task, y[in_holdout])
    say(
        f"on the holdout ({int(in_holdout.sum()):,} rows of {', '.join(holdout_days)}): "
        + ", ".join(f"{k}={_shown(v)}" for k, v in sorted(challenger_metrics.items()))
    )

    champion_metrics: dict[str, float | None] = {}
    champion, not_compared = champion_to_compare(registry, parent, force)
    if champion is not None:
        holdout = data.filter(pa.array(in_holdout))
        champion_metrics = metrics(
            ds.task, y[in_holdout], champion.booster.predict(champion.schema.to_matrix(holdout))
        )

    metadata = {
        "task": ds.task,
        "label": ds.label,
        "id_columns": ds.id_columns,
        "schema": schema.to_json(),
        "profile": profile.to_json(),
        "training_window": {
            "from": days[0],
            "to": days[-1],
            "partitions": days,
            "fit": fit_days,
            "validation": valid_days,
            "holdout": holdout_days,
        },
        "rows": {
            "fit": int(in_fit.sum()),
            "validation": int(in_valid.sum()),
            "holdout": int(in_holdout.sum()),
        },
        "warnings": warnings,
        "metrics": challenger_metrics,
        "metrics_on": f"holdout days {', '.join(holdout_days)}",
        "undefined_metrics": not_defined,
        "champion_metrics": {"version": parent, **champion_metrics} if parent else None,
        "best_iteration": booster.best_iteration,
        "params": rt.lightgbm.model_dump(),
        "lightgbm_version": _lightgbm_version(),
        "parent": parent,
        "reason": reason,
        "trigger": trigger,
        "run_id": run_id,
    }
    text = booster.model_to_string(num_iteration=best)
    # Drift reference: the whole window's features, and scores on days the model never fit.
    reference = fit_reference(
        data, ds.features, ds.categorical, booster.predict(X[held_out], num_iteration=best)
    )
    version = registry.register(text, metadata, {"reference.json": reference.to_json().encode()})
    say(f"registered {registry.name} {version} ({time.perf_counter() - started:.1f} s in all)")

    metric = config.metric
    with lease(registry.root, PROMOTION_LOCK):
        current = registry.champion()
        if current != parent:
            status, decision = (
                "registered",
                (
                    f"not promoted: the champion changed from {parent} to {current} while "
                    f"{version} was trained; compare again with a new retrain"
                ),
            )
        elif parent is None:
            status, decision = "promoted", "first model"
        elif force:
            status, decision = "promoted", f"forced: {reason}{not_compared}"
        else:
            ok, decision = gate(
                metric,
                challenger_metrics,
                champion_metrics,
                rt.min_improvement,
                version,
                parent,
                f"undefined on the holdout {', '.join(holdout_days)}: "
                + not_defined.get(metric, "no value"),
            )
            status = "promoted" if ok else "registered"
        if champion is not None and sha256_hex(text.encode()) == champion.ref.sha256:
            # Training is reproducible to the bit: the same labelled rows and settings make
            # the same model, which a user reading "promoted" would not guess.
            decision += f"; {version} is the same model as {parent}, byte for byte"
        if status == "promoted":
            registry.promote(version, f"{reason}: {decision}", run_id)
    result = TrainResult(
        status,
        version,
        registry.champion(),
        decision,
        metric,
        challenger_metrics,
        champion_metrics,
        metadata["rows"],
        {"from": days[0], "to": days[-1]},
        warnings,
        not_defined,
    )
    registry.record_retrain(_record(result, reason, run_id, trigger, parent))
    return result


def gate(
    metric: str,
    challenger: dict[str, float | None],
    champion: dict[str, float | None],
    min_improvement: float,
    version: str,
    parent: str,
    undefined_why: str = "undefined",
) -> tuple[bool, str]:
    """Promote when the challenger beats the champion by at least `min_improvement`; a
    metric undefined for either (None, `undefined_why`) compares nothing: not promoted."""
    new, old = challenger.get(metric), champion.get(metric)
    if new is None or old is None:
        return False, (
            f"{metric}: {undefined_why}. {version} not promoted: it cannot be compared with "
            f"champion {parent} (train with --force to promote it, or set [retrain] metric "
            "to one the holdout defines)"
        )
    improvement = (new - old) if metric in HIGHER_IS_BETTER else (old - new)
    verdict = improvement >= min_improvement
    return verdict, (
        f"{metric}: {version} {new:.5f} vs champion {parent} {old:.5f} "
        f"(improvement {improvement:+.5f}, required {min_improvement:+.5f}): "
        f"{'promoted' if verdict else 'not promoted'}"
    )


def not_trained(
    config: Config,
    status: str,
    why: str,
    reason: str,
    run_id: str | None,
    trigger: dict | None,
    warnings: list[str] | None = None,
) -> TrainResult:
    """A retrain that trained nothing, recorded in `retrains/` with why: `skipped` (too few
    labelled days or rows, as the policy allows) or `failed` (labels it cannot use: a
    `TrainingError`, which the retrain flow turns into this so that its run ends Failed
    with the one-line reason instead of two tracebacks)."""
    registry = Registry.for_config(config)
    champion = registry.champion()
    result = TrainResult(
        status, None, champion, f"no training: {why}", config.metric, warnings=warnings or []
    )
    registry.record_retrain(_record(result, reason, run_id, trigger, champion))
    return result


def _record(
    result: TrainResult, reason: str, run_id: str | None, trigger: dict | None, parent: str | None
) -> dict:
    return {
        "status": result.status,
        "version": result.version,
        "parent": parent,
        "champion": result.champion,
        "decision": result.decision,
        "reason": reason,
        "trigger": trigger,
        "run_id": run_id,
        "metric": result.metric,
        "challenger_metrics": result.challenger_metrics,
        "champion_metrics": result.champion_metrics,
        "undefined_metrics": result.undefined_metrics,
        "warnings": result.warnings,
    }


def fit_reference(
    table: pa.Table, features: list[str], categorical: list[str], scores: np.ndarray
) -> ReferenceProfile:
    """The drift reference: every feature over the training window, and the model's scores
    on its held-out days (what scores look like when nothing has drifted)."""
    return ReferenceProfile.fit(
        feature_columns(table, features, categorical), categorical, scores=scores
    )


def _fit(
    config: Config,
    schema: FeatureSchema,
    X: np.ndarray,
    y: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    say: Callable[[str], None] = lambda message: None,
) -> lgb.Booster:
    import lightgbm as lgb

    p = config.retrain.lightgbm
    binary = config.dataset.task == "binary"
    params = {
        "objective": "binary" if binary else "regression",
        "metric": "binary_logloss" if binary else "rmse",
        "num_leaves": p.num_leaves,
        "learning_rate": p.learning_rate,
        "min_data_in_leaf": p.min_data_in_leaf,
        "feature_fraction": p.feature_fraction,
        "lambda_l2": p.lambda_l2,
        "seed": p.seed,
        # Same data, same model: training is reproducible to the bit.
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": os.cpu_count() or 1,
        "verbose": -1,
    }
    names = list(schema.features)
    cats = schema.categorical_indices
    train_set = lgb.Dataset(X, y, feature_name=names, categorical_feature=cats, free_raw_data=False)
    valid_set = lgb.Dataset(
        X_valid, y_valid, reference=train_set, feature_name=names, categorical_feature=cats
    )
    started = time.perf_counter()
    told, best, rounds = started, None, 0

    def progress(env) -> None:  # every PROGRESS_SECONDS: the round and the validation metric
        nonlocal told, best, rounds
        rounds = env.iteration + 1
        _, name, value, higher_is_better = env.evaluation_result_list[0]
        if best is None or (value > best[0] if higher_is_better else value < best[0]):
            best = (value, rounds)
        if time.perf_counter() - told >= PROGRESS_SECONDS:
            told = time.perf_counter()
            say(
                f"fitting: round {rounds} of at most {p.max_rounds}, validation {name} "
                f"{value:.5g} (best {best[0]:.5g}, round {best[1]})"
            )

    booster = lgb.train(
        params,
        train_set,
        num_boost_round=p.max_rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(p.early_stopping_rounds, verbose=False), progress],
    )
    kept = booster.current_iteration()
    stopped = (
        f" (early stopping: no better validation {params['metric']} in the last "
        f"{rounds - kept} rounds)"
        if kept < rounds
        else ""
    )
    seconds = time.perf_counter() - started
    say(f"fitted {rounds} rounds in {seconds:.1f} s; the model keeps {kept}{stopped}")
    return booster


def _shown(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _lightgbm_version() -> str:
    import lightgbm as lgb

    return lgb.__version__
