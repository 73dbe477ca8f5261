"""The whole nnU-Net method on this machine: find-best on trained configurations, the record
of its choice, and prediction with what won, equal to nnU-Net's own commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from method_models import (  # noqa: F401  (method_workspace: fixture)
    CONFIGURATIONS,
    DATASET,
    TRAINER,
    copy_workspace,
    method_workspace,
)
from models import nnunet_env, tiny_model, unseen_cases  # noqa: F401  (tiny_model: fixture)

from hpcnn.errors import DataError
from hpcnn.nnunet import commands
from hpcnn.nnunet.choice import Trained, check_trained, version_problem


def _fold(folder: Path, fold: int, npz: list[str]) -> None:
    validation = folder / f"fold_{fold}" / "validation"
    validation.mkdir(parents=True)
    (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    (validation / "summary.json").write_text("{}")
    for case in npz:
        (validation / f"{case}.npz").write_bytes(b"x")


def test_find_best_refuses_a_missing_fold_or_npz_naming_it(tmp_path: Path) -> None:
    results, pre = tmp_path / "results" / DATASET, tmp_path / "pre" / DATASET
    (pre / "gt_segmentations").mkdir(parents=True)
    (pre / "splits_final.json").write_text(json.dumps(
        [{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}]))
    for configuration in CONFIGURATIONS:
        folder = results / f"{TRAINER}__nnUNetPlans__{configuration}"
        _fold(folder, 0, ["a"])
        _fold(folder, 1, ["b"] if configuration == "2d" else [])
    trained = Trained(results, TRAINER, "nnUNetPlans", CONFIGURATIONS, (0, 1))
    with pytest.raises(DataError) as info:
        check_trained(trained, pre)
    assert "3d_fullres/fold_1/validation/b.npz" in str(info.value)
    assert "2d/fold" not in str(info.value)
    check_trained(Trained(results, TRAINER, "nnUNetPlans", ("3d_fullres",), (0, 1)), pre)
    with pytest.raises(DataError, match="fold_2/checkpoint_final.pth"):
        check_trained(Trained(results, TRAINER, "nnUNetPlans", ("2d",), (0, 1, 2)), pre)


def test_cascades_and_ensembles_need_nnunetv2_2_7() -> None:
    assert version_problem("2.8.1", "an ensemble") is None
    assert version_problem("2.7.0", "an ensemble") is None
    problem = version_problem("2.6.4", "an ensemble")
    assert problem and "nnunetv2 >= 2.7" in problem and "logits" in problem
    assert version_problem(None, "the cascade")


def test_postprocessing_loads_nnunets_functions_only(tmp_path: Path) -> None:
    import pickle

    import numpy as np
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as largest,
    )

    from hpcnn.nnunet.method_predict import load_postprocessing

    good = tmp_path / "postprocessing.pkl"
    good.write_bytes(pickle.dumps(([largest], [{"labels_or_regions": np.int64(1)}])))
    fns, kwargs = load_postprocessing(good)
    assert fns == [largest] and kwargs == [{"labels_or_regions": 1}]
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(([_Evil(marker)], [{}])))
    with pytest.raises(DataError, match="os.system|posix.system"):
        load_postprocessing(bad)
    assert not marker.exists()


def test_predict_uses_the_choice_unless_a_configuration_is_forced(tmp_path: Path) -> None:
    from hpcnn.nnunet.method_predict import method_for

    results = tmp_path / DATASET
    run_model = results / f"{TRAINER}__nnUNetPlans__3d_fullres"
    run_model.mkdir(parents=True)
    assert method_for(run_model) is None, "no choice: the model folder alone, as before"
    pkl = "ensembles/ensemble___x___y___0_1/postprocessing.pkl"
    (results / "hpcnn_choice.json").write_text(json.dumps({
        "dataset": DATASET, "trainer": TRAINER, "plans": "nnUNetPlans", "folds": [0, 1],
        "members": ["2d", "3d_fullres"], "candidates": {}, "winner": "ensemble___x___y___0_1",
        "dice": 0.5, "dice_postprocessed": 0.6, "dice_per_class": {},
        "dice_per_class_postprocessed": {}, "postprocessing": pkl, "instructions": ""}))
    for method in (method_for(run_model), method_for(results)):
        assert method is not None and method.members == ("2d", "3d_fullres")
        assert method.postprocessing == results / pkl
    forced = method_for(run_model, ["2d"])
    assert forced is not None and forced.members == ("2d",) and forced.postprocessing is None
    other = results / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    other.mkdir()
    assert method_for(other) is None, "a choice among other models does not apply"


def cli(ws: Path, *args: object, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcnn.cli.entry", *map(str, args)], cwd=ws,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def chosen(method_workspace: Path,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the method workspace after `hpcnn find-best`, and its output."""
    ws = copy_workspace(method_workspace, tmp_path_factory.mktemp("chosen"))
    (ws / "cluster.yaml").write_text(
        f"training: {{dataset: 501, trainer: {TRAINER}, folds: [0, 1], device: cpu}}\n")
    res = cli(ws, "find-best")
    assert res.returncode == 0, res.stdout + res.stderr
    return ws, res.stdout


