"""Ring 2: the `batchscore` command through `batchscore.cli.main`, without a Prefect server.

Training on the real sample runs once per module (twice, for two versions), with few boosting
rounds to stay fast; each test gets its own copy of the resulting model store.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import write_config

# LightGBM's OpenMP threads spin while they wait; on a small shared machine (2 cores, other
# test runs beside this one) spinning made the module's two trainings take ~40 s instead of ~3.
# Read when OpenMP starts, so it must be set before lightgbm is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from batchscore.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
SAMPLE_TEXT = (ROOT / "batchscore.toml").read_text()
# Fewer rounds than the default 500: the same code path, a few seconds instead of ~20.
FAST = {"lightgbm": {"max_rounds": 20}}

METRICS = r"auc=\d\.\d{4} brier=\d\.\d{4} log_loss=\d\.\d{4}"
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"


def _version_line(version: str, champion: bool, parent: str) -> re.Pattern:
    mark = "champion" if champion else " " * 8
    return re.compile(
        rf"{version}  {mark}  {TIME}  window 2026-10-01\.\.2026-10-10  {METRICS}"
        rf"  parent={parent}  reason='manual'"
    )


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train on the sample twice; keep a snapshot of the store after each training."""
    base = tmp_path_factory.mktemp("cli")
    shutil.copytree(SAMPLE / "incoming", base / "source" / "incoming")
    shutil.copytree(SAMPLE / "labels", base / "source" / "labels")
    config = write_config(
        base / "batchscore.toml",
        SAMPLE_TEXT,
        storage={"source": "source", "store": "store"},
        retrain=FAST,
    )
    first = _run("train", "--config", str(config))
    shutil.copytree(base / "store", base / "after-one")
    # The same data again ties the champion; demanding an improvement keeps v0002 a challenger.
    write_config(config, config.read_text(), retrain={"min_improvement": 0.5})
    second = _run("train", "--config", str(config))
    shutil.copytree(base / "store", base / "after-two")
    return {
        "source": base / "source",
        "base": base,
        "config": config,
        "first": first,
        "second": second,
    }


