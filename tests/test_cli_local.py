"""init, doctor and render as a user runs them, on the local backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcnn.config import load_config


def _device() -> str:
    """What this machine trains on (doctor fails a training.device it does not have)."""
    from hpcnn.nnunet.predict import resolve_device

    return resolve_device("auto")


@pytest.fixture
def queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HPCNN_LOCALQ_DIR", str(tmp_path / "localq"))
    return tmp_path / "localq"


def test_init_writes_a_loadable_config_and_never_overwrites(workspace: Path, hpcnn) -> None:
    code, out, _ = hpcnn("init", "-y", "--scheduler", "torque", "--host", "login.example.org",
                         "--queue", "gpu", "--walltime", "5:00:00", "--gpus", "2", "--mem", "64gb",
                         "--mail", "me@example.org", "--setup", "conda activate nnunet")
    assert code == 0 and "wrote cluster.yaml" in out
    cfg = load_config(workspace / "cluster.yaml")
    assert cfg.cluster.host == "login.example.org" and cfg.resources.walltime == 18000
    assert cfg.resources.mail_events == "e"
    assert cfg.environment.setup == ["conda activate nnunet"]
    before = (workspace / "cluster.yaml").read_text()
    code, _, err = hpcnn("init", "-y", "--scheduler", "slurm", "--host", "other")
    assert code == 2 and "already exists" in err and "--force" in err
    assert (workspace / "cluster.yaml").read_text() == before
    code, _, _ = hpcnn("init", "-y", "--scheduler", "slurm", "--host", "other", "--force")
    assert code == 0 and load_config(workspace / "cluster.yaml").cluster.scheduler == "slurm"


def test_init_rejects_bad_answers_and_writes_nothing(workspace: Path, hpcnn) -> None:
    code, _, err = hpcnn("init", "-y", "--scheduler", "torque", "--host", "h", "--walltime",
                         "5 hours")
    assert code == 2 and "walltime" in err
    assert not (workspace / "cluster.yaml").exists()


def test_doctor_probe_passes_locally(workspace: Path, queue: Path, hpcnn,
                                     nnunet_available: None) -> None:
    (workspace / "cluster.yaml").write_text(f"training: {{device: {_device()}}}\n")
    code, out, _ = hpcnn("doctor", "--probe", "--probe-timeout", "60")
    assert code == 0, out
    assert "[ok  ] probe job" in out and "nnunetv2 2." in out
    assert "all checks passed" in out


def test_doctor_probe_reports_setup_failure(workspace: Path, queue: Path, hpcnn) -> None:
    (workspace / "cluster.yaml").write_text(
        f"training: {{device: {_device()}}}\n"
        "environment:\n  setup:\n    - conda activate does-not-exist-env\n")
    code, out, err = hpcnn("doctor", "--probe", "--probe-timeout", "60")
    assert code == 1
    assert "[FAIL] probe job" in out and "environment setup failed" in out
    assert "fix environment.setup" in out
    assert "first broken link: probe job" in err


def test_render_prints_every_fold(workspace: Path, hpcnn) -> None:
    (workspace / "nnUNet_preprocessed" / "Dataset012_Heart").mkdir(parents=True)
    (workspace / "cluster.yaml").write_text("training:\n  dataset: Heart\n  folds: [0, 2]\n")
    code, out, _ = hpcnn("render")
    assert code == 0
    assert "===== hpcnn-012-nnUNetTrainer-3d_fullres-f0-a1 =====" in out
    assert "===== hpcnn-012-nnUNetTrainer-3d_fullres-f2-a1 =====" in out
    assert " Dataset012_Heart 3d_fullres 0 " in out  # nnU-Net gets the resolved folder name
    assert "f1-a1" not in out


def test_render_to_folder(workspace: Path, hpcnn) -> None:
    (workspace / "nnUNet_raw" / "Dataset005_Prostate").mkdir(parents=True)
    code, out, _ = hpcnn("render", "--dataset", "5", "-f", "1", "-o", "scripts")
    assert code == 0
    script = workspace / "scripts" / "hpcnn-005-nnUNetTrainer-3d_fullres-f1-a1.sh"
    assert script.read_text().startswith("#!/bin/bash\n")


def test_render_without_dataset_explains(workspace: Path, hpcnn) -> None:
    code, _, err = hpcnn("render")
    assert code == 2 and "training.dataset" in err


def on_terminal(cwd: Path, args: list[str], answers: list[str]) -> tuple[int, str]:
    """``hpcnn ARGS`` on a pseudo-terminal, each answer typed when a question waits."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hpcnn.cli.entry", *args], stdin=slave,
                            stdout=slave, stderr=slave, cwd=cwd, close_fds=True)
    os.close(slave)
    answers = list(answers)
    output = b""
    deadline = time.time() + 30
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if chunk.rstrip().endswith((b":", b"]:", b"):")) and answers:
            os.write(master, (answers.pop(0) + "\n").encode())
    if proc.poll() is None:  # stuck at a question nobody answers
        proc.kill()
    proc.wait(timeout=10)
    os.close(master)
    assert not answers, f"questions not asked: {answers}\n{output.decode(errors='replace')}"
    return proc.returncode, output.decode(errors="replace")


