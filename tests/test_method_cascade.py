"""The cascade end to end on the local scheduler: five 3d_lowres folds → their next-stage
predictions → five 3d_cascade_fullres folds (each waiting on every 3d_lowres fold) →
find_best_configuration → prediction with the cascade (3d_lowres first, its segmentation fed to
the second stage), all through hpcnn's CLI; and the check that stops a cascade fold whose
next-stage predictions are missing, naming the folder, the 3d_lowres fold and the fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cascade_models import PLANS, add_lowres, build_cascade_workspace
from conftest import local_queue_at
from models import DATASET, nnunet_env, tiny_model, unseen_cases  # noqa: F401  (fixture)

from hpcnn.nnunet import commands
from hpcnn.nnunet.launcher import previous_stage_problem

TRAINER = "hpcnnTinyTrainer"
LOWRES, CASCADE = "3d_lowres", "3d_cascade_fullres"


def cli(ws: Path, *args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcnn.cli.entry", *map(str, args)], cwd=ws,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def _wait(ws: Path, timeout: float) -> dict:
    """``status --json`` once no job is queued or running (exit 0 or 11)."""
    deadline = time.time() + timeout
    while True:
        res = cli(ws, "status", "--json")
        if res.returncode in (0, 11) or time.time() > deadline:
            assert res.returncode in (0, 11), res.stdout + res.stderr
            return json.loads(res.stdout)
        time.sleep(5)


@pytest.fixture(scope="module")
def cascade(tiny_model: Path,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """The experiment trained through `hpcnn train-all-folds` on the local scheduler."""
    ws = build_cascade_workspace(tiny_model, tmp_path_factory.mktemp("cascade"))
    (ws / "cluster.yaml").write_text(
        f"training: {{dataset: 501, trainer: {TRAINER}, device: cpu, max_resubmits: 0,\n"
        f"           configurations: [{LOWRES}, {CASCADE}]}}\n"
        "resources: {cpus: 1, gpus: 0}\nlocal: {max_parallel: 2}\n"
        "environment: {variables: {HPCNN_TINY_EPOCHS: '1', nnUNet_def_n_proc: '1'}}\n")
    with local_queue_at(ws / "queue"):
        res = cli(ws, "train-all-folds")
        assert res.returncode == 0, res.stdout + res.stderr
        status = _wait(ws, 2400)
        deadline = time.time() + 900  # the find_best job, after the folds
        while not list(ws.glob(".hpcnn/runs/*/*find_best-a1/exit_code")):
            assert time.time() < deadline, "the find_best job never ended"
            time.sleep(3)
        yield ws, res.stdout, status


@pytest.mark.timeout(3000)
def test_cascade_trains_after_the_lowres_folds_and_predicts(cascade: tuple[Path, str, dict],
                                                            tmp_path: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    ws, submitted, status = cascade
    assert "submitted find_best_configuration" in submitted, submitted
    states = {(run["configuration"], f["fold"]): f["state"]
              for run in status["runs"] for f in run["folds"]}
    assert set(states.values()) == {"completed"}, states
    assert len(states) == 10
    results = ws / "nnUNet_results" / DATASET
    lowres = results / f"{TRAINER}__{PLANS}__{LOWRES}"
    cases = json.loads((ws / "nnUNet_preprocessed" / DATASET / "splits_final.json").read_text())
    every = sorted({c for split in cases for c in split["val"]})
    predicted = sorted(p.name.split(".")[0]
                       for p in (lowres / "predicted_next_stage" / CASCADE).iterdir())
    assert predicted == every

    # the find_best job ran after the ten folds: status shows what it chose, sync records it
    res = cli(ws, "status")
    assert res.returncode == 0 and "find-best chose " in res.stdout, res.stdout + res.stderr
    res = cli(ws, "sync")
    assert res.returncode == 0, res.stdout + res.stderr
    choice = json.loads((results / "hpcnn_choice.json").read_text())
    assert set(choice["members"]) <= {LOWRES, CASCADE}
    assert choice["folds"] == [0, 1, 2, 3, 4]

    # the cascade predicts 3d_lowres first and feeds it to its second stage, as nnU-Net's own
    # commands do (without test-time mirroring, on the same folds)
    unseen_cases(tmp_path / "in", ["a.nrrd"])
    res = cli(ws, "predict", tmp_path / "in", tmp_path / "out", "--model", results, "--fast",
              "--device", "cpu", "-c", CASCADE)
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((tmp_path / "out" / "hpcnn_predict.json").read_text())
    assert record["method"]["members"] == [CASCADE]
    assert sorted(record["method"]["folds"]) == [CASCADE, LOWRES]
    (tmp_path / "nn_in").mkdir()
    shutil.copy(tmp_path / "in" / "a.nrrd", tmp_path / "nn_in" / "a_0000.nrrd")
    lines = [commands.predict(str(tmp_path / "nn_in"), str(tmp_path / configuration), "501",
                              configuration, trainer=TRAINER, plans=PLANS,
                              folds=[0, 1, 2, 3, 4], device="cpu", workers=1, tta=False,
                              previous_stage=previous)
             for configuration, previous in ((LOWRES, None), (CASCADE, str(tmp_path / LOWRES)))]
    theirs = tmp_path / CASCADE
    pkl = record["method"]["postprocessing"]  # find-best chose the cascade alone: its own
    if pkl:
        lines.append(commands.apply_postprocessing(
            str(theirs), str(tmp_path / "pp"), pkl, workers=1,
            plans_json=str(Path(pkl).with_name("plans.json")),
            dataset_json=str(Path(pkl).with_name("dataset.json"))))
        theirs = tmp_path / "pp"
    for line in lines:
        done = subprocess.run([str(Path(sys.executable).with_name(line[0])), *line[1:]],
                              env=nnunet_env(ws), capture_output=True, text=True, timeout=900,
                              check=False, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out/a.nrrd"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(theirs / "a.nrrd"))))


def test_a_cascade_fold_without_next_stage_predictions_says_which(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The launcher's check before a cascade fold trains (no torch, no training)."""
    pre, results = tmp_path / "pre" / DATASET, tmp_path / "results" / DATASET
    pre.mkdir(parents=True)
    (pre / f"{PLANS}.json").write_text(json.dumps({"plans_name": PLANS, "configurations": {
        "3d_fullres": {"architecture": {"arch_kwargs": {}}}}}))
    add_lowres(pre / f"{PLANS}.json")
    (pre / "splits_final.json").write_text(json.dumps(
        [{"train": [c for c in "abcde" if c != v], "val": [v]} for v in "abcde"]))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre.parent))
    monkeypatch.setenv("nnUNet_results", str(results.parent))
    folder = results / f"{TRAINER}__{PLANS}__{LOWRES}" / "predicted_next_stage" / CASCADE
    folder.mkdir(parents=True)
    for case in "abd":
        (folder / f"{case}.b2nd").write_bytes(b"x")
    problem = previous_stage_problem(DATASET, TRAINER, PLANS, CASCADE, "0")
    assert problem is not None
    assert str(folder) in problem and "c, e" in problem
    assert "3d_lowres folds 2, 4" in problem and "--resubmit-failed" in problem
    assert previous_stage_problem(DATASET, TRAINER, PLANS, LOWRES, "0") is None
    for case in "ce":
        (folder / f"{case}.b2nd").write_bytes(b"x")
    assert previous_stage_problem(DATASET, TRAINER, PLANS, CASCADE, "0") is None
