"""`batchscore`: the commands of DESIGN.md (score, train, models) and `demo`.

Errors a user can fix (a bad config, no champion, a tampered model) print one clear message
and exit 2; a run whose partitions failed exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from batchscore.config import ConfigError, load_config
from batchscore.registry import Registry, RegistryError
from batchscore.training import TrainingError, train

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchscore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config", default="batchscore.toml", help="TOML file (default: %(default)s)"
        )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "score":
            return _score(config, args.partition, args.rescore)
        if args.command == "train":
            return _train(config, args.reason, args.force)
        if args.command == "models":
            return _models(config, args)
        if args.command == "demo":
            return _demo(config)
    except (ConfigError, RegistryError, TrainingError) as exc:
        print(f"batchscore: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def _train(config, reason: str, force: bool) -> int:
    started = time.time()
    result = train(config, reason=reason, force=force)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()))
    print(
        f"trained {config.dataset.name} {result.version} on {result.window['from']}.."
        f"{result.window['to']} ({result.rows['fit']:,} rows, {result.rows['validation']:,} "
        f"held out) in {time.time() - started:.1f} s: {metrics}"
    )
    if result.promoted:
        print(f"{result.version} is the champion")
    else:
        print(
            f"{result.version} registered; the champion stays {result.champion} "
            f"(promote with `batchscore models promote {result.version}` or train --force)"
        )
    return 0


def _models(config, args) -> int:
    registry = Registry(config.store, config.dataset.name)
    if args.action == "promote":
        previous = registry.champion()
        registry.promote(args.version, args.reason)
        print(f"champion of {config.dataset.name}: {previous} -> {args.version}")
        return 0
    if args.action == "rollback":
        previous = registry.champion()
        restored = registry.rollback(args.reason)
        print(f"champion of {config.dataset.name}: {previous} -> {restored} (rolled back)")
        return 0
    champion = registry.champion()
    versions = registry.versions()
    if not versions:
        print(f"no versions of {config.dataset.name} under {registry.root.uri}")
        return 0
    for version in versions:
        meta = registry.metadata(version)
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(meta["metrics"].items()))
        window = meta["training_window"]
        mark = "champion" if version == champion else "        "
        print(
            f"{version}  {mark}  {meta['created_at']}  window {window['from']}..{window['to']}"
            f"  {metrics}  parent={meta.get('parent') or '-'}  reason={meta.get('reason')!r}"
        )
    for event in registry.audit():
        print(
            f"  {event['at']}  {event['action']}: {event['from'] or '-'} -> {event['to']}"
            f"  ({event['reason']})"
        )
    return 0


def _score(config, partition: str | None, rescore: bool) -> int:
    from batchscore.prefect_api import one_api
    from flows.score import score

    started = time.time()
    with one_api():
        state = score(config=config.path, partition=partition, rescore=rescore, return_state=True)
    outcomes = state.result(raise_on_failure=False)
    outcomes = outcomes if isinstance(outcomes, list) else []
    _print_summary(config, outcomes, time.time() - started)
    print(f"run {state.name}: {state.message}")
    return 0 if state.is_completed() else 1


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
    registry = Registry(config.store, config.dataset.name)
    if registry.champion() is None:
        print(f"no champion for {config.dataset.name}: training one")
        _train(config, "demo: first model", False)
    else:
        print(f"champion of {config.dataset.name}: {registry.champion()}")
    return _score(config, None, False)


if __name__ == "__main__":
    sys.exit(main())
