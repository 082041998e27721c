"""Plain-JSON encoding helpers shared by the reference and counts modules.

This module owns the one rule that keeps stored profiles and counts readable by any JSON
parser: floats are written as JSON numbers when finite and as the strings "inf" / "-inf"
otherwise (Python's default `Infinity` token is not JSON). Python's float repr round-trips
exactly, so a decoded array is bit-for-bit the array that was encoded.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf}


def encode_floats(values: np.ndarray) -> list[float | str]:
    out: list[float | str] = []
    for v in values.tolist():
        if math.isfinite(v):
            out.append(v)
        elif math.isnan(v):
            # Nothing in this package stores NaN; writing one would hide a bug downstream.
            raise ValueError("refusing to encode NaN")
        else:
            out.append("inf" if v > 0 else "-inf")
    return out


def decode_floats(values: Sequence[Any]) -> np.ndarray:
    decoded = [_NON_FINITE[v] if isinstance(v, str) else float(v) for v in values]
    return np.asarray(decoded, dtype=np.float64)


def encode_ints(values: np.ndarray) -> list[int]:
    return [int(v) for v in values.tolist()]


def decode_ints(values: Sequence[Any]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def dumps(payload: dict[str, Any]) -> str:
    # allow_nan=False makes a stray NaN/inf fail here rather than in someone else's parser.
    return json.dumps(payload, allow_nan=False, separators=(",", ":"))


def loads(text: str) -> dict[str, Any]:
    payload = json.loads(text)
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    return payload


class JsonForm:
    """`to_json`/`from_json` from a class's `to_dict`/`from_dict`: one JSON form for every
    reference, counts and profile, stored beside models and in drift folders."""

    def to_json(self) -> str:
        return dumps(self.to_dict())  # type: ignore[attr-defined]

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(loads(text))  # type: ignore[attr-defined]


def fingerprint(payload: dict[str, Any]) -> str:
    """A short stable id of the bins a reference defines (not of its counts)."""
    text = json.dumps(payload, allow_nan=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def frozen(array: np.ndarray, dtype: type) -> np.ndarray:
    """A 1-D read-only copy, so learned attributes of frozen dataclasses stay frozen."""
    out = np.array(array, dtype=dtype).reshape(-1)
    out.setflags(write=False)
    return out
