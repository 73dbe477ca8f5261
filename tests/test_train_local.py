"""train-all-folds → status → logs → sync → cancel on the embedded default (the local
scheduler), with real nnU-Net training through hpcnn's launcher and the packaged tiny trainer,
driven through the CLI as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import local_queue_at
from models import copy_dataset, tiny_dataset  # noqa: F401  (tiny_dataset: fixture)

from hpcnn.nnunet.checkpoint import check_checkpoint
from hpcnn.nnunet.launcher import INFERENCE, INFERENCE_KEYS

HPCNN = [sys.executable, "-m", "hpcnn.cli.entry"]


def cli(ws: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HPCNN, *args], cwd=ws, capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def wait_status(ws: Path, done: set[int], timeout: float = 400, *args: str) -> dict:
    """Poll ``status --json`` until its exit code is in ``done``."""
    deadline = time.time() + timeout
    while True:
        res = cli(ws, "status", "--json", *args)
        if res.returncode in done or time.time() > deadline:
            assert res.returncode in done, res.stdout + res.stderr
            return json.loads(res.stdout)
        time.sleep(3)


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """Folds 0 and 1 of the tiny dataset trained through `hpcnn train-all-folds`."""
    ws = copy_dataset(tiny_dataset, tmp_path_factory.mktemp("local-train"))
    (ws / "cluster.yaml").write_text(
        "training: {dataset: Tiny, trainer: hpcnnTinyTrainer, device: cpu, max_resubmits: 1}\n"
        "resources: {cpus: 1, gpus: 0}\nlocal: {max_parallel: 2}\n")
    with local_queue_at(ws / "queue"):
        res = cli(ws, "train-all-folds", "--folds", "0", "--folds", "1")
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.count("submitted fold") == 4  # two attempts per fold
        wait_status(ws, {0, 11})
        yield ws


def test_both_folds_complete_with_a_final_checkpoint(trained: Path) -> None:
    status = wait_status(trained, {0})
    assert [f["state"] for f in status["folds"]] == ["completed", "completed"]
    model = trained / "nnUNet_results/Dataset501_Tiny/hpcnnTinyTrainer__nnUNetPlans__3d_fullres"
    for fold in status["folds"]:
        assert fold["epoch"] == fold["planned_epochs"] == 2
        assert len(fold["pseudo_dice"]) == 2 and fold["best_ema_dice"] is not None
        assert fold["attempt"] == 1 and fold["exit_code"] == 0 and fold["node"]
        assert (model / f"fold_{fold['fold']}" / "checkpoint_final.pth").is_file()
        # The launcher's inference checkpoint beside it: what prediction reads, weights only.
        slim = check_checkpoint(model / f"fold_{fold['fold']}" / INFERENCE)
        assert sorted(slim) == sorted(INFERENCE_KEYS), sorted(slim)
    # The job scripts and logs are private to the user (umask 077 in the job body).
    job_dir = next((trained / ".hpcnn" / "runs").glob("*/*-f0-a1"))
    assert (job_dir / "job.sh").stat().st_mode & 0o077 == 0
    assert (job_dir / "out.log").stat().st_mode & 0o077 == 0


def test_a_second_train_all_folds_submits_nothing(trained: Path) -> None:
    before = len(list((trained / "queue" / "jobs").glob("*.json")))
    res = cli(trained, "train-all-folds", "--folds", "0", "--folds", "1")
    assert res.returncode == 0, res.stderr
    assert "fold 0: already completed" in res.stdout and "submitted fold" not in res.stdout
    assert len(list((trained / "queue" / "jobs").glob("*.json"))) == before


def test_runs_logs_and_sync(trained: Path) -> None:
    res = cli(trained, "runs")
    assert res.stdout.startswith("501-hpcnnTinyTrainer-3d_fullres ")
    assert "f0:completed" in res.stdout and "f1:completed" in res.stdout
    res = cli(trained, "logs", "0")
    assert "hpcnn: job" in res.stdout and "started on" in res.stdout
    res = cli(trained, "logs", "1", "--training", "--tail", "3")
    assert len(res.stdout.splitlines()) == 3
    res = cli(trained, "logs", "7")
    assert res.returncode == 2 and "no fold 7" in res.stderr
    # Jobs run where the results already are: a sync moves nothing and says all is there.
    res = cli(trained, "sync")
    assert res.returncode == 0 and res.stdout == ""


def test_crash_after_the_scheduler_accepted_a_job_is_reconciled(trained: Path) -> None:
    """What a crash between the scheduler's answer and the registry leaves (intent recorded,
    job accepted, no id stored) is repaired by the next train-all-folds: nothing resubmitted."""
    from hpcnn.config import load_config_file
    from hpcnn.jobs import engine
    from hpcnn.jobs.model import fold_spec
    from hpcnn.jobs.script import render_job
    from hpcnn.services.session import Session
    from hpcnn.state import JobRow

    cfg = load_config_file(trained / "cluster.yaml")
    with Session(cfg) as session:
        run = session.new_run()
        spec = fold_spec(cfg, session.remote, run, 2)
        session.registry.add(JobRow(name=spec.name, run=run.id, kind="fold", fold=2, attempt=1,
                                    job_dir=spec.job_dir, scheduler="local", state="pending"))
        job_id = engine.submit(session.conn, session.dialect,
                               render_job(cfg, session.dialect, spec), spec.job_dir)
    res = cli(trained, "train-all-folds", "--folds", "2", "--dry-run")
    assert res.returncode == 0 and "f2-a1" not in res.stdout.split("what would run")[1]
    res = cli(trained, "train-all-folds", "--folds", "2")
    assert res.returncode == 0, res.stderr
    assert f"recovered job {spec.name}: the scheduler had accepted it as {job_id}" in res.stdout
    assert "submitted fold 2 attempt 1" not in res.stdout
    assert "submitted fold 2 attempt 2" in res.stdout  # its continuation was never submitted
    # Cancel the fold: its running attempt and its queued continuation.
    res = cli(trained, "cancel", "--folds", "2", "--yes")
    assert res.returncode == 0 and res.stdout.count("cancelled ") == 2, res.stdout
    status = wait_status(trained, {11})
    fold2 = next(f for f in status["folds"] if f["fold"] == 2)
    assert fold2["state"] == "cancelled"
    time.sleep(2)
    continuation = next((trained / ".hpcnn" / "runs").glob("*/*-f2-a2"))
    assert not (continuation / "started").exists()  # the continuation never ran
