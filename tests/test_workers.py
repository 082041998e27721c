"""The scoring pool's workers: forked from a server that preloaded their imports."""

from __future__ import annotations

import os

from helpers import where_am_i
from prefect import flow, task

from batchscore import workers
from flows.score import ForkedProcessPool


def test_workers_are_forked_with_their_imports_done_and_get_the_flows_environment(
    prefect_api, monkeypatch
):
    assert workers.forkserver_context() is not None  # Linux has it
    monkeypatch.setenv("BATCHSCORE_TEST_MARKER", "set after the fork server started")
    probe = task(where_am_i, name="where-am-i")

    @flow
    def two_workers():
        with ForkedProcessPool(max_workers=2) as pool:
            futures = [pool.submit(probe, {}) for _ in range(4)]
            return [f.result() for f in futures]

    seen = two_workers()
    assert len({s["pid"] for s in seen}) <= 2 and os.getpid() not in {s["pid"] for s in seen}
    for s in seen:
        # A spawned worker would be this process's child and import these at its first task.
        assert s["parent"] != os.getpid()
        assert s["preloaded"]
        # the fork server froze its imports out of the collector's reach (`fork_ready`)
        assert s["frozen_objects"] > 100_000
        # and imported Prefect's collections, which a worker's first task would otherwise
        # import (after the fork: `frozen_objects` counts only what came before)
        assert s["collections_loaded"]
        assert s["marker"] == "set after the fork server started"
