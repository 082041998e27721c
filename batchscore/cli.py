"""`batchscore`: the commands of DESIGN.md (score, train, models) and `demo`.

Errors a user can fix (a bad config, no champion, a tampered model) print one clear message
and exit 2; a run whose partitions failed exits 1.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import gc
import os
import signal
import sys
import time

from batchscore.command import FLOW_COMMANDS
from batchscore.config import DEFAULT_CONFIG, ConfigError, load_config

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchscore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", default=DEFAULT_CONFIG, help="TOML file (default: %(default)s)")
        return p

    s = with_config(sub.add_parser("score", help="score pending partitions with the champion"))
    s.add_argument("--partition", metavar="YYYY-MM-DD", help="score only this partition")
    s.add_argument(
        "--rescore",
        action="store_true",
        help="score again even if already scored; outputs are replaced atomically",
    )

    t = with_config(sub.add_parser("train", help="train a model on the labelled partitions"))
    t.add_argument("--force", action="store_true", help="promote the new model to champion")
    t.add_argument("--reason", default="manual", help="recorded with the model version")

    m = sub.add_parser("models", help="list, promote or roll back model versions")
    msub = m.add_subparsers(dest="action", required=True)
    with_config(msub.add_parser("list", help="one line per version; the champion is marked"))
    promote = with_config(msub.add_parser("promote", help="make VERSION the champion"))
    promote.add_argument("version")
    promote.add_argument("--reason", default="manual promote")
    rollback = with_config(msub.add_parser("rollback", help="restore the previous champion"))
    rollback.add_argument("--reason", default="manual rollback")

    with_config(sub.add_parser("demo", help="train if there is no champion, score, summarise"))

    d = sub.add_parser(
        "drift",
        help="drift between two Parquet files or folders; `drift show` prints a stored report",
        description="Compare --current with --reference (Parquet files or folders) and write "
        "a drift report (`batchscore drift --reference A --current B --out R`), or print a "
        "stored partition's report (`batchscore drift show --config F`).",
    )
    d.add_argument("--reference", metavar="A", help="reference data: a Parquet file or folder")
    d.add_argument("--current", metavar="B", help="current data: a Parquet file or folder")
    d.add_argument("--out", metavar="R", help="the drift report to write (Parquet)")
    d.add_argument(
        "--config",
        help="use its [dataset] features and categorical and its [drift] thresholds "
        "(default: every shared column)",
    )
    d.add_argument(
        "--partition", metavar="YYYY-MM-DD", help="the report's partition (default: today, UTC)"
    )
    dsub = d.add_subparsers(dest="drift_action", metavar="show")
    show = dsub.add_parser("show", help="print a partition's drift report from <store>/drift/")
    show.add_argument(
        "--config",
        dest="show_config",
        metavar="F",
        help=f"TOML file (default: {DEFAULT_CONFIG})",
    )
    show.add_argument(
        "--partition", dest="show_partition", metavar="YYYY-MM-DD", help="default: the latest"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "drift":
        # Before the model imports below: comparing files needs neither LightGBM nor Prefect.
        return _drift(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"batchscore: {exc}", file=sys.stderr)
        return 2
    if args.command in FLOW_COMMANDS:
        from batchscore.prefect_api import start_early

        # A temporary Prefect server (when no API is configured) boots in its own process
        # while this one imports Prefect, LightGBM and the flows: seconds saved per run.
        # (The `batchscore` command started it already: `batchscore.command`.)
        booting = start_early()
        from batchscore import workers

        workers.set_allocator_environment()  # before pyarrow loads: the workers fork from here
        if not booting and args.command == "demo":
            _start_workers_early(config)
    global _collect_after_imports
    _collect_after_imports = gc.isenabled()
    gc.disable()  # until `_imported()`
    from batchscore.partitions import SourceError
    from batchscore.registry import RegistryError
    from batchscore.training import TrainingError

    try:
        if args.command == "score":
            _preflight(config, args.partition)
            return _score(config, args.partition, args.rescore)
        if args.command == "train":
            return _train(config, args.reason, args.force)
        if args.command == "models":
            return _models(config, args)
        if args.command == "demo":
            return _demo(config)
    except (ConfigError, RegistryError, TrainingError, SourceError) as exc:
        print(f"batchscore: {exc}", file=sys.stderr)
        return 2
    finally:
        _imported()
    raise AssertionError(args.command)


def _imported() -> None:
    """The cyclic garbage collector on again, once a command has imported Prefect, pyarrow
    and the flows: `main()` turns it off for those imports, which build ~135,000 objects
    that its full collections traversed twice while they were being built, for
    nothing (modules are not garbage): 1.17 -> 1.00 s of CPU, while a temporary server and
    the fork server boot beside it on two cores. (They do the same: `batchscore.api_server`,
    `batchscore.fork_ready`.) On only if it was on when `main()` was called, and with what
    was built so far frozen out of its reach: else its first collections carried all of it
    from the youngest generation to the oldest, 0.1-0.2 s of CPU at the flow's start (and
    each full collection walked it again). Frozen once a process: a process that runs
    `main()` again (the tests) would freeze the garbage of its earlier runs too."""
    global _frozen
    if _collect_after_imports:
        if not _frozen:
            gc.freeze()
            _frozen = True
        gc.enable()


_collect_after_imports = True
_frozen = False


def _train(config, reason: str, force: bool) -> int:
    """The `retrain` flow, as `prefect deployment run retrain/retrain` runs it."""
    from batchscore.prefect_api import one_api
    from batchscore.registry import Registry, command
    from batchscore.training import champion_to_compare
    from flows.retrain import retrain

    _imported()
    started = time.time()
    registry = Registry.for_config(config)
    champion_to_compare(registry, registry.champion(), force)  # a changed champion: exit 2
    with one_api():
        state = retrain(config=config.path, reason=reason, force=force, return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        print(f"batchscore: retrain ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    for warning in result.get("warnings") or ():
        print(f"warning: {warning}", file=sys.stderr)
    if result["status"] in ("skipped", "failed"):
        print(f"batchscore: {result['decision']}", file=sys.stderr)
        return 2
    rows = result["rows"]
    metrics = ", ".join(
        f"{k}={_metric(v)}" for k, v in sorted(result["challenger_metrics"].items())
    )
    print(f"{result['status']}: {result['decision']}")
    for name, why in sorted((result.get("undefined_metrics") or {}).items()):
        print(f"{name} undefined on the holdout: {why}")
    print(
        f"{config.dataset.name} {result['version']} trained on {result['window']['from']}.."
        f"{result['window']['to']} in {time.time() - started:.1f} s ({rows['fit']:,} fit, "
        f"{rows['validation']:,} validation, {rows['holdout']:,} holdout rows): {metrics}"
    )
    print(f"champion: {result['champion']}")
    if result["status"] == "registered":
        print(
            f"(promote {result['version']} with "
            f"{command('models promote ' + result['version'], config.path)} or train with --force)"
        )
    return 0


def _metric(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _models(config, args) -> int:
    from batchscore.registry import LISTED, PROMOTION_LOCK, Registry, RegistryError
    from batchscore.storage import LeaseBusy, UnreadableJSON, lease

    registry = Registry.for_config(config)
    if args.action in ("promote", "rollback"):
        # Under the lock a retrain holds from reading the champion it was compared with to
        # moving the alias: without it, a rollback made meanwhile was overridden at once by
        # a challenger gated against the champion it rolled back from.
        def waiting(holder: dict) -> None:
            print(
                f"batchscore: waiting for {registry.root.path(PROMOTION_LOCK)}, held by pid "
                f"{holder.get('pid')} on {holder.get('host')} (a retrain deciding whether "
                "to promote its challenger)",
                file=sys.stderr,
                flush=True,
            )

        try:
            with lease(registry.root, PROMOTION_LOCK, waiting=waiting):
                return _move_alias(config, registry, args)
        except LeaseBusy as exc:
            raise RegistryError(
                f"{exc}; the champion was not moved. Run the command again once that retrain "
                "has finished"
            ) from exc
    # Listing is how to find what to promote, so a version or alias that cannot be read is
    # said in its place, and the rest is listed.
    problem = registry.champion_problem()
    champion = None if problem else registry.champion()
    versions = registry.versions()
    if not versions:
        print(f"no versions of {config.dataset.name} under {registry.root.uri}")
    for version in versions:
        try:
            meta = registry.metadata(version, LISTED)
        except RegistryError as exc:
            mark = "champion  " if version == champion else ""
            if isinstance(exc.__cause__, UnreadableJSON):
                print(f"{version}  {mark}unreadable: {exc.__cause__}")
            else:  # on S3: a registration that died between its claim and metadata
                print(
                    f"{version}  {mark}incomplete: no metadata.json (its registration did not "
                    "finish, or the file was deleted)"
                )
            continue
        metrics = " ".join(f"{k}={_metric(v)}" for k, v in sorted(meta["metrics"].items()))
        window = meta["training_window"]
        mark = "champion" if version == champion else "        "
        print(
            f"{version}  {mark}  {meta['created_at']}  window {window['from']}..{window['to']}"
            f"  {metrics}  parent={meta.get('parent') or '-'}  reason={meta.get('reason')!r}"
        )
    unreadable: list[str] = []
    for event in registry.audit(unreadable):
        print(
            f"  {event['at']}  {event['action']}: {event['from'] or '-'} -> {event['to']}"
            f"  ({event['reason']})"
        )
    for record in unreadable:
        print(f"  unreadable audit record: {record}")
    if problem:
        print(f"no champion: {problem}")
    return 0


def _move_alias(config, registry, args) -> int:
    """`models promote VERSION` or `models rollback`, under the promotion lock."""
    if args.action == "rollback":
        previous = registry.champion()
        restored = registry.rollback(args.reason)
        print(f"champion of {config.dataset.name}: {previous} -> {restored} (rolled back)")
        return 0
    # An unreadable alias is what a promotion replaces: it does not stop one.
    previous = "(unreadable alias)" if registry.champion_problem() else registry.champion()
    if previous == args.version:  # no move: nothing for the audit to record
        registry.metadata(args.version)  # ... unless it cannot be read: said as for any
        print(f"champion of {config.dataset.name}: {previous} already; nothing changed")
        return 0
    registry.promote(args.version, args.reason)
    print(f"champion of {config.dataset.name}: {previous} -> {args.version}")
    return 0


def _score(config, partition: str | None, rescore: bool) -> int:
    from batchscore.partitions import SourceError
    from batchscore.prefect_api import one_api
    from batchscore.registry import Registry, RegistryError
    from flows.score import score

    _imported()
    started = time.time()
    since = dt.datetime.now(dt.UTC)
    _start_workers_early(config, (partition, rescore))  # a fork of this process, now
    with one_api():  # reuses the demo's API when there is one
        state = score(config=config.path, partition=partition, rescore=rescore, return_state=True)
    outcomes = state.result(raise_on_failure=False)
    if isinstance(outcomes, (ConfigError, RegistryError, SourceError)):
        # The user's to fix, found by the flow (a store holding another model's outputs, a
        # model file changed since `_preflight` read it): said as `_preflight` says it.
        raise outcomes
    outcomes = outcomes if isinstance(outcomes, list) else []
    _print_summary(config, outcomes, time.time() - started)
    print(f"run {state.name}: {state.message}")
    # The retrain the drift policy started within this run (a subflow, `on_drift`): its
    # promotion changes the champion, and the next run scores every partition again with
    # it; said here, not only in the run's log. (Earlier retrains: `batchscore models list`.)
    registry = Registry.for_config(config)
    for r in registry.retrains([], since=since):
        if r.get("trigger"):
            print(f"retrained on drift: {r['version'] or '-'} ({r['status']}): {r['decision']}")
    return 0 if state.is_completed() else 1


def _preflight(config, partition: str | None) -> None:
    """What would fail a score run before it scores anything, as one message (exit 2)
    rather than a failed flow run and its traceback: no champion, a changed model file, a
    champion trained on other features, no source folder, a --partition that is not a date
    or not there. The flow checks the same things itself (a deployment's runs have no CLI);
    here they cost a few file reads while the temporary Prefect server boots."""
    from batchscore import partitions
    from batchscore.registry import verified_champion

    if partition is not None:
        _date(partition)
    verified_champion(config)
    found = partitions.discover(config).partitions
    if partition is not None and partition not in found:
        raise ConfigError(
            f"--partition {partition}: no folder {config.source}/incoming/dt={partition} "
            # The newest five, after the dots of the older ones ("2026-10-14, ..." read as
            # if more came after the newest)
            f"(partitions there: {'..., ' if len(found) > 5 else ''}"
            f"{', '.join(found[-5:]) or 'none'})"
        )


def _start_workers_early(config, run: tuple[str | None, bool] | None = None) -> None:
    """Boot the scoring workers' fork server (batchscore/workers.py) in the background,
    unless `run`, a score run's (partition, rescore) options, looks like it will not use
    workers (`workers.start_for_run`). Only the first call of a process decides.

    A score run calls it once it has imported the score flow (Prefect, pyarrow, batchscore:
    what the workers need too), before its flow begins, and the server is forked from this
    process (`workers._fork_here`): the fork imports only what the workers need beyond the
    command, ~0.5 s of CPU. Until 8c5665b a spawned server (a fresh interpreter) imported
    all of it again, 1.5 s: started at the command's first line on a guess with an API
    running, so that it was ready when the plan was, and stopped if the run turned out not
    to need it; after the command's imports with a temporary server booting, as three
    processes importing at once on two cores slowed all three."""
    global _workers_decided
    if _workers_decided:
        return
    _workers_decided = True
    from batchscore import workers

    if run is None:
        if config.scoring.runner == "process":
            workers.start_early(fork=True)
    else:
        workers.start_for_run(config, *run, fork=True)


_workers_decided = False


def _print_summary(config, outcomes: list[dict], seconds: float) -> None:
    header = (
        "partition",
        "status",
        "rows",
        "scored",
        "quarantined",
        "seconds",
        "rows/s",
        "drifted",
    )
    rows = [
        (
            o["partition"],
            o["status"],
            f"{o['rows_in']:,}",
            f"{o['rows_scored']:,}",
            f"{o['rows_quarantined']:,}",
            f"{o['seconds']:.2f}",
            f"{o['rows_in'] / o['seconds']:,.0f}" if o["seconds"] else "-",
            ", ".join(o.get("drifted") or ()) or "-",
        )
        for o in outcomes
    ]
    total = sum(o["rows_in"] for o in outcomes)
    rows.append(
        (
            "total",
            "",
            f"{total:,}",
            f"{sum(o['rows_scored'] for o in outcomes):,}",
            f"{sum(o['rows_quarantined'] for o in outcomes):,}",
            f"{seconds:.2f}",
            f"{total / seconds:,.0f}" if seconds else "-",
            "",
        )
    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for i, r in enumerate([header, *rows]):
        if i == len(rows):
            print("  ".join("-" * w for w in widths))
        line = "  ".join(
            str(v).ljust(w) if j < 2 or j == len(header) - 1 else str(v).rjust(w)
            for j, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        print(line.rstrip())
    print(
        "(seconds per partition are worker seconds; the total is wall time, "
        "Prefect start-up included)"
    )
    for o in outcomes:
        for reason in o.get("reasons") or ():
            print(f"  {o['partition']} held: {reason}")
    print(f"scores:     {config.store}/scores/dt=*/  (complete where _SUCCESS exists)")
    print(f"quarantine: {config.store}/quarantine/dt=*/")
    print(f"drift:      {config.store}/drift/dt=*/")
    print(f"models:     {config.store}/models/{config.dataset.name}/")


def _demo(config) -> int:
    from batchscore.prefect_api import one_api
    from batchscore.registry import Registry, command

    registry = Registry.for_config(config)
    with one_api():  # one temporary Prefect API for training and scoring
        if registry.champion() is None:
            print(f"no champion for {config.dataset.name}: training one")
            trained = _train(config, "demo: first model", False)
            if trained != 0:
                return trained  # 2: nothing to train on, as `batchscore train` says
        else:
            print(f"champion of {config.dataset.name}: {registry.champion()}")
        code = _score(config, None, False)
    champion = registry.champion()  # this run's retrains were printed by `_score`
    why = command("models list", config.path)
    print(f"champion of {config.dataset.name}: {champion}; {why} shows why")
    return code


def _drift(args) -> int:
    from batchscore.drift_compare import DriftInputError, compare, format_table

    try:
        if args.drift_action == "show":
            # `drift --config F show` as well as `drift show --config F`: before `show`,
            # argparse gives the options to `drift`'s own, which `show` would not see.
            config = args.show_config or args.config or DEFAULT_CONFIG
            return _drift_show(load_config(config), args.show_partition or args.partition)
        missing = [f"--{n}" for n in ("reference", "current", "out") if not getattr(args, n)]
        if missing:
            print(
                f"batchscore drift: {' '.join(missing)} required "
                "(batchscore drift --reference A --current B --out R [--config F]; "
                "or batchscore drift show --config F)",
                file=sys.stderr,
            )
            return 2
        config = load_config(args.config) if args.config else None
        partition = _date(args.partition) if args.partition else None
        started = time.perf_counter()
        result = compare(args.reference, args.current, args.out, config, partition)
    except (ConfigError, DriftInputError) as exc:
        print(f"batchscore: {exc}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}")
    print(format_table(result.table.to_pylist()))
    drifted = sorted({r.feature for r in result.results if r.drifted})
    print(
        f"{len(drifted)} of {len(result.reference)} feature(s) drifted"
        f"{': ' + ', '.join(drifted) if drifted else ''}; report written to {args.out} "
        f"({time.perf_counter() - started:.2f} s)"
    )
    return 0


def _date(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--partition {text!r}: expected a date, YYYY-MM-DD") from None


def _drift_show(config, partition: str | None) -> int:
    from batchscore.drift_compare import format_table
    from batchscore.drift_store import DRIFT_DIR, HTML_FILE, drift_partitions, read_report
    from batchscore.storage import Location

    store = Location(config.store)
    days = drift_partitions(store)
    where = f"{store.uri}/{DRIFT_DIR}/"
    if not days:
        print(f"batchscore: no drift report under {where} (none scored yet)", file=sys.stderr)
        return 1
    day = _date(partition).isoformat() if partition else days[-1]
    table = read_report(store, day)
    if table is None:
        print(
            f"batchscore: no drift report for partition {day} under {where} "
            f"(reports exist for: {', '.join(days)})",
            file=sys.stderr,
        )
        return 1
    rows = table.to_pylist()
    first = rows[0]
    n_current = max(r["n_current"] for r in rows)
    drifted = sorted({r["feature"] for r in rows if r["drifted"]})
    print(
        f"partition {day}  reference {first['reference']}  model {first['model_version']}  "
        f"{n_current:,} rows  computed {first['computed_at']:%Y-%m-%d %H:%M:%S} UTC"
    )
    print(format_table(rows))
    print(f"{len(drifted)} feature(s) drifted{': ' + ', '.join(drifted) if drifted else ''}")
    if store.exists(DRIFT_DIR, f"dt={day}", HTML_FILE):
        print(f"HTML report: {store.child(DRIFT_DIR, f'dt={day}', HTML_FILE).uri}")
    return 0


def run() -> None:
    """The `batchscore` command: `main()`, then a prompt exit.

    Once `main()` has returned, everything the run wrote is on storage (files are written
    and renamed under context managers) and its logs and events were delivered. What is
    left is the interpreter's own teardown of Prefect, pyarrow and friends, which took
    0.7-0.8 s here on every command; the exit handlers (logging's flush, Prefect's workers,
    multiprocessing's) run, the output streams are flushed, and the process ends without it.
    An exception still ends the process the usual way, with its traceback.

    Ctrl-C or SIGTERM ends the command with code 130 or 143, once its flow run is recorded
    as Crashed, its workers are stopped and its temporary server is stopped. Nothing is
    lost: published partitions stay complete, and chunks already scored stay staged for the
    next run. (Prefect's flow engine turns SIGTERM into a crash of the run, then delivers
    it again to the handler it found: this one, not the default that ended the process
    there and left the server to stop on its own.)
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = main()
    except KeyboardInterrupt:
        code = 128 + _signalled
        print(
            "batchscore: interrupted. Partitions already published are complete; chunks"
            " already scored stay staged in the store's _staging/ and the next run of the"
            " same work reuses them.",
            file=sys.stderr,
        )
    except BrokenPipeError:
        code = _stdout_closed()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the rest of the output, still buffered, has no reader
        code = _stdout_closed()
    sys.stderr.flush()
    os._exit(code)


def _stdout_closed() -> int:
    """The reader of the output went away (`batchscore models list | head -3`): what was
    printed is all it wanted, not an error to show as a traceback. The rest of the output
    goes nowhere; the exit code is a pipe writer's killed by SIGPIPE (141), as for any
    command that outlives its reader."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


_signalled = signal.SIGINT


def _interrupt(signum, frame):
    """SIGTERM handled as Ctrl-C is: a KeyboardInterrupt, which every cleanup sees."""
    global _signalled
    _signalled = signum
    raise KeyboardInterrupt


if __name__ == "__main__":
    run()
