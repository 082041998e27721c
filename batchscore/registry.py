"""The model registry under `<store>/models/<name>/` (DESIGN.md, Retraining).

    v0001/model.txt        LightGBM text format (pickles are never loaded)
    v0001/metadata.json    features, vocabularies, profile, window, metrics, sha256, parent
    v0001/reference.json   the drift reference profile (bins, sketch, counts), sha256 recorded
    champion.json          the alias: {"version": "v0001", ...}, replaced by atomic rename
    audit/*.json           one file per alias move: from, to, reason, time, run id

A version folder is assembled under a hidden name and renamed into place, so a version is
either complete or absent; two registrations at once get two numbers. Every load checks
the model file's sha256 against its metadata.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

from batchscore.features import FeatureSchema, TrainingProfile
from batchscore.storage import Location, Maybe, Shape, UnreadableJSON

if TYPE_CHECKING:
    import lightgbm as lgb

VERSION_RE = re.compile(r"^v(\d{4,})$")
METADATA = "metadata.json"
ALIAS = "champion.json"


def command(action: str, config_path: str | None = None) -> str:
    """`batchscore ACTION --config PATH`, as a message tells the user to type it: with the
    config's path as they gave it, `F` where it is not known (a registry opened from a
    model's handle, in a worker). Messages printed the literal `--config F`."""
    return f"`batchscore {action} --config {shlex.quote(config_path) if config_path else 'F'}`"


# Held while the alias is judged and moved (a retrain's gate, `models promote`/`rollback`),
# so that no move lands between another's reading the champion and its own move.
PROMOTION_LOCK = "_promotion.lock"

