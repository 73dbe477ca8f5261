"""One builder for every nnU-Net command line, and the launcher subcommands jobs run them with.

Cheap: no nnU-Net computation (the split writer imports nnU-Net's split function only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hpcnn.config import Config, TrainingSection
from hpcnn.jobs.model import Run, fold_spec, predict_spec, prep_spec
from hpcnn.nnunet import commands, launcher_path
from hpcnn.workspace import RemoteLayout

RUN = Run("Dataset501_Liver", "nnUNetTrainer", "nnUNetPlans", "3d_fullres")


def test_jobs_run_nnunet_through_the_launcher_never_a_python_string(tmp_path: Path) -> None:
    cfg = Config(workspace=tmp_path, training=TrainingSection(dataset="501", device="cpu"))
    layout = RemoteLayout("/r")
    prep = prep_spec(cfg, layout, RUN)
    plan, splits = prep.commands
    assert plan[1:4] == [layout.launcher, "nnunet", "nnUNetv2_plan_and_preprocess"]
    assert plan[4:8] == ["-d", "501", "-c", "3d_fullres"]
    assert splits[1:] == [layout.launcher, "write-splits", "Dataset501_Liver"]
    predict = predict_spec(cfg, layout, RUN, "p1", ["0", "1"], device="cpu", fast=True)
    (argv,) = predict.commands
    assert argv[1:4] == [layout.launcher, "nnunet", "nnUNetv2_predict"]
    assert argv[argv.index("-f"):argv.index("-f") + 3] == ["-f", "0", "1"]
    assert "--disable_tta" in argv and "--save_probabilities" not in argv
    fold = fold_spec(cfg, layout, RUN, 2, npz=True)
    train = fold.commands[-1]
    assert train[train.index(RUN.dataset):][:3] == [RUN.dataset, "3d_fullres", "2"]
    assert "--npz" in train
    for spec in (prep, predict, fold):
        for line in spec.commands:
            python = "python" in Path(line[0]).name
            assert not (python and line[1] == "-c"), f"a Python program as a string: {line[:3]}"
    # every nnU-Net command hpcnn builds is one the launcher can run
    lines = [commands.plan(501, workers=1), commands.preprocess(501, "P", ["2d"], workers=1),
             commands.find_best_configuration("D", ["2d"], trainer="T", plans="P", folds=[0],
                                              workers=1),
             commands.predict("i", "o", "D", "2d", trainer="T", plans="P", folds=[0],
                              device="cpu", workers=1),
             commands.ensemble(["a", "b"], "o", workers=1),
             commands.apply_postprocessing("i", "o", "pp.pkl", plans_json="p.json",
                                           dataset_json="d.json", workers=1)]
    from hpcnn.nnunet.launcher import ENTRY_POINTS

    assert {line[0] for line in lines} <= set(ENTRY_POINTS)


def _launch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(launcher_path()), *args], env=env, text=True,
                          capture_output=True, timeout=120, check=False)


def test_write_splits_subcommand_writes_keeps_and_regenerates(tmp_path: Path) -> None:
    folder = tmp_path / "Dataset501_Liver"
    (folder / "gt_segmentations").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".nrrd"}))
    for i in range(7):
        (folder / "gt_segmentations" / f"case_{i:03d}.nrrd").write_bytes(b"")
    env = {**os.environ, "nnUNet_preprocessed": str(tmp_path)}
    done = _launch(env, "write-splits", "Dataset501_Liver")
    assert done.returncode == 0, done.stderr
    assert "written" in done.stdout
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 5
    assert sorted(c for s in splits for c in s["val"]) == [f"case_{i:03d}" for i in range(7)]
    assert "kept" in _launch(env, "write-splits", "Dataset501_Liver").stdout
    (folder / "gt_segmentations" / "case_007.nrrd").write_bytes(b"")
    assert "regenerated" in _launch(env, "write-splits", "Dataset501_Liver").stdout
    splits = json.loads((folder / "splits_final.json").read_text())
    assert "case_007" in [c for s in splits for c in s["val"]]


def test_nnunet_subcommand_refuses_a_command_it_does_not_know(tmp_path: Path) -> None:
    done = _launch(dict(os.environ), "nnunet", "nnUNetv2_train", "1", "2d", "0")
    assert done.returncode == 2
    assert "nnUNetv2_predict" in done.stderr
