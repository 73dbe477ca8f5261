"""NaN and infinite voxels are found in every format (issue 19 item 4).

ITK's NIfTI reader (nifti1_io's ``nifti_read_buffer``) turns every NaN and ±Inf of a float
NIfTI into 0, ``.nii`` and ``.nii.gz``, float32 and float64, with or without ``scl_slope``: a
check of SimpleITK's array never sees them. payload.examine counts them in the file's own data,
and ``dataset import`` and ``dataset check`` (and ``predict``, test_predict.py) use it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import synthetic
from synthetic import Grid, write_nnunet_dataset

from hpcnn.dataset import payload
from hpcnn.dataset.check import check_dataset

pytestmark = pytest.mark.usefixtures("sitk_available")

GRID = Grid((12, 10, 8))


def _bad_array(dtype: type = np.float32) -> np.ndarray:
    values = np.full(GRID.shape, 40.0, dtype)
    values[1, 2, 3] = values[2, 3, 4] = np.nan
    values[3, 4, 5] = -np.inf
    return values


def _scaled_nii(path: Path) -> Path:
    """A float32 .nii whose header scales its values (scl_slope 2, scl_inter 5)."""
    synthetic.write_image(path, _bad_array(), GRID, compress=False)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<ff", raw, 112, 2.0, 5.0)
    path.write_bytes(bytes(raw))
    return path


WRITERS = {
    "nii.gz float32": lambda d: synthetic.write_image(d / "a.nii.gz", _bad_array(), GRID),
    "nii float64": lambda d: synthetic.write_image(d / "a.nii", _bad_array(np.float64), GRID,
                                                   compress=False),
    "nii scaled": lambda d: _scaled_nii(d / "a.nii"),
    "nrrd gzip": lambda d: synthetic.write_image(d / "a.nrrd", _bad_array(), GRID),
    "nrrd raw": lambda d: synthetic.write_image(d / "a.nrrd", _bad_array(), GRID,
                                                compress=False),
    "mha zlib": lambda d: synthetic.write_image(d / "a.mha", _bad_array(np.float64), GRID),
}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_nan_and_inf_are_counted_in_every_format(kind: str, tmp_path: Path) -> None:
    import SimpleITK as sitk

    path = WRITERS[kind](tmp_path)
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if ".nii" in path.name:  # the cause: SimpleITK shows 0 where the file holds NaN
        assert np.isfinite(read).all()
    problems = payload.examine(path, root=tmp_path, allow_outside=False, max_bytes=None)
    assert [(p.code, p.message) for p in problems] == [("nan", "2 voxel(s) are NaN"),
                                                       ("inf", "1 voxel(s) are infinite")]
    assert "background" in problems[0].fix


def test_finite_and_integer_images_pass(tmp_path: Path) -> None:
    good = synthetic.write_image(tmp_path / "f.nii.gz", np.full(GRID.shape, 3.0, np.float32),
                                 GRID)
    ints = synthetic.write_image(tmp_path / "i.nii", np.full(GRID.shape, -1, np.int16), GRID,
                                 compress=False)
    for path in (good, ints):
        assert payload.examine(path, root=tmp_path, allow_outside=False, max_bytes=None) == []


def test_import_refuses_nan_in_a_nifti(workspace: Path, hpcnn) -> None:
    src = workspace / "exports"
    for key in ("a", "b"):
        synthetic.labelled_case(src, key, image_ext=".nii.gz", label_ext=".nii.gz")
    case = synthetic.labelled_case(src, "c", image_ext=".nii.gz", label_ext=".nii.gz")
    import SimpleITK as sitk

    image = sitk.GetArrayFromImage(sitk.ReadImage(str(case.images[0]))).astype(np.float32)
    image[2, 3, 4] = np.nan
    synthetic.write_image(case.images[0], image, case.grid)
    code, out, err = hpcnn("dataset", "import", src, "--name", "Bad", "-j", "1",
                           "--test-fraction", "0")
    assert code == 2, out + err
    assert f"{case.images[0].name}: 1 voxel(s) are NaN" in err and "fix:" in err
    raw = workspace / "nnUNet_raw"
    assert not raw.exists() or list(raw.iterdir()) == []


def test_check_reports_nan_in_a_nifti_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "nnUNet_raw" / "Dataset501_Liver"
    write_nnunet_dataset(folder, n_cases=5, size=(16, 16, 8), file_ending=".nii.gz")
    import SimpleITK as sitk

    path = folder / "imagesTr" / "case_001_0000.nii.gz"
    original = sitk.ReadImage(str(path))
    values = sitk.GetArrayFromImage(original).astype(np.float32)
    values[0, 0, :3] = np.nan
    values[1, 0, 0] = np.inf
    bad = sitk.GetImageFromArray(values)
    bad.CopyInformation(original)
    sitk.WriteImage(bad, str(path), True)
    report = check_dataset(folder, workers=1)
    found = {(p.level, p.code, p.file, p.message) for p in report.problems
             if p.code.endswith("-in-image")}
    assert found == {("error", "nan-in-image", "imagesTr/case_001_0000.nii.gz",
                      "3 voxel(s) are NaN"),
                     ("error", "inf-in-image", "imagesTr/case_001_0000.nii.gz",
                      "1 voxel(s) are infinite")}
