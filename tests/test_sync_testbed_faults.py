"""hpcnn sync when things go wrong on the real test bed: killed half-way through a large file,
two at once, a fold still running, the remote folder missing, then run the way cron runs it.
The folds are tiny shell jobs (no training); their result files are written on the cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from testbed_train import HPCNN, Bed, make_bed, remote_sha256, sha256, submit_fold_jobs

from hpcnn.nnunet.launcher import INFERENCE

pytestmark = pytest.mark.testbed
pytest_plugins = ("testbed_train",)  # the shared fixtures

MODEL = "Dataset501_Tiny/hpcnnTinyTrainer__nnUNetPlans__3d_fullres"
BIG_MB = 256  # takes a visible moment even over loopback


@pytest.fixture
def make(testbed, ssh_config, tiny_dataset, testbed_environment, tmp_path: Path, monkeypatch):
    made: list[Bed] = []

    def make(ssh: str) -> Bed:
        made.append(make_bed(tmp_path / "bed", tiny_dataset, testbed, ssh_config,
                             testbed_environment, ssh=ssh))
        monkeypatch.setenv("HPCNN_SSH_CONFIG", str(ssh_config))
        return made[-1]

    yield make
    for b in made:
        b.cli("cancel", "--yes")
        b.remove_remote()


@pytest.fixture(params=["openssh", "fabric"])
def bed(request, make) -> Bed:
    return make(request.param)


def _results(b: Bed, fold: int, big_mb: int = 1) -> None:
    """What a finished fold leaves in the remote nnUNet_results (a random 'checkpoint')."""
    b.remote(f"mkdir -p nnUNet_results/{MODEL}/fold_{fold}/validation && cd nnUNet_results/{MODEL}"
             " && echo '{}' > dataset.json && echo '{}' > plans.json"
             f" && head -c {big_mb}M /dev/urandom > fold_{fold}/checkpoint_final.pth"
             f" && echo 'epoch 0' > fold_{fold}/training_log_2026_12_1_10_00_00.txt"
             f" && echo '{{}}' > fold_{fold}/validation/summary.json"
             f" && head -c 1M /dev/urandom > fold_{fold}/checkpoint_latest.pth")


def _wait_states(b: Bed, want: list[str], timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while True:
        _, status = b.status()
        if [f["state"] for f in status["folds"]] == want or time.time() > deadline:
            return status
        time.sleep(2)


def test_a_killed_sync_two_at_once_and_cron(bed: Bed) -> None:
    """Fold 0 completed with a large checkpoint, fold 1 still running (its files must stay
    there). A sync SIGKILLed half-way through the checkpoint leaves no checkpoint_final.pth
    here; a second sync started meanwhile exits at once with the "locked" code; the next one
    (as cron runs it) removes the partial file and pulls every needed file sha256-identical;
    the one after says nothing."""
    b = bed
    submit_fold_jobs(b, {0: [["true"]], 1: [["sleep", "600"]]})
    _results(b, 0, BIG_MB)
    _results(b, 1)
    status = _wait_states(b, ["completed", "running"])
    assert [f["state"] for f in status["folds"]] == ["completed", "running"], status
    local = b.ws / "nnUNet_results" / MODEL
    final = local / "fold_0" / "checkpoint_final.pth"

    env = {**os.environ, "HPCNN_SSH_CONFIG": str(b.ssh_config)}
    first = subprocess.Popen([*HPCNN, "--config", str(b.config), "sync"], cwd=b.ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    partial, deadline = [], time.time() + 120
    while not partial and first.poll() is None and time.time() < deadline:
        partial = [p for p in (local / "fold_0").glob(".checkpoint_final.pth.*")
                   if 0 < p.stat().st_size < BIG_MB << 20] if final.parent.is_dir() else []
        time.sleep(0.005)
    second = b.cli("sync")
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    assert partial, "the download was never seen in progress"
    assert second.returncode == 12, second.stdout + second.stderr
    assert "another hpcnn sync is running" in second.stderr
    assert not final.exists(), "a killed download never takes the final name"

    res = b.cron("sync")
    assert res.returncode == 10, res.stdout + res.stderr  # fold 1 still running
    assert "left by an interrupted sync" in res.stdout, res.stdout
    remote = remote_sha256(b, f"nnUNet_results/{MODEL}")
    pulled = {str(p.relative_to(local)): sha256(p) for p in local.rglob("*") if p.is_file()}
    assert sorted(pulled) == ["dataset.json", "fold_0/checkpoint_final.pth",
                              "fold_0/training_log_2026_12_1_10_00_00.txt",
                              "fold_0/validation/summary.json", "plans.json"], sorted(pulled)
    assert all(remote[rel] == digest for rel, digest in pulled.items())
    again = b.cron("sync")
    assert (again.returncode, again.stdout, again.stderr) == (10, "", "")


def test_sync_lands_the_inference_checkpoint_under_the_final_name(bed: Bed) -> None:
    """Fold 0 has the launcher's inference checkpoint beside nnU-Net's, fold 1 was trained
    before hpcnn wrote one. sync brings fold 0's inference checkpoint as checkpoint_final.pth
    and fold 1's full one; a second sync moves nothing; --full-checkpoints brings nnU-Net's own
    file, which the next plain sync keeps."""
    b = bed
    submit_fold_jobs(b, {0: [["true"]], 1: [["true"]]})
    for fold in (0, 1):
        _results(b, fold, 2)
    b.remote(f"head -c 1M /dev/urandom > nnUNet_results/{MODEL}/fold_0/{INFERENCE}")
    _wait_states(b, ["completed", "completed"])
    remote = remote_sha256(b, f"nnUNet_results/{MODEL}")
    local = b.ws / "nnUNet_results" / MODEL
    res = b.cli("sync")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pulled fold_0/checkpoint_final.pth (the inference checkpoint, 1.05 MB" in \
        res.stdout, res.stdout
    assert sha256(local / "fold_0" / "checkpoint_final.pth") == remote[f"fold_0/{INFERENCE}"]
    assert sha256(local / "fold_1" / "checkpoint_final.pth") == \
        remote["fold_1/checkpoint_final.pth"], "a fold without one: nnU-Net's own file"
    assert not list(local.rglob(INFERENCE)) and not list(local.rglob("*.tmp-hpcnn"))
    again = b.cli("sync")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    full = b.cli("sync", "--full-checkpoints")
    assert full.returncode == 0 and "pulled fold_0/checkpoint_final.pth (2.1 MB" in full.stdout
    assert sha256(local / "fold_0" / "checkpoint_final.pth") == \
        remote["fold_0/checkpoint_final.pth"]
    again = b.cli("sync")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", ""), "the full file stays"


def test_a_completed_fold_whose_results_are_gone_is_named(bed: Bed) -> None:
    submit_fold_jobs(bed, {0: [["true"]]})
    _wait_states(bed, ["completed"])
    res = bed.cli("sync")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fold 0 is completed but" in res.stderr and "is not on the cluster" in res.stderr
    assert "--fresh --folds 0" in res.stderr
    assert not (bed.ws / "nnUNet_results").exists() or not any(
        (bed.ws / "nnUNet_results").rglob("*.pth"))


def test_a_job_killed_by_the_scheduler_is_not_completed(bed: Bed) -> None:
    """scancel from outside hpcnn (an admin, a preemption): the fold is `failed` with SIGTERM's
    status and a hint that says so (hpcnn's own cancel says `cancelled`), and sync pulls nothing
    of it."""
    _, ids = submit_fold_jobs(bed, {0: [["sleep", "600"]]})
    _wait_states(bed, ["running"])
    _results(bed, 0)  # files there, as a killed training leaves them
    subprocess.run(["scancel", ids[0]], check=True)
    status = _wait_states(bed, ["failed"], timeout=60)
    fold = status["folds"][0]
    assert fold["state"] == "failed" and fold["exit_code"] == 143, fold
    assert "stopped by SIGTERM, which hpcnn did not send" in fold["hint"], fold
    res = bed.cli("sync")
    assert res.returncode == 11, res.stdout + res.stderr
    assert not (bed.ws / "nnUNet_results" / MODEL / "fold_0").exists()


def test_the_installed_cron_line_syncs_in_a_bare_environment(make) -> None:
    """``sync --install-cron`` writes a line that works as cron runs it (``sh -c`` in $HOME
    with cron's own four variables); ``--uninstall-cron`` removes that line only."""
    import shutil

    from conftest import need

    need(shutil.which("crontab") is not None, "crontab is not installed (.ci/run installs cron)")
    b = make("openssh")
    submit_fold_jobs(b, {0: [["true"]]})
    _results(b, 0)
    _wait_states(b, ["completed"])
    saved = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    other = "17 3 * * * echo someone else's line"
    subprocess.run(["crontab", "-"], input=other + "\n", text=True, check=True)
    try:
        res = b.cli("sync", "--install-cron", "*/30 * * * *")
        assert res.returncode == 0, res.stdout + res.stderr
        lines = subprocess.run(["crontab", "-l"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        assert lines[0] == other and len(lines) == 2, lines
        fields = lines[1].split(None, 5)
        assert fields[:5] == ["*/30", "*", "*", "*", "*"]
        assert f"HPCNN_SSH_CONFIG={b.ssh_config}" in fields[5]
        home = Path.home()
        ran = subprocess.run(["env", "-i", f"HOME={home}", "LOGNAME=root", "SHELL=/bin/sh",
                              "PATH=/usr/bin:/bin", "/bin/sh", "-c",
                              fields[5].replace("\\%", "%")], cwd=home, capture_output=True,
                             text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        log = (b.ws / ".hpcnn" / "sync.log").read_text()
        assert "pulled fold_0/checkpoint_final.pth" in log, log
        local = b.ws / "nnUNet_results" / MODEL / "fold_0" / "checkpoint_final.pth"
        remote = remote_sha256(b, f"nnUNet_results/{MODEL}/fold_0")
        assert sha256(local) == remote["checkpoint_final.pth"]
        res = b.cli("sync", "--uninstall-cron")
        assert res.returncode == 0 and "removed" in res.stdout, res.stdout + res.stderr
        after = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True)
        assert after.stdout.splitlines() == [other]
    finally:
        if saved.returncode == 0:
            subprocess.run(["crontab", "-"], input=saved.stdout, text=True, check=True)
        else:
            subprocess.run(["crontab", "-r"], check=False, capture_output=True)
