"""Two configurations of the tiny model, ready for the whole method (find-best, ensembles).

``method_workspace`` (session) copies the workspace of ``models.tiny_model`` (3d_fullres folds 0
and 1, trained without ``--npz``), preprocesses 2d with the same plans, re-runs the 3d_fullres
validations with ``--npz`` (``nnUNetv2_train --val --npz``: seconds, no training) and trains
folds 0 and 1 of 2d with ``--npz`` (stock nnU-Net, the tiny trainer). What it adds costs about
one minute on 2 cores; the 3d_fullres training is the tiny model's, shared with other tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from models import CONFIGURATION, DATASET, FOLDS, tiny_model, training_env  # noqa: F401

TRAINER = "hpcnnTinyTrainer"
CONFIGURATIONS = ("2d", CONFIGURATION)

_built: list[Path] = []


def _run(root: Path, name: str, argv: list[str]) -> None:
    log = root / f"{name}.log"
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run(argv, env=training_env(root), stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n"
                           f"{log.read_text(errors='replace')[-3000:]}")


def build_method_workspace(tiny: Path, root: Path) -> Path:
    from hpcnn.nnunet import commands, launcher_path

    source = tiny.parents[2]
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        shutil.copytree(source / folder, root / folder)
    _run(root, "preprocess_2d", commands.through_launcher(
        sys.executable, str(launcher_path()),
        commands.preprocess(501, "nnUNetPlans", ["2d"], workers=2)))
    train = str(Path(sys.executable).with_name("nnUNetv2_train"))
    for fold in FOLDS:
        _run(root, f"validate_3d_{fold}", [train, "501", CONFIGURATION, str(fold), "-tr", TRAINER,
                                           "-device", "cpu", "--val", "--npz"])
        _run(root, f"train_2d_{fold}", [train, "501", "2d", str(fold), "-tr", TRAINER,
                                        "-device", "cpu", "--npz"])
    return root


@pytest.fixture(scope="session")
def method_workspace(tiny_model: Path,  # noqa: F811
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with 2d and 3d_fullres folds 0 and 1 validated with --npz."""
    if not _built:
        _built.append(build_method_workspace(tiny_model, tmp_path_factory.mktemp("method")))
    return _built[0]


def copy_workspace(root: Path, destination: Path) -> Path:
    """A copy of a method workspace to change freely."""
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        shutil.copytree(root / folder, destination / folder, symlinks=True)
    return destination
