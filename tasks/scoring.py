"""Tasks of the score flow; the work itself lives in `batchscore.partitions` and `.scoring`."""

from __future__ import annotations

from contextlib import suppress

from prefect import get_run_logger, task

from batchscore import partitions, scoring
from batchscore.config import Config, ConfigError
from batchscore.partitions import Chunk, PartitionPlan
from batchscore.prefect_api import log_failures_without_tracebacks
from batchscore.registry import ModelRef, RegistryError, verified_champion
from batchscore.scoring import ChunkResult, PartitionHeld, PartitionOutcome
from batchscore.storage import Location, release_lease, try_lease
from tasks.common import IO_RETRIES, TASK_DEFAULTS, Sealed

# A hold's reason is its whole story; the others are the user's to fix, and say how.
log_failures_without_tracebacks(PartitionHeld, partitions.SourceError, ConfigError, RegistryError)


@task(name="resolve-champion", **TASK_DEFAULTS, **IO_RETRIES)
def resolve_champion(config: Config) -> ModelRef:
    """The champion's handle, after checking it was trained on this config's features."""
    return verified_champion(config)  # a tampered model stops the run here


@task(name="find-partitions", **TASK_DEFAULTS, **IO_RETRIES)
def find_partitions(
    config: Config, model: ModelRef, partition: str | None, rescore: bool
) -> list[str]:
    logger = get_run_logger()
    found = partitions.discover(config)
    for name in found.ignored:
        logger.warning("ignored %s/incoming/%s: not a dt=YYYY-MM-DD folder", config.source, name)
    candidates = found.partitions
    if partition is not None:
        if partition not in candidates:
            raise ValueError(
                f"partition {partition} not found under "
                f"{config.source}/incoming (have: {', '.join(candidates) or 'none'})"
            )
        candidates = [partition]
    changed: dict[str, str] = {}
    interrupted: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    todo = partitions.pending(
        config,
        model,
        candidates,
        rescore,
        changed=changed,
        interrupted=interrupted,
        unreadable=unreadable,
        listed=found.files,
    )
    for name, problem in unreadable.items():
        logger.warning(
            "partition %s: %s; scoring it again as not scored (its outputs are replaced "
            "when it is published)",
            name,
            problem,
        )
    for name, marker in interrupted.items():
        logger.warning(
            "partition %s: its last publishing was interrupted (%s is left), so its "
            "quarantine and drift report may be newer than its scores; publishing it again",
            name,
            marker,
        )
    for name, change in changed.items():
        logger.warning(
            "partition %s changed since %s %s scored it: %s; scoring it again",
            name,
            model.name,
            model.version,
            change,
        )
    logger.info(
        "%d partition(s) found, %d to score with %s %s",
        len(candidates),
        len(todo),
        model.name,
        model.version,
    )
    return todo


@task(name="plan-partition", task_run_name="plan {partition}", **TASK_DEFAULTS, **IO_RETRIES)
def plan_partition(config: Config, partition: str, model: ModelRef) -> PartitionPlan:
    plan = partitions.plan_partition(config, partition, model)
    for folder in plan.ignored_folders:
        get_run_logger().warning(
            "ignored %s/%s: a folder inside a partition folder; only the files directly in "
            "dt=%s/ are read",
            config.source,
            folder,
            partition,
        )
    return plan


@task(
    name="score-chunk",
    task_run_name="score {chunk.partition} #{chunk.index}",
    **TASK_DEFAULTS,
    **IO_RETRIES,
)
def score_chunk(
    config: Config, chunk: Chunk, model: ModelRef, partition_plan: PartitionPlan, run_id: str
) -> ChunkResult:
    return scoring.score_chunk(config, chunk, model, partition_plan, run_id)


@task(name="prepare-worker", **TASK_DEFAULTS)
def prepare_worker(config: Config, model: ModelRef) -> None:
    """Warm a worker process (the predictor; GX with its engine) while partitions are planned."""
    scoring.prepare_worker(config, model)


@task(name="publish-partition", task_run_name="publish {partition_plan.partition}", **TASK_DEFAULTS)
def publish_partition(
    config: Config,
    partition_plan: PartitionPlan,
    model: ModelRef,
    results: Sealed[list[ChunkResult]],
    run_id: str,
    lease: dict | None = None,
) -> PartitionOutcome:
    outcome = scoring.publish_partition(config, partition_plan, model, results.value, run_id, lease)
    _log(outcome)
    if outcome.status == "held":
        raise PartitionHeld(outcome)  # the task run ends Failed with the reason
    return outcome


@task(name="hold-partition", task_run_name="hold {plan.partition}", **TASK_DEFAULTS)
def hold_partition(
    config: Config, plan: PartitionPlan, model: ModelRef, run_id: str, lease: dict | None = None
) -> PartitionOutcome:
    outcome = scoring.hold_partition(config, plan, model, run_id, lease)
    _log(outcome)
    raise PartitionHeld(outcome)  # the task run ends Failed with the reason


# No retries: a retry would meet the leases its first attempt took (held by this live
# process) and skip those partitions.
@task(name="claim-partitions", **TASK_DEFAULTS)
def claim_partitions(
    config: Config, model: ModelRef, todo: list[str], rescore: bool
) -> tuple[list[str], list[dict]]:
    """Take a lease on each pending partition; skip those another live run is scoring.

    Under its lease a partition is checked again: a run that held it may have just
    published it. The leases belong to this (the flow's) process, which renews them while
    it runs (`storage.LeaseKeeper`): if it is killed, the next run on this host takes them
    over at once; from another host, `lease_minutes` after their last renewal.
    """
    logger = get_run_logger()
    leases_at = Location(config.store).child("_leases")
    ttl = config.scoring.lease_minutes * 60.0
    claimed, leases = [], []
    try:
        for partition in todo:
            ours, holder = try_lease(leases_at, f"dt={partition}.lease", ttl)
            if ours is None:
                if holder.get("unreadable"):
                    logger.warning(
                        "partition %s: its lease %s cannot be read; it counts as being written "
                        "by its holder until a minute after it last changed, then is taken over; "
                        "skipped",
                        partition,
                        leases_at.path(f"dt={partition}.lease"),
                    )
                else:
                    logger.warning(
                        "partition %s is being scored by pid %s on %s; skipped",
                        partition,
                        holder.get("pid"),
                        holder.get("host"),
                    )
                continue
            if rescore or partitions.pending(config, model, [partition], False):
                claimed.append(partition)
                leases.append(ours)
            else:
                release_lease(ours)
                logger.info("partition %s was published by another run meanwhile", partition)
    except BaseException:  # a lease not written (a full disk): the others go too, for the next run
        for held in leases:
            with suppress(Exception):
                release_lease(held)
        raise
    return claimed, leases


@task(name="release-partitions", **TASK_DEFAULTS)
def release_partitions(leases: list[dict]) -> None:
    for held in leases:
        release_lease(held)


def outcome_line(o: PartitionOutcome) -> str:
    """A partition's counts, written as the command's table writes them."""
    return (
        f"partition {o.partition} {o.status}: {o.rows_in:,} rows in, {o.rows_scored:,} scored, "
        f"{o.rows_quarantined:,} quarantined, {o.seconds:.1f} s, {o.rows_per_second:,.0f} rows/s"
    )


def _log(o: PartitionOutcome) -> None:
    logger = get_run_logger()
    if o.status == "held":
        logger.error("partition %s HELD: %s", o.partition, "; ".join(o.reasons))
    else:
        logger.info("%s", outcome_line(o))
    for warning in o.drift_warnings:
        logger.warning("partition %s drift: %s", o.partition, warning)
