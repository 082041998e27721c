"""Scoring engines: LightGBM's own `Booster.predict`, or the model compiled to native code.

`[scoring] engine` chooses:

- `lightgbm`: `Booster.predict`, always available.
- `compiled`: the trees compiled to machine code by lleaves (LLVM, through llvmlite). Anything
  that stops it (lleaves or llvmlite cannot import, compiling fails, the compiled code does not
  reproduce `Booster.predict`) raises `EngineError`.
- `auto` (default): `compiled` when it works, else `lightgbm`, with a logged warning naming
  the reason.

Compiling takes seconds per model (about 7 s for 200 trees x 31 leaves here), so it happens
once per model version and CPU: the object code is cached on disk beside the model,

    <store>/models/<name>/vNNNN/.compiled/<key>.o     (+ <key>.json: its sha256, the inputs)

or, when the store is not a local folder (or is read only), under the user's cache folder
(`$XDG_CACHE_HOME/batchscore/compiled/`, default `~/.cache/...`). The key names everything
the code depends on: the model file's sha256, the CPU (`platform.machine()`, LLVM's host CPU
name and a hash of its feature flags), the compiler (llvmlite's LLVM version, llvmlite's and
lleaves' versions) and the trees per block (`trees_per_block`). Another process finds the
file and loads it in about 0.1 s, probe check included; a lock file makes concurrent first
uses compile once. The object file's own sha256 is checked before it is loaded, so a
truncated or damaged cache file is recompiled, never executed. (It is native code: the cache
folder must be as trusted as the model store.)

Before first use in a process the compiled predictor is verified against `Booster.predict` on
a probe batch synthesised from the model itself (2,000 rows: values at and beside every split
threshold, across the training range and its validation band, zeros, NaN, every category code
including the unseen code and NaN), and again on a deterministic sample of the first real
batch it scores; the largest absolute difference must be <= 1e-9. A failed check refuses the
compiled engine. (The probe found the one input on which lleaves and LightGBM disagree:
LightGBM reads |x| <= 1e-35 as 0.0, and puts a split threshold at -1e-35; `as_lightgbm_reads`
zeroes such values before the compiled code sees them, one vectorised pass over the matrix.)

Predictors are cached per process by (model sha256, engine, threads): a worker compiles or
loads at most once per model, never once per chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from batchscore.registry import LoadedModel

Engine = Literal["auto", "compiled", "lightgbm"]
ENGINES: tuple[str, ...] = ("auto", "compiled", "lightgbm")
TOLERANCE = 1e-9
PROBE_ROWS = 2_000
# Rows per matrix handed to a predictor by scoring.predict: ~11 MB for 22 features, small
# enough to be reused by the allocator block after block instead of faulting in fresh pages.
PREDICT_BLOCK_ROWS = 65_536
# Decision nodes per block of trees in the compiled code: see `trees_per_block`.
NODES_PER_BLOCK = 512

logger = logging.getLogger("batchscore.engine")


class EngineError(RuntimeError):
    """The requested engine cannot be used; the message says why."""


class Predictor(Protocol):
    engine: str  # "lightgbm" | "compiled"

    def predict(self, matrix: np.ndarray, may_overwrite: bool = False) -> np.ndarray: ...


@dataclass
class LightGBMPredictor:
    booster: object
    threads: int
    engine: str = "lightgbm"
    reason: str = ""  # why `auto` chose LightGBM, when it did

    def predict(self, matrix: np.ndarray, may_overwrite: bool = False) -> np.ndarray:
        if len(matrix) == 0:
            return np.empty(0, dtype=np.float64)
        out = self.booster.predict(matrix, num_threads=self.threads)
        return np.asarray(out, dtype=np.float64)


# LightGBM reads a dense row as (index, value) pairs and drops every value with
# |x| <= kZeroThreshold (1e-35f, as a double), so such values are scored as 0.0; compiled
# code compares them as they are. Zeroing them first gives LightGBM's answer for every input
# (the split threshold -1e-35 that LightGBM puts next to zero is where they differ).
ZERO_THRESHOLD = float(np.float32(1e-35))
_BLOCK_ROWS = 65_536


def as_lightgbm_reads(matrix: np.ndarray, may_overwrite: bool = False) -> np.ndarray:
    """A C-ordered float64 matrix with LightGBM's near-zero values set to 0.0; the input is
    copied only when it must change and `may_overwrite` is false."""
    out = np.ascontiguousarray(matrix, dtype=np.float64)
    owned = may_overwrite or out is not matrix
    for start in range(0, len(out), _BLOCK_ROWS):
        block = out[start : start + _BLOCK_ROWS]
        tiny = np.abs(block) <= ZERO_THRESHOLD  # NaN compares false
        if owned:
            np.copyto(block, 0.0, where=tiny)
        else:
            tiny &= block != 0.0
            if tiny.any():
                out, owned = out.copy(), True
                np.copyto(out[start : start + _BLOCK_ROWS], 0.0, where=tiny)
    return out


@dataclass
class CompiledPredictor:
    compiled: object  # lleaves.Model, compiled
    booster: object  # for the check of the first real batch
    threads: int
    strict: bool  # engine = "compiled": a failed check raises; "auto": falls back
    cache_file: str
    origin: str  # "compiled" (this process compiled it) | "cache" (loaded from cache_file)
    probe_max_diff: float = float("nan")
    engine: str = "compiled"
    _checked: bool = False
    _fallback: LightGBMPredictor | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def raw_predict(self, matrix: np.ndarray, threads: int, may_overwrite: bool) -> np.ndarray:
        matrix = as_lightgbm_reads(matrix, may_overwrite)
        return np.asarray(self.compiled.predict(matrix, n_jobs=threads), dtype=np.float64)

    def predict(self, matrix: np.ndarray, may_overwrite: bool = False) -> np.ndarray:
        if self._fallback is not None:
            return self._fallback.predict(matrix)
        if len(matrix) == 0:
            return np.empty(0, dtype=np.float64)
        out = self.raw_predict(matrix, self.threads, may_overwrite)
        if not self._checked:
            with self._lock:
                if not self._checked:
                    self._check_first_batch(matrix, out)
                    self._checked = True
        if self._fallback is not None:
            return self._fallback.predict(matrix)
        return out

    def _check_first_batch(self, matrix: np.ndarray, out: np.ndarray) -> None:
        # A deterministic sample of the first real rows, on top of the synthesised probe.
        rows = np.unique(np.linspace(0, len(matrix) - 1, min(PROBE_ROWS, len(matrix))).astype(int))
        expected = np.asarray(self.booster.predict(matrix[rows], num_threads=1), np.float64)
        diff = _max_diff(out[rows], expected)
        if diff <= TOLERANCE:
            return
        reason = (
            f"compiled model differs from LightGBM by {diff:.3g} (> {TOLERANCE:g}) on "
            f"{len(rows)} sampled rows of the first batch"
        )
        if self.strict:
            raise EngineError(f"[scoring] engine = 'compiled': {reason}")
        _warn(f"[scoring] engine = 'auto' uses LightGBM: {reason}")
        self._fallback = LightGBMPredictor(self.booster, self.threads, reason=reason)


# --- per-process cache -------------------------------------------------------------------

_PREDICTORS: dict[tuple[str, str, int], Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()
# How many times this process compiled a model (tests read it; never reset by the code).
COMPILE_COUNT = 0


def get_predictor(model: LoadedModel, engine: str = "auto", threads: int = 1) -> Predictor:
    """The predictor for `model` with `engine`, built at most once per process."""
    if engine not in ENGINES:
        raise EngineError(f"[scoring] engine must be one of {', '.join(ENGINES)} (got {engine!r})")
    threads = max(1, int(threads))
    key = (model.ref.sha256, engine, threads)
    with _PREDICTORS_LOCK:
        found = _PREDICTORS.get(key)
        if found is None:
            found = _build(model, engine, threads)
            _PREDICTORS[key] = found
        return found


def clear_cache() -> None:
    """Forget this process's predictors (the on-disk cache stays)."""
    with _PREDICTORS_LOCK:
        _PREDICTORS.clear()


