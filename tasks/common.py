"""What every batchscore task shares: no input caching, retries only for transient errors."""

from __future__ import annotations

from typing import Generic, TypeVar

from prefect.cache_policies import NO_CACHE

from batchscore.prefect_api import log_failures_without_tracebacks
from batchscore.storage import disk_full

T = TypeVar("T")


def transient(task, task_run, state) -> bool:
    """Retry storage and network errors; never a validation, accounting or integrity failure,
    nor a full disk (its 1 + 4 + 16 s of retries for each chunk made a run on a full store
    fail after 200 s instead of 13.6)."""
    try:
        state.result()
    except (OSError, TimeoutError, ConnectionError) as exc:
        return not disk_full(exc)
    except Exception:
        return False
    return False


# Task inputs are configs, plans and keys: hashing them for a cache buys nothing.
TASK_DEFAULTS = {"cache_policy": NO_CACHE, "persist_result": False}


class Sealed(Generic[T]):
    """A task input that Prefect passes as it is, without walking into it.

    Before a task runs, Prefect's engine walks every parameter looking for futures and
    states (`visit_collection`: lists, dicts, dataclasses, all the way down), twice. A
    partition's chunk results hold its drift counts, ~670,000 values at 5M rows: the walks
    took 10 s in a worker. `prefect.utilities.annotations.opaque` stops them when the task
    runs in this process, but the process pool unwraps it before the worker's engine sees
    the value. An object of a plain class is a leaf for the walk, wherever it runs.
    """

    __slots__ = ("value",)

    def __init__(self, value: T):
        self.value = value

    def __repr__(self) -> str:  # in logs and tracebacks: not the whole value
        size = f"{len(self.value)} items" if hasattr(self.value, "__len__") else "value"
        return f"Sealed({type(self.value).__name__}, {size})"


# A full disk's traceback is pyarrow's writer: its reason (`disk_full_reason`) says where.
log_failures_without_tracebacks(matches=disk_full)

IO_RETRIES = {"retries": 3, "retry_delay_seconds": [1, 4, 16], "retry_condition_fn": transient}
