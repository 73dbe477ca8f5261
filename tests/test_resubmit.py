"""``train-all-folds --resubmit-failed`` recovers a fold that really failed (issue 19, defect 0),
on the local scheduler and on the test bed's Slurm, through the CLI as a user runs it.

The fold trains with a trainer that runs out of memory after its first epoch while a flag file
beside it exists (the user's mistake); its continuations then exit 98 without training. The user
removes the flag (the fix: more memory) and resubmits: the new chain's first attempt runs,
resumes from the epoch-0 checkpoint with ``--c`` and completes, and status shows the new chain,
not the old failure. One fold, two epochs of one iteration in all."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import local_queue_at
from conftest import testbed_ssh as ssh_argv
from test_train_local import cli, wait_status
from testbed_train import Bed, make_bed

pytest_plugins = ("testbed_train",)  # the shared fixtures (tiny_dataset, ssh_config)

TRAINER = "hpcnnFailingTrainer"
FLAG = "fail-after-epoch-0"
FAILING_TRAINER = f'''
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

FLAG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "{FLAG}")


class {TRAINER}(nnUNetTrainer):
    """2 epochs of 1 iteration, out of memory after epoch 0 (its checkpoint_latest.pth
    written) while FLAG exists."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch = 2, 1
        self.num_val_iterations_per_epoch, self.save_every = 1, 1

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        if os.path.exists(FLAG):
            raise MemoryError("out of memory (hpcnn test: {FLAG} exists)")