def _build(model: LoadedModel, engine: str, threads: int) -> Predictor:
    if engine == "lightgbm":
        return LightGBMPredictor(model.booster, threads)
    try:
        return _compiled(model, threads, strict=engine == "compiled")
    except EngineError as exc:
        if engine == "compiled":
            raise
        reason = str(exc)
    _warn(
        f"[scoring] engine = 'auto' uses LightGBM for {model.ref.name} {model.ref.version}: "
        f"{reason}"
    )
    return LightGBMPredictor(model.booster, threads, reason=reason)


def _warn(message: str) -> None:
    _tell(logging.WARNING, message)


def _tell(level: int, message: str) -> None:
    logger.log(level, message)
    with contextlib.suppress(Exception):  # inside a Prefect run, the run's log shows it too
        from prefect.context import TaskRunContext
        from prefect.logging import get_run_logger

        if TaskRunContext.get() is not None:
            get_run_logger().log(level, message)


# --- compiling and the on-disk cache -----------------------------------------------------


def _import_compiler():
    try:
        import lleaves
        import llvmlite
        import llvmlite.binding as llvm
    except Exception as exc:  # ImportError, or a broken native library
        raise EngineError(
            f"the compiler is unavailable: cannot import lleaves/llvmlite ({exc})"
        ) from exc
    return lleaves, llvmlite, llvm