def test_init_asks_on_a_terminal(workspace: Path) -> None:
    """On a terminal, init asks for what no flag gave, checks each answer as it is typed and
    asks again (answers typed into a pseudo-terminal)."""
    code, output = on_terminal(workspace, ["init", "--host", "login.example.org"], [
        "slurm", "me", "", "gpu", "5 hours", "2h", "1", "16 gigs", "16gb",
        "module load nnunet", "Liver"])
    assert code == 0, output
    assert "Scheduler (local: run jobs on this machine) (" in output and "[auto]:" in output
    assert "cannot read walltime '5 hours'" in output
    assert "cannot read memory size '16 gigs'" in output
    cfg = load_config(workspace / "cluster.yaml")
    assert (cfg.cluster.scheduler, cfg.cluster.host, cfg.cluster.user) == (
        "slurm", "login.example.org", "me")
    assert cfg.cluster.remote_dir == "hpcnn"  # the default, accepted with Enter
    assert (cfg.resources.queue, cfg.resources.walltime, cfg.resources.gpus) == ("gpu", 7200, 1)
    assert cfg.resources.mem == 16 * 1024
    assert cfg.environment.setup == ["module load nnunet"]
    assert cfg.training.dataset == "Liver"


def test_init_for_this_machine_asks_the_device(workspace: Path) -> None:
    """Enter at every question: the scheduler -y would write (local here, no host), the device
    this machine has, no dataset yet; doctor then passes the device check."""
    code, output = on_terminal(workspace, ["init"], ["", "", ""])
    assert code == 0, output
    assert "[local]:" in output and "Device to train on" in output
    cfg = load_config(workspace / "cluster.yaml")
    assert cfg.cluster.scheduler == "local" and cfg.training.device == _device()
    assert cfg.training.dataset is None


def test_init_notices_an_existing_file_before_asking(workspace: Path) -> None:
    (workspace / "cluster.yaml").write_text("cluster: {scheduler: slurm, host: h}\n")
    code, output = on_terminal(workspace, ["init"], [])
    assert code == 2 and "cluster.yaml already exists" in output and "--force" in output
    assert "Scheduler" not in output
    assert (workspace / "cluster.yaml").read_text() == "cluster: {scheduler: slurm, host: h}\n"


def test_doctor_fails_a_training_device_this_machine_lacks(workspace: Path, queue: Path,
                                                          hpcnn) -> None:
    missing = "cuda" if _device() != "cuda" else "mps"
    (workspace / "cluster.yaml").write_text(f"training: {{device: {missing}}}\n")
    code, out, err = hpcnn("doctor")
    assert code == 1 and "[FAIL] training device" in out and "all checks passed" not in out
    assert f"training: {{device: {_device()}}}" in out and "first broken link" in err


def test_probe_that_times_out_is_cancelled(workspace: Path, queue: Path, hpcnn) -> None:
    """A probe stuck behind a busy queue must not stay queued to run later."""
    import json
    import time

    from hpcnn.config import Config
    from hpcnn.jobs import engine as jobs
    from hpcnn.jobs.model import JobSpec
    from hpcnn.jobs.script import render_job
    from hpcnn.remote.local import LocalConnection
    from hpcnn.schedulers import get_dialect

    dialect, flag = get_dialect("local"), workspace / "release"
    blocker_dir = str(workspace / "blocker")
    text = render_job(Config(workspace=workspace), dialect, JobSpec(
        run="t", name="blocker", job_dir=blocker_dir,
        commands=[["bash", "-c", f"while [ ! -e {flag} ]; do sleep 0.1; done"]]))
    jobs.submit(LocalConnection(), dialect, text, blocker_dir)
    (workspace / "cluster.yaml").write_text(f"training: {{device: {_device()}}}\n")
    try:
        code, out, _ = hpcnn("doctor", "--probe", "--probe-timeout", "2")
        assert code == 1 and "was cancelled" in out
        states = {r["name"]: r["state"] for r in
                  (json.loads(p.read_text()) for p in (queue / "jobs").glob("*.json"))}
        probe = [s for n, s in states.items() if n.startswith("hpcnn-probe-")]
        assert probe == ["cancelled"]
    finally:
        flag.touch()
        time.sleep(0.5)


def test_doctor_unreachable_cluster_exits_3(workspace: Path, hpcnn) -> None:
    """A closed port on this machine: refused at once, the first broken link is ssh."""
    (workspace / "cluster.yaml").write_text(
        "cluster:\n  scheduler: slurm\n  host: 127.0.0.1\n  port: 1\n  connect_timeout: 5\n")
    code, out, err = hpcnn("doctor")
    assert code == 3, out + err
    assert "[FAIL] ssh reachable" in out and "first broken link: ssh" in err
