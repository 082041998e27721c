"""The `batchscore` command's entry point (pyproject's `[project.scripts]`).

A run that needs a Prefect API and has none configured waits for the temporary server
`batchscore.prefect_api.start_early()` boots: 2.6 s of CPU, the longest thing on the way to
its flow. `batchscore.cli` imports the config's schema (pydantic) as it loads, ~0.12 s, so
the server is started here first, for the commands that run flows; `cli.main()` then finds
it booting. A command that stops early (a bad config, `--help`) stops it on its way out.
With an API already running, a score run starts the scoring workers' fork server here
instead, for the same reason.
"""

from __future__ import annotations

import sys

FLOW_COMMANDS = ("score", "train", "demo")


def run() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in FLOW_COMMANDS:
        from batchscore.prefect_api import start_early

        if not start_early() and sys.argv[1] == "score":
            # An API is running: the scoring workers' fork server boots now, on a guess,
            # beside the CLI's imports (`workers.start_on_a_guess`; stopped if the run
            # turns out not to need it).
            from batchscore import workers

            workers.start_on_a_guess()
    from batchscore import cli

    cli.run()
