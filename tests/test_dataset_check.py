"""``hpcnn dataset check`` on small generated datasets, each broken in one way on purpose.

Every broken dataset also carries two companion problems (an empty label in case_000 and a stray
file in labelsTr): each test asserts the exact (severity, code, file) of its own problem AND the
companions, so a check that stops at the first problem fails here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from synthetic import Grid, Segment, box, write_nnunet_dataset, write_slicer_seg

from hpcnn.dataset.check import check_dataset
from hpcnn.dataset.findings import CheckReport

ENDING = ".nrrd"  # ITK's NIfTI reader turns NaN into 0; NRRD keeps them
SIZE = (16, 16, 8)
NAME = "Dataset501_Liver"
COMPANIONS = {("warning", "empty-label", "labelsTr/case_000.nrrd"),
              ("warning", "stray-file", "labelsTr/README.md")}


def make_dataset(root: Path, n_cases: int = 6) -> Path:
    folder = root / "nnUNet_raw" / NAME
    write_nnunet_dataset(folder, n_cases=n_cases, size=SIZE, file_ending=ENDING)
    return folder


def add_companions(folder: Path) -> None:
    label = folder / "labelsTr" / f"case_000{ENDING}"
    change(label, lambda a: a * 0)
    (folder / "labelsTr" / "README.md").write_text("labels drawn by hand\n")


def found(report: CheckReport) -> set[tuple[str, str, str]]:
    return {(p.level, p.code, p.file) for p in report.problems}


def image(folder: Path, case: int, channel: int = 0) -> Path:
    return folder / "imagesTr" / f"case_{case:03d}_{channel:04d}{ENDING}"


def label(folder: Path, case: int) -> Path:
    return folder / "labelsTr" / f"case_{case:03d}{ENDING}"


def change(path: Path, array_fn: Callable[[np.ndarray], np.ndarray] | None = None,
           **geometry: object) -> None:
    """Rewrite ``path`` with its voxels passed through ``array_fn`` and/or new geometry
    (``spacing=``, ``origin=``, ``direction=``)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if array_fn is not None:
        new = sitk.GetImageFromArray(array_fn(sitk.GetArrayFromImage(img)))
        new.SetSpacing(img.GetSpacing())
        new.SetOrigin(img.GetOrigin())
        new.SetDirection(img.GetDirection())
        img = new
    for key, value in geometry.items():
        getattr(img, f"Set{key.capitalize()}")(value)
    sitk.WriteImage(img, str(path), True)


def edit_json(folder: Path, fn: Callable[[dict], None]) -> None:
    path = folder / "dataset.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


# --------------------------------------------------------------------------------------------
# One broken thing per dataset (plus the companions)


def trailing_comma(folder: Path) -> None:
    text = (folder / "dataset.json").read_text()
    (folder / "dataset.json").write_text(text.replace('"file_ending": ".nrrd"',
                                                      '"file_ending": ".nrrd",'))


def v1_keys(folder: Path) -> None:
    edit_json(folder, lambda d: d.update(training=[{"image": "x", "label": "y"}],
                                         tensorImageSize="3D"))


def modality_not_channel_names(folder: Path) -> None:
    edit_json(folder, lambda d: d.update(modality=d.pop("channel_names")))


def missing_num_training(folder: Path) -> None:
    edit_json(folder, lambda d: d.pop("numTraining"))


def background_not_zero(folder: Path) -> None:
    edit_json(folder, lambda d: d.update(labels={"bg": 0, "liver": 1, "tumor": 2}))


def labels_with_gap(folder: Path) -> None:
    edit_json(folder, lambda d: d.update(labels={"background": 0, "liver": 1, "tumor": 3}))


def ignore_not_highest(folder: Path) -> None:
    edit_json(folder, lambda d: d["labels"].update(ignore=1))


def label_never_present(folder: Path) -> None:
    edit_json(folder, lambda d: d["labels"].update(vessel=3))


