"""The fork server's last preload (`batchscore.workers.PRELOAD`): do once, before any
worker is forked, what every worker would otherwise do at its first task; then freeze.

- Prefect collections: a worker's first task looks up a block class, and that lookup
  imports every installed Prefect collection (`prefect.collections` entry points; here
  prefect-dask, which brings Dask, distributed and tornado: ~350 modules, 0.28 s and
  17 MiB per worker, on the critical path of the plan and the first chunks).
- SIGINT ignored: the terminal's Ctrl-C reaches every process of its group, workers
  included. A worker interrupted mid-task sent its KeyboardInterrupt back as the task's
  result, which killed the pool's result thread (Prefect's callback re-raised it), and
  the command then waited forever at exit for workers nobody could stop. Now the flow
  process alone is interrupted, and it stops the workers (`flows.score.ForkedProcessPool`).
- `gc.freeze()`: a forked worker shares its fork server's memory until it writes to a page,
  and Python's cyclic garbage collector writes to every object it visits, so each worker's
  first collections copied most of the fork server's modules into private memory. Frozen
  objects are out of the collector's reach (measured: each worker's private memory
  -20 MiB, the fork server's -25 MiB).

Only the fork server imports this module.
"""

import gc
import signal

from prefect.plugins import load_prefect_collections

load_prefect_collections()
# Before the fork server installs its own handlers: what it restores in each worker.
signal.signal(signal.SIGINT, signal.SIG_IGN)
gc.freeze()