def _config_for(trained: dict, snapshot: str, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of a store snapshot and a config pointing at it."""
    store = tmp_path / "store"
    shutil.copytree(trained["base"] / snapshot, store)
    config = write_config(
        tmp_path / "batchscore.toml",
        SAMPLE_TEXT,
        storage={"source": str(trained["source"]), "store": str(store)},
        retrain=FAST,
    )
    return config, store


def _version_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"v\d{4}\b", line)]


def _audit_lines(stdout: str) -> list[str]:
    return [re.sub(TIME, "T", line) for line in stdout.splitlines() if line.startswith("  ")]


def test_train_reports_the_version_and_whether_it_became_champion(trained: dict):
    code, out, err = trained["first"]
    # stderr carries the flow's log lines (progress in the terminal), never a traceback
    assert code == 0 and "Traceback" not in err
    lines = out.splitlines()
    assert lines[0] == "promoted: first model"
    assert re.fullmatch(
        r"churn v0001 trained on 2026-10-01\.\.2026-10-10 in \d+\.\d s \(160,367 fit, "
        rf"19,976 validation, 19,998 holdout rows\): {METRICS.replace(' ', ', ')}",
        lines[1],
    ), lines[1]
    assert lines[2:] == ["champion: v0001"]

    code, out, err = trained["second"]
    assert code == 0 and "Traceback" not in err
    lines = out.splitlines()
    assert re.fullmatch(
        r"registered: auc: v0002 0\.\d{5} vs champion v0001 0\.\d{5} \(improvement "
        r"[+-]0\.\d{5}, required \+0\.50000\): not promoted; v0002 is the same model as v0001, "
        r"byte for byte",
        lines[0],
    ), lines[0]
    assert lines[2:] == [
        "champion: v0001",
        f"(promote v0002 with `batchscore models promote v0002 --config {trained['config']}` "
        "or train with --force)",
    ]


def test_models_list_after_one_training(trained: dict, tmp_path: Path):
    config, _ = _config_for(trained, "after-one", tmp_path)

    code, out, err = _run("models", "list", "--config", str(config))

    assert (code, err) == (0, "")
    versions = _version_lines(out)
    assert len(versions) == 1
    assert _version_line("v0001", champion=True, parent="-").fullmatch(versions[0]), versions[0]
    assert _audit_lines(out) == ["  T  promote: - -> v0001  (manual: first model)"]
    assert len(out.splitlines()) == 2


def test_models_list_marks_exactly_one_champion(trained: dict, tmp_path: Path):
    config, _ = _config_for(trained, "after-two", tmp_path)

    code, out, err = _run("models", "list", "--config", str(config))

    assert (code, err) == (0, "")
    versions = _version_lines(out)
    assert [line[:5] for line in versions] == ["v0001", "v0002"]
    assert [line for line in versions if "champion" in line.split()] == [versions[0]]
    assert _version_line("v0001", champion=True, parent="-").fullmatch(versions[0]), versions[0]
    assert _version_line("v0002", champion=False, parent="v0001").fullmatch(versions[1]), versions[
        1
    ]
    assert _audit_lines(out) == ["  T  promote: - -> v0001  (manual: first model)"]


def test_promoting_an_unknown_version_exits_2_naming_it_and_the_known_ones(
    trained: dict, tmp_path: Path
):
    config, store = _config_for(trained, "after-two", tmp_path)

    code, out, err = _run("models", "promote", "v9999", "--config", str(config))

    assert (code, out) == (2, "")
    assert err == (
        f"batchscore: model 'churn' has no version 'v9999' under {store}/models/churn; "
        "known: v0001, v0002\n"
    )
    _, listing, _ = _run("models", "list", "--config", str(config))
    assert "champion" in _version_lines(listing)[0].split()


def test_promote_then_rollback_restores_the_previous_champion(trained: dict, tmp_path: Path):
    config, _ = _config_for(trained, "after-two", tmp_path)

    promoted = _run("models", "promote", "v0002", "--config", str(config), "--reason", "try v2")
    rolled = _run("models", "rollback", "--config", str(config))
    code, out, _ = _run("models", "list", "--config", str(config))

    assert promoted == (0, "champion of churn: v0001 -> v0002\n", "")
    assert rolled == (0, "champion of churn: v0002 -> v0001 (rolled back)\n", "")
    assert code == 0
    versions = _version_lines(out)
    assert [line for line in versions if "champion" in line.split()] == [versions[0]]
    assert versions[0].startswith("v0001  champion  ")
    assert _audit_lines(out) == [
        "  T  promote: - -> v0001  (manual: first model)",
        "  T  promote: v0001 -> v0002  (try v2)",
        "  T  rollback: v0002 -> v0001  (manual rollback)",
    ]


@pytest.mark.parametrize("action", [("promote", "v0002"), ("rollback",)])
def test_promote_and_rollback_wait_for_a_retrain_deciding_its_promotion(
    trained: dict, tmp_path: Path, action: tuple[str, ...]
):
    """A retrain holds `_promotion.lock` from reading the champion its challenger was
    compared with to moving the alias. `models rollback` did not take it: made meanwhile, it
    moved v0002 -> v0001, and the retrain then promoted a challenger gated against v0002
    over it (audit: rollback v0002 -> v0001, promote v0001 -> v0003)."""
    import subprocess
    import sys

    from batchscore.registry import Registry
    from batchscore.storage import lease

    config, store = _config_for(trained, "after-two", tmp_path)
    registry = Registry(str(store), "churn")
    if action[0] == "rollback":
        registry.promote("v0002", "try v2")
    before = registry.champion()
    command = Path(sys.executable).with_name("batchscore")
    with lease(registry.root, "_promotion.lock") as held:  # as a retrain's gate holds it
        proc = subprocess.Popen(
            [str(command), "models", *action, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = proc.stderr.readline()
        assert first == (
            f"batchscore: waiting for {store}/models/churn/_promotion.lock, held by pid "
            f"{held['pid']} on {held['host']} (a retrain deciding whether to promote its "
            "challenger)\n"
        )
        assert registry.champion() == before  # nothing moved while the lock is held
    out, err = proc.communicate()
    assert (proc.returncode, err) == (0, "")
    assert registry.champion() == ("v0001" if action[0] == "rollback" else "v0002")


def test_promoting_the_champion_changes_nothing_and_records_no_move(trained: dict, tmp_path: Path):
    """It recorded a move from v0001 to v0001 in the audit, which `models list` printed."""
    config, _ = _config_for(trained, "after-two", tmp_path)

    promoted = _run("models", "promote", "v0001", "--config", str(config))
    _, out, _ = _run("models", "list", "--config", str(config))

    assert promoted == (0, "champion of churn: v0001 already; nothing changed\n", "")
    assert _audit_lines(out) == ["  T  promote: - -> v0001  (manual: first model)"]


def test_rollback_of_the_first_champion_exits_2(trained: dict, tmp_path: Path):
    config, _ = _config_for(trained, "after-one", tmp_path)

    code, out, err = _run("models", "rollback", "--config", str(config))

    assert (code, out) == (2, "")
    assert err == "batchscore: champion v0001 of 'churn' has no previous champion\n"


# --- without a trained model ---------------------------------------------------------------


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    """The sample's config with an empty source and store of its own."""
    return write_config(
        tmp_path / "batchscore.toml",
        SAMPLE_TEXT,
        storage={"source": "source", "store": "store"},
    )


def test_models_list_on_an_empty_store_says_there_are_no_versions(empty: Path):
    code, out, err = _run("models", "list", "--config", str(empty))

    assert (code, err) == (0, "")
    assert out == f"no versions of churn under {empty.parent / 'store'}/models/churn\n"


def test_rollback_on_an_empty_store_exits_2(empty: Path):
    code, out, err = _run("models", "rollback", "--config", str(empty))

    assert (code, out) == (2, "")
    assert err == "batchscore: model 'churn' has no champion to roll back from\n"


def test_train_without_labels_exits_2_saying_what_is_missing(empty: Path):
    code, out, err = _run("train", "--config", str(empty))

    # No labels folder at all: as often a [storage] source written wrong.
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] + "\n" == (
        "batchscore: no training: 0 labelled partition(s) under "
        f"{empty.parent / 'source' / 'labels'} (no such folder: check [storage] source); "
        "training needs at least 3 (validation_days + holdout_days + 1)\n"
    )
    (empty.parent / "source" / "labels").mkdir(parents=True)  # there, but nothing yet
    code, out, err = _run("train", "--config", str(empty))
    assert err.splitlines()[-1] + "\n" == (
        "batchscore: no training: 0 labelled partition(s) under "
        f"{empty.parent / 'source' / 'labels'}; "
        "training needs at least 3 (validation_days + holdout_days + 1)\n"
    )


