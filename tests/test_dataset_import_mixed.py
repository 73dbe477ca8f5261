"""Slicer segmentations and plain label maps in one import (issue 19, item 11).

A ``.seg.nrrd`` names its segments; a plain label map holds only numbers. Mixed, the plain
maps' values became classes of their own (``label_1 3, label_2 4``) with a false "not
consecutive" fix, and ``dataset check`` passed the result. Now: mapped when labels.yaml says how
(``source_values``), otherwise an error naming the files of each kind and the fix; the check
finds a dataset imported the old way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import synthetic
from test_dataset_import import label_of, run_import

from hpcnn.dataset.check import check_dataset
from hpcnn.dataset.findings import ImportFailed

pytestmark = pytest.mark.usefixtures("sitk_available")


def mixed_source(folder: Path, plain_values: tuple[int, int] = (1, 2)) -> dict[str, object]:
    """Two Slicer cases (segments liver, tumor) and two plain label maps holding liver and
    tumor as ``plain_values``."""
    cases = {key: synthetic.labelled_case(folder, key, seed=i)
             for i, key in enumerate(("s1", "s2"))}
    cases |= {key: synthetic.labelled_case(folder, key, seg="labelmap", values=plain_values,
                                           seed=i + 2) for i, key in enumerate(("p1", "p2"))}
    return cases


def test_mixed_kinds_without_a_mapping_stop_naming_the_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    mixed_source(src)
    ws = tmp_path / "ws"
    with pytest.raises(ImportFailed) as info:
        run_import(ws, src)
    assert str(info.value) == (
        "segmentations of two kinds: 2 Slicer segmentation(s) name their segments (s1.seg.nrrd, "
        "s2.seg.nrrd: liver, tumor), 2 plain label map(s) hold only numbers (p1_label.nrrd, "
        "p2_label.nrrd: values 1, 2); which number is which named class is written nowhere\n"
        "  fix: write a labels.yaml that gives each class the values that mean it in the plain "
        "label maps, e.g. 'liver: {source_values: [1]}' and 'tumor: {source_values: [2]}' (look "
        "up in one plain map which value is which) and pass --labels labels.yaml; or export "
        "every segmentation the same way (all .seg.nrrd from Slicer, or all label maps)")
    assert not (ws / "nnUNet_raw").exists() or not list((ws / "nnUNet_raw").iterdir())

    labels = tmp_path / "labels.yaml"
    labels.write_text("liver: [Leber]\ntumor: [lesion]\n")
    with pytest.raises(ImportFailed) as info:
        run_import(ws, src, labels_file=labels)
    assert info.value.findings[0].hint.startswith(
        "give each class in the --labels file the values that mean it in the plain label maps")
    assert "pass --labels" not in info.value.findings[0].hint


def test_source_values_map_plain_maps_onto_the_named_classes(tmp_path: Path) -> None:
    """Plain maps store tumor as 1 and liver as 2; labels.yaml says so: one class each, and
    every case equals its truth voxel for voxel."""
    src = tmp_path / "src"
    cases = mixed_source(src, plain_values=(2, 1))
    labels = tmp_path / "labels.yaml"
    labels.write_text("liver:\n  source_values: [2]\ntumor:\n  source_values: [1]\n")
    result = run_import(tmp_path / "ws", src, labels_file=labels)
    assert result.labels == {"background": 0, "liver": 1, "tumor": 2}
    for case in cases.values():
        assert np.array_equal(label_of(result, case),
                              case.expected({"liver": 1, "tumor": 2}))  # type: ignore[attr-defined]
    assert not [f for f in result.findings if "consecutive" in f.message]


def test_check_finds_a_dataset_imported_with_the_kinds_as_separate_classes(
        tmp_path: Path) -> None:
    """What the old import wrote: liver, tumor from the Slicer cases, label_1, label_2 from the
    plain maps, and no case holding both kinds."""
    folder = tmp_path / "Dataset501_Liver"
    synthetic.write_nnunet_dataset(folder, n_cases=6, size=(16, 16, 8), file_ending=".nrrd")
    import SimpleITK as sitk

    for i in range(6):
        path = folder / "labelsTr" / f"case_{i:03d}.nrrd"
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        new = sitk.GetImageFromArray(array + 2 * (array > 0) if i >= 3 else array)
        new.CopyInformation(image)
        sitk.WriteImage(new, str(path))
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "liver": 1, "tumor": 2, "label_1": 3, "label_2": 4}
    (folder / "dataset.json").write_text(json.dumps(meta))
    problems = [p for p in check_dataset(folder, workers=1).problems
                if p.code == "mixed-label-kinds"]
    assert [(p.level, p.file, p.message) for p in problems] == [(
        "error", "dataset.json",
        "classes liver, tumor and label_1, label_2 never occur in one case: 3 case(s) hold only "
        "the first (case_000, case_001, case_002), 3 only the second (case_003, case_004, "
        "case_005), hpcnn's names for the values of plain label maps: Slicer segmentations and "
        "plain label maps imported as different classes, so nnU-Net would learn each structure "
        "as two classes, each from part of the cases")]
    assert "--labels labels.yaml" in problems[0].hint

    # Named and plain names that share cases are a dataset of its own: no such error.
    meta["labels"] = {"background": 0, "liver": 1, "label_2": 2, "label_3": 3, "tumor": 4}
    (folder / "dataset.json").write_text(json.dumps(meta))
    assert not [p for p in check_dataset(folder, workers=1).problems
                if p.code == "mixed-label-kinds"]
