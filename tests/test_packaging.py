"""The wheel: templates ship inside it, and the commands that run no nnU-Net here work in an
environment without nnunetv2 (a small cron host)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_without_nnunet(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(REPO)], check=True, timeout=300)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    wheel = next(wheels.glob("hpcnn-*.whl"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    probe = subprocess.run([str(py), "-c", "import nnunetv2"], capture_output=True)
    assert probe.returncode != 0, "the base install must not pull in nnunetv2"
    hpcnn = env_dir / "bin" / "hpcnn"
    work = tmp_path / "work"
    work.mkdir()
    (work / "cluster.yaml").write_text((REPO / "cluster.yaml.example").read_text())
    (work / "nnUNet_preprocessed" / "Dataset501_Liver").mkdir(parents=True)  # no cluster call
    out = subprocess.run([str(hpcnn), "render", "-s", "slurm", "-f", "0"], cwd=work,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --gres=gpu:2" in out.stdout and "Dataset501_Liver 3d_fullres 0" in out.stdout
    assert str(REPO) not in out.stdout  # templates came from the installed package