def wrong_num_training(folder: Path) -> None:
    edit_json(folder, lambda d: d.update(numTraining=9))


def ending_without_dot(folder: Path) -> None:
    edit_json(folder, lambda d: d.update(file_ending="nrrd"))


def unsupported_ending(folder: Path) -> None:
    edit_json(folder, lambda d: d.update(file_ending=".jpg"))


def bad_channel_names(folder: Path) -> None:
    edit_json(folder, lambda d: d.update(channel_names={"1": "CT"}))


def missing_label(folder: Path) -> None:
    label(folder, 2).unlink()


def orphan_label(folder: Path) -> None:
    shutil.copy(label(folder, 1), label(folder, 99))


def label_with_channel_suffix(folder: Path) -> None:
    label(folder, 2).rename(folder / "labelsTr" / f"case_002_0000{ENDING}")


def image_without_channel(folder: Path) -> None:
    image(folder, 2).rename(folder / "imagesTr" / f"case_002{ENDING}")


def stray_in_images(folder: Path) -> None:
    (folder / "imagesTr" / "notes.txt").write_text("exported by hand\n")
    (folder / "imagesTr" / "old").mkdir()


def apple_double(folder: Path) -> None:
    shutil.copy(image(folder, 1), folder / "imagesTr" / f"._case_001_0000{ENDING}")


def mixed_formats(folder: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(image(folder, 2))),
                    str(folder / "imagesTr" / "case_002_0000.nii.gz"))
    image(folder, 2).unlink()


def second_channel_declared(folder: Path) -> None:
    edit_json(folder, lambda d: d.update(channel_names={"0": "CT", "1": "PET"}))


def undeclared_channel(folder: Path) -> None:
    shutil.copy(image(folder, 1), image(folder, 1, channel=1))