def compiler_identity() -> dict[str, str]:
    """What the compiled code depends on besides the model: CPU and compiler versions."""
    from importlib.metadata import version

    lleaves, llvmlite, llvm = _import_compiler()
    llvm.initialize()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    return {
        "machine": platform.machine() or "unknown",
        "cpu": llvm.get_host_cpu_name() or "unknown",
        "cpu_features": hashlib.sha256(features.encode()).hexdigest()[:12],
        "llvm": ".".join(map(str, llvm.llvm_version_info)),
        "llvmlite": llvmlite.__version__,
        "lleaves": version("lleaves"),
    }


def trees_per_block(model_text: bytes) -> int:
    """How many trees the compiled code evaluates over all the rows before the next ones
    (lleaves' `fblocksize`): as many as hold about `NODES_PER_BLOCK` decision nodes.

    Its time goes mostly to the branches of the trees' decisions, which seem to be predicted
    well only while a block's branches fit the CPU's branch predictor. lleaves' default, 34
    trees, suits trees of about 15 leaves; larger trees overflowed it. Measured here (AMD
    EPYC, one thread, 65,536 rows, 200 trees), the best of 4-34 trees per block held
    480-1,000 nodes, and blocks of about 512 nodes against 34 trees took: 15 leaves -0.7%
    (37 trees), 31 leaves -8.3% (17), 63 leaves -25% (8), 127 leaves -30% (4; compiled in
    43 s instead of 142 s). Rows are not blocked: calling the code on row ranges that stay in
    the cache was slower at every size tried (each block's branches are learned again).
    """
    leaves = [int(n) for n in re.findall(rb"^num_leaves=(\d+)", model_text, flags=re.M)]
    if not leaves:
        return 1
    nodes = sum(max(n - 1, 1) for n in leaves) / len(leaves)
    return max(1, min(len(leaves), round(NODES_PER_BLOCK / nodes)))


def cache_key(sha256: str, identity: dict[str, str], block: int) -> str:
    parts = [
        sha256,
        identity["machine"],
        identity["cpu"],
        identity["cpu_features"],
        f"llvm{identity['llvm']}",
        f"llvmlite{identity['llvmlite']}",
        f"lleaves{identity['lleaves']}",
        f"fblock{block}",
    ]
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", "-".join(parts))


