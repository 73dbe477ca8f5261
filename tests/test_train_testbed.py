"""train-all-folds → status → sync on the real test bed (sshd + Slurm, Torque wrappers), as a
user runs them: the tiny five-fold model trained ONCE through the torque dialect (Slurm's real
qsub over SSH), two folds through the slurm dialect into a remote_dir full of shell syntax, and
a fold that outlives a one-minute walltime twice: stopped by hpcnn's launcher before it (a
margin), and by Slurm's SIGTERM (margin 0)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from testbed_train import MODEL, Bed, make_bed, remote_sha256, sha256

from hpcnn.nnunet.checkpoint import check_checkpoint
from hpcnn.nnunet.launcher import INFERENCE, INFERENCE_KEYS

pytestmark = pytest.mark.testbed
pytest_plugins = ("testbed_train",)  # the shared fixtures

TAG = uuid.uuid4().hex[:8]
CANARY = f"pwned-{TAG}"
NEEDED = re.compile(r"(dataset\.json|plans\.json|dataset_fingerprint\.json|fold_\d/("
                    r"checkpoint_final\.pth|progress\.png|training_log_[\d_]+\.txt|debug\.json|"
                    r"validation/summary\.json|hpcnn_provenance\.json))")
"""What prediction and review need of a model folder, and nothing else (issue 10)."""


@pytest.fixture(scope="module")
def beds(testbed, ssh_config, tiny_dataset, testbed_environment,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Bed]]:
    """Five folds through the torque dialect and folds 0, 1 through slurm (with a remote_dir and
    an environment variable holding quotes, spaces and ``$(...)``), submitted together (the test
    bed runs two 1-CPU jobs at once) and trained to the end."""
    torque = make_bed(tmp_path_factory.mktemp("torque"), tiny_dataset, testbed, ssh_config,
                      testbed_environment)
    slurm = make_bed(tmp_path_factory.mktemp("slurm"), tiny_dataset, testbed, ssh_config,
                     testbed_environment, scheduler="slurm", ssh="openssh",
                     remote_dir=f"hpcnn-tests/sp ace 'q' \"d\" $(touch {CANARY})-{TAG}",
                     training={"folds": [0, 1]},
                     environment={"variables": {"HPCNN_TEST_WORDS": f"a 'b' $(touch {CANARY})"}})
    try:
        for bed in (torque, slurm):
            res = bed.cli("train-all-folds", timeout=600)
            assert res.returncode == 0, res.stdout + res.stderr
        assert torque.cli("status").returncode == 10  # queued or running, right after
        yield {"torque": torque, "slurm": slurm}
    finally:
        for bed in (torque, slurm):
            bed.cli("cancel", "--yes")
            bed.remove_remote()


@pytest.fixture(scope="module")
def trained(beds: dict[str, Bed]) -> dict[str, dict]:
    """Both runs completed: their final ``status --json``."""
    return {name: bed.wait({0, 11}, timeout=900) for name, bed in beds.items()}


@pytest.mark.parametrize("name,folds", [("torque", [0, 1, 2, 3, 4]), ("slurm", [0, 1])])
def test_every_fold_completes_with_a_final_checkpoint_on_the_cluster(
        beds: dict[str, Bed], trained: dict[str, dict], name: str, folds: list[int]) -> None:
    status, bed = trained[name], beds[name]
    assert status["exit_code"] == 0 and status["scheduler_answered"], status
    assert [f["fold"] for f in status["folds"]] == folds
    remote = bed.remote(f"ls nnUNet_results/{MODEL}/fold_*/checkpoint_final.pth").split()
    assert remote == [f"nnUNet_results/{MODEL}/fold_{f}/checkpoint_final.pth" for f in folds]
    for fold in status["folds"]:
        assert fold["state"] == "completed" and fold["exit_code"] == 0, fold
        assert fold["epoch"] == fold["planned_epochs"] == 2, fold
        assert fold["attempt"] == 1 and fold["attempts"] == 2, fold  # + its continuation
        assert fold["node"] == bed.testbed["TESTBED_NODE"] and fold["job_id"], fold
        assert len(fold["pseudo_dice"]) == 2 and fold["best_ema_dice"] is not None, fold
        assert fold["error_tail"] == "" and fold["hint"] == "", fold


def test_shell_syntax_in_remote_dir_and_variables_stays_data(beds, trained, testbed) -> None:
    bed = beds["slurm"]
    found = bed.remote(f"cd && find . -name '{CANARY}*' 2>/dev/null; true")
    assert found == "" and not list(Path.home().glob(f"{CANARY}*"))
    job_dir = bed.remote("ls -d .hpcnn/runs/*/*-f0-a1").strip()
    env = bed.remote(f"cat {job_dir}/job.sh")
    assert f"HPCNN_TEST_WORDS='a '\"'\"'b'\"'\"' $(touch {CANARY})'" in env


def test_sync_pulls_exactly_what_prediction_needs_identical_to_the_remote(beds, trained) -> None:
    bed = beds["torque"]
    res = bed.cli("sync")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "folds synced: 0, 1, 2, 3, 4" in res.stdout
    remote = remote_sha256(bed, f"nnUNet_results/{MODEL}")
    needed = {rel: digest for rel, digest in remote.items() if NEEDED.fullmatch(rel)}
    left = set(remote) - set(needed)  # e.g. the validation cases' segmentations
    assert any(rel.startswith("fold_0/validation/") for rel in left), sorted(remote)
    for fold in range(5):  # the launcher's inference checkpoint lands under the final name
        needed[f"fold_{fold}/checkpoint_final.pth"] = remote[f"fold_{fold}/{INFERENCE}"]
    local_dir = bed.ws / "nnUNet_results" / MODEL
    local = {str(p.relative_to(local_dir)): sha256(p) for p in local_dir.rglob("*")
             if p.is_file()}
    assert local == needed
    for fold in range(5):
        checkpoint = check_checkpoint(local_dir / f"fold_{fold}" / "checkpoint_final.pth")
        assert sorted(checkpoint) == sorted(INFERENCE_KEYS), "weights and what predict reads"


def test_a_second_sync_moves_nothing_and_says_nothing(beds, trained) -> None:
    bed = beds["torque"]
    local_dir = bed.ws / "nnUNet_results" / MODEL
    before = {p: p.stat().st_mtime_ns for p in local_dir.rglob("*") if p.is_file()}
    res = bed.cli("sync")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert {p: p.stat().st_mtime_ns for p in local_dir.rglob("*") if p.is_file()} == before


def test_sync_as_cron_runs_it(beds, trained) -> None:
    """``env -i``, working directory ``/``, no terminal, ``--config`` absolute: a fold removed
    here comes back identical to the remote one."""
    import shutil

    bed = beds["torque"]
    local_dir = bed.ws / "nnUNet_results" / MODEL
    shutil.rmtree(local_dir / "fold_3")
    res = bed.cron("sync")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fold_3/checkpoint_final.pth" in res.stdout and "fold_0/" not in res.stdout
    remote = remote_sha256(bed, f"nnUNet_results/{MODEL}/fold_3")
    remote["checkpoint_final.pth"] = remote[INFERENCE]
    pulled = {str(p.relative_to(local_dir / "fold_3")): sha256(p)
              for p in (local_dir / "fold_3").rglob("*") if p.is_file()}
    assert pulled and all(remote[rel] == digest for rel, digest in pulled.items())


def test_a_second_train_all_folds_submits_nothing(beds, trained) -> None:
    bed = beds["torque"]
    queued = bed.remote("ls .hpcnn/runs/*/ | wc -l")
    res = bed.cli("train-all-folds")
    assert res.returncode == 0, res.stderr
    assert "submitted fold" not in res.stdout
    assert res.stdout.count(": already completed") == 5, res.stdout
    assert bed.remote("ls .hpcnn/runs/*/ | wc -l") == queued
    runs = bed.cli("runs").stdout
    assert runs.count(":completed") == 5 and len(runs.splitlines()) == 1, runs


# ---- walltime: one fold on the `short` partition (MaxTime 1 min), too long for one attempt

# Every epoch lasts at least EPOCH_SECONDS (the tiny trainer waits at its end), so the number of
# epochs one attempt can train has a bound whatever the machine's load: with the margin, the
# launcher stops before 35 s (60 s walltime - 25 s margin), well under 10 epochs after start-up;
# without it, Slurm's SIGTERM comes at 60 s, under 16 epochs. Each attempt trains at least one.
EPOCH_SECONDS = 4
WALLTIME_EPOCHS = {"margin": 10, "sigterm": 16}


@pytest.fixture(scope="module")
def walltime_beds(testbed, ssh_config, tiny_dataset, testbed_environment,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Bed]]:
    """Fold 0 with a margin through torque, and with margin 0 through slurm, run together and
    synced (training logs, final checkpoint, provenance) once complete."""
    made = {}
    for name, scheduler, margin in (("margin", "torque", "25s"), ("sigterm", "slurm", "0")):
        made[name] = make_bed(
            tmp_path_factory.mktemp(f"walltime-{name}"), tiny_dataset, testbed, ssh_config,
            testbed_environment, scheduler=scheduler,
            training={"folds": [0], "walltime_margin": margin, "max_resubmits": 8},
            environment={"variables": {"HPCNN_TINY_EPOCHS": str(WALLTIME_EPOCHS[name]),
                                       "HPCNN_TINY_EPOCH_SECONDS": str(EPOCH_SECONDS)}})
    try:
        for bed in made.values():
            res = bed.cli("train-all-folds", "--queue", "short", "--walltime", "0:01:00")
            assert res.returncode == 0, res.stdout + res.stderr
        for bed in made.values():
            bed.wait({0, 11}, timeout=900)
            assert bed.cli("sync").returncode == 0
        yield made
    finally:
        for bed in made.values():
            bed.cli("cancel", "--yes")
            bed.remove_remote()


@pytest.mark.parametrize("name,stop", [("margin", "deadline"), ("sigterm", "signal SIGTERM")])
def test_a_fold_outlives_its_walltime(walltime_beds: dict[str, Bed], name: str,
                                      stop: str) -> None:
    import torch

    from hpcnn.nnunet.training_log import read_fold

    bed, epochs = walltime_beds[name], WALLTIME_EPOCHS[name]
    code, status = bed.status()
    fold = status["folds"][0]
    assert code == 0 and fold["state"] == "completed" and fold["attempt"] >= 2, status
    folder = bed.ws / "nnUNet_results" / MODEL / "fold_0"
    log = read_fold(folder)
    assert log.attempts >= 2 and log.repeated == [], (log.attempts, log.repeated)
    assert [e.epoch for e in log.epochs] == list(range(epochs))
    assert all(e.epoch_time >= EPOCH_SECONDS for e in log.epochs), log.epochs
    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == epochs
    attempts = json.loads((folder / "hpcnn_provenance.json").read_text())["attempts"]
    trained = [a for a in attempts if "start_epoch" in a]
    stopped = [a for a in trained if a["outcome"].startswith("stopped for continuation")]
    # "deadline" or "before validation: deadline"; the same for the signal. Validation is not
    # budgeted by the deadline (its length is unknown): Slurm's SIGTERM may stop it in either case.
    assert len(stopped) >= 1, attempts
    assert all(stop in a["stopped"] or a["stopped"] == "during validation: signal SIGTERM"
               for a in stopped), attempts
    for before, after in zip(trained, trained[1:], strict=False):
        # Each continuation resumed from checkpoint_latest.pth where the one before stopped:
        # no checkpoint_final.pth of a partial model was there to load. An attempt that trained
        # the last epoch and then had no time to validate (or was stopped while validating)
        # leaves nnU-Net's final checkpoint of the finished model; its continuation only
        # validates.
        assert after["start_epoch"] == before["next_epoch"] <= epochs, attempts
        if before["next_epoch"] == epochs:
            assert before["stopped"].startswith(("before validation", "during validation")), \
                attempts
    assert trained[-1]["outcome"] == "completed" and trained[-1]["next_epoch"] == epochs