def test_demo_without_labels_exits_2_as_train_does(empty: Path):
    code, out, err = _run("demo", "--config", str(empty))

    assert code == 2
    assert out == "no champion for churn: training one\n"
    assert err.splitlines()[-1].startswith("batchscore: no training: 0 labelled partition(s)")


def test_output_to_a_reader_that_went_away_ends_without_a_traceback(empty: Path):
    """`batchscore models list | head -1`: once `head` has its line and exits, the rest of
    the output has no reader. The command printed Python's BrokenPipeError traceback; it
    now ends as a pipe's writer does, quietly, with SIGPIPE's exit code."""
    import signal
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes its first line
    try:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "batchscore"), "models", "list"]
            + ["--config", str(empty)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (128 + signal.SIGPIPE, "")


def test_a_config_with_an_unknown_key_exits_2_naming_the_key(tmp_path: Path, capsys):
    config = write_config(tmp_path / "c.toml", SAMPLE_TEXT, scoring={"chunk_row": 5})

    code = main(["models", "list", "--config", str(config)])

    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert captured.err == (
        f"batchscore: {config}: invalid configuration:\n"
        "  [scoring] unknown key 'chunk_row' (did you mean 'chunk_rows'?)\n"
    )
    assert not (tmp_path / ".batchscore").exists()


def test_a_config_with_a_bad_value_exits_2_naming_the_key_and_value(tmp_path: Path, capsys):
    config = write_config(tmp_path / "c.toml", SAMPLE_TEXT, scoring={"chunk_rows": -5})

    code = main(["train", "--config", str(config)])

    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert captured.err == (
        f"batchscore: {config}: invalid configuration:\n"
        "  [scoring] chunk_rows: Input should be greater than 0 (got -5)\n"
    )


def test_a_missing_config_exits_2_naming_the_file(tmp_path: Path, capsys):
    missing = tmp_path / "nope.toml"

    code = main(["models", "list", "--config", str(missing)])

    assert code == 2
    assert capsys.readouterr().err == f"batchscore: {missing}: config file not found\n"


def test_models_without_an_action_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["models"])

    assert info.value.code == 2
    assert "the following arguments are required: action" in capsys.readouterr().err


