"""DICOM in, DICOM out, through ``hpcnn predict`` with a trained model (the session's tiny
one): a CT series folder predicted as NIfTI, as a DICOM-SEG and as an RTSTRUCT. The SEG read
back by highdicom holds the NIfTI result's voxels on the series' grid, slice for slice; both
objects reference the series they were predicted from; the NIfTI and the record carry no
patient data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from models import tiny_model  # noqa: F401  (fixture)

from hpcnn.services.demo_dicom_data import PATIENT_ID, volume, write_series

pytestmark = pytest.mark.usefixtures("sitk_available")


@pytest.fixture(scope="module")
def predicted(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """The series and the three predictions of it (one nnU-Net run each)."""
    from hpcnn.cli.common import run_cli
    from hpcnn.cli.main import cli

    root = tmp_path_factory.mktemp("dicom-predict")
    series = write_series(root / "in" / "ct7", volume((12, 32, 32), seed=3))
    outputs = {}
    for fmt in ("nii.gz", "dicom-seg", "rtstruct"):
        outputs[fmt] = root / fmt
        code = run_cli(cli, ["predict", str(root / "in" / "ct7"), str(outputs[fmt]),
                             "--model", str(tiny_model), "--fast", "--device", "cpu",
                             "--folds", "0", "--format", fmt])
        assert code == 0, fmt
    return series, outputs


def test_the_seg_holds_the_predicted_voxels_on_the_series_grid(predicted) -> None:
    import highdicom as hd
    import SimpleITK as sitk

    series, outputs = predicted
    nifti = sitk.ReadImage(str(outputs["nii.gz"] / "ct7.nii.gz"))
    expected = sitk.GetArrayFromImage(nifti)  # (z, y, x) in the series' slice order
    assert expected.shape == (12, 32, 32) and expected.any(), "the tiny model found nothing"
    seg = hd.seg.segread(outputs["dicom-seg"] / "ct7.seg.dcm")
    voxels = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(series.sop_uids),
                                               combine_segments=True,
                                               skip_overlap_checks=True)
    assert np.array_equal(voxels, expected)
    assert [seg.get_segment_description(n).segment_label
            for n in seg.get_segment_numbers()] == ["liver", "tumor"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.FrameOfReferenceUID == series.frame_of_reference
    assert seg.PatientID == PATIENT_ID  # a derived object of the patient's study, kept here


def test_the_rtstruct_references_the_series_and_names_the_classes(predicted) -> None:
    from pydicom import dcmread

    series, outputs = predicted
    ds = dcmread(outputs["rtstruct"] / "ct7.rtstruct.dcm")
    refs = (ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
            .RTReferencedSeriesSequence[0])
    assert refs.SeriesInstanceUID == series.series_uid
    assert [roi.ROIName for roi in ds.StructureSetROISequence] == ["liver", "tumor"]
    contoured = [c for c in ds.ROIContourSequence if "ContourSequence" in c]
    assert contoured, "no class was contoured"
    sops = {image.ReferencedSOPInstanceUID for c in contoured for contour in c.ContourSequence
            for image in contour.ContourImageSequence}
    assert sops <= set(series.sop_uids)


def test_no_patient_data_in_the_nifti_result_or_the_records(predicted) -> None:
    _, outputs = predicted
    for fmt, folder in outputs.items():
        for path in folder.iterdir():
            if path.suffix == ".dcm":
                continue  # the DICOM objects are derived from the patient's study, by design
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
            assert PATIENT_ID.encode() not in data, (fmt, path.name)
    record = json.loads((outputs["dicom-seg"] / "hpcnn_predict.json").read_text())
    assert PATIENT_ID not in json.dumps(record)
