"""The one typed configuration: a TOML file validated once, when a command or flow starts.

Every key a user may write lives here, with its default. Unknown keys and bad values fail
with a message naming the table, the key and the value, so a typo never becomes a silent
default.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Not starting with a dot: "." and ".." would put the registry in or above the store.
Name = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")]
ColumnName = Annotated[str, Field(min_length=1)]


# Characters LightGBM 4.x cannot keep in a feature name (its Dataset::set_feature_names and
# Common::CheckAllowedJSON; tried with lightgbm 4.7), and what it does with them. It refuses
# the JSON ones and line breaks only when training starts, after all the data was read; it
# saves a space as "_", so the model's features never match the config's and every chunk
# fails the registry's check; C strings end at NUL. Anything else (Unicode, ".", "<b>", tabs)
# is kept as written.
_REFUSED = "LightGBM refuses in a feature name: training would fail, after reading all its data"
LIGHTGBM_NAME_CHARACTERS = {
    **{c: f"(a JSON special character) {_REFUSED}" for c in '",:[]{}'},
    "\n": f"(a line break) {_REFUSED}",
    "\r": f"(a line break) {_REFUSED}",
    " ": (
        "(a space) LightGBM saves as '_' in the model, whose features then never match these: "
        "it could not score"
    ),
    "\x00": "(NUL) ends the name for LightGBM, whose model then names another: it could not score",
}


def lightgbm_name_problem(name: str) -> str | None:
    """What LightGBM would do wrong with `name` as a feature name; None when nothing."""
    for char in name:
        if char in LIGHTGBM_NAME_CHARACTERS:
            return f"{name!r}: its {char!r} {LIGHTGBM_NAME_CHARACTERS[char]}"
    return None


# The config a command or flow reads when none is named: in the working folder.
DEFAULT_CONFIG = "batchscore.toml"


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


class _Table(BaseModel):
    # Strict: `chunk_rows = true` was taken as 1, `workers = "2"` as 2 and
    # `quarantine_unseen_categories = "yes"` as true; a TOML value of the wrong type is a
    # mistake to name, not to guess at. (An integer where a float goes is still a number.)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DatasetConfig(_Table):
    name: Name
    id_columns: list[ColumnName] = Field(min_length=1)
    features: list[ColumnName] = Field(min_length=1)
    categorical: list[ColumnName] = []
    label: ColumnName
    task: Literal["binary", "regression"]

    @model_validator(mode="after")
    def _features_lightgbm_can_name(self) -> DatasetConfig:
        problems = [p for p in map(lightgbm_name_problem, self.features) if p]
        if problems:
            raise ValueError(
                f"features lists {'; '.join(problems)}. Rename the column upstream (and in "
                "[dataset])"
            )
        return self

    @model_validator(mode="after")
    def _columns_are_consistent(self) -> DatasetConfig:
        for key in ("id_columns", "features", "categorical"):
            values = getattr(self, key)
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"{key} lists {dupes} more than once")
        unknown = [c for c in self.categorical if c not in self.features]
        if unknown:
            raise ValueError(f"categorical {unknown} are not in features")
        overlap = sorted(set(self.id_columns) & set(self.features))
        if overlap:
            raise ValueError(f"id_columns {overlap} are also features")
        if self.label in self.features or self.label in self.id_columns:
            raise ValueError(f"label {self.label!r} is also a feature or an id column")
        return self

    @property
    def numeric(self) -> list[str]:
        return [f for f in self.features if f not in self.categorical]


class StorageConfig(_Table):
    source: str
    store: str

    @field_validator("source", "store")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        # A local path or an s3:// URI: the leases and the publish protocol are written for
        # those two (`batchscore.storage`); pyarrow opens others (gs://) but they were never
        # tested, and one hung `models list` for minutes, deaf to SIGTERM.
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]+):/", value)  # not C:/, a drive
        if scheme and not value.startswith("s3://"):
            raise ValueError("must be a local path or an s3://bucket/prefix URI")
        return value


class ScoringConfig(_Table):
    # Rows per chunk task. Prefect costs ~0.14 s per task here (ENVIRONMENT.md), so a chunk must
    # carry enough rows for that to vanish. A worker holds at most min(chunk_rows,
    # scoring.BATCH_ROWS = 131,072) rows at once, so memory is about that x workers x row width.
    chunk_rows: int = Field(default=250_000, gt=0)
    # Worker processes; 0 means one per core.
    workers: int = Field(default=0, ge=0)
    # A run holds a lease per partition it scores and renews it every quarter of this while
    # it runs; a lease held from another machine is taken over once it has gone this long
    # without renewal (a holder on this machine is judged by whether its process lives).
    lease_minutes: float = Field(default=10.0, gt=0.0)
    # The scoring engine (batchscore/engine.py): "compiled" = the trees compiled to native
    # code by lleaves, verified against LightGBM; "lightgbm" = Booster.predict; "auto" =
    # compiled when it can be, else LightGBM with a logged reason.
    engine: Literal["auto", "compiled", "lightgbm"] = "auto"
    # Where chunks run: "process" = a pool of `workers` processes on this machine; "dask" =
    # prefect-dask's DaskTaskRunner on the existing Dask scheduler at `dask_address`.
    runner: Literal["process", "dask"] = "process"
    dask_address: str | None = None

    @model_validator(mode="after")
    def _dask_needs_an_address(self) -> ScoringConfig:
        if self.runner == "dask" and not (self.dask_address or "").strip():
            raise ValueError(
                'runner = "dask" needs dask_address, the scheduler to run on, e.g. '
                '"tcp://dask-scheduler:8786"'
            )
        return self

    @property
    def worker_count(self) -> int:
        return self.workers or _cores()

    @property
    def threads(self) -> int:
        """Threads per worker for scoring, so that processes x threads = the usable cores."""
        return max(1, _cores() // self.worker_count)


def _cores() -> int:
    # The cores this process may run on (a container's CPU set), not the machine's count.
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ValidationConfig(_Table):
    # A partition whose rejected rows exceed this share is held whole (DESIGN.md, Validation).
    max_bad_row_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    # A number is rejected when it lies beyond the training range by more than
    # band_width_factor x the range's own width.
    band_width_factor: float = Field(default=1.0, ge=0.0)
    # Unseen categories are scored and counted by default; set true to quarantine them instead.
    quarantine_unseen_categories: bool = False
    # Categorical and string id values longer than this many characters are rejected as
    # absurd (a corrupted or mis-parsed field), not scored.
    max_string_length: int = Field(default=10_000, ge=1)
    # Who evaluates the Great Expectations suite on each chunk: "arrow" = its expectations
    # evaluated with Arrow compute on the chunk in memory (same rows, same reasons, a small
    # fraction of the time); "great_expectations" = GX's own pandas engine on a copy.
    engine: Literal["arrow", "great_expectations"] = "arrow"


class LightGBMConfig(_Table):
    num_leaves: int = Field(default=31, ge=2)
    learning_rate: float = Field(default=0.05, gt=0.0)
    max_rounds: int = Field(default=500, ge=1)
    early_stopping_rounds: int = Field(default=30, ge=1)
    min_data_in_leaf: int = Field(default=50, ge=1)
    feature_fraction: float = Field(default=0.9, gt=0.0, le=1.0)
    lambda_l2: float = Field(default=1.0, ge=0.0)
    seed: int = 42


MetricName = Literal["auc", "log_loss", "brier", "rmse", "mae"]
BINARY_METRICS = ("auc", "log_loss", "brier")
HIGHER_IS_BETTER = {"auc"}


class RetrainConfig(_Table):
    # Labelled days used for training, split by time (oldest first): fit | validation_days
    # (early stopping) | holdout_days (challenger and champion are compared on these).
    window_days: int = Field(default=30, ge=3)
    validation_days: int = Field(default=1, ge=1)
    holdout_days: int = Field(default=1, ge=1)
    min_labelled_rows: int = Field(default=1_000, ge=1)
    # The gate: promote when the challenger beats the champion on `metric` by at least
    # `min_improvement` (0 = not worse). Default: auc for binary, rmse for regression.
    metric: MetricName | None = None
    min_improvement: float = Field(default=0.0, ge=0.0)
    # The drift policy: retrain when at least this many features drifted in the latest
    # partition (or the score distribution did), unless the last retrain is this recent.
    min_drifted_features: int = Field(default=2, ge=1)
    cooldown_hours: float = Field(default=24.0, ge=0.0)
    # auto: emit the event; run `retrain` as a subflow unless the score run came from a
    # deployment (whose `retrain` deployment's trigger acts on the event).
    on_drift: Literal["auto", "event", "subflow", "off"] = "auto"
    lightgbm: LightGBMConfig = LightGBMConfig()

    @model_validator(mode="after")
    def _window_holds_the_split(self) -> RetrainConfig:
        if self.validation_days + self.holdout_days >= self.window_days:
            raise ValueError(
                f"validation_days ({self.validation_days}) + holdout_days "
                f"({self.holdout_days}) must be smaller than window_days ({self.window_days})"
            )
        return self


DriftMethodName = Literal["ks", "psi", "chi2"]


class DriftConfig(_Table):
    # The reference window: "training" = the champion's stored training profile;
    # "rolling:N" = the merged counts of the N newest earlier partitions scored by the
    # same champion (same bins).
    reference: str = "training"
    # Default thresholds: drifted when the statistic exceeds them (KS D, PSI, Cramér's V).
    ks: float = Field(default=0.1, gt=0.0)
    psi: float = Field(default=0.2, gt=0.0)
    chi2: float = Field(default=0.1, gt=0.0)
    # Per-feature overrides, e.g. [drift.features.monthly_charges] psi = 0.3;
    # `__score__` is the model's score distribution.
    features: dict[str, dict[DriftMethodName, Annotated[float, Field(gt=0.0)]]] = {}

    @field_validator("reference")
    @classmethod
    def _reference_window(cls, value: str) -> str:
        n = value.removeprefix("rolling:")
        rolling = n != value and n.isascii() and n.isdigit() and int(n) >= 1
        if value != "training" and not rolling:
            raise ValueError('must be "training" or "rolling:N" with a whole number N >= 1')
        return value

    @property
    def rolling_window(self) -> int | None:
        """N of `rolling:N`; None for the training reference."""
        return (
            int(self.reference.removeprefix("rolling:")) if self.reference != "training" else None
        )

    def threshold(self, feature: str, method: str) -> float:
        return self.features.get(feature, {}).get(method, getattr(self, method))


class Config(_Table):
    dataset: DatasetConfig
    storage: StorageConfig
    scoring: ScoringConfig = ScoringConfig()
    validation: ValidationConfig = ValidationConfig()
    retrain: RetrainConfig = RetrainConfig()
    drift: DriftConfig = DriftConfig()
    # Where the file was read from; relative storage paths are resolved against its folder.
    path: str = Field(default="", exclude=True)

    @property
    def metric(self) -> str:
        """The gate's metric, defaulted by task."""
        default = "auc" if self.dataset.task == "binary" else "rmse"
        return self.retrain.metric or default

    @model_validator(mode="after")
    def _metric_fits_the_task(self) -> Config:
        metric = self.retrain.metric
        binary = self.dataset.task == "binary"
        if metric and (metric in BINARY_METRICS) != binary:
            applies = [m for m in MetricName.__args__ if (m in BINARY_METRICS) == binary]
            raise ValueError(
                f"[retrain] metric {metric!r} does not apply to [dataset] task "
                f"{self.dataset.task!r}; it takes {', '.join(map(repr, applies))}"
            )
        return self

    @model_validator(mode="after")
    def _drift_overrides_name_features(self) -> Config:
        unknown = sorted(set(self.drift.features) - {*self.dataset.features, "__score__"})
        if unknown:
            raise ValueError(
                f"[drift.features] names {unknown}, which are not in "
                "[dataset] features (or __score__)"
            )
        for name, methods in self.drift.features.items():
            allowed = {"psi", "chi2"} if name in self.dataset.categorical else {"ks", "psi"}
            wrong = sorted(set(methods) - allowed)
            if wrong:
                raise ValueError(
                    f"[drift.features.{name}] sets {wrong}; a "
                    f"{'categorical' if name in self.dataset.categorical else 'numeric'}"
                    f" feature is measured with {sorted(allowed)}"
                )
        return self

    @model_validator(mode="after")
    def _store_outside_source(self) -> Config:
        """The store is the pipeline's own: publishing replaces its `scores/dt=D/` (and
        drift, quarantine, performance) folders whole. A store at the source, or inside it,
        put those folders under the source, which the pipeline never writes: with `store =
        source`, a `scores/dt=D/` the source already held (a lake's earlier scores) was
        replaced by the first run. (A source inside the store is left alone: the pipeline
        writes only its own folders there.)"""
        source, store = location_parts(self.source), location_parts(self.store)
        if store[: len(source)] == source:
            where = "the same folder as" if store == source else "inside"
            raise ValueError(
                f"[storage] store {self.storage.store!r} ({self.store}) is {where} [storage] "
                f"source {self.storage.source!r} ({self.source}): the pipeline never writes "
                "under the source, and publishing replaces the store's scores/, drift/, "
                "quarantine/ and performance/ partition folders whole. Give the store a "
                'folder of its own, outside the source (e.g. store = ".batchscore")'
            )
        return self

    @property
    def source(self) -> str:
        return _resolve(self.storage.source, self.path)

    @property
    def store(self) -> str:
        return _resolve(self.storage.store, self.path)