def cache_dir(model: LoadedModel) -> Path:
    """`<store>/models/<name>/vNNNN/.compiled/` for a local, writable store; else a user cache."""
    from pyarrow import fs as pafs

    from batchscore.registry import Registry

    root = Registry(model.ref.store, model.ref.name).root.child(model.ref.version)
    if isinstance(root.fs, pafs.LocalFileSystem):
        folder = Path(root.path(".compiled"))
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "batchscore" / "compiled"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _model_text(model: LoadedModel) -> bytes:
    """The registered model file, checked against its sha256 once more."""
    from batchscore.registry import ModelIntegrityError, Registry, sha256_hex

    ref = model.ref
    data = Registry(ref.store, ref.name).root.child(ref.version).read_bytes("model.txt")
    if sha256_hex(data) != ref.sha256:
        raise ModelIntegrityError(
            f"model {ref.name} {ref.version}: model.txt has sha256 {sha256_hex(data)}, the "
            f"registry recorded {ref.sha256}; refusing to compile it"
        )
    return data


def _compiled(model: LoadedModel, threads: int, strict: bool) -> CompiledPredictor:
    global COMPILE_COUNT
    lleaves, _, _ = _import_compiler()
    try:
        identity = compiler_identity()
        folder = cache_dir(model)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"cannot prepare the compiler or its cache: {exc}") from exc
    model_file_text = _model_text(model)
    block = trees_per_block(model_file_text)
    key = cache_key(model.ref.sha256, identity, block)
    target = folder / f"{key}.o"
    sidecar = folder / f"{key}.json"
    with tempfile.TemporaryDirectory(prefix="batchscore-model-") as tmp:
        model_file = Path(tmp) / "model.txt"
        model_file.write_bytes(model_file_text)
        try:
            with _file_lock(folder / f"{key}.lock"):
                compiled = lleaves.Model(model_file=str(model_file))
                if _cache_is_sound(target, sidecar):
                    compiled.compile(cache=str(target), fblocksize=block)
                    origin = "cache"
                else:
                    started = time.perf_counter()
                    fresh = Path(tmp) / "compiled.o"
                    compiled.compile(cache=str(fresh), fblocksize=block)
                    COMPILE_COUNT += 1
                    compile_seconds = time.perf_counter() - started
                    data = fresh.read_bytes()
                    _atomic_write(target, data)
                    _atomic_write(
                        sidecar,
                        json.dumps(
                            {
                                "object_sha256": hashlib.sha256(data).hexdigest(),
                                "model": f"{model.ref.name} {model.ref.version}",
                                "model_sha256": model.ref.sha256,
                                "compiler": identity,
                                "trees_per_block": block,
                                "compile_seconds": round(compile_seconds, 3),
                            },
                            indent=2,
                            sort_keys=True,
                        ).encode(),
                    )
                    origin = "compiled"
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"compiling the model failed: {type(exc).__name__}: {exc}") from exc
    predictor = CompiledPredictor(compiled, model.booster, threads, strict, str(target), origin)
    # Verify before first use: the same answers as LightGBM on a probe built from the model.
    try:
        probe = probe_matrix(model, model_file_text)
        expected = np.asarray(model.booster.predict(probe, num_threads=1), np.float64)
        diff = _max_diff(predictor.raw_predict(probe, 1, may_overwrite=False), expected)
    except Exception as exc:
        raise EngineError(f"the compiled model could not be checked: {exc}") from exc
    if not diff <= TOLERANCE:
        raise EngineError(
            f"the compiled model differs from LightGBM by {diff:.3g} (> {TOLERANCE:g}) on "
            f"{len(probe)} probe rows; not using it"
        )
    predictor.probe_max_diff = diff
    if origin == "compiled":
        # Once per model version and CPU: in a run's log, it says why the first chunks of
        # the run (their workers waited for it) took seconds longer than the rest.
        _tell(
            logging.INFO,
            f"compiled {model.ref.name} {model.ref.version} to native code in "
            f"{compile_seconds:.1f} s, once for this CPU and compiler: later runs load it "
            f"from {target} (probe max diff {diff:.2g})",
        )
    else:
        logger.info(
            "compiled engine for %s %s (loaded from %s, probe max diff %.2g)",
            model.ref.name,
            model.ref.version,
            target,
            diff,
        )
    return predictor


