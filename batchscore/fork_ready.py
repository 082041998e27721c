"""The fork server's preload (`batchscore.workers.PRELOAD`): do once, before any worker is
forked, what every worker would otherwise do at its first task; then freeze.

- Imports (`WORKER_MODULES`): the score flow (every task run's context holds it, and
  importing it installs `flows/__init__.py`'s changes to Prefect), the tasks (Prefect,
  pyarrow, batchscore, drift counting), the compiled engine's runtime, LightGBM (checking
  the compiled model's first batch, or the lightgbm engine; it brings pandas) and what the
  drift p-values need (a run's last partition is published in a worker): `scipy.special`
  and SciPy's KS code, without `scipy.stats` (`drift.distributions`: 0.2 s, where
  `scipy.stats` took 0.6 s). An import that fails here is only skipped: the worker imports
  it itself, and reports the error where it is used.
- No cyclic garbage collection while importing: the imports build ~420,000 objects the
  collector tracks, and its full collections traversed those built so far four times over,
  for nothing, as modules are not garbage. 2.45 -> 1.90 s of CPU, on the critical path of
  a run's start (`batchscore.api_server` and the CLI do the same).
- Not Prefect's collections: a worker's first task looks up a block class, and that
  lookup imported every installed Prefect collection (here prefect-dask, which brings Dask,
  distributed and tornado: ~350 modules, 0.28 s and 17 MiB per worker), so this imported
  them once for all workers, 0.2 s before the first could start. The lookup now finds
  Prefect's own classes without them
  (`prefect_api.look_up_block_classes_before_loading_collections`).
- SIGINT ignored: the terminal's Ctrl-C reaches every process of its group, workers
  included. A worker interrupted mid-task sent its KeyboardInterrupt back as the task's
  result, which killed the pool's result thread (Prefect's callback re-raised it), and
  the command then waited forever at exit for workers nobody could stop. Now the flow
  process alone is interrupted, and it stops the workers (`flows.score.ForkedProcessPool`).
- A flow run that Prefect's engine runs (a deployment's: `python -m prefect.engine`) has
  that module as its `__main__`, and multiprocessing runs it again in every worker as
  `__mp_main__` (a no-op here); runpy warned in each that the module was imported already,
  a RuntimeWarning per worker in the run's output. That warning is off in the workers.
- `gc.freeze()`: a forked worker shares its fork server's memory until it writes to a page,
  and Python's cyclic garbage collector writes to every object it visits, so each worker's
  first collections copied most of the fork server's modules into private memory. Frozen
  objects are out of the collector's reach (measured: each worker's private memory
  -20 MiB, the fork server's -25 MiB). The collector is on again in every worker.

Only the fork server imports this module.
"""

import contextlib
import gc
import importlib
import signal
import warnings

WORKER_MODULES = [
    "flows.score",
    "tasks.scoring",
    "batchscore.engine",
    "lleaves",
    "lightgbm",
    "drift.methods",
]

gc.disable()
try:
    for name in WORKER_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        importlib.import_module("drift.methods").warm_up()
    # Before the fork server installs its own handlers: what it restores in each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.filterwarnings(
        "ignore", message=r"'prefect\.engine' found in sys\.modules", category=RuntimeWarning
    )
finally:
    gc.freeze()
    gc.enable()
