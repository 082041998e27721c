"""Issue 5's acceptance: batchscore run as its users run it, through Prefect, end to end.

A real `prefect server start` (UI on) on a free loopback port, the `batchscore` process work
pool, the repository's own prefect.yaml deployed with `prefect --no-prompt deploy --all`, and
a `prefect worker start`. Runs are started with `prefect deployment run`, followed through
the API, and the run's page is checked in headless Chromium. The sample data and a champion
trained beforehand live in a temporary folder; the config path goes in with `-p config=...`
(the retrain trigger takes it from the drift event's payload). Every process started here is
stopped when the module ends, also when it fails: their process groups and descendants.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pyarrow.parquet as pq
import pytest
from e2e_browser import CHROMIUM, Chromium
from e2e_stack import (
    BIN,
    Process,
    descendants,
    flow_run_id,
    free_port,
    prefect,
    running,
    wait_healthy,
)
from helpers import copy_sample, write_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
OUT = Path(__file__).parent / "out"  # screenshots for a person to look at (gitignored)
POOL = "batchscore"  # prefect.yaml's work pool
DRIFT_EVENT = "batchscore.drift.detected"
RUN_TIMEOUT = 600  # seconds; a run takes about a minute on 2 busy cores
PARTITIONS = sorted(p.name.removeprefix("dt=") for p in (SAMPLE / "incoming").glob("dt=*"))


def sample_config(folder: Path, source: Path, store: Path) -> Path:
    """The sample's config on a private store; big chunks and few trees keep the test short."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder / "batchscore.toml",
        (ROOT / "batchscore.toml").read_text(),
        storage={"source": str(source), "store": str(store)},
        scoring={"chunk_rows": 1_000_000},
        retrain={"lightgbm": {"max_rounds": 60}},
    )


def prefect_env(tmp: Path, api: str) -> dict[str, str]:
    """One environment for the server, the CLI and the worker: nothing from the caller's
    Prefect settings (another test may point PREFECT_API_URL at its own server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_API_URL=api,
        # The UI fetches its data from here; it defaults to port 4200 whatever --port says.
        PREFECT_SERVER_UI_API_URL=api,
        PREFECT_SERVER_UI_ENABLED="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GX_ANALYTICS_ENABLED="false",
        # The nightly cron is deployed but must not start a run in the middle of the test.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        # Shorter turns than the defaults (a 10 s poll; a queued run retries after 30 s).
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="5",
    )
    return env


@dataclass
class Stack:
    tmp: Path
    api: str
    env: dict[str, str]
    config: Path
    store: Path
    server: Process
    worker: Process

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")

    @contextmanager
    def client(self) -> Iterator:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}), get_client(sync_client=True) as c:
            yield c

    def deployment_run(self, name: str, *params: str) -> str:
        """`prefect deployment run NAME -p ...`; the id of the flow run it created."""
        args = ["deployment", "run", name, *(a for p in params for a in ("-p", p))]
        return flow_run_id(prefect(args, self.env, self.tmp))

    def wait_final(self, run_id: str | UUID, timeout: float = RUN_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                run = client.read_flow_run(UUID(str(run_id)))
                if run.state is not None and run.state.is_final():
                    return run
                if time.monotonic() > deadline or not self.worker.alive():
                    raise AssertionError(
                        f"flow run {run.name} is still {run.state_name} after {timeout:.0f} s "
                        f"(worker {'alive' if self.worker.alive() else 'exited'})\n"
                        + self.report(run.id)
                    )
                time.sleep(2)

    def assert_completed(self, run) -> None:
        assert run.state.is_completed(), (
            f"flow run {run.name} ended {run.state_name}: {run.state.message}\n"
            + self.report(run.id)
        )

    def report(self, run_id: UUID) -> str:
        """The run's logs and the worker's, for a failure message."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        from prefect.client.schemas.sorting import LogSort

        with self.client() as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=200,
                sort=LogSort.TIMESTAMP_DESC,
            )
        lines = [
            f"{log.timestamp:%H:%M:%S} {logging.getLevelName(log.level)} {log.name}: {log.message}"
            for log in reversed(logs)
        ]
        return (
            "--- run logs (newest 200) ---\n"
            + "\n".join(lines)
            + f"\n--- worker log ---\n{self.worker.log()}"
        )

    def events(self, prefix: str) -> list[dict]:
        body = {"filter": {"event": {"prefix": [prefix]}}, "limit": 50}
        request = urllib.request.Request(
            f"{self.api}/events/filter",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.load(r)["events"]

    def deployment_id(self, name: str) -> UUID:
        with self.client() as client:
            return client.read_deployment_by_name(name).id


def start_server(tmp: Path, started: list[Process]) -> tuple[Process, str]:
    """`prefect server start` on a free port; another port if that one was taken meanwhile."""
    for attempt in range(3):
        api = f"http://127.0.0.1:{free_port()}/api"
        port = api.split(":")[2].split("/")[0]
        server = Process(
            "server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
            env=prefect_env(tmp, api),
            cwd=tmp,
            log=tmp / f"server-{attempt}.log",
        ).start()
        started.append(server)
        try:
            wait_healthy(api, server)
            return server, api
        except AssertionError:
            server.stop()
            if attempt == 2 or "address already in use" not in server.log().lower():
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    from batchscore.config import load_config
    from batchscore.training import train

    tmp = tmp_path_factory.mktemp("e2e")
    for folder in ("incoming", "labels"):
        shutil.copytree(SAMPLE / folder, tmp / "source" / folder)
    config = sample_config(tmp, tmp / "source", tmp / "store")
    first = train(load_config(config), reason="e2e: the first champion")
    assert first.status == "promoted", first.decision

    started: list[Process] = []
    try:
        server, api = start_server(tmp, started)
        env = prefect_env(tmp, api)
        prefect(["work-pool", "create", POOL, "--type", "process"], env, tmp)
        # The repository's prefect.yaml as users deploy it: from the root, where the pull
        # step's {{ $PWD }} is resolved (a shell sets PWD; subprocess does not).
        prefect(["--no-prompt", "deploy", "--all"], {**env, "PWD": str(ROOT)}, ROOT)
        worker = Process(
            "worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL],
            env=env,
            cwd=tmp,
            log=tmp / "worker.log",
        ).start()
        started.append(worker)
        yield Stack(tmp, api, env, config, tmp / "store", server, worker)
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="module")
def score_run(stack: Stack):
    """One `prefect deployment run score/nightly-score`, Completed."""
    run = stack.wait_final(stack.deployment_run("score/nightly-score", f"config={stack.config}"))
    stack.assert_completed(run)
    return run


