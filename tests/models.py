"""A real trained nnU-Net model, tiny, for every test that needs one (predict, evaluate, model
zips, monitoring, sync) and for bench/predict_overhead.py.

``build_tiny_model(root)`` writes a workspace under ``root``: a raw dataset of 6 nested-sphere
cases of 32^3 (synthetic.write_nnunet_dataset, ``.nrrd``), preprocessed through hpcnn's own
``preprocess`` (as ``hpcnn preprocess`` runs it), then folds 0 and 1 trained with the stock
``nnUNetv2_train ... -tr hpcnnTinyTrainer -device cpu`` (2 epochs of 3 iterations; about 20 s per
fold on 2 cores), ``nnUNet_extTrainer`` pointing at hpcnn's packaged trainers. It returns the
model folder ``nnUNet_results/Dataset501_Tiny/hpcnnTinyTrainer__nnUNetPlans__3d_fullres``.

The ``tiny_dataset`` fixture preprocesses the dataset once per test session (about 30
CPU-seconds); every test that trains copies it (``copy_dataset``): the ``tiny_model``, the local
and the test bed's train-all-folds. The ``tiny_model`` fixture trains once per test session;
tests that change a model copy it first (``copy_model``). Import the fixtures into a test module
(``from models import tiny_model``) or list ``models`` in ``pytest_plugins``.

``fake_model(root)`` writes a model folder in seconds for tests that never run the network
(input checks, zip checks): the real files' names and JSON keys, and checkpoints that hold a
small state dict and nnU-Net's keys.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import need
from synthetic import SyntheticCase, write_nnunet_dataset

DATASET = "Dataset501_Tiny"
CONFIGURATION = "3d_fullres"
MODEL = f"hpcnnTinyTrainer__nnUNetPlans__{CONFIGURATION}"
FOLDS = (0, 1)


def nnunet_env(workspace: Path) -> dict[str, str]:
    """The environment nnU-Net commands need for this workspace and hpcnn's trainers."""
    from hpcnn.nnunet import trainer_dir
    from hpcnn.workspace import Workspace

    return {**os.environ, **Workspace(workspace).nnunet_env(),
            "nnUNet_extTrainer": str(trainer_dir()), "nnUNet_compile": "f",
            "PYTHONUNBUFFERED": "1"}


def training_env(workspace: Path) -> dict[str, str]:
    """``nnunet_env`` for the fixtures' own ``nnUNetv2_train`` runs: one export process for the
    validation, as hpcnn's jobs ask for one per allocated CPU (nnU-Net's default spawns 8 fresh
    Pythons per validation, about 60 CPU-seconds for two cases of 32^3)."""
    return {**nnunet_env(workspace), "nnUNet_def_n_proc": "1"}


def prepare_tiny_dataset(root: Path, *, n_cases: int = 6,
                         size: tuple[int, int, int] = (32, 32, 32)) -> Path:
    """The raw dataset, preprocessed through hpcnn's own ``preprocess`` (splits and provenance
    written), under ``root``; returns ``root``. What train-all-folds tests start from."""
    from hpcnn.dataset import preprocess
    from hpcnn.workspace import Workspace

    workspace = Workspace(root)
    raw = workspace.raw / DATASET
    write_nnunet_dataset(raw, n_cases=n_cases, size=size, file_ending=".nrrd")
    job = preprocess.prepare(workspace, raw, configurations=[CONFIGURATION], folds=range(5),
                             workers=2)
    with open(root / "preprocess.log", "w", encoding="utf-8") as log:
        preprocess.run(job, out=log)
    return root


