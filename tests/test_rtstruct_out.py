"""RTSTRUCT results (formats/rtstruct_out.py): a prediction on a synthetic CT series written
as an RT Structure Set, read back by pydicomrt's rasteriser onto the series' grid, checked by
dciodvfy; the faults (another grid, an existing file, a failed write).

The stated tolerance: what comes back is inside the prediction (no voxel gained), Dice >= 0.95
per class, and every voxel lost lies on the class's in-plane boundary. pydicomrt traces each
outline through the boundary voxels' centres; the rasteriser fills outer contours with their
boundary but cuts an inner contour (a hole) with its boundary, so a hole comes back one voxel
ring wider and nothing else changes."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from dicom_out_data import (
    LABELS,
    PATIENT_ID,
    algorithm,
    case_folders,
    classes,
    dciodvfy,
    label_array,
    label_image,
    written,
)

from hpcnn.errors import DataError

pytestmark = pytest.mark.usefixtures("sitk_available")


@pytest.fixture(scope="module")
def rt_case(tmp_path_factory: pytest.TempPathFactory):
    from hpcnn.formats.rtstruct_out import write_rtstruct

    series, headers, out = case_folders(tmp_path_factory.mktemp("rt"))
    path = write_rtstruct(label_image(), headers, classes(), algorithm(),
                          out / "case7.rtstruct.dcm")
    return series, headers, path


def test_rtstruct_covers_the_prediction_within_the_stated_tolerance(rt_case) -> None:
    from pydicom import dcmread
    from pydicomrt.rs import calc_image_series_affine_mapping, rtstruct_to_masks
    from scipy.ndimage import binary_erosion

    _, headers, path = rt_case
    affine, shape = calc_image_series_affine_mapping(headers)
    masks = rtstruct_to_masks(dcmread(path), affine, shape)
    assert set(masks) == set(LABELS)
    labels = label_array()
    for name, value in LABELS.items():
        expected = labels == value
        if not expected.any():
            assert masks[name] == {}  # an ROI without contours
            continue
        got = masks[name]["mask_volume"].astype(bool)
        assert not (got & ~expected).any(), name
        dice = 2 * (got & expected).sum() / (got.sum() + expected.sum())
        assert dice >= 0.95, (name, dice)
        inner = binary_erosion(expected, structure=np.ones((1, 3, 3)))
        assert not (expected & ~got & inner).any(), name  # lost only on the boundary


def test_rtstruct_references_and_identifies_its_source(rt_case) -> None:
    from pydicom import dcmread

    series, _, path = rt_case
    ds = dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.Manufacturer == "hpcnn"
    assert (ds.PatientID, ds.StudyInstanceUID) == (PATIENT_ID, series.study_uid)
    assert ds.SeriesInstanceUID != series.series_uid
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series.frame_of_reference
    refs = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == series.series_uid
    assert {i.ReferencedSOPInstanceUID for i in refs.ContourImageSequence} == set(
        series.sop_uids)
    contours = [c for roi in ds.ROIContourSequence for c in roi.get("ContourSequence", [])]
    assert {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in contours} <= set(
        series.sop_uids)
    assert [r.ROIName for r in ds.StructureSetROISequence] == list(LABELS)
    assert {r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence} == {"AUTOMATIC"}
    assert "ContourSequence" not in ds.ROIContourSequence[2]  # vessel: not found
    assert ds.RTROIObservationsSequence[0].RTROIIdentificationCodeSequence[0].CodeValue == (
        "85756007")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rtstruct_passes_dciodvfy(rt_case) -> None:
    errors, warnings = dciodvfy(rt_case[2])
    print("dciodvfy warnings:", *warnings, sep="\n  ")  # allowed; shown with -rP
    assert errors == [], "\n".join(errors + warnings)


def test_rtstruct_on_another_grid_is_refused(rt_case, tmp_path: Path) -> None:
    from hpcnn.formats.rtstruct_out import write_rtstruct

    moved = label_image(origin=(-12.0, -14.4, 30.0))  # half a voxel off in y
    with pytest.raises(DataError, match="not on the grid of the source series"):
        write_rtstruct(moved, rt_case[1], classes(), algorithm(), tmp_path / "x.rtstruct.dcm")
    assert list(tmp_path.iterdir()) == []


def test_rtstruct_existing_file_refused_and_never_half_written(
        rt_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.dataset import Dataset

    from hpcnn.formats.rtstruct_out import write_rtstruct

    final = tmp_path / "case7.rtstruct.dcm"
    final.write_bytes(b"manual")
    with pytest.raises(DataError, match="exists already"):
        write_rtstruct(label_image(), rt_case[1], classes(), algorithm(), final)

    def broken(self, fh, **kwargs) -> None:
        fh.write(b"half")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(Dataset, "save_as", broken)
        with pytest.raises(OSError, match="disk full"):
            write_rtstruct(label_image(), rt_case[1], classes(), algorithm(), final, force=True)
    assert final.read_bytes() == b"manual" and written(final) == {final.name}