def _cache_is_sound(target: Path, sidecar: Path) -> bool:
    """The object file exists and its sha256 is the one recorded when it was written."""
    try:
        recorded = json.loads(sidecar.read_text())["object_sha256"]
        return hashlib.sha256(target.read_bytes()).hexdigest() == recorded
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock across processes (fcntl), so concurrent first uses compile once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: at worst two processes compile the same model
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    finite = ~np.isnan(a)
    return float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))


# --- the probe batch ---------------------------------------------------------------------


def split_thresholds(model_text: str) -> dict[int, np.ndarray]:
    """Numeric split thresholds per feature index, read from LightGBM's text format."""
    out: dict[int, list[float]] = {}
    tree: dict[str, list[str]] = {}

    def flush() -> None:
        features = tree.get("split_feature", [])
        values = tree.get("threshold", [])
        decisions = tree.get("decision_type", ["0"] * len(values))
        for f, d, t in zip(features, decisions, values, strict=False):
            if not int(d) & 1:  # bit 0 set: a categorical split (threshold = a bitset index)
                out.setdefault(int(f), []).append(float(t))
        tree.clear()

    for line in model_text.splitlines():
        if line.startswith("Tree=") or line.startswith("end of trees"):
            flush()
        key, sep, value = line.partition("=")
        if sep and key in ("split_feature", "threshold", "decision_type"):
            tree[key] = value.split()
    flush()
    return {f: np.unique(np.asarray(v)) for f, v in out.items()}


def probe_matrix(
    model: LoadedModel, model_text: bytes | str | None = None, rows: int = PROBE_ROWS
) -> np.ndarray:
    """Deterministic probe rows (seeded by the model's sha256) that exercise every split.

    Numeric columns mix values drawn across the training range widened by its width on each
    side, exact split thresholds and their neighbouring doubles, 0.0, +-1e-40 (LightGBM's
    zero-as-missing), and NaN. Categorical columns mix every code of the vocabulary, the
    unseen code `len(vocabulary)` and NaN.
    """
    schema = model.schema
    try:
        profile = model.profile
    except (KeyError, TypeError):  # no training profile: the thresholds still cover every split
        profile = None
    rng = np.random.default_rng(int(model.ref.sha256[:16], 16))
    if model_text is None:
        model_text = model.text
    if isinstance(model_text, bytes):
        model_text = model_text.decode()
    thresholds = split_thresholds(model_text)
    out = np.empty((rows, len(schema.features)), dtype=np.float64)
    for j, name in enumerate(schema.features):
        if name in schema.vocabularies:
            n = len(schema.vocabularies[name])
            column = rng.integers(0, n + 1, rows).astype(np.float64)  # n = the unseen code
            column[rng.random(rows) < 0.05] = np.nan
            out[:, j] = column
            continue
        prof = profile.numeric.get(name) if profile is not None else None
        lo, hi = prof.band(1.0) if prof is not None else (-1e3, 1e3)
        column = rng.uniform(lo, hi, rows)
        cuts = thresholds.get(j)
        kind = rng.random(rows)
        if cuts is not None and len(cuts):
            picks = cuts[rng.integers(0, len(cuts), rows)]
            at = kind < 0.35
            column[at] = picks[at]
            below = (kind >= 0.35) & (kind < 0.45)
            column[below] = np.nextafter(picks[below], -np.inf)
            above = (kind >= 0.45) & (kind < 0.55)
            column[above] = np.nextafter(picks[above], np.inf)
        column[(kind >= 0.55) & (kind < 0.58)] = 0.0
        column[(kind >= 0.58) & (kind < 0.60)] = 1e-40
        column[(kind >= 0.60) & (kind < 0.62)] = -1e-40
        column[(kind >= 0.62) & (kind < 0.67)] = np.nan
        out[:, j] = column
    return out
