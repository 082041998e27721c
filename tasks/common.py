"""What every batchscore task shares: no input caching, retries only for transient errors."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE


def transient(task, task_run, state) -> bool:
    """Retry storage and network errors; never a validation, accounting or integrity failure."""
    try:
        state.result()
    except (OSError, TimeoutError, ConnectionError):
        return True
    except Exception:
        return False
    return False


# Task inputs are configs, plans and keys: hashing them for a cache buys nothing.
TASK_DEFAULTS = {"cache_policy": NO_CACHE, "persist_result": False}
IO_RETRIES = {"retries": 3, "retry_delay_seconds": [1, 4, 16], "retry_condition_fn": transient}
