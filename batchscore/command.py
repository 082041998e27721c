"""The `batchscore` command's entry point (pyproject's `[project.scripts]`).

A run that needs a Prefect API and has none configured waits for the temporary server
`batchscore.prefect_api.start_early()` boots: 2.6 s of CPU, the longest thing on the way to
its flow. `batchscore.cli` imports the config's schema (pydantic) as it loads, ~0.12 s, so
the server is started here first, for the commands that run flows; `cli.main()` then finds
it booting. A command that stops early (a bad config, `--help`) stops it on its way out.
(The scoring workers' fork server is forked from the CLI once it has imported the score
flow: `cli._start_workers_early`.)
"""

from __future__ import annotations

import sys

FLOW_COMMANDS = ("score", "train", "demo")


def run() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in FLOW_COMMANDS:
        from batchscore.prefect_api import start_early

        start_early()
    from batchscore import cli

    cli.run()
