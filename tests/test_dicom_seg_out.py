"""DICOM-SEG results (formats/dicom_seg_out.py) and their wiring into ``hpcnn predict``: a
prediction on a synthetic CT series written as a BINARY SEG, read back by highdicom and by
dcmqi's segimage2itkimage (3D Slicer's reader) voxel for voxel on the series' grid, checked by
dciodvfy; the faults (another grid, an existing file, a failed write, NIfTI inputs, no extra)."""

from __future__ import annotations

import json
import stat
import subprocess
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
    slice_files,
    tool,
    written,
)

from hpcnn.errors import DataError

pytestmark = pytest.mark.usefixtures("sitk_available")


@pytest.fixture(scope="module")
def seg_case(tmp_path_factory: pytest.TempPathFactory):
    """A series, its headers, and the SEG written from ``label_array`` (vessel absent)."""
    from hpcnn.formats.dicom_seg_out import write_dicom_seg

    series, headers, out = case_folders(tmp_path_factory.mktemp("seg"))
    path = write_dicom_seg(label_image(), headers, classes(), algorithm(), out / "case7.seg.dcm")
    return series, headers, path


def test_seg_reads_back_in_highdicom_with_the_same_voxels_and_references(seg_case) -> None:
    import highdicom as hd

    series, headers, path = seg_case
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY"
    voxels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[h.SOPInstanceUID for h in headers], combine_segments=True)
    assert np.array_equal(voxels, label_array())  # segment numbers are the class values here
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == list(LABELS)
    tissue = seg.get_segment_description(1)
    assert tissue.segmented_property_type.value == "85756007"
    assert tissue.algorithm_identification[0].AlgorithmName == "nnU-Net"
    # derived object: patient and study copied, its own series and instance, same frame
    assert (seg.PatientID, seg.StudyInstanceUID) == (PATIENT_ID, series.study_uid)
    assert seg.FrameOfReferenceUID == series.frame_of_reference
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.SeriesInstanceUID != series.series_uid
    assert seg.SOPInstanceUID not in series.sop_uids
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert written(path) == {"case7.seg.dcm"}


def test_seg_absent_class_is_a_segment_without_frames(seg_case) -> None:
    import highdicom as hd

    seg = hd.seg.segread(seg_case[2])
    referenced = {int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                  for f in seg.PerFrameFunctionalGroupsSequence}
    assert 3 in seg.get_segment_numbers() and referenced == {1, 2}