@pytest.fixture(scope="module")
def retrain_run(stack: Stack, score_run):
    """The drift event the score run emitted, and the `retrain` run its trigger started."""
    emitter = f"prefect.flow-run.{score_run.id}"
    deadline = time.monotonic() + 60
    while True:  # events reach the API shortly after the run that emitted them
        events = [
            e
            for e in stack.events(DRIFT_EVENT)
            if emitter in {r["prefect.resource.id"] for r in e["related"]}
        ]
        if events or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(events) == 1, f"the score run emitted {len(events)} drift event(s)\n" + (
        stack.report(score_run.id)
    )
    event = events[0]

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    retrain_deployment = stack.deployment_id("retrain/retrain")
    deadline = time.monotonic() + 120
    with stack.client() as client:
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[retrain_deployment]))
            )
            if runs or time.monotonic() > deadline:
                break
            time.sleep(1)
    if not runs:
        actions = [
            f"{e['event']}: {e['payload'].get('reason', '')}"
            for e in stack.events("prefect.automation")
        ]
        raise AssertionError(
            f"no retrain run within 120 s of drift event {event['id']}; automations:\n"
            + "\n".join(actions)
        )
    assert len(runs) == 1, [r.name for r in runs]
    return stack.wait_final(runs[0].id), event


def test_nightly_score_run_publishes_every_partition(stack: Stack, score_run):
    assert score_run.deployment_id == stack.deployment_id("score/nightly-score")
    for partition in PARTITIONS:
        folder = stack.store / "scores" / f"dt={partition}"
        manifest = json.loads((folder / "_SUCCESS").read_text())
        assert manifest["run_id"] == str(score_run.id), partition
        assert manifest["status"] == "scored", partition
        rows = sum(pq.read_metadata(f).num_rows for f in folder.glob("*.parquet"))
        assert rows == manifest["rows_scored"] > 0, partition

    # The run's workers (forked from a server that imported prefect.engine, the flow-run
    # process's __main__) said nothing about running it again (`batchscore.fork_ready`).
    assert "RuntimeWarning" not in stack.worker.log(chars=10**7)

    # What prefect.yaml made of the deployment: the pull step, the cron, the concurrency limit.
    with stack.client() as client:
        deployment = client.read_deployment_by_name("score/nightly-score")
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]
    assert [s.schedule.cron for s in deployment.schedules] == ["30 2 * * *"]
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == "ENQUEUE"