def copy_dataset(dataset: Path, root: Path) -> Path:
    """The raw and preprocessed trees of a ``prepare_tiny_dataset`` workspace, copied under
    ``root`` (created); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for tree in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(dataset / tree, root / tree)
    return root


def build_tiny_model(root: Path, folds: Sequence[int] = FOLDS, *, n_cases: int = 6,
                     size: tuple[int, int, int] = (32, 32, 32),
                     dataset: Path | None = None) -> Path:
    """Dataset, preprocessing and trained folds under ``root``; returns the model folder.
    ``dataset``: a ``prepare_tiny_dataset`` workspace to copy instead of preprocessing again."""
    from hpcnn.workspace import Workspace

    if dataset is None:
        prepare_tiny_dataset(root, n_cases=n_cases, size=size)
    else:
        copy_dataset(dataset, root)
    workspace = Workspace(root)
    train = Path(sys.executable).with_name("nnUNetv2_train")
    for fold in folds:
        with open(root / f"train_fold_{fold}.log", "w", encoding="utf-8") as log:
            done = subprocess.run([str(train), "501", CONFIGURATION, str(fold), "-tr",
                                   "hpcnnTinyTrainer", "-device", "cpu"],
                                  env=training_env(root), stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            tail = (root / f"train_fold_{fold}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"training fold {fold} failed ({done.returncode}):\n{tail}")
    return workspace.results / DATASET / MODEL


def copy_model(model: Path, destination: Path) -> Path:
    """A copy of a model folder under ``destination/DatasetNNN_Name/``, to change freely."""
    target = destination / model.parent.name / model.name
    shutil.copytree(model, target)
    return target


def unseen_cases(folder: Path, names: Sequence[str], *, seed: int = 5) -> dict[str, SyntheticCase]:
    """Cases like the training ones (other seed) as images named ``names`` (the extension picks
    the format) in ``folder``; returns name → case (``masks`` hold the truth)."""
    import SimpleITK as sitk

    made = write_nnunet_dataset(folder / ".generated", n_cases=len(names), seed=seed,
                                file_ending=".nrrd")
    out = {}
    for name, case in zip(names, made, strict=True):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(case.images[0])), str(target), True)
        out[name] = case
    shutil.rmtree(folder / ".generated")
    return out


def fake_model(root: Path, *, channels: Sequence[str] = ("CT",),
               finished: Sequence[str] = ("0",), unfinished: Sequence[str] = (),
               file_ending: str = ".nrrd", dataset: str = "Dataset502_Fake") -> Path:
    """A model folder under ``root/dataset/`` whose checkpoints load but hold no real network."""
    import torch

    model = root / dataset / MODEL
    model.mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {"background": 0, "liver": 1, "tumor": 2},
        "numTraining": 6, "file_ending": file_ending}))
    (model / "plans.json").write_text(json.dumps({
        "configurations": {CONFIGURATION: {"patch_size": [32, 32, 32],
                                           "spacing": [1.0, 1.0, 1.0]}}}))
    for fold in (*finished, *unfinished):
        (model / f"fold_{fold}").mkdir()
    for fold in finished:
        torch.save({"network_weights": {"w": torch.zeros(2)}, "trainer_name": "hpcnnTinyTrainer",
                    "init_args": {"configuration": CONFIGURATION}},
                   model / f"fold_{fold}" / "checkpoint_final.pth")
    return model


_made: dict[str, Path] = {}  # pytest keeps a fixture per importing module: make each once


def made_once(name: str, tmp_path_factory: pytest.TempPathFactory,
              make: Callable[[Path], Path]) -> Path:
    """``make(folder)`` run once per test run, also when pytest-xdist runs the suite in several
    worker processes: the first worker makes it under the run's shared temporary folder while
    holding a lock, the others wait for it and reuse it (a read-only result: tests copy it)."""
    if name in _made:
        return _made[name]
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        _made[name] = make(tmp_path_factory.mktemp(name))
        return _made[name]
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, above each worker's popen-gwK/
    done = shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            folder = shared / name
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
            folder.mkdir()
            done.write_text(str(make(folder)))
    _made[name] = Path(done.read_text())
    return _made[name]


def shared_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's one ``prepare_tiny_dataset`` workspace (made on first use)."""
    import importlib.util

    need(importlib.util.find_spec("nnunetv2") is not None, "nnunetv2 is not installed")
    return made_once("tiny-dataset", tmp_path_factory, prepare_tiny_dataset)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset preprocessed once per session; each workspace copies it."""
    return shared_dataset(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny two-fold model, trained once per session (about a minute on 2 idle cores)."""
    dataset = shared_dataset(tmp_path_factory)
    return made_once("tiny-model", tmp_path_factory,
                     lambda folder: build_tiny_model(folder, dataset=dataset))