# What the registry's readers need of its documents (`storage.check_shape`): one without a
# key, or with another type there, is refused, named or left out as an unreadable one is.
# A version's metadata: what every reader needs, and the types of what some do
# (`Registry.metadata`'s `needs`): a version registered by hand may lack its metrics.
METADATA_SHAPE: Shape = {
    "sha256": str,
    "files": Maybe({str: str}),
    "task": Maybe(frozenset({"binary", "regression"})),
    "schema": Maybe({"features": [str], "vocabularies": {str: [str]}}),
    "profile": Maybe(
        {
            "numeric": {str: {"min": float, "max": float, "n": int, "n_missing": int}},
            "categorical": {str: {"counts": {str: int}, "n": int, "n_missing": int}},
        }
    ),
    "metrics": Maybe({str: (float, None)}),
    "training_window": Maybe({"from": str, "to": str}),
    "created_at": Maybe(str),
}
# What loading a model reads, scoring with it, and listing it.
LOADED = ("schema", "task")
SCORED = (*LOADED, "profile")
LISTED = ("metrics", "training_window", "created_at")
# The start of an audit or retrain record's file name: when it was written (UTC), so that
# names sort as the records were written.
STAMP = "%Y%m%dT%H%M%S%fZ"
ALIAS_SHAPE: Shape = {"version": str}
AUDIT_SHAPE: Shape = {"action": str, "from": (str, None), "to": str, "at": str, "reason": str}
RETRAIN_SHAPE: Shape = {
    "status": str,
    "at": dt.datetime,  # the drift policy's cooldown reads it as a time
    "version": (str, None),
    "decision": str,
    "parent": Maybe((str, None)),
    "trigger": Maybe((dict, None)),
}


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says why and what to do."""


class ModelIntegrityError(RegistryError):
    """A stored model does not match its recorded sha256 or feature schema, or one of its
    files is missing or unreadable."""


@dataclass(frozen=True)
class ModelRef:
    """A small, picklable handle on one registered version: what tasks pass around."""

    store: str
    name: str
    version: str
    sha256: str

    def load(self) -> LoadedModel:
        return _load_cached(self)


@dataclass(frozen=True)
class LoadedModel:
    ref: ModelRef
    text: str  # model.txt, LightGBM's text format, checked against its sha256
    metadata: dict[str, Any]

    @cached_property
    def booster(self) -> lgb.Booster:
        """LightGBM's Booster, built on first use: importing LightGBM (which imports SciPy
        and pandas with it) takes ~0.7 s, and the flow process and the plan
        never need it (scoring workers do: the lightgbm engine, and the compiled
        engine's checks against Booster.predict)."""
        import lightgbm as lgb

        return lgb.Booster(model_str=self.text)

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema.from_json(self.metadata["schema"])

    @property
    def profile(self) -> TrainingProfile:
        return TrainingProfile.from_json(self.metadata["profile"])

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def reference(self):
        """The drift reference profile stored with this version (checked against its sha256)."""
        return _load_reference(self.ref)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def verified_champion(config) -> ModelRef:
    """The champion's handle for a `Config`, after checking its files' sha256 and that it
    was trained on the config's features: what a score run needs before anything else
    (the flow's first task, and the CLI's check before it starts one)."""
    registry = Registry.for_config(config)
    ref = registry.champion_ref()
    registry.verify(ref)
    schema = registry.metadata(ref.version, SCORED)["schema"]
    ds = config.dataset
    if schema["features"] != ds.features or sorted(schema["vocabularies"]) != sorted(
        ds.categorical
    ):
        raise ModelIntegrityError(
            f"champion {ref.name} {ref.version} was trained on features {schema['features']} "
            f"(categorical {sorted(schema['vocabularies'])}); the config lists {ds.features} "
            f"(categorical {sorted(ds.categorical)}). Retrain, or fix [dataset] in the config."
        )
    return ref


class Registry:
    def __init__(self, store: str, name: str, config_path: str | None = None):
        self.store = store
        self.name = name
        self.root = Location(store).child("models", name)
        self.config_path = config_path  # for the commands its messages suggest

    @classmethod
    def for_config(cls, config) -> Registry:
        """The registry of a `Config`'s model, whose messages name its config file."""
        return cls(config.store, config.dataset.name, config.path)

    def _command(self, action: str) -> str:
        return command(action, self.config_path)

    @property
    def _promote(self) -> str:
        # What to do about a champion that cannot be used, as every message about one says it.
        return self._command("models promote VERSION")

    # --- versions ------------------------------------------------------------------------
    def versions(self) -> list[str]:
        names = [e.base_name for e in self.root.list()]
        return sorted((n for n in names if VERSION_RE.match(n)), key=lambda n: int(n[1:]))

    def metadata(self, version: str, needs: tuple[str, ...] = ()) -> dict[str, Any]:
        """A version's metadata.json, with the keys of `METADATA_SHAPE` and those `needs`
        names (which it may otherwise lack); `ModelIntegrityError` naming the file when it
        cannot be read or lacks one."""
        if not VERSION_RE.match(version):  # "v0001/" or "../other/v0001" found a folder
            raise RegistryError(
                f"{version!r} is not a version of model {self.name!r}: versions are named "
                f"vNNNN; known: {', '.join(self.versions()) or 'none'}"
            )
        try:
            shape = {**METADATA_SHAPE, **{k: METADATA_SHAPE[k].shape for k in needs}}
            data = self.root.read_json_or_none(version, METADATA, shape=shape)
        except UnreadableJSON as exc:
            raise ModelIntegrityError(
                f"model {self.name} {version}: {exc}. Restore the file, or promote another "
                f"version with {self._promote}."
            ) from exc
        if data is None:
            if self.root.exists(version):
                raise ModelIntegrityError(
                    f"model {self.name} {version}: {self.root.path(version, METADATA)} is "
                    "missing: its registration did not finish, or the file was deleted. "
                    f"Restore the file, or promote another version with {self._promote}."
                )
            raise RegistryError(
                f"model {self.name!r} has no version {version!r} under {self.root.uri}; "
                f"known: {', '.join(self.versions()) or 'none'}"
            )
        return data

    def ref(self, version: str) -> ModelRef:
        return ModelRef(self.store, self.name, version, self.metadata(version)["sha256"])

    def register(
        self, model_text: str, metadata: dict[str, Any], files: dict[str, bytes] | None = None
    ) -> str:
        """Store a new version (model, metadata and extra files); returns its name (v0001, ...)."""
        data = model_text.encode()
        staging = self.root.child(f".staging-{uuid.uuid4().hex}")
        staging.write_bytes(data, "model.txt")
        checksums = {}
        for name, content in (files or {}).items():
            staging.write_bytes(content, name)
            checksums[name] = sha256_hex(content)
        for _ in range(100):
            existing = self.versions()
            version = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
            meta = {
                **metadata,
                "name": self.name,
                "version": version,
                "sha256": sha256_hex(data),
                "files": checksums,
                "created_at": utc_now(),
            }
            staging.write_json(meta, METADATA, allow_nan=False)
            if not self.root.is_local:
                # No folder rename on object storage: claim the number with an exclusive
                # create, then copy the files in, metadata.json (what makes it a version) last.
                if not self.root.create_exclusive(b"", version, ".claim"):
                    continue
                staging.write_bytes(b"", ".claim")  # publishing keeps the claim in place
                self.root.publish_dir(staging, version, last=(METADATA,))
                return version
            if self.root.exists(version):
                continue  # another registration took this number between list and move
            try:
                self.root.fs.move(staging.root, self.root.path(version))
            except OSError:
                if self.root.exists(version):
                    continue
                raise
            return version
        raise RegistryError(f"could not allocate a version number under {self.root.uri}")

    # --- the champion alias --------------------------------------------------------------
    def champion(self) -> str | None:
        """The version the alias names; None when there is no alias. A `RegistryError`
        naming the file when it cannot be read (promoting a version replaces it)."""
        try:
            alias = self.root.read_json_or_none(ALIAS, shape=ALIAS_SHAPE)
        except UnreadableJSON as exc:
            raise RegistryError(
                f"model {self.name!r}: its champion alias {exc}. Promote a version to replace "
                f"it: {self._promote}"
            ) from exc
        return None if alias is None else alias["version"]

    def champion_problem(self) -> str | None:
        """Why the champion alias cannot be used (unreadable, or naming a version that is not
        there); None when it can, or when there is none."""
        try:
            version = self.champion()
        except RegistryError as exc:
            return str(exc)
        if version is not None and not self.root.exists(version):
            return self._missing_champion(version)
        return None

    def _missing_champion(self, version: str) -> str:
        return (
            f"model {self.name!r}: its champion alias {self.root.path(ALIAS)} names {version}, "
            f"which is not a version under {self.root.uri} (known: "
            f"{', '.join(self.versions()) or 'none'}). Promote one with {self._promote}"
        )

    def verify(self, ref: ModelRef) -> None:
        """Check a version's files against their recorded sha256 without loading them."""
        root = self.root.child(ref.version)
        recorded = {"model.txt": ref.sha256, **self.metadata(ref.version).get("files", {})}
        for name, expected in recorded.items():
            try:
                actual = sha256_hex(root.read_bytes(name))
            except FileNotFoundError:
                raise ModelIntegrityError(
                    f"model {ref.name} {ref.version}: {root.path(name)} is missing; it was "
                    "deleted after registration. Refusing to score with it."
                ) from None
            if actual != expected:
                raise ModelIntegrityError(
                    f"model {ref.name} {ref.version}: {root.path(name)} has sha256 {actual}, "
                    f"but the registry recorded {expected}; the file was changed after "
                    "registration. Refusing to score with it."
                )

    def champion_ref(self) -> ModelRef:
        version = self.champion()
        if version is None:
            # No version either: a store never trained into, or, as often, a config whose
            # [storage] store (or [dataset] name) is not the one the models were trained
            # under; training there would start a second registry beside the first.
            nothing = (
                ""
                if self.versions()
                else (
                    ", nor any version (if you trained one, check [storage] store and "
                    "[dataset] name)"
                )
            )
            raise RegistryError(
                f"model {self.name!r} has no champion under {self.root.uri}{nothing}: train "
                f"one with {self._command('train')} or promote a version with "
                f"{self._promote}"
            )
        if not self.root.exists(version):
            raise RegistryError(self._missing_champion(version))
        return self.ref(version)

    def promote(
        self, version: str, reason: str, run_id: str | None = None, action: str = "promote"
    ) -> None:
        self.metadata(version)  # fails clearly on an unknown or unreadable version
        try:
            previous = self.champion()
        except RegistryError:
            previous = None  # an unreadable alias: this promotion is how to replace it
        event = {
            "action": action,
            "from": previous,
            "to": version,
            "reason": reason,
            "at": utc_now(),
            "run_id": run_id,
        }
        # The audit record goes first: an alias never moves without a trace.
        stamp = dt.datetime.now(dt.UTC).strftime(STAMP)
        self.root.write_json(event, "audit", f"{stamp}-{uuid.uuid4().hex[:8]}.json")
        self.root.write_json({"version": version, "since": event["at"], "reason": reason}, ALIAS)

    def rollback(self, reason: str = "manual rollback", run_id: str | None = None) -> str:
        current = self.champion()
        if current is None:
            raise RegistryError(f"model {self.name!r} has no champion to roll back from")
        history = self.champion_history()
        if len(history) < 2:
            raise RegistryError(f"champion {current} of {self.name!r} has no previous champion")
        previous = history[-2]
        self.promote(previous, reason, run_id, action="rollback")
        return previous

    def champion_history(self) -> list[str]:
        """Champions in the order they reigned, as a stack: a promotion of another version
        pushes it, a rollback pops the current one, so repeated rollbacks keep going back."""
        try:
            events = self.audit()
        except RegistryError as exc:
            raise RegistryError(
                f"{exc}; without it the order of champions is not known, so there is no "
                f"previous champion to roll back to. Promote the version you want: {self._promote}"
            ) from exc
        stack: list[str] = []
        for event in events:
            if event["action"] == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != event["to"]:
                    stack.append(event["to"])
            elif not stack or stack[-1] != event["to"]:
                stack.append(event["to"])
        return stack

    def record_retrain(self, record: dict[str, Any]) -> None:
        """Append one (re)training attempt to `retrains/`: the drift policy's cooldown and the
        audit of why each version exists (or why none was trained)."""
        record = {**record, "at": utc_now()}
        stamp = dt.datetime.now(dt.UTC).strftime(STAMP)
        self.root.write_json(
            record, "retrains", f"{stamp}-{uuid.uuid4().hex[:8]}.json", allow_nan=False
        )

    def retrains(
        self, unreadable: list[str] | None = None, since: dt.datetime | None = None
    ) -> list[dict[str, Any]]:
        """The retrain records (`record_retrain`), oldest first; with `since` (UTC), only
        those written from then on, found by their file names, which start with the time:
        the others are not read (one GET each on S3)."""
        return list(self._records("retrains", unreadable, since))

    def last_retrain_at(self, unreadable: list[str] | None = None) -> dt.datetime | None:
        """When a model was last retrained: trained while a champion existed (the first model
        is not a retrain, so it does not start the drift policy's cooldown).

        Every scoring run asks. The records are read newest first (their file names start
        with the time), up to the first retrain: a year of nightly attempts was a year of
        reads (GETs on S3) on every run. An unreadable record on the way is left out, its
        reason put in `unreadable` when given (else an error, as `retrains`)."""
        for record in self._records("retrains", unreadable, newest_first=True):
            if record["status"] in ("promoted", "registered") and record.get("parent"):
                return dt.datetime.fromisoformat(record["at"])
        return None

    def _records(
        self,
        folder: str,
        unreadable: list[str] | None = None,
        since: dt.datetime | None = None,
        newest_first: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """The records of `audit/` or `retrains/`, oldest first (from `since` on, when
        given), or newest first; each read when the caller asks for it, so one that stops
        early reads no more. One that cannot be read is left out and its reason put in
        `unreadable` when given, for readers to whom the others are enough (a listing, the
        drift policy's cooldown); else it is an error."""
        shape = AUDIT_SHAPE if folder == "audit" else RETRAIN_SHAPE
        first = since.strftime(STAMP[:-3]) if since else ""  # to the second, as "at"
        names = [
            e.base_name
            for e in self.root.list(folder)
            if e.base_name.endswith(".json") and not e.base_name.startswith(".")
            if e.base_name >= first
        ]
        for name in reversed(names) if newest_first else names:
            try:
                yield self.root.read_json(folder, name, shape=shape)
            except UnreadableJSON as exc:
                if unreadable is None:
                    raise RegistryError(f"model {self.name!r}: its {folder} record {exc}") from exc
                unreadable.append(str(exc))

    def audit(self, unreadable: list[str] | None = None) -> list[dict[str, Any]]:
        return list(self._records("audit", unreadable))


@lru_cache(maxsize=4)
def _load_reference(ref: ModelRef):
    from drift import ReferenceProfile

    registry = Registry(ref.store, ref.name)
    root = registry.root.child(ref.version)
    expected = registry.metadata(ref.version).get("files", {}).get("reference.json")
    if expected is None:
        raise RegistryError(
            f"model {ref.name} {ref.version} has no drift reference profile "
            f"(reference.json); retrain it to measure drift"
        )
    try:
        data = root.read_bytes("reference.json")
    except FileNotFoundError:
        raise ModelIntegrityError(
            f"model {ref.name} {ref.version}: {root.path('reference.json')} is missing; it "
            "was deleted after registration. Refusing to use it."
        ) from None
    if sha256_hex(data) != expected:
        raise ModelIntegrityError(
            f"model {ref.name} {ref.version}: {root.path('reference.json')} has sha256 "
            f"{sha256_hex(data)}, the registry recorded {expected}. Refusing to use it."
        )
    return ReferenceProfile.from_json(data.decode())


@lru_cache(maxsize=4)
def _load_cached(ref: ModelRef) -> LoadedModel:
    # Cached per process: a worker loads (and checks) each model once, not once per chunk.
    registry = Registry(ref.store, ref.name)
    root = registry.root.child(ref.version)
    try:
        data = root.read_bytes("model.txt")
    except FileNotFoundError:
        raise ModelIntegrityError(
            f"model {ref.name} {ref.version}: {root.path('model.txt')} is missing; it was "
            "deleted after registration. Refusing to load it."
        ) from None
    metadata = registry.metadata(ref.version, LOADED)
    actual = sha256_hex(data)
    if actual != metadata["sha256"] or actual != ref.sha256:
        raise ModelIntegrityError(
            f"model {ref.name} {ref.version}: {root.path('model.txt')} has sha256 {actual}, "
            f"but the registry recorded {metadata['sha256']}; the file was changed after "
            "registration. Refusing to load it."
        )
    text = data.decode()
    features = _feature_names(text)
    if features != metadata["schema"]["features"]:
        raise ModelIntegrityError(
            f"model {ref.name} {ref.version}: its trees use features {features}, "
            f"its metadata lists {metadata['schema']['features']}"
        )
    return LoadedModel(ref, text, metadata)


def _feature_names(model_text: str) -> list[str]:
    """The `feature_names=` line of LightGBM's text format (what Booster.feature_name()
    returns), read without LightGBM: names separated by single spaces, as LightGBM splits
    them (a tab or a no-break space is part of a name; `str.split()` cut names there)."""
    for line in model_text.split("\n"):
        if line.startswith("feature_names="):
            return line.removeprefix("feature_names=").rstrip("\r").split(" ")
        if line.startswith("Tree="):
            break
    return []