def test_workers_are_started_early_only_for_work_that_needs_them(
    trained: dict, tmp_path: Path, monkeypatch
):
    """A score run whose pending rows fit in one chunk, with no realised performance to
    measure, runs in the CLI's process: starting the workers' fork server beside it only
    took its CPU. Anything else starts it early, as does any doubt."""
    from batchscore import cli, workers
    from batchscore.config import load_config

    path, _ = _config_for(trained, "after-one", tmp_path)
    config = load_config(write_config(path, path.read_text(), scoring={"chunk_rows": 100_000}))
    started = []
    monkeypatch.setattr(workers, "start_early", lambda fork=False: started.append(True))

    def starts(run, cfg=config) -> bool:
        started.clear()
        monkeypatch.setattr(cli, "_workers_decided", False)  # a new process
        cli._start_workers_early(cfg, run)
        return bool(started)

    assert not starts(("2026-10-12", False))  # ~21,000 rows, no labels
    assert starts((None, False))  # 14 partitions, ~294,000 rows > chunk_rows
    assert starts(("2026-10-05", True))  # labelled: its performance is measured in workers
    assert starts(None)  # `demo`: no check
    started.clear()
    cli._start_workers_early(config, None)  # the CLI's second call: decided already
    assert not started
    broken = load_config(_config_for(trained, "after-one", tmp_path / "broken")[0])
    shutil.rmtree(broken.store)  # no champion: the flow will say so; the guess is "start"
    assert starts(("2026-10-12", False), broken)