def truncated_label(folder: Path) -> None:
    data = label(folder, 1).read_bytes()
    label(folder, 1).write_bytes(data[: len(data) // 3])


def not_an_image(folder: Path) -> None:
    image(folder, 1).write_text("this is not an image\n")


def slicer_multilayer(folder: Path) -> None:
    grid = Grid((SIZE[0], SIZE[1], SIZE[2]))
    a, b = box(grid, (2, 2, 2), (10, 10, 6)), box(grid, (6, 6, 3), (14, 14, 7))
    write_slicer_seg(label(folder, 1), [Segment("liver", a), Segment("tumor", b)], grid,
                     crop=False)


def two_d_case(folder: Path) -> None:
    import SimpleITK as sitk

    for path in (image(folder, 1), label(folder, 1)):
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        sitk.WriteImage(sitk.GetImageFromArray(arr[4]), str(path), True)


def cropped_label(folder: Path) -> None:
    change(label(folder, 1), lambda a: a[:, :, :12].copy())


def label_spacing(folder: Path) -> None:
    change(label(folder, 1), spacing=(1.0, 1.0, 1.5))


def label_origin(folder: Path) -> None:
    change(label(folder, 1), origin=(5.0, 0.0, 0.0))


def label_direction(folder: Path) -> None:
    change(label(folder, 1), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))


def nan_image(folder: Path) -> None:
    def nan(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[0, 0, :3] = np.nan
        a[1, 0, 0] = np.inf
        return a

    change(image(folder, 1), nan)


def constant_image(folder: Path) -> None:
    change(image(folder, 1), lambda a: np.zeros_like(a))


def float_label(folder: Path) -> None:
    change(label(folder, 1), lambda a: a.astype(np.float32))


def interpolated_label(folder: Path) -> None:
    change(label(folder, 1), lambda a: a.astype(np.float32) * 0.5)


def undeclared_value(folder: Path) -> None:
    change(label(folder, 1), lambda a: np.where(a == 2, 5, a).astype(a.dtype))


def mask_0_255(folder: Path) -> None:
    change(label(folder, 1), lambda a: np.where(a > 0, 255, 0).astype(np.uint8))


def negative_label(folder: Path) -> None:
    change(label(folder, 1), lambda a: np.where(a == 2, -1, a.astype(np.int16)))


def duplicate_case(folder: Path) -> None:
    shutil.copy(image(folder, 1), image(folder, 2))


def flipped_case(folder: Path) -> None:
    for path in (image(folder, 1), label(folder, 1)):
        change(path, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))


def spacing_outlier(folder: Path) -> None:
    for path in (image(folder, 1), label(folder, 1)):
        change(path, spacing=(3.0, 3.0, 3.0))


def anisotropic(folder: Path) -> None:
    for path in sorted(folder.glob(f"*Tr/case_*{ENDING}")):
        change(path, spacing=(0.7, 0.7, 5.0))


def few_cases(folder: Path) -> None:
    for case in (3, 4):
        image(folder, case).unlink()
        label(folder, case).unlink()
    edit_json(folder, lambda d: d.update(numTraining=4))


def space_in_name(folder: Path) -> None:
    image(folder, 1).rename(folder / "imagesTr" / f"case 001_0000{ENDING}")
    label(folder, 1).rename(folder / "labelsTr" / f"case 001{ENDING}")


def images_ts(folder: Path) -> None:
    (folder / "imagesTs").mkdir()
    shutil.copy(image(folder, 1), folder / "imagesTs" / f"new{ENDING}")
    shutil.copy(image(folder, 1), folder / "imagesTs" / f"ok_0000{ENDING}")
    (folder / "imagesTs" / f"broken_0000{ENDING}").write_text("no image\n")


def stale_raw_splits(folder: Path) -> None:
    cases = [f"case_{i:03d}" for i in range(5)] + ["case_042"]
    (folder / "splits_final.json").write_text(json.dumps(
        [{"train": cases[1:], "val": cases[:1]}]))


CASES: list[tuple[Callable[[Path], None], set[tuple[str, str, str]]]] = [
    (v1_keys, {("warning", "v1-key", "dataset.json")}),
    (modality_not_channel_names, {("warning", "v1-key", "dataset.json"),
                                  ("error", "missing-key", "dataset.json")}),
    (missing_num_training, {("error", "missing-key", "dataset.json")}),
    (background_not_zero, {("error", "background-not-zero", "dataset.json")}),
    (labels_with_gap, {("error", "labels-not-consecutive", "dataset.json"),
                       ("error", "undeclared-label", "labelsTr/case_001.nrrd")}),
    (ignore_not_highest, {("error", "ignore-label-not-highest", "dataset.json")}),
    (label_never_present, {("warning", "label-never-present", "dataset.json")}),
    (wrong_num_training, {("error", "num-training-mismatch", "dataset.json")}),
    (ending_without_dot, {("error", "bad-file-ending", "dataset.json")}),
    (unsupported_ending, {("error", "unsupported-file-ending", "dataset.json"),
                          ("error", "file-ending-mismatch", "dataset.json")}),
    (bad_channel_names, {("error", "bad-channel-names", "dataset.json")}),
    (missing_label, {("error", "missing-label", "labelsTr/case_002.nrrd")}),
    (orphan_label, {("error", "orphan-label", "labelsTr/case_099.nrrd")}),
    (label_with_channel_suffix, {("error", "bad-label-name", "labelsTr/case_002_0000.nrrd"),
                                 ("error", "missing-label", "labelsTr/case_002.nrrd")}),
    (image_without_channel, {("error", "bad-image-name", "imagesTr/case_002.nrrd"),
                             ("error", "orphan-label", "labelsTr/case_002.nrrd")}),
    (stray_in_images, {("warning", "stray-file", "imagesTr/notes.txt"),
                       ("warning", "stray-file", "imagesTr/old")}),
    (apple_double, {("error", "hidden-file", "imagesTr/._case_001_0000.nrrd")}),
    (mixed_formats, {("error", "wrong-file-ending", "imagesTr/case_002_0000.nii.gz")}),
    (second_channel_declared, {("error", "missing-channel", "imagesTr/case_003_0001.nrrd")}),
    (undeclared_channel, {("error", "extra-channel", "imagesTr/case_001_0001.nrrd")}),
    (truncated_label, {("error", "unreadable", "labelsTr/case_001.nrrd")}),
    (not_an_image, {("error", "unreadable", "imagesTr/case_001_0000.nrrd")}),
    (slicer_multilayer, {("error", "vector-image", "labelsTr/case_001.nrrd")}),
    (two_d_case, {("error", "dimension-mismatch", "imagesTr/case_001_0000.nrrd")}),
    (cropped_label, {("error", "shape-mismatch", "labelsTr/case_001.nrrd")}),
    (label_spacing, {("error", "spacing-mismatch", "labelsTr/case_001.nrrd")}),
    (label_origin, {("warning", "origin-mismatch", "labelsTr/case_001.nrrd")}),
    (label_direction, {("warning", "direction-mismatch", "labelsTr/case_001.nrrd")}),
    (nan_image, {("error", "nan-in-image", "imagesTr/case_001_0000.nrrd"),
                 ("error", "inf-in-image", "imagesTr/case_001_0000.nrrd")}),
    (constant_image, {("warning", "constant-image", "imagesTr/case_001_0000.nrrd")}),
    (float_label, {("warning", "float-label", "labelsTr/case_001.nrrd")}),
    (interpolated_label, {("error", "non-integer-label", "labelsTr/case_001.nrrd")}),
    (undeclared_value, {("error", "undeclared-label", "labelsTr/case_001.nrrd")}),
    (mask_0_255, {("error", "undeclared-label", "labelsTr/case_001.nrrd")}),
    (negative_label, {("error", "undeclared-label", "labelsTr/case_001.nrrd")}),
    (duplicate_case, {("warning", "duplicate-case", "imagesTr/case_002_0000.nrrd")}),
    (flipped_case, {("warning", "orientation-differs", "imagesTr/case_001_0000.nrrd")}),
    (spacing_outlier, {("warning", "spacing-outlier", "imagesTr/case_001_0000.nrrd")}),
    (anisotropic, {("warning", "anisotropic-spacing", "imagesTr")}),
    (few_cases, {("warning", "too-few-cases", "imagesTr")}),
    (space_in_name, {("warning", "unusual-case-name", "imagesTr/case 001_0000.nrrd")}),
    (images_ts, {("warning", "bad-test-name", "imagesTs/new.nrrd"),
                   ("warning", "unreadable", "imagesTs/broken_0000.nrrd")}),
    (stale_raw_splits, {("error", "stale-splits", "splits_final.json")}),
]


@pytest.mark.parametrize("breaker, expected", CASES, ids=[c[0].__name__ for c in CASES])
def test_each_problem_is_reported_with_the_others(tmp_path: Path, sitk_available: None,
                                                  breaker: Callable[[Path], None],
                                                  expected: set[tuple[str, str, str]]) -> None:
    folder = make_dataset(tmp_path)
    add_companions(folder)
    breaker(folder)
    report = check_dataset(folder, workers=1)
    missing = (expected | COMPANIONS) - found(report)
    assert not missing, f"not reported: {missing}\n{report.as_text()}"
    assert all(p.hint for p in report.problems), "every problem says how to fix it"


def test_a_clean_dataset_has_no_problems(tmp_path: Path, sitk_available: None) -> None:
    report = check_dataset(make_dataset(tmp_path), workers=1)
    assert report.problems == []
    assert report.cases == [f"case_{i:03d}" for i in range(6)]


def test_trailing_comma_names_the_line_and_the_fix(tmp_path: Path,
                                                   sitk_available: None) -> None:
    folder = make_dataset(tmp_path)
    add_companions(folder)
    trailing_comma(folder)
    report = check_dataset(folder, workers=1)
    (problem,) = [p for p in report.problems if p.code == "invalid-json"]
    lines = (folder / "dataset.json").read_text().splitlines()
    closing = next(i for i, line in enumerate(lines, 1) if line.startswith("}"))
    assert problem.file == "dataset.json" and f"dataset.json:{closing}:" in problem.message
    assert "trailing comma" in problem.hint
    # the file ending is inferred from imagesTr, so the cases are still checked in this pass
    assert found(report) >= COMPANIONS


def test_hints_name_the_usual_fix(tmp_path: Path, sitk_available: None) -> None:
    folder = make_dataset(tmp_path)
    mask_0_255(folder)
    negative = label(folder, 2)
    change(negative, lambda a: np.where(a == 2, -1, a.astype(np.int16)))
    report = check_dataset(folder, workers=1)
    hints = {p.file: p.hint for p in report.problems if p.code == "undeclared-label"}
    assert "--remap 255:1" in hints["labelsTr/case_001.nrrd"]
    assert "negative" in hints["labelsTr/case_002.nrrd"]


def test_fewer_cases_than_configured_folds(tmp_path: Path, sitk_available: None) -> None:
    folder = make_dataset(tmp_path)
    assert not check_dataset(folder, folds=[0, 1, 2, 3, 4], workers=1).problems
    report = check_dataset(folder, folds=list(range(7)), workers=1)
    assert ("error", "too-few-cases", "imagesTr") in found(report)


def test_process_pool_finds_the_same_problems(tmp_path: Path, sitk_available: None) -> None:
    folder = make_dataset(tmp_path)
    add_companions(folder)
    duplicate_case(folder)
    cropped_label(folder)
    steps: list[tuple[str, int, int]] = []
    pooled = check_dataset(folder, workers=2, on_progress=lambda *a: steps.append(a))
    assert found(pooled) == found(check_dataset(folder, workers=1))
    assert steps[-1][1:] == (6, 6)


# --------------------------------------------------------------------------------------------
# The command


@pytest.fixture
def raw(workspace: Path, sitk_available: None) -> Path:
    return make_dataset(workspace)


def test_cli_exit_codes_and_grouped_report(raw: Path, hpcnn) -> None:
    code, out, _ = hpcnn("dataset", "check", "501")
    assert code == 0 and "0 error(s), 0 warning(s)" in out

    (raw / "labelsTr" / "README.md").write_text("x")
    code, out, _ = hpcnn("dataset", "check", "Liver")
    assert code == 0, "warnings alone do not fail the check"
    assert "1 warning(s)" in out

    missing_label(raw)
    label_origin(raw)
    code, out, _ = hpcnn("dataset", "check", str(raw))
    assert code == 2
    lines = out.splitlines()
    at = lines.index("labelsTr/case_001.nrrd")
    assert "[origin-mismatch]" in lines[at + 1] and lines[at + 2].lstrip().startswith("fix:")
    assert "labelsTr/case_002.nrrd" in lines and "[missing-label]" in out


def test_cli_json_schema(raw: Path, hpcnn) -> None:
    missing_label(raw)
    label_origin(raw)
    code, out, _ = hpcnn("dataset", "check", NAME, "--json")
    assert code == 2
    problems = json.loads(out)
    assert isinstance(problems, list) and len(problems) == 2
    for p in problems:
        assert set(p) == {"severity", "file", "code", "message", "hint"}
        assert p["severity"] in ("error", "warning")
        assert all(isinstance(v, str) and v for v in p.values())
    assert [(p["file"], p["code"]) for p in problems] == [
        ("labelsTr/case_001.nrrd", "origin-mismatch"), ("labelsTr/case_002.nrrd", "missing-label")]


def test_cli_unknown_dataset(workspace: Path, hpcnn) -> None:
    code, _, err = hpcnn("dataset", "check", "777")
    assert code == 2 and "no dataset '777'" in err