def test_drift_event_triggers_a_retrain_run(stack: Stack, retrain_run):
    run, event = retrain_run
    stack.assert_completed(run)
    assert run.created_by is not None and run.created_by.type == "AUTOMATION", run.created_by
    assert run.parameters["event_id"] == event["id"]
    assert run.parameters["config"] == str(stack.config)
    assert run.parameters["partition"] == event["payload"]["partition"] == PARTITIONS[-1]
    assert event["id"] in run.parameters["reason"]
    # The registry's record of the attempt names the run and the event that started it.
    records = [
        json.loads(p.read_text())
        for p in (stack.store / "models" / "churn" / "retrains").glob("*.json")
    ]
    [record] = [r for r in records if r.get("run_id") == str(run.id)]
    assert record["trigger"]["event_id"] == event["id"]


def test_the_ui_shows_the_run_its_state_and_the_drift_table(stack: Stack, score_run):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (or set CHROMIUM=/path)")
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with stack.client() as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[score_run.id]),
                key=ArtifactFilterKey(any_=["drift"]),
            )
        )
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    top = rows[0]  # drifted rows come first
    (OUT / "failure.png").unlink(missing_ok=True)  # from an earlier failed run
    assert top["drifted"] is True, top

    with Chromium(stack.tmp / "browser") as page:
        try:
            # What a person does: open the run, look at its state, open the Artifacts tab,
            # open the drift table.
            page.open(f"{stack.ui}/runs/flow-run/{score_run.id}")
            page.wait_for_text(score_run.name, "Artifacts")
            page.wait_for(
                "[...document.querySelectorAll('.state-badge')]"
                ".some(e => e.innerText.trim() === 'Completed')",
                "a Completed state badge",
            )
            page.click("li.p-tab#artifacts")
            card = f'a[href="/artifacts/artifact/{artifact.id}"]'
            # The card's title and its description (markdown) render at different moments.
            text = page.wait_for(
                f"(() => {{ const t = document.querySelector('{card}')?.innerText || ''; "
                f"return t.includes({json.dumps(artifact.description)}) ? t : null; }})()",
                f"the drift artifact's card ({card}) with its description",
            )
            assert "drift" in text.split(), text
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(OUT / "flow-run.png")

            page.click(card)
            page.wait_for(
                f"location.pathname === '/artifacts/artifact/{artifact.id}'",
                "the drift artifact's page",
            )
            text = page.wait_for_text(
                top["partition"], top["feature"], top["method"], "true", score_run.name
            )
            for name in ("partition", "feature", "method", "statistic", "threshold", "drifted"):
                assert name in text, name
            page.screenshot(OUT / "drift-artifact.png")
        except BaseException:
            page.screenshot(OUT / "failure.png")
            raise


def test_two_runs_back_to_back_score_each_partition_once(stack: Stack, retrain_run):
    # A fresh store with the same registry: the first run must find every partition to do.
    race = stack.tmp / "race"
    shutil.copytree(stack.store / "models", race / "store" / "models")
    config = sample_config(race, stack.tmp / "source", race / "store")

    argv = [str(BIN / "prefect"), "deployment", "run", "score/nightly-score", "-p"]
    starts = [
        subprocess.Popen(
            [*argv, f"config={config}"],
            env=stack.env,
            cwd=stack.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in starts]
    assert [p.returncode for p in starts] == [0, 0], outputs
    runs = [stack.wait_final(flow_run_id(out)) for out in outputs]
    for run in runs:
        stack.assert_completed(run)

    # The deployment's concurrency limit queued one run behind the other, which then found
    # every partition scored.
    names = sorted(r.state_name for r in runs)
    assert names == ["Completed", "NothingToDo"], [(r.name, r.state_name) for r in runs]
    [scorer] = [r for r in runs if r.state_name == "Completed"]
    [idle] = [r for r in runs if r.state_name == "NothingToDo"]
    assert "nothing to do" in idle.state.message

    for partition in PARTITIONS:
        folder = race / "store" / "scores" / f"dt={partition}"
        assert sorted(p.name for p in folder.glob("_*")) == ["_SUCCESS"], partition
        manifest = json.loads((folder / "_SUCCESS").read_text())
        assert manifest["run_id"] == str(scorer.id), partition
        table = pq.read_table([str(f) for f in folder.glob("*.parquet")])
        assert table.num_rows == manifest["rows_scored"], partition
        assert len(set(table.column("customer_id").to_pylist())) == table.num_rows, partition
        assert set(table.column("run_id").to_pylist()) == {str(scorer.id)}, partition

    # What each run reported: one partition table, from the run that scored, each day once.
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with stack.client() as client:
        tables = {
            r.name: client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[r.id]),
                    key=ArtifactFilterKey(any_=["score-partitions"]),
                )
            )
            for r in runs
        }
    assert tables[idle.name] == []
    [table] = tables[scorer.name]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert sorted(r["partition"] for r in rows) == PARTITIONS


