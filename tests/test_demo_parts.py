"""The parts of ``hpcnn demo --method`` and ``hpcnn demo --dicom`` that need no training: the
method's cluster.yaml, the winner line from a recorded choice, the options, and the DICOM demo's
data (written, imported, read back, compared). The full runs and their wall times are in
bench/demos.py; tests/test_demo.py trains the default demo."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hpcnn.cli.common import run_cli
from hpcnn.cli.main import cli
from hpcnn.config import load_config_file
from hpcnn.errors import DataError
from hpcnn.nnunet.choice import Choice, write_choice
from hpcnn.services import demo
from hpcnn.services.demo_data import synthetic_case


def _config(tmp_path: Path, method: bool):
    path = tmp_path / ("method.yaml" if method else "plain.yaml")
    path.write_text(demo._config("cpu", 2, method))
    return load_config_file(path)


def test_the_method_demo_trains_two_configurations_and_the_default_one(tmp_path: Path) -> None:
    method = _config(tmp_path, True).training
    assert method.chosen_configurations == ["2d", "3d_fullres"]
    assert method.folds == [0, 1] and method.find_best is False  # find-best: its own step
    plain = _config(tmp_path, False).training
    assert plain.chosen_configurations == ["3d_fullres"] and plain.folds == [0, 1, 2, 3, 4]
    assert plain.trainer == method.trainer == "hpcnnDemoTrainer"


def test_the_winner_line_names_what_find_best_chose_and_its_dice(tmp_path: Path) -> None:
    cfg = _config(tmp_path, True)
    results = Path(cfg.workspace) / "nnUNet_results" / "Dataset501_Demo"
    assert demo.winner_line(cfg, results.name) is None  # before find-best
    results.mkdir(parents=True)
    write_choice(results, Choice(
        dataset=results.name, trainer="hpcnnDemoTrainer", plans="nnUNetPlans", folds=[0, 1],
        members=["2d", "3d_fullres"], candidates={}, winner="ensemble", dice=0.9012,
        dice_postprocessed=0.9234, dice_per_class={"ball": 0.9, "box": 0.9},
        dice_per_class_postprocessed={"ball": 0.92, "box": 0.92},
        postprocessing="postprocessing.pkl", instructions=""))
    line = demo.winner_line(cfg, results.name)
    assert line is not None
    assert "find-best chose ensemble of 2d + 3d_fullres" in line
    assert "cross-validation Dice 0.9234" in line and "folds 0 1" in line


def test_method_and_dicom_together_are_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(cli, ["demo", str(tmp_path / "d"), "--method", "--dicom"])
    assert code != 0 and "--method and --dicom" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_dicom_demo_without_the_extra_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcnn.formats.dicom_derived import DicomExtraMissing

    monkeypatch.setitem(sys.modules, "highdicom", None)  # its import fails as if missing
    with pytest.raises(DicomExtraMissing) as caught:
        demo.run_demo(tmp_path / "d", lambda args: 0, dicom=True)
    assert "pip install 'hpcnn[dicom]'" in caught.value.hint
    assert not (tmp_path / "d").exists()


def test_the_dicom_demo_data_import_and_read_back(tmp_path: Path) -> None:
    """The exports import to the demo's labels voxel for voxel; a held-back case's reference
    SEG reads back as its masks; a prediction SEG compares with it by segment label."""
    pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    import SimpleITK as sitk

    from hpcnn.dataset.importer import ImportOptions, import_dataset
    from hpcnn.services.demo_dicom import (
        SEG_ENDING,
        seg_dice,
        seg_masks,
        write_dicom_exports,
        write_dicom_held_back,
    )
    from hpcnn.services.demo_dicom_data import write_seg
    from hpcnn.workspace import Workspace

    write_dicom_exports(tmp_path / "exports", 2)
    result = import_dataset(Workspace(tmp_path / "ws"), ImportOptions(
        source=tmp_path / "exports", name="Demo", workers=1, test_fraction=0,
        modality=("CT",)))
    assert result.labels == {"background": 0, "ball": 1, "box": 2}
    for case in result.cases:
        seed = int(case.images[0].rstrip("/").removeprefix("case_")) - 1
        image, labels = synthetic_case(seed)
        read = sitk.ReadImage(str(result.path / "labelsTr" / f"{case.case_id}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(read), labels), case.images
        read = sitk.ReadImage(str(result.path / "imagesTr" / f"{case.case_id}_0000.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(read), image), case.images

    references = write_dicom_held_back(tmp_path / "test", tmp_path / "refs", 1, first_seed=7)
    ref = references["case_01"]
    _, labels = synthetic_case(7)
    masks = seg_masks(ref.seg, ref.sop_uids)
    assert np.array_equal(masks["ball"], labels == 1) and np.array_equal(masks["box"], labels == 2)
    # A prediction that found the ball one slice short and no box (left out of the SEG, as an
    # empty class may be), on the same series.
    with pytest.raises(DataError, match="no DICOM-SEG for case_01"):
        seg_dice(tmp_path / "pred", references, ["ball", "box"])
    ball = labels == 1
    found = ball.copy()
    found[np.nonzero(ball.any(axis=(1, 2)))[0][0]] = False
    write_seg(tmp_path / "pred" / f"case_01{SEG_ENDING}", ref.series, {"ball": found})
    scores = seg_dice(tmp_path / "pred", references, ["ball", "box"])
    expected = 2 * int(found.sum()) / (int(found.sum()) + int(ball.sum()))
    assert scores.per_case["case_01"]["ball"] == pytest.approx(expected)
    assert scores.per_case["case_01"]["box"] == 0.0
    assert scores.foreground_dice == pytest.approx(expected / 2)
