"""Training: labelled partitions -> a LightGBM model registered with its schema and profile.

Labels (`<source>/labels/dt=D/`) are joined to the same day's incoming rows by the id
columns. The newest `[retrain] validation_days` labelled days are held out (a time-based
split): early stopping watches them and the recorded metrics are measured on them.
Rows that validation would reject as impossible (null or duplicate ids) are left out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchscore.config import Config
from batchscore.features import FeatureSchema, TrainingProfile, feature_columns
from batchscore.registry import Registry
from batchscore.storage import Location, parse_partition_dir
from drift import ReferenceProfile


class TrainingError(RuntimeError):
    """Training cannot proceed; the message says what is missing."""


@dataclass(frozen=True)
class TrainResult:
    version: str
    promoted: bool
    champion: str | None
    metrics: dict[str, float]
    rows: dict[str, int]
    window: dict[str, str]


def labelled_partitions(config: Config) -> list[str]:
    days = (parse_partition_dir(e.base_name) for e in Location(config.source).list("labels"))
    return sorted(d.isoformat() for d in days if d is not None)


def _read_folder(location: Location, folder: str, columns: list[str] | None) -> pa.Table:
    tables = []
    for entry in location.list(folder):
        if entry.base_name.startswith((".", "_")) or entry.type.name != "File":
            continue
        try:
            tables.append(pq.read_table(location.fs.open_input_file(entry.path), columns=columns))
        except (pa.ArrowInvalid, OSError, KeyError) as exc:
            raise TrainingError(f"cannot read {entry.path}: {exc}") from exc
    if not tables:
        raise TrainingError(f"no Parquet files under {location.path(folder)}")
    return pa.concat_tables(tables, promote_options="permissive")


def labelled_rows(config: Config, partition: str) -> pa.Table:
    """One day's incoming rows with their label, rows with null or duplicate ids left out."""
    ds = config.dataset
    source = Location(config.source)
    rows = _read_folder(source, f"incoming/dt={partition}", [*ds.id_columns, *ds.features])
    labels = _read_folder(source, f"labels/dt={partition}", [*ds.id_columns, ds.label])
    rows = _drop_duplicate_ids(rows.filter(_ids_valid(rows, ds.id_columns)), ds.id_columns)
    labels = _drop_duplicate_ids(labels.filter(_ids_valid(labels, ds.id_columns)), ds.id_columns)
    joined = rows.join(labels, keys=ds.id_columns, join_type="inner")
    joined = joined.filter(pc.is_valid(joined.column(ds.label)))
    if ds.task == "binary":
        values = pc.unique(joined.column(ds.label)).to_pylist()
        bad = [v for v in values if v not in (0, 1, True, False)]
        if bad:
            raise TrainingError(
                f"labels/dt={partition}: label column {ds.label!r} holds "
                f"{bad[:5]}; task = 'binary' needs 0/1"
            )
    return joined.append_column("__partition__", pa.array([partition] * joined.num_rows))


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


def metrics(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as m

    if task == "binary":
        clipped = np.clip(pred, 1e-15, 1 - 1e-15)
        out = {
            "log_loss": float(m.log_loss(y, clipped, labels=[0, 1])),
            "brier": float(m.brier_score_loss(y, pred)),
        }
        out["auc"] = float(m.roc_auc_score(y, pred)) if len(np.unique(y)) == 2 else math.nan
        return out
    return {
        "rmse": float(np.sqrt(m.mean_squared_error(y, pred))),
        "mae": float(m.mean_absolute_error(y, pred)),
    }


def train(
    config: Config, reason: str = "manual", force: bool = False, run_id: str | None = None
) -> TrainResult:
    ds, rt = config.dataset, config.retrain
    days = labelled_partitions(config)[-rt.window_days :]
    if len(days) <= rt.validation_days:
        raise TrainingError(
            f"{len(days)} labelled partition(s) under {Location(config.source).path('labels')}; "
            f"training needs more than [retrain] validation_days = {rt.validation_days}"
        )
    tables = [labelled_rows(config, d) for d in days]
    data = pa.concat_tables(tables, promote_options="permissive")
    if data.num_rows < rt.min_labelled_rows:
        raise TrainingError(
            f"{data.num_rows} labelled rows in {days[0]}..{days[-1]}; "
            f"[retrain] min_labelled_rows = {rt.min_labelled_rows}"
        )
    fit_days, valid_days = days[: -rt.validation_days], days[-rt.validation_days :]
    profile = TrainingProfile.fit(data, ds.features, ds.categorical)
    schema = profile.schema(ds.features)
    in_valid = pc.is_in(data.column("__partition__"), pa.array(valid_days)).to_numpy(
        zero_copy_only=False
    )
    X = schema.to_matrix(data)
    y = data.column(ds.label).to_numpy(zero_copy_only=False).astype(np.float64)
    booster = _fit(config, schema, X[~in_valid], y[~in_valid], X[in_valid], y[in_valid])
    scores = booster.predict(X[in_valid], num_iteration=booster.best_iteration or None)
    result_metrics = metrics(ds.task, y[in_valid], scores)

    registry = Registry(config.store, ds.name)
    parent = registry.champion()
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
        },
        "rows": {"fit": int((~in_valid).sum()), "validation": int(in_valid.sum())},
        "metrics": result_metrics,
        "metrics_on": f"validation days {', '.join(valid_days)}",
        "best_iteration": booster.best_iteration,
        "params": rt.lightgbm.model_dump(),
        "lightgbm_version": lgb.__version__,
        "parent": parent,
        "reason": reason,
        "run_id": run_id,
    }
    text = booster.model_to_string(num_iteration=booster.best_iteration or None)
    reference = fit_reference(data, ds.features, ds.categorical, scores)
    version = registry.register(text, metadata, {"reference.json": reference.to_json().encode()})
    promoted = parent is None or force
    if promoted:
        registry.promote(version, "first model" if parent is None else f"forced: {reason}", run_id)
    return TrainResult(
        version,
        promoted,
        registry.champion(),
        result_metrics,
        metadata["rows"],
        {"from": days[0], "to": days[-1]},
    )


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
) -> lgb.Booster:
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
    return lgb.train(
        params,
        train_set,
        num_boost_round=p.max_rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(p.early_stopping_rounds, verbose=False)],
    )
