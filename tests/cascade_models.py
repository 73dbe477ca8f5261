"""A tiny dataset whose plans hold 3d_lowres and 3d_cascade_fullres, for the cascade end to end.

nnU-Net's planner makes 3d_lowres only when the 3d_fullres patch covers less than a quarter of
the median image, never on the tiny 32^3 cases. ``add_lowres`` edits the plans as nnU-Net's own
integration test does (``nnunetv2/tests/integration_tests/add_lowres_and_cascade.py``): a
3d_lowres at twice the spacing (16^3 images, a three-stage network) whose ``next_stage`` is a
3d_cascade_fullres inheriting 3d_fullres. Only 3d_lowres is then preprocessed (seconds): the
cascade reads 3d_fullres's data, which the tiny model's workspace already holds.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

from models import DATASET, nnunet_env

PLANS = "nnUNetPlans"


def add_lowres(plans_file: Path) -> None:
    """Adds 3d_lowres and 3d_cascade_fullres to ``plans_file`` (see the module docstring)."""
    plans = json.loads(plans_file.read_text())
    fullres = plans["configurations"]["3d_fullres"]
    architecture = copy.deepcopy(fullres["architecture"])
    kwargs = architecture["arch_kwargs"]
    kwargs.update(n_stages=3, features_per_stage=[8, 16, 32], n_conv_per_stage=[1, 1, 1],
                  n_conv_per_stage_decoder=[1, 1], kernel_sizes=[[3, 3, 3]] * 3,
                  strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    plans["configurations"]["3d_lowres"] = {
        "data_identifier": f"{PLANS}_3d_lowres", "inherits_from": "3d_fullres",
        "patch_size": [16, 16, 16], "median_image_size_in_voxels": [16.0, 16.0, 16.0],
        "spacing": [2.0, 2.0, 2.0], "batch_size": 2, "architecture": architecture,
        "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres",
                                                     "previous_stage": "3d_lowres"}
    plans_file.write_text(json.dumps(plans, indent=2))


def build_cascade_workspace(tiny_model: Path, root: Path) -> Path:
    """The tiny model's raw and preprocessed data (no results) under ``root``, its plans with
    3d_lowres and the cascade, 3d_lowres preprocessed."""
    from hpcnn.nnunet import commands, launcher_path

    source = tiny_model.parents[2]
    for folder in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(source / folder, root / folder)
    add_lowres(root / "nnUNet_preprocessed" / DATASET / f"{PLANS}.json")
    argv = commands.through_launcher(sys.executable, str(launcher_path()), commands.preprocess(
        501, PLANS, ["3d_lowres"], workers=1))
    with open(root / "preprocess_lowres.log", "w", encoding="utf-8") as log:
        done = subprocess.run(argv, env=nnunet_env(root), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise RuntimeError((root / "preprocess_lowres.log").read_text()[-3000:])
    return root