def test_a_score_run_forks_its_workers_fork_server_from_the_command(
    trained: dict, tmp_path: Path, prefect_api: str
):
    """The `batchscore` command's fork server is a fork of the command (its command line),
    not a spawned interpreter, for a run that needs workers (`cli._start_workers_early`,
    `workers._fork_here`): a thread the command started before it would make it spawn one,
    with the imports all over again. Watched from outside, in the process tree."""
    import subprocess
    import sys
    import time

    path, _ = _config_for(trained, "after-one", tmp_path)
    config = write_config(path, path.read_text(), scoring={"chunk_rows": 100_000})
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "batchscore"), "score", "--config", str(config)],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def children(pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                return [int(p) for p in fh.read().split()]
        except OSError:
            return []

    def cmdline(pid: int) -> bytes:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return fh.read()
        except OSError:
            return b""

    own, forked, spawned, seen = b"", set(), set(), {}
    while proc.poll() is None:
        # Read in the loop: just after the exec, before the kernel set it up, it read empty.
        own = own or cmdline(proc.pid)
        for child in children(proc.pid):
            line = cmdline(child)
            workers = children(child)
            seen.setdefault(child, (line[-120:], set()))[1].update(workers)
            if line == own and workers:  # a fork of the command, with workers
                forked.add(child)
            elif b"multiprocessing.forkserver" in line:
                spawned.add(child)
        time.sleep(0.02)
    out = proc.stdout.read()
    assert proc.returncode == 0, out[-3000:]
    assert "run Completed" in out
    assert len(forked) == 1 and not spawned, (forked, spawned, own, seen, out[-4000:])


# --- a score run that cannot start: one message, exit 2, before any flow ----------------------


@pytest.fixture
def no_server(monkeypatch):
    """An API URL nothing answers: these runs must stop before they talk to Prefect (a
    temporary server would boot otherwise)."""
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")


def test_score_without_a_champion_exits_2_with_one_line(empty: Path, no_server):
    """The commands it suggests name the config as it was given (they said `--config F`)."""
    code, out, err = _run("score", "--config", str(empty))

    assert (code, out) == (2, "")
    assert err.startswith("batchscore: model 'churn' has no champion") and err.count("\n") == 1
    assert err.endswith(
        f"train one with `batchscore train --config {empty}` or promote a version with "
        f"`batchscore models promote VERSION --config {empty}`\n"
    )
    with_space = empty.rename(empty.with_name("my config.toml"))
    err = _run("score", "--config", str(with_space))[2]
    assert err.endswith(f"`batchscore models promote VERSION --config '{with_space}'`\n")


def test_the_garbage_collector_is_on_again_after_a_command_however_it_ends(empty: Path, no_server):
    """`main()` turns the collector off for its imports (`cli._imported`)."""
    import gc

    assert gc.isenabled()
    assert _run("score", "--config", str(empty))[0] == 2  # stops before the flow's imports
    assert gc.isenabled()
    assert _run("models", "list", "--config", str(empty))[0] == 0
    assert gc.isenabled()
    gc.disable()  # a caller's choice is kept
    try:
        assert _run("models", "list", "--config", str(empty))[0] == 0
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_what_a_command_imported_is_frozen_out_of_the_collectors_reach_once():
    """`cli._imported`: the imports, built with the collector off, are frozen when it comes
    on again (its first collections would carry them all through every generation), once
    a process. In a fresh process: this one's tests ran `main()` already."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import gc
        from batchscore import cli
        gc.disable()
        import prefect  # what a command imports with the collector off
        cli._imported()
        frozen = gc.get_freeze_count()
        assert gc.isenabled() and frozen > 50_000, frozen
        kept = [[i] for i in range(1000)]
        cli._imported()  # main() calls it again on its way out
        assert gc.get_freeze_count() == frozen, (gc.get_freeze_count(), frozen)
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_score_with_a_changed_model_file_exits_2_with_one_line(
    trained: dict, tmp_path: Path, no_server
):
    config, store = _config_for(trained, "after-one", tmp_path)
    with (store / "models" / "churn" / "v0001" / "model.txt").open("a") as fh:
        fh.write("# edited\n")

    code, out, err = _run("score", "--config", str(config))

    assert (code, out) == (2, "")
    assert "Refusing to score with it" in err and err.count("\n") == 1


def test_score_prints_the_retrain_its_drift_started(trained: dict, tmp_path: Path, prefect_api):
    """The drifted 2026-10-14 starts a retrain within the score run (a subflow), whose
    challenger is promoted: the next run scores every partition again with it. The
    command said nothing of it but in Prefect's log on stderr (only `demo` printed it)."""
    config, _ = _config_for(trained, "after-one", tmp_path)

    code, out, _ = _run("score", "--config", str(config), "--partition", "2026-10-14")

    assert code == 0
    retrained = [line for line in out.splitlines() if line.startswith("retrained on drift: ")]
    assert len(retrained) == 1
    assert retrained[0].startswith("retrained on drift: v0002 (promoted): auc: v0002 ")


def test_a_store_holding_another_models_scores_is_refused_not_overwritten(
    trained: dict, tmp_path: Path, prefect_api
):
    """Two configs (two models) given one `[storage] store`: each took the other's scored
    partitions for pending, as "scored by another model", and replaced their scores, drift
    and quarantine, run after run. Now the second model's run stops, naming the file, the
    two models and the key to change, and the first model's outputs stay as they were."""
    config, store = _config_for(trained, "after-one", tmp_path)
    assert _run("score", "--config", str(config), "--partition", "2026-10-02")[0] == 0
    success = store / "scores" / "dt=2026-10-02" / "_SUCCESS"
    before = success.read_bytes()
    other = write_config(
        tmp_path / "other.toml", config.read_text(), dataset={"name": "churn2"}, retrain=FAST
    )
    assert _run("train", "--config", str(other))[0] == 0  # churn2 v0001, champion

    for extra in ([], ["--rescore"]):
        code, out, err = _run("score", "--config", str(other), "--partition", "2026-10-02", *extra)

        assert (code, out) == (2, "")
        assert err.splitlines()[-1] == (
            f"batchscore: {success} was written for model 'churn', and {other} scores model "
            "'churn2': a store holds one model's scores, drift and quarantine, and scoring it "
            "would replace those of 'churn'. Give 'churn2' a store of its own ([storage] store in "
            f"{other})"
        )
        assert "Traceback" not in err
    assert success.read_bytes() == before


@pytest.mark.parametrize(
    ("partition", "message"),
    [
        ("2026-13-01", "--partition '2026-13-01': expected a date, YYYY-MM-DD"),
        ("yesterday", "--partition 'yesterday': expected a date, YYYY-MM-DD"),
        ("2026-09-01", "--partition 2026-09-01: no folder "),
    ],
)
def test_score_of_a_partition_that_is_not_there_exits_2(
    trained: dict, tmp_path: Path, no_server, partition: str, message: str
):
    config, _ = _config_for(trained, "after-one", tmp_path)

    code, out, err = _run("score", "--config", str(config), "--partition", partition)

    assert (code, out) == (2, "")
    assert err.startswith(f"batchscore: {message}") and err.count("\n") == 1
    if partition == "2026-09-01":
        assert (
            "(partitions there: ..., 2026-10-10, 2026-10-11, 2026-10-12, 2026-10-13, 2026-10-14)"
            in err
        )


def test_score_of_a_source_without_an_incoming_folder_exits_2(
    trained: dict, tmp_path: Path, no_server
):
    """A mistyped [storage] source said every partition was scored (NothingToDo, exit 0)."""
    config, _ = _config_for(trained, "after-one", tmp_path)
    write_config(config, config.read_text(), storage={"source": str(tmp_path / "nosuch")})

    code, out, err = _run("score", "--config", str(config))

    assert (code, out) == (2, "")
    assert err == (
        f"batchscore: no incoming/ folder under {tmp_path / 'nosuch'} ([storage] source in "
        f"{config}): partitions are read from <source>/incoming/dt=YYYY-MM-DD/\n"
    )


@pytest.mark.parametrize("name", ["v0001/", "../churn/v0001", "v1"])
def test_promote_accepts_only_version_names(trained: dict, tmp_path: Path, name: str):
    """`v0001/` and `../churn/v0001` resolved to the version's folder and became the
    champion's name: no version was marked champion, and every partition was rescored."""
    config, store = _config_for(trained, "after-two", tmp_path)

    code, out, err = _run("models", "promote", name, "--config", str(config))

    assert (code, out) == (2, "")
    assert err == (
        f"batchscore: {name!r} is not a version of model 'churn': versions are named vNNNN; "
        "known: v0001, v0002\n"
    )


def test_a_changed_champion_is_replaced_by_train_force_not_by_train(trained: dict, tmp_path: Path):
    """README: a changed model file is fixed by restoring it, promoting another version or
    training another: training compared the challenger with the champion it could not load,
    so with one version there was no way out but restoring the file."""
    config, store = _config_for(trained, "after-one", tmp_path)
    with (store / "models" / "churn" / "v0001" / "model.txt").open("a") as fh:
        fh.write("# edited\n")

    code, _, err = _run("train", "--config", str(config))
    assert code == 2 and "To replace it, train with --force" in err

    code, out, err = _run("train", "--force", "--reason", "replace", "--config", str(config))
    assert code == 0, err
    assert out.startswith(
        "promoted: forced: replace; champion v0001 not compared: model churn v0001"
    )
    _, listing, _ = _run("models", "list", "--config", str(config))
    champions = [line[:5] for line in _version_lines(listing) if "champion" in line.split()]
    assert champions == ["v0002"]


def test_labels_train_cannot_use_end_the_run_failed_with_one_line_not_a_traceback(
    trained: dict, tmp_path: Path
):
    """A user's data error in the retrain flow (here a renamed label column) is its run's
    one-line Failed message and `train`'s exit 2, recorded as a failed attempt; it printed
    the task's and the flow's tracebacks (~90 lines) above it and exited 1."""
    import pyarrow.parquet as pq

    from batchscore.registry import Registry

    config, store = _config_for(trained, "after-one", tmp_path)
    source = tmp_path / "source"
    shutil.copytree(trained["source"], source)
    write_config(config, config.read_text(), storage={"source": str(source), "store": str(store)})
    path = source / "labels" / "dt=2026-10-09" / "part-0.parquet"
    pq.write_table(pq.read_table(path).rename_columns(["customer_id", "label"]), path)

    code, out, err = _run("train", "--reason", "renamed", "--config", str(config))

    why = (
        "no training: labels/dt=2026-10-09/part-0.parquet has no column 'churned' "
        "([dataset] label); it has: customer_id, label"
    )
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == f"batchscore: {why}"
    assert "Traceback" not in err
    records = sorted((store / "models" / "churn" / "retrains").iterdir())
    last = json.loads(records[-1].read_text())
    assert (last["status"], last["decision"], last["reason"]) == ("failed", why, "renamed")
    assert (last["version"], last["champion"]) == (None, "v0001")
    assert last["run_id"]  # the retrain flow's run, which ended Failed with this message
    # Nothing was trained: the drift policy's cooldown has not started.
    assert Registry(str(store), "churn").last_retrain_at() is None


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda meta: '{"name": "churn", ', "not valid JSON (18 bytes): "),
        (lambda meta: "{}", "key 'sha256' is missing"),
        (lambda meta: {**meta, "metrics": None}, "key 'metrics' holds null, not an object"),
        (lambda meta: _without(meta, "training_window"), "key 'training_window' is missing"),
        (lambda meta: _without(meta, "created_at"), "key 'created_at' is missing"),
    ],
)
def test_models_list_names_an_unreadable_version_and_lists_the_others(
    trained: dict, tmp_path: Path, damage, problem: str
):
    """A version whose metadata.json lacks a key the listing prints (`{}`: KeyError:
    'metrics'), or holds another type there, is named as an unreadable one is."""
    config, store = _config_for(trained, "after-two", tmp_path)
    meta = store / "models" / "churn" / "v0002" / "metadata.json"
    damaged = damage(json.loads(meta.read_text()))
    meta.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))

    code, out, err = _run("models", "list", "--config", str(config))

    assert (code, err) == (0, "")
    versions = _version_lines(out)
    assert _version_line("v0001", champion=True, parent="-").fullmatch(versions[0]), versions[0]
    assert versions[1].startswith(f"v0002  unreadable: {meta}: {problem}")
    assert len(_audit_lines(out)) == 1


