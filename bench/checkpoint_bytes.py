"""Checkpoint bytes that ``hpcnn sync`` and ``hpcnn export`` move per fold: nnU-Net's own
``checkpoint_final.pth`` (today) vs hpcnn's inference checkpoint (goal <= 0.55x), and what the
weights-only check costs before nnU-Net loads a checkpoint.

The checkpoint is a real nnU-Net one, not random bytes: nnU-Net's own planner plans a CT-like
dataset (a written fingerprint of 20 cases of 512x512x300 at 0.8x0.8x1.5 mm) into its default
full-size 3d_fullres network, hpcnn's tiny trainer initializes it on the CPU, takes one optimizer
step (SGD's momentum buffers exist only after a step, as in any trained checkpoint) and saves
with nnU-Net's ``save_checkpoint``. The inference checkpoint is what the launcher writes on the
cluster once the fold is complete (hpcnn.nnunet.launcher.write_inference_checkpoint); the zips are
``hpcnn export``'s of a one-fold model folder with either file as ``checkpoint_final.pth``.

Run: python bench/checkpoint_bytes.py [--data /tmp/hpcnn-bench-checkpoint] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from harness import compare, time_call  # noqa: E402

GOAL = 0.55
DATASET = "Dataset990_CheckpointBench"
CONFIGURATION = "3d_fullres"


def _fingerprint(cases: int = 20) -> dict[str, object]:
    """What nnU-Net's fingerprint extractor writes, for a CT-like dataset."""
    return {
        "spacings": [[1.5, 0.8, 0.8]] * cases,
        "shapes_after_crop": [[300, 512, 512]] * cases,
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3000.0, "mean": 100.0, "median": 90.0, "min": -1000.0,
            "percentile_00_5": -900.0, "percentile_99_5": 1500.0, "std": 200.0}},
    }


def full_checkpoint(data: Path) -> Path:
    """A model folder under ``data`` with one fold's real, full-size nnU-Net checkpoint (built on
    first use: a minute on 2 cores)."""
    model = data / "nnUNet_results" / DATASET / f"hpcnnTinyTrainer__nnUNetPlans__{CONFIGURATION}"
    final = model / "fold_0" / "checkpoint_final.pth"
    if final.is_file():
        return model
    shutil.rmtree(data, ignore_errors=True)
    for tree in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[tree] = str(data / tree)
    from hpcnn.nnunet import trainer_dir
    from hpcnn.nnunet.launcher import EXT_TRAINER

    os.environ[EXT_TRAINER] = str(trainer_dir())
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1,
                                                             "tumor": 2},
                    "numTraining": 20, "file_ending": ".nii.gz"}
    raw, pre = data / "nnUNet_raw" / DATASET, data / "nnUNet_preprocessed" / DATASET
    for folder in (raw, pre, model / "fold_0"):
        folder.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    import SimpleITK as sitk

    for case in range(dataset_json["numTraining"]):  # the planner reads one image's header
        for sub, name in (("imagesTr", f"case_{case:03d}_0000"), ("labelsTr", f"case_{case:03d}")):
            (raw / sub).mkdir(exist_ok=True)
            sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(raw / sub / f"{name}.nii.gz"))
    (pre / "dataset.json").write_text(json.dumps(dataset_json))
    (pre / "dataset_fingerprint.json").write_text(json.dumps(_fingerprint()))

    import torch
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )

    from hpcnn.nnunet.trainers.hpcnn_tiny_trainer import hpcnnTinyTrainer

    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        ExperimentPlanner(DATASET).plan_experiment()
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    for name in ("plans.json", "dataset.json"):
        shutil.copy(pre / ("nnUNetPlans.json" if name == "plans.json" else name), model / name)
    # initialize() infers the preprocessed files' format from their names; none is read.
    (pre / f"nnUNetPlans_{CONFIGURATION}").mkdir()
    (pre / f"nnUNetPlans_{CONFIGURATION}" / "case_000.b2nd").touch()
    plans["continue_training"] = False  # what nnUNetv2_train passes (no --c)
    trainer = hpcnnTinyTrainer(plans, CONFIGURATION, 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    arch = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    side = [2, 2, 2]  # the bottleneck keeps 2 voxels a side (instance norm needs >1)
    for stride in arch["strides"]:
        side = [s * int(t) for s, t in zip(side, stride, strict=True)]
    network = trainer.network
    out = network(torch.randn(1, 1, *side))
    loss = sum(o.float().mean() for o in (out if isinstance(out, list | tuple) else [out]))
    trainer.optimizer.zero_grad()
    loss.backward()
    trainer.optimizer.step()
    trainer.output_folder = str(model / "fold_0")
    trainer.save_checkpoint(str(final))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path,
                        default=Path(tempfile.gettempdir()) / "hpcnn-bench-checkpoint")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = full_checkpoint(args.data)

    import torch

    from hpcnn.nnunet.checkpoint import check_checkpoint
    from hpcnn.nnunet.launcher import INFERENCE, write_inference_checkpoint
    from hpcnn.nnunet.model_zip import export_model

    fold = model / "fold_0"
    full = fold / "checkpoint_final.pth"
    write_inference_checkpoint(fold)
    slim = fold / INFERENCE
    full_bytes, slim_bytes = full.stat().st_size, slim.stat().st_size
    print(f"nnU-Net's checkpoint_final.pth of {model.name} (default 3d_fullres network): "
          f"{full_bytes / 1e6:.1f} MB; hpcnn's inference checkpoint: {slim_bytes / 1e6:.1f} MB = "
          f"{slim_bytes / full_bytes:.3f}x (goal <= {GOAL}x: "
          f"{'met' if slim_bytes / full_bytes <= GOAL else 'MISSED'})")

    work = args.data / "zips"
    shutil.rmtree(work, ignore_errors=True)
    today = export_model(model, work / "full.zip", full_checkpoints=True).size
    slimmed = export_model(model, work / "slim.zip").size
    print(f"hpcnn export of the one-fold model: {today / 1e6:.1f} MB with nnU-Net's checkpoint "
          f"(--full-checkpoints, today's zip), {slimmed / 1e6:.1f} MB with the inference "
          f"checkpoint = {slimmed / today:.3f}x (goal <= {GOAL}x)")
    shutil.rmtree(work, ignore_errors=True)

    def load(weights_only: bool, mmap: bool = False) -> None:
        torch.load(full, map_location="cpu", weights_only=weights_only, mmap=mmap)

    for name, candidate in (("hpcnn's check (weights-only, tensors memory-mapped)",
                             lambda: check_checkpoint(full)),
                            ("torch.load(weights_only=True)", lambda: load(True))):
        b, c, ratio = compare(lambda: time_call(lambda: load(False)),
                              lambda fn=candidate: time_call(fn), repeats=args.repeats, warmup=1)
        print(f"{name}: {c * 1000:.1f} ms = {ratio:.3f}x nnU-Net's own load "
              f"(torch.load(weights_only=False): {b * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