'''
MODEL = f"Dataset501_Tiny/{TRAINER}__nnUNetPlans__3d_fullres"


def _launcher_line(job_sh: str) -> str:
    return next(line for line in job_sh.splitlines() if "launcher.py" in line)


def _check_the_failed_chain(status: dict, exit_codes: dict[int, int]) -> None:
    """Attempt 1 failed (exit 1, its error shown); every continuation exited 98 untrained."""
    fold = status["folds"][0]
    assert (fold["state"], fold["attempt"], fold["exit_code"]) == ("failed", 1, 1), fold
    assert "MemoryError: out of memory" in fold["error_tail"], fold
    assert exit_codes == {1: 1, **{a: 98 for a in range(2, len(exit_codes) + 1)}}, exit_codes


def _check_the_new_chain(status: dict, first: int, attempts: int) -> None:
    fold = status["folds"][0]
    assert (fold["state"], fold["attempt"], fold["exit_code"]) == ("completed", first, 0), fold
    assert fold["attempts"] == attempts and fold["error_tail"] == "", fold
    assert fold["epoch"] == fold["planned_epochs"] == 2, fold


def _check_scripts(scripts: dict[int, str], first: int) -> None:
    """A fresh first attempt gets no --c; continuations check the attempt before them and
    resume; the resubmitted chain's first attempt checks nothing and resumes."""
    assert "--c" not in _launcher_line(scripts[1]).split() and "hpcnn-guard" not in scripts[1]
    assert "--c" in _launcher_line(scripts[2]).split() and "hpcnn-guard" in scripts[2]
    assert "--c" in _launcher_line(scripts[first]).split(), scripts[first]
    assert "hpcnn-guard" not in scripts[first], scripts[first]
    guard = re.search(r"hpcnn-guard (\S+)", scripts[first + 1])
    assert guard and guard.group(1).endswith(f"-f0-a{first}"), scripts[first + 1]


def _check_resumed(provenance: dict) -> None:
    """The old chain trained epoch 0 and failed; the new one resumed at epoch 1 (--c from
    checkpoint_latest.pth) and completed: no epoch trained twice."""
    trained = [a for a in provenance["attempts"] if "start_epoch" in a or a["outcome"] == "failed"]
    assert [a["outcome"] for a in trained][:2] == ["failed", "completed"], trained
    assert trained[1]["start_epoch"] == 1 and trained[1]["next_epoch"] == 2, trained


# ---- the local scheduler -----------------------------------------------------------------


@pytest.fixture
def local_ws(tiny_dataset: Path, tmp_path: Path) -> Iterator[Path]:
    ws = tmp_path / "ws"
    for tree in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(tiny_dataset / tree, ws / tree)
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "failing_trainer.py").write_text(FAILING_TRAINER)
    (ext / FLAG).touch()
    (ws / "cluster.yaml").write_text(
        f"training: {{dataset: Tiny, trainer: {TRAINER}, device: cpu, max_resubmits: 2, "
        "folds: [0]}\nresources: {cpus: 1, gpus: 0}\nlocal: {max_parallel: 1}\n"
        f"environment: {{variables: {{nnUNet_extTrainer: {json.dumps(str(ext))}}}}}\n")
    with local_queue_at(tmp_path / "queue"):
        yield ws
        cli(ws, "cancel", "--yes")


def _local_exit_codes(ws: Path) -> dict[int, int]:
    return {int(p.parent.name.rsplit("-a", 1)[1]): int(p.read_text().split()[0])
            for p in (ws / ".hpcnn" / "runs").glob("*/*-f0-a*/exit_code")}


def test_resubmit_failed_recovers_a_failed_fold_on_the_local_scheduler(local_ws: Path) -> None:
    ws = local_ws
    res = cli(ws, "train-all-folds")
    assert res.returncode == 0 and res.stdout.count("submitted fold 0") == 3, res.stdout + \
        res.stderr
    failed = wait_status(ws, {11})
    _check_the_failed_chain(failed, _local_exit_codes(ws))
    fold_dir = ws / "nnUNet_results" / MODEL / "fold_0"
    assert (fold_dir / "checkpoint_latest.pth").is_file()
    out1 = (next((ws / ".hpcnn" / "runs").glob("*/*-f0-a1")) / "out.log").read_text()
    assert "Cannot continue training" not in out1  # a fresh fold's first attempt: no --c

    (local_ws.parent / "ext" / FLAG).unlink()  # the user's fix
    res = cli(ws, "train-all-folds", "--resubmit-failed")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [f"attempt {a}" in res.stdout for a in (4, 5, 6)] == [True] * 3, res.stdout
    now = json.loads(cli(ws, "status", "--json").stdout)["folds"][0]
    assert now["attempt"] == 4 and now["state"] in ("queued", "running"), now  # the new chain
    _check_the_new_chain(wait_status(ws, {0}), first=4, attempts=6)
    scripts = {a: next((ws / ".hpcnn" / "runs").glob(f"*/*-f0-a{a}/job.sh")).read_text()
               for a in range(1, 7)}
    _check_scripts(scripts, first=4)
    _check_resumed(json.loads((fold_dir / "hpcnn_provenance.json").read_text()))


# ---- the test bed's Slurm ----------------------------------------------------------------


@pytest.fixture
def slurm_bed(testbed, ssh_config, tiny_dataset, testbed_environment,
              tmp_path: Path) -> Iterator[Bed]:
    remote_dir = f"hpcnn-tests/{os.getpid()}-resubmit-{tmp_path.name}"
    ext = f"{testbed['TESTBED_HOME']}/{remote_dir}/ext"
    bed = make_bed(tmp_path, tiny_dataset, testbed, ssh_config, testbed_environment,
                   scheduler="slurm", remote_dir=remote_dir,
                   training={"trainer": TRAINER, "folds": [0], "max_resubmits": 1},
                   environment={"variables": {"nnUNet_extTrainer": ext}})
    subprocess.run([*ssh_argv(testbed), f"mkdir -p {shlex.quote(remote_dir)}"], check=True,
                   capture_output=True, timeout=60)
    bed.remote(f"mkdir -p ext && printf %s {shlex.quote(FAILING_TRAINER)} > ext/failing.py "
               f"&& touch ext/{FLAG}")
    try:
        yield bed
    finally:
        bed.cli("cancel", "--yes")
        bed.remove_remote()


@pytest.mark.testbed
def test_resubmit_failed_recovers_a_failed_fold_on_slurm(slurm_bed: Bed) -> None:
    bed = slurm_bed
    res = bed.cli("train-all-folds")
    assert res.returncode == 0 and res.stdout.count("submitted fold 0") == 2, res.stdout + \
        res.stderr
    failed = bed.wait({11}, timeout=600)
    codes = bed.remote("head -qn 1 .hpcnn/runs/*/*-f0-a1/exit_code "
                       ".hpcnn/runs/*/*-f0-a2/exit_code").split()
    _check_the_failed_chain(failed, {1: int(codes[0]), 2: int(codes[1])})

    bed.remote(f"rm ext/{FLAG}")  # the user's fix
    res = bed.cli("train-all-folds", "--resubmit-failed")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "attempt 3" in res.stdout and "attempt 4" in res.stdout, res.stdout
    code, now = bed.status()
    assert code == 10 and now["folds"][0]["attempt"] == 3, now  # the new chain, not attempt 1
    _check_the_new_chain(bed.wait({0}, timeout=600), first=3, attempts=4)
    scripts = {a: bed.remote(f"cat .hpcnn/runs/*/*-f0-a{a}/job.sh") for a in range(1, 5)}
    _check_scripts(scripts, first=3)
    _check_resumed(json.loads(bed.remote(f"cat nnUNet_results/{MODEL}/fold_0/"
                                         "hpcnn_provenance.json")))