def _without(document: dict, key: str) -> dict:
    return {k: v for k, v in document.items() if k != key}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("garbage\n", "its champion alias {alias}: not valid JSON (8 bytes): Expecting value"),
        ("v0009", "its champion alias {alias} names v0009, which is not a version under"),
    ],
)
def test_models_list_says_why_there_is_no_champion(
    trained: dict, tmp_path: Path, damage: str, message: str
):
    """An alias naming a version that is not there listed the versions as if none had ever
    been promoted; an unreadable one was a traceback."""
    config, store = _config_for(trained, "after-two", tmp_path)
    alias = store / "models" / "churn" / "champion.json"
    alias.write_text(alias.read_text().replace("v0001", damage) if damage == "v0009" else damage)

    code, out, err = _run("models", "list", "--config", str(config))

    assert (code, err) == (0, "")
    assert len(_version_lines(out)) == 2 and "champion" not in "".join(_version_lines(out))
    last = out.splitlines()[-1]
    assert last.startswith(f"no champion: model 'churn': {message.format(alias=alias)}"), last
    assert last.endswith(f"`batchscore models promote VERSION --config {config}`")


@pytest.mark.parametrize(
    ("target", "damage", "problem"),
    [
        ("v0001/metadata.json", lambda text: text[:20], "not valid JSON (20 bytes): "),
        ("champion.json", lambda text: text[:20], "not valid JSON (20 bytes): "),
        ("v0001/metadata.json", lambda text: "{}", "key 'sha256' is missing. "),
        ("champion.json", lambda text: "{}", "key 'version' is missing. "),
        (
            "v0001/metadata.json",
            lambda text: json.dumps(_without(json.loads(text), "profile")),
            "key 'profile' is missing. ",
        ),
    ],
)
def test_score_with_an_unreadable_metadata_or_alias_exits_2_naming_it(
    trained: dict, tmp_path: Path, no_server, target: str, damage, problem: str
):
    """A metadata.json of `{}` was KeyError: 'sha256'; one without `profile` passed the
    checks and failed every chunk in the workers."""
    config, store = _config_for(trained, "after-one", tmp_path)
    damaged = store / "models" / "churn" / target
    damaged.write_text(damage(damaged.read_text()))

    code, out, err = _run("score", "--config", str(config))

    assert (code, out) == (2, "")
    assert err.startswith("batchscore: model ") and err.count("\n") == 1
    assert f"{damaged}: {problem}" in err


def test_models_list_and_rollback_name_an_unreadable_audit_record(trained: dict, tmp_path: Path):
    config, store = _config_for(trained, "after-two", tmp_path)
    record = sorted((store / "models" / "churn" / "audit").glob("*.json"))[0]
    record.write_text("")

    code, out, err = _run("models", "list", "--config", str(config))
    assert (code, err) == (0, "")
    assert len(_version_lines(out)) == 2
    assert out.splitlines()[-1] == (
        f"  unreadable audit record: {record}: not valid JSON (0 bytes): Expecting value: "
        "line 1 column 1 (char 0)"
    )

    code, out, err = _run("models", "rollback", "--config", str(config))
    assert (code, out) == (2, "")
    assert err.startswith(f"batchscore: model 'churn': its audit record {record}: ")
    assert err.count("\n") == 1