def test_seg_reads_back_in_dcmqi_on_the_same_grid(seg_case, tmp_path: Path) -> None:
    import SimpleITK as sitk

    path = seg_case[2]
    done = subprocess.run([tool("segimage2itkimage"), "--inputDICOM", str(path),
                           "--outputDirectory", str(tmp_path), "-t", "nrrd",
                           "--mergeSegments"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    by_id = {s["labelID"]: s["SegmentLabel"] for group in meta["segmentAttributes"]
             for s in group}
    images = sorted(tmp_path.glob("*.nrrd"))
    assert len(images) == 1
    image = sitk.ReadImage(str(images[0]))
    reference = label_image()
    assert np.allclose(image.GetSpacing(), reference.GetSpacing())
    assert np.allclose(image.GetDirection(), reference.GetDirection())
    # dcmqi's volume spans the frames present; placed on the label map's grid it must match
    start = reference.TransformPhysicalPointToContinuousIndex(image.GetOrigin())
    assert np.allclose(start, np.round(start), atol=1e-3)
    placed = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    values = sitk.GetArrayFromImage(placed)
    names = {n: v for v, n in by_id.items()}
    expected = np.zeros_like(values)
    for name, value in LABELS.items():
        if name in names:
            expected[label_array() == value] = names[name]
    assert np.array_equal(values, expected)
    assert {by_id[v] for v in np.unique(values) if v} == {"liver", "tumor"}


def test_seg_passes_dciodvfy(seg_case) -> None:
    errors, warnings = dciodvfy(seg_case[2])
    print("dciodvfy warnings:", *warnings, sep="\n  ")  # allowed; shown with -rP
    assert errors == [], "\n".join(errors + warnings)


def test_seg_codes_from_labels_yaml(tmp_path: Path, seg_case) -> None:
    import highdicom as hd

    from hpcnn.dataset.labels import load_labels_file
    from hpcnn.formats.dicom_derived import read_codes
    from hpcnn.formats.dicom_seg_out import write_dicom_seg

    labels = tmp_path / "labels.yaml"
    labels.write_text("liver:\n  synonyms: [Leber]\n  code: [10200004, SCT, Liver]\n"
                      "  category: [123037004, SCT, Anatomical Structure]\ntumor: [lesion]\n"
                      "vessel: {}\n")
    load_labels_file(labels)  # the import reads the same file
    path = write_dicom_seg(label_image(), seg_case[1], classes(read_codes(labels)),
                           algorithm(), tmp_path / "coded.seg.dcm")
    liver = hd.seg.segread(path).get_segment_description(1)
    assert (liver.segmented_property_type.value, liver.segmented_property_type.meaning) == (
        "10200004", "Liver")
    assert liver.segmented_property_category.value == "123037004"
    labels.write_text("liver:\n  code: [10200004, SCT]\n")
    with pytest.raises(DataError, match="class 'liver': code must be"):
        read_codes(labels)


def test_seg_on_another_grid_is_refused(seg_case, tmp_path: Path) -> None:
    from hpcnn.formats.dicom_seg_out import write_dicom_seg

    final = tmp_path / "case7.seg.dcm"
    for image, said in ((label_image(spacing=(0.8, 0.8, 3.0)), "is no slice of the label map"),
                        (label_image(size=(32, 30, 12)), "size 32x30x12 against 32x32x12")):
        with pytest.raises(DataError, match="not on the grid of the source series") as info:
            write_dicom_seg(image, seg_case[1], classes(), algorithm(), final)
        assert said in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_seg_existing_file_refused_unless_force_and_never_half_written(
        seg_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import highdicom as hd

    from hpcnn.formats.dicom_seg_out import write_dicom_seg

    final = tmp_path / "case7.seg.dcm"
    final.write_bytes(b"manual")
    with pytest.raises(DataError, match="exists already; nothing was written"):
        write_dicom_seg(label_image(), seg_case[1], classes(), algorithm(), final)
    assert final.read_bytes() == b"manual"

    def broken(self, fh, **kwargs) -> None:
        fh.write(b"half a file")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(hd.seg.Segmentation, "save_as", broken)
        with pytest.raises(OSError, match="disk full"):
            write_dicom_seg(label_image(), seg_case[1], classes(), algorithm(), final,
                            force=True)
    assert final.read_bytes() == b"manual" and written(final) == {"case7.seg.dcm"}
    write_dicom_seg(label_image(), seg_case[1], classes(), algorithm(), final, force=True)
    assert hd.seg.segread(final).PatientID == PATIENT_ID


# ---- predict's output side


def _model(tmp_path: Path):
    from hpcnn.nnunet.model_folder import ModelFolder

    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir()
    return ModelFolder(folder, {"file_ending": ".nii.gz", "channel_names": {"0": "CT"},
                                "labels": {"background": 0, **LABELS}}, {})


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_predict_delivers_one_object_per_series_case(seg_case, tmp_path: Path,
                                                     fmt: str) -> None:
    """deliver() (step 5 of a prediction here and on the cluster) with a case whose source is
    a series folder: the result becomes OUTPUT/<case>.seg.dcm (.rtstruct.dcm) referencing that
    series and naming the model's configuration (an ensemble's members) and folds."""
    import SimpleITK as sitk
    from pydicom import dcmread

    from hpcnn import formats
    from hpcnn.formats.source import SourceItem
    from hpcnn.nnunet.inputs import PredictCase
    from hpcnn.nnunet.predict import deliver, source_series

    series = seg_case[0]
    case = PredictCase("case7", (SourceItem(series.folder, "case7", slice_files(series),
                                            "dicom-series"),))
    assert source_series(case) == series.folder
    work = tmp_path / "work"
    work.mkdir()
    sitk.WriteImage(label_image(), str(work / "case_0000.nii.gz"))
    output = tmp_path / "out"
    result = output / case.output(formats.prediction_choices()[fmt])
    lines: list[str] = []
    method = {"method": {"members": ["3d_fullres", "3d_lowres"]}} if fmt == "rtstruct" else {}
    deliver(output, _model(tmp_path), ["0", "1"], False, [case], [work / "case_0000"],
            [result], fmt, lines.append, source=method)
    ds = dcmread(result)
    if fmt == "dicom-seg":
        refs = ds.ReferencedSeriesSequence[0]
        said = str(ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
                   .AlgorithmParameters)
        assert "configuration=3d_fullres" in said and "folds=0,1" in said
    else:
        refs = (ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
                .RTReferencedSeriesSequence[0])
        assert ds.StructureSetDescription == "nnU-Net 3d_fullres+3d_lowres folds 0,1"
    assert refs.SeriesInstanceUID == series.series_uid and ds.PatientID == PATIENT_ID
    assert lines == [f"case7 -> {result}"]
    assert {p.name for p in output.iterdir()} == {result.name, "hpcnn_predict.json"}


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_predict_dicom_format_from_nifti_input_is_refused(tmp_path: Path, fmt: str) -> None:
    import SimpleITK as sitk

    from hpcnn.nnunet.predict import check_request

    images = tmp_path / "images"
    images.mkdir()
    sitk.WriteImage(sitk.Cast(label_image(), sitk.sitkFloat32), str(images / "case7.nii.gz"))
    with pytest.raises(DataError, match=f"--format {fmt} writes a DICOM object") as info:
        check_request(_model(tmp_path), [str(images)], tmp_path / "out", fmt, print)
    assert "case7.nii.gz is not a DICOM series" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from hpcnn.formats.dicom_derived import DicomExtraMissing, require_dicom

    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(DicomExtraMissing) as info:
        require_dicom("highdicom", "pydicom")
    assert "pip install 'hpcnn[dicom]'" in str(info.value)


def test_predict_labels_option_needs_a_dicom_format(tmp_path: Path, workspace, hpcnn) -> None:
    labels = tmp_path / "labels.yaml"
    labels.write_text("liver:\n  code: [10200004, SCT, Liver]\n")
    code, _, err = hpcnn("predict", tmp_path, tmp_path / "out", "--labels", labels,
                         "--format", "nrrd")
    assert code == 2 and "use it with --format dicom-seg or rtstruct" in err
