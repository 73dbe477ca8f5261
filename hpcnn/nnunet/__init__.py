"""What runs nnU-Net code: the trainers hpcnn ships and the in-job launcher.

The files under this package that run on a cluster (``trainers/``, ``launcher.py``) import
nnunetv2 and the standard library only; this module only names where they are, so that hpcnn can
point ``nnUNet_extTrainer`` at them locally and push them to a cluster.
"""

from __future__ import annotations

from pathlib import Path

TINY_TRAINER = "hpcnnTinyTrainer"
DEMO_TRAINER = "hpcnnDemoTrainer"
EPOCHS_VARIABLE = "HPCNN_TINY_EPOCHS"

_HERE = Path(__file__).resolve().parent


def trainer_dir() -> Path:
    """The directory to put in ``nnUNet_extTrainer``: it holds hpcnn's trainer modules only."""
    return _HERE / "trainers"


def trainer_files() -> list[Path]:
    """The trainer modules to push with the job files (all of them: nnU-Net imports them all)."""
    return sorted(trainer_dir().glob("*.py"))


def launcher_path() -> Path:
    """The standalone launcher that fold jobs run with the cluster's python."""
    return _HERE / "launcher.py"