@pytest.mark.timeout(1800)  # the first test builds the session's folds (shared machines)
def test_find_best_records_the_winner(chosen: tuple[Path, str]) -> None:
    ws, out = chosen
    results = ws / "nnUNet_results" / DATASET
    choice = json.loads((results / "hpcnn_choice.json").read_text())
    assert (results / "hpcnn_choice.json").stat().st_mode & 0o777 == 0o600
    info = json.loads((results / "inference_information.json").read_text())
    assert sorted(choice["candidates"]) == sorted(info["all_results"])
    assert len(choice["candidates"]) == 3, "2d, 3d_fullres and their ensemble"
    best = info["best_model_or_ensemble"]
    assert choice["members"] == [m["configuration"] for m in best["selected_model_or_models"]]
    assert choice["dice"] == pytest.approx(best["result_on_crossval_pre_pp"])
    assert choice["dice_postprocessed"] == pytest.approx(best["result_on_crossval_post_pp"])
    assert sorted(choice["dice_per_class"]) == ["liver", "tumor"]
    assert "nnUNetv2_predict" in choice["instructions"]
    assert "winner: " in out and " + ".join(choice["members"]) in out
    assert "'patch_size'" not in out and "***All results:***" not in out, "quiet"


def _nnunet(ws: Path, line: list[str]) -> None:
    """One of nnU-Net's own commands, as its console script (not hpcnn's launcher)."""
    argv = [str(Path(sys.executable).with_name(line[0])), *line[1:]]
    done = subprocess.run(argv, env=nnunet_env(ws), capture_output=True, text=True,
                          timeout=600, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def _voxels(path: Path) -> object:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.timeout(1800)  # the first test builds the session's folds (shared machines)
def test_predict_with_the_winner_equals_nnunets_own_commands(chosen: tuple[Path, str],
                                                             tmp_path: Path) -> None:
    import numpy as np

    ws, _ = chosen
    results = ws / "nnUNet_results" / DATASET
    info = json.loads((results / "inference_information.json").read_text())
    info = info["best_model_or_ensemble"]
    winner = [m["configuration"] for m in info["selected_model_or_models"]]
    unseen_cases(tmp_path / "in", ["a.nrrd"])
    (tmp_path / "nn_in").mkdir()
    shutil.copy(tmp_path / "in" / "a.nrrd", tmp_path / "nn_in" / "a_0000.nrrd")
    # nnU-Net's own inference instructions, on the same folds, without test-time mirroring
    for configuration in CONFIGURATIONS:
        _nnunet(ws, commands.predict(str(tmp_path / "nn_in"), str(tmp_path / configuration),
                                     "501", configuration, trainer=TRAINER, plans="nnUNetPlans",
                                     folds=[0, 1], device="cpu", workers=1, tta=False,
                                     probabilities=True))
    _nnunet(ws, commands.ensemble([str(tmp_path / c) for c in CONFIGURATIONS],
                                  str(tmp_path / "ensemble"), workers=1))
    chosen_output = tmp_path / ("ensemble" if len(winner) > 1 else winner[0])
    _nnunet(ws, [commands.APPLY_POSTPROCESSING, "-i", str(chosen_output), "-o",
                 str(tmp_path / "postprocessed"), "-pp_pkl_file", info["postprocessing_file"],
                 "-np", "1", "-plans_json", info["some_plans_file"]])

    res = cli(ws, "predict", tmp_path / "in", tmp_path / "out", "--model", results, "--fast",
              "--device", "cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "chosen by find-best" in res.stdout
    record = json.loads((tmp_path / "out" / "hpcnn_predict.json").read_text())
    assert record["method"]["members"] == winner and record["method"]["postprocessing"]
    assert np.array_equal(_voxels(tmp_path / "out" / "a.nrrd"),
                          _voxels(tmp_path / "postprocessed" / "a.nrrd"))
    if len(winner) == 1:  # the ensemble, forced: nnU-Net's ensemble without postprocessing
        res = cli(ws, "predict", tmp_path / "in", tmp_path / "out2", "--model", results,
                  "--fast", "--device", "cpu", "-c", "2d", "-c", "3d_fullres")
        assert res.returncode == 0, res.stdout + res.stderr
        assert np.array_equal(_voxels(tmp_path / "out2" / "a.nrrd"),
                              _voxels(tmp_path / "ensemble" / "a.nrrd"))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        import os

        return os.system, (f"touch {self.marker}",)


def _rezip(source: Path, target: Path, drop: str, replace: bytes | None = None) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename != drop:
                dst.writestr(info, src.read(info))
            elif replace is not None:
                dst.writestr(info, replace)


@pytest.mark.timeout(1800)  # the first test builds the session's folds (shared machines)
def test_a_method_zip_carries_every_configuration_and_the_choice(chosen: tuple[Path, str],
                                                                  tmp_path: Path) -> None:
    import pickle

    ws, _ = chosen
    results = ws / "nnUNet_results" / DATASET
    choice = json.loads((results / "hpcnn_choice.json").read_text())
    res = cli(ws, "export", tmp_path / "m.zip", "--model", results)
    assert res.returncode == 0, res.stdout + res.stderr
    names = zipfile.ZipFile(tmp_path / "m.zip").namelist()
    pkl = f"{DATASET}/{choice['postprocessing']}"
    assert f"{DATASET}/hpcnn_choice.json" in names and pkl in names
    for configuration in CONFIGURATIONS:
        for fold in (0, 1):
            assert (f"{DATASET}/{TRAINER}__nnUNetPlans__{configuration}/fold_{fold}/"
                    "checkpoint_final.pth") in names

    # a postprocessing file that would run code is refused, nothing installed
    marker = tmp_path / "pwned"
    _rezip(tmp_path / "m.zip", tmp_path / "evil.zip", pkl, pickle.dumps(_Evil(marker)))
    evil = tmp_path / "evil"
    evil.mkdir()
    res = cli(evil, "import-model", tmp_path / "evil.zip")
    assert res.returncode == 2 and "not nnU-Net's postprocessing" in res.stderr, res.stderr
    assert not marker.exists() and not (evil / "nnUNet_results" / DATASET).exists()

    # a zip without the postprocessing still predicts, and says so
    _rezip(tmp_path / "m.zip", tmp_path / "nopp.zip", pkl)
    other = tmp_path / "other"
    other.mkdir()
    res = cli(other, "import-model", tmp_path / "nopp.zip")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "holds no postprocessing file" in res.stdout + res.stderr
    installed = other / "nnUNet_results" / DATASET
    assert (installed / "hpcnn_choice.json").stat().st_mode & 0o077 == 0
    unseen_cases(tmp_path / "in", ["a.nrrd"])
    res = cli(other, "predict", tmp_path / "in", tmp_path / "out", "--model", installed,
              "--fast", "--device", "cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "predicting without nnU-Net's postprocessing" in res.stderr
    record = json.loads((tmp_path / "out" / "hpcnn_predict.json").read_text())
    assert record["method"]["members"] == choice["members"]
    assert record["method"]["postprocessing"] is None


def test_doctor_warns_on_torch_2_9_and_nnunetv2_before_2_7() -> None:
    from hpcnn.services.doctor.remote import version_warning

    assert version_warning("2.8.1", "2.8.0") is None
    problem, fix = version_warning("2.8.1", "2.9.1")
    assert "4x slower" in problem and "torch!=2.9.*" in fix
    problem, fix = version_warning("2.6.4", "2.8.0")
    assert "nnunetv2 >= 2.7" in problem and "nnunetv2>=2.7" in fix