def _resolve(location: str, config_path: str) -> str:
    if "://" in location or os.path.isabs(location):
        return location
    base = Path(config_path).resolve().parent if config_path else Path.cwd()
    return str((base / location).resolve())


def location_parts(location: str) -> tuple[str, ...]:
    """A location (a storage root, a file) as the folders it names, to tell whether one lies
    at or inside another: a local path with symlinks and `..` resolved (a store reached
    through a link into the source is inside it), an S3 URI as ("s3:", bucket, key parts),
    its options (`?endpoint_override=...`) left out."""
    if "://" in location:
        scheme, _, rest = location.partition("://")
        return (f"{scheme}:", *[p for p in rest.partition("?")[0].split("/") if p])
    return Path(os.path.realpath(location)).parts


def _known(loc: list[str]) -> str:
    """What the table of an unknown key takes: the key it was most likely meant to be
    (`categoricals` for `categorical`), else all of them; a misspelt key is the mistake
    to spot, and the message alone should be enough to fix it."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    keys = [k for k, f in model.model_fields.items() if not f.exclude]
    close = difflib.get_close_matches(loc[-1], keys, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (the {'table' if len(loc) > 1 else 'file'} takes: {', '.join(keys)})"


def _describe(error: dict) -> str:
    loc = [str(p) for p in error["loc"]]
    if error["type"] == "extra_forbidden":
        where = f"[{'.'.join(loc[:-1])}] " if len(loc) > 1 else ""
        return f"{where}unknown key {loc[-1]!r}{_known(loc)}"
    if len(loc) > 1:
        where = f"[{'.'.join(loc[:-1])}] {loc[-1]}"
    elif loc:
        where = f"[{loc[0]}]" if error["type"] != "missing" else f"[{loc[0]}] table"
    else:  # the file's checks across tables: their messages name the tables themselves
        return error["msg"].removeprefix("Value error, ")
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if error["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: {message}{shown}"


def parse_config(data: dict, path: str = "") -> Config:
    """Validate an already-parsed TOML document."""
    try:
        return Config.model_validate({**data, "path": path})
    except ValidationError as exc:
        dotted = _unquoted_dotted_features(data)
        # The errors pydantic found in those tables follow from the missing quotes.
        heads = {(name.split(".")[0],) for name in dotted}
        errors = [
            e
            for e in exc.errors()
            if not (e["loc"][:2] == ("drift", "features") and e["loc"][2:3] in heads)
        ]
        lines = "\n  ".join(
            [*(_quote_it(name) for name in dotted), *(_describe(e) for e in errors)]
        )
        raise ConfigError(f"{path or 'config'}: invalid configuration:\n  {lines}") from exc


def _unquoted_dotted_features(data: dict) -> list[str]:
    """Per-feature drift tables of features whose names hold a dot, written unquoted.

    TOML reads `[drift.features.risk.score]` as a table `score` inside a table `risk`:
    pydantic then says `'score'` is not a method and `risk.score` not a number, and
    nothing points at the quotes `[drift.features."risk.score"]` needs."""
    dataset, drift = data.get("dataset"), data.get("drift")
    features = dataset.get("features") if isinstance(dataset, dict) else None
    tables = drift.get("features") if isinstance(drift, dict) else None
    if not isinstance(features, list) or not isinstance(tables, dict):
        return []
    found: list[str] = []

    def walk(prefix: str, table: dict) -> None:
        for key, value in table.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if prefix and name in features:
                found.append(name)
            elif isinstance(value, dict):
                walk(name, value)

    walk("", tables)
    return found


def _quote_it(name: str) -> str:
    return (
        f"[drift.features.{name}]: TOML reads the dots of the feature {name!r} as tables "
        f'inside tables; quote its name: [drift.features."{name}"]'
    )


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a batchscore TOML file."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a folder, not a config file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from exc
    if "path" in data:
        raise ConfigError(f"{path}: unknown top-level key 'path'")
    return parse_config(data, str(Path(path).resolve()))