def test_a_run_cancelled_while_scoring_ends_cancelled_and_the_next_resumes(
    stack: Stack, retrain_run
):
    """Cancel, as the UI's button does (`prefect flow-run cancel`), a deployment run that is
    scoring. The worker tells the run's process over Prefect's control channel, then sends
    it SIGTERM. The flow run ends Cancelled and the chunks its workers were scoring end
    Cancelled with it (they read Crashed, under a Cancelled run, before), none left Running;
    every process of the run ends; nothing is published half; the next run reuses the chunks
    staged before the cancel."""
    base = stack.tmp / "cancel"
    days = PARTITIONS[:2]
    source = copy_sample(base / "source", days)
    # ~400 chunks of 100 rows (a chunk is a run of whole row groups): the run is still
    # scoring when the cancel comes, seconds later.
    for file in source.glob("incoming/*/*.parquet"):
        pq.write_table(pq.read_table(file), file, row_group_size=100)
    shutil.copytree(stack.store / "models", base / "store" / "models")
    config = write_config(
        base / "batchscore.toml",
        (ROOT / "batchscore.toml").read_text(),
        storage={"source": str(source), "store": str(base / "store")},
        scoring={"chunk_rows": 100, "workers": 2},
        retrain={"on_drift": "off"},
    )

    def staged() -> list[Path]:
        return sorted((base / "store").glob("_staging/*/chunks/*.json"))

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_id = UUID(stack.deployment_run("score/nightly-score", f"config={config}"))
    deadline = time.monotonic() + RUN_TIMEOUT
    with stack.client() as client:
        while not staged():
            state = client.read_flow_run(run_id).state
            assert not state.is_final(), f"the run ended {state.name} before it was cancelled"
            assert time.monotonic() < deadline, "no chunk was staged\n" + stack.report(run_id)
            time.sleep(0.1)
    processes = descendants(stack.worker.pid)  # the flow run's process, its fork server, ...
    assert len(processes) >= 3, processes
    prefect(["flow-run", "cancel", str(run_id)], stack.env, stack.tmp)

    run = stack.wait_final(run_id, timeout=120)
    assert run.state.is_cancelled(), f"{run.state}\n" + stack.report(run_id)
    states = {}
    with stack.client() as client:
        while page := client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            limit=200,
            offset=len(states),
        ):
            states.update((t.name, t.state) for t in page)
    assert not [n for n, s in states.items() if not s.is_final()], states
    # (Not asserted that one was stopped: both workers may be between two chunks.)
    stopped = {n: s.name for n, s in states.items() if not s.is_completed()}
    assert all(s == "Cancelled" for s in stopped.values()), stopped
    deadline = time.monotonic() + 30
    while (left := [p for p in processes if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"processes of the cancelled run still running: {left}"
    for manifest in (base / "store").glob("scores/*/_SUCCESS"):  # published before the cancel
        rows = sum(pq.read_metadata(f).num_rows for f in manifest.parent.glob("*.parquet"))
        assert rows == json.loads(manifest.read_text())["rows_scored"], manifest

    kept = len(staged())
    again = stack.wait_final(stack.deployment_run("score/nightly-score", f"config={config}"))
    stack.assert_completed(again)
    manifests = [
        json.loads((base / "store" / "scores" / f"dt={d}" / "_SUCCESS").read_text()) for d in days
    ]
    assert sum(m["reused_chunks"] for m in manifests) >= kept >= 1, manifests
    assert not list((base / "store").glob("_staging/*"))
