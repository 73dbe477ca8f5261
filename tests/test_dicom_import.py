"""``hpcnn dataset import`` of DICOM case folders: series + DICOM-SEG / RTSTRUCT round trips,
series choice, patient data kept out of nnUNet_raw, and every fault refused with a clear
message and nothing written (synthetic DICOM from hpcnn/services/demo_dicom_data.py, 32x32x12)."""

from __future__ import annotations

import gzip
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from hpcnn.dataset import dicom_map  # noqa: E402
from hpcnn.dataset.check import check_dataset  # noqa: E402
from hpcnn.dataset.importer import ImportOptions, import_dataset  # noqa: E402
from hpcnn.errors import DataError  # noqa: E402
from hpcnn.services import demo_dicom_data as dd  # noqa: E402
from hpcnn.workspace import Workspace  # noqa: E402

HTJ2K = "1.2.840.10008.1.2.4.201"  # High-Throughput JPEG 2000: SimpleITK's GDCM lacks it


def _import(tmp_path: Path, source: Path, on_progress=None, **kw: object):
    options = ImportOptions(**{"source": source, "name": "Dicom", "workers": 1,  # type: ignore[arg-type]
                               "test_fraction": 0, "modality": ("CT",), **kw})
    return import_dataset(Workspace(tmp_path / "ws"), options, on_progress)


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _lines(result) -> str:
    return "\n".join(f.line() for f in result.findings)


def _nothing_written(tmp_path: Path) -> None:
    raw = tmp_path / "ws" / "nnUNet_raw"
    assert not raw.exists() or not any(raw.iterdir()), list(raw.iterdir())
    assert not (tmp_path / "ws" / ".hpcnn" / "dicom").exists()


def _failure(tmp_path: Path, source: Path, **kw: object) -> str:
    with pytest.raises(DataError) as caught:
        _import(tmp_path, source, **kw)
    _nothing_written(tmp_path)
    return str(caught.value)


def test_series_and_seg_round_trip_keep_patient_data_local(tmp_path: Path) -> None:
    """Binary and fractional SEGs: label voxels equal the source masks, the image equals the
    source volume on its geometry, and no header value reaches nnUNet_raw."""
    liver, tumor = dd.ball(), dd.ball(radius=(1.5, 3, 3))
    src = tmp_path / "src"
    volumes = {}
    for i, fractional in enumerate((False, True)):
        volumes[f"p{i}"] = dd.volume(seed=i)
        series = dd.write_series(src / f"p{i}" / "CT" / "a", volumes[f"p{i}"], names="x{}")
        dd.write_seg(src / f"p{i}" / "seg" / "obj.dcm", series,
                     {"Liver": liver, "Tumor": tumor}, fractional=fractional)
    result = _import(tmp_path, src, overlap=("tumor", "liver"))
    assert result.labels == {"background": 0, "Liver": 1, "Tumor": 2}
    expected = np.where(tumor, 2, np.where(liver, 1, 0))
    by_source = {c.images[0].rstrip("/"): c.case_id for c in result.cases}
    assert sorted(by_source) == ["p0", "p1"] and all(i.startswith("case_")
                                                     for i in by_source.values())
    for name, case_id in by_source.items():
        label = _read(result.path / "labelsTr" / f"{case_id}.nii.gz")
        assert np.array_equal(label, expected), name
        image_path = result.path / "imagesTr" / f"{case_id}_0000.nii.gz"
        assert np.array_equal(_read(image_path), volumes[name]), name
        import SimpleITK as sitk

        image = sitk.ReadImage(str(image_path))
        assert np.allclose(image.GetSpacing(), dd.SPACING)
        assert np.allclose(image.GetOrigin(), dd.ORIGIN)
    secrets = [dd.PATIENT_ID.encode(), b"Doe", b"ACC-SECRET", b"1.2.826.0.1.3680043"]
    for path in result.path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            data = gzip.decompress(data) if path.name.endswith(".gz") else data
            assert not any(s in data for s in secrets), path
    mapping = dicom_map.path_for(tmp_path / "ws" / ".hpcnn", result.path.name)
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    assert stat.S_IMODE(mapping.parent.stat().st_mode) == 0o700
    rows = dicom_map.read(mapping)
    assert {r.patient_id for r in rows} == {dd.PATIENT_ID}
    assert {(r.case_id, r.role) for r in rows} == {(i, role) for i in by_source.values()
                                                    for role in ("image", "label")}
    assert str(mapping) in _lines(result)


def test_rtstruct_filled_on_the_image_grid_with_holes(tmp_path: Path) -> None:
    """A box ROI (contours on the voxel edges) comes back exactly, with an inner contour as a
    hole; a round ROI within one voxel of the drawn circle (Dice >= 0.9); an ROI without
    contours is background, with a warning naming it."""
    series = dd.write_series(tmp_path / "src" / "p0", dd.volume())
    circle = {k: [dd.circle_contour(16, 15, 7, 6)] for k in range(2, 10)}
    dd.write_rtstruct(tmp_path / "src" / "p0" / "rs.dcm", series, {
        "Ring": {k: [dd.box_contour(3, 12, 4, 14), dd.box_contour(6, 8, 7, 9)]
                 for k in (0, 1)},
        "Round": circle,
        "Empty": {},
    })
    result = _import(tmp_path, tmp_path / "src")
    assert result.labels == {"background": 0, "Ring": 1, "Round": 2, "Empty": 3}
    label = _read(result.path / "labelsTr" / f"{result.cases[0].case_id}.nii.gz")
    ring = np.zeros_like(label, dtype=bool)
    ring[0:2, 4:15, 3:13] = True
    ring[0:2, 7:10, 6:9] = False
    assert np.array_equal(label == 1, ring)
    y, x = np.ogrid[:32, :32]
    disc = ((x - 16) / 7) ** 2 + ((y - 15) / 6) ** 2 <= 1
    round_truth = np.zeros_like(label, dtype=bool)
    round_truth[2:10] = disc
    drawn = label == 2
    dice = 2 * (drawn & round_truth).sum() / (drawn.sum() + round_truth.sum())
    assert dice >= 0.9, dice
    assert not (label == 3).any()
    assert "ROI 'Empty' has no contours" in _lines(result)


def test_several_series_need_a_choice(tmp_path: Path) -> None:
    """Two image series in one folder: a listing; --series-description chooses; a label that
    references one of them chooses it."""
    src = tmp_path / "src"
    labelled = dd.write_series(src / "p1", dd.volume(seed=5), description="COR MPR")
    dd.write_seg(src / "p1" / "seg.dcm", labelled, {"Liver": dd.ball()})
    ct = dd.write_series(src / "p0" / "a", dd.volume(), description="AX 2.5mm")
    dd.write_series(src / "p0" / "b", dd.volume(seed=3), description="COR MPR",
                    series_number=5, study_uid=ct.study_uid,
                    frame_of_reference=ct.frame_of_reference)
    message = _failure(tmp_path, src)
    assert "2 image series match --modality CT, one is needed" in message
    assert "'AX 2.5mm'" in message and "'COR MPR'" in message
    assert "--series-description" in message
    result = _import(tmp_path, src, series_description=("cor*",))
    p0 = next(c.case_id for c in result.cases if c.images[0].startswith("p0/"))
    image = _read(result.path / "imagesTs" / f"{p0}_0000.nii.gz")
    assert np.array_equal(image, dd.volume(seed=3))
    dd.write_seg(src / "p0" / "seg.dcm", ct, {"Liver": dd.ball()})
    result = _import(tmp_path, src, force=True)
    p0 = next(c.case_id for c in result.cases if c.images[0].startswith("p0/"))
    image = _read(result.path / "imagesTr" / f"{p0}_0000.nii.gz")
    assert np.array_equal(image, dd.volume())


def test_label_of_another_series_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    dd.write_series(src / "p0", dd.volume())
    other = dd.write_series(tmp_path / "elsewhere", dd.volume())
    dd.write_seg(src / "p0" / "seg.dcm", other, {"Liver": dd.ball()})
    message = _failure(tmp_path, src)
    assert "p0/seg.dcm: does not belong to the image series in p0/" in message
    assert "SeriesInstanceUID is not the image's" in message
    dd.write_rtstruct(src / "p1" / "rs.dcm", dd.write_series(src / "p1", dd.volume()),
                      {"Liver": {3: [dd.box_contour(2, 5, 2, 5)]}},
                      referenced_series=other.series_uid)
    (src / "p0" / "seg.dcm").unlink()
    message = _failure(tmp_path, src)
    assert "p1/rs.dcm: does not belong to the image series in p1/" in message


@pytest.mark.parametrize("fault", ["missing-slice", "duplicate", "tilt", "compressed",
                                   "multi-frame"])
def test_series_that_is_not_one_volume_is_refused(tmp_path: Path, fault: str) -> None:
    src = tmp_path / "src"
    kw = {"tilt": {"tilt_mm": 0.8},
          "compressed": {"transfer_syntax": HTJ2K}}.get(fault, {})
    series = dd.write_series(src / "p0", dd.volume(), **kw)  # type: ignore[arg-type]
    if fault == "compressed":
        from pydicom.pixels import get_decoder

        if get_decoder(HTJ2K).is_available:
            pytest.skip("an HTJ2K decoder (pylibjpeg-openjpeg) is installed here")
    if fault == "missing-slice":
        series.files[5].unlink()
    if fault in ("duplicate", "multi-frame"):
        import pydicom

        for path in series.files:
            ds = pydicom.dcmread(path)
            if fault == "multi-frame":
                ds.NumberOfFrames = 3
            elif path == series.files[7]:
                ds.ImagePositionPatient = pydicom.dcmread(series.files[6]).ImagePositionPatient
            ds.save_as(path)
    message = _failure(tmp_path, src)
    if fault == "missing-slice":
        assert "uneven slice spacing: 5 mm from p0/IM" in message
        assert "others are 2.5 mm apart" in message and "missing slice" in message
    elif fault == "duplicate":
        assert "at the same position as p0/IM" in message and "duplicated slice" in message
    elif fault == "multi-frame":
        assert "a multi-frame object (3 frames in one file) without per-frame positions" in message
    elif fault == "tilt":
        assert "gantry tilt" in message
    else:
        assert "compressed pixel data (High-Throughput JPEG 2000" in message
        assert "pip install pylibjpeg pylibjpeg-openjpeg" in message


def test_stray_files_dicomdir_and_missing_preamble(tmp_path: Path) -> None:
    """A non-DICOM file among the slices and a DICOMDIR are skipped and named; a slice without
    the DICM preamble is still read (and named), so the volume is whole."""
    src = tmp_path / "src"
    series = dd.write_series(src / "p0", dd.volume())
    dd.write_seg(src / "p0" / "seg.dcm", series, {"Liver": dd.ball()})
    (src / "p0" / "notes.txt").write_text("scanned on Monday\n")
    (src / "p0" / "IM9999").write_bytes(b"\x00" * 300)
    _write_dicomdir(src / "p0" / "DICOMDIR")
    stripped = series.files[3]
    stripped.write_bytes(stripped.read_bytes()[132:])
    result = _import(tmp_path, src)
    text = _lines(result)
    assert "skipped 2 file(s) that are not DICOM: IM9999, notes.txt" in text.replace("p0/", "")
    assert "skipped the DICOMDIR p0/DICOMDIR" in text
    assert f"without the DICM preamble read as DICOM: p0/{stripped.name}" in text
    image = _read(result.path / "imagesTr" / f"{result.cases[0].case_id}_0000.nii.gz")
    assert np.array_equal(image, dd.volume())


def _write_dicomdir(path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "TEST"
    ds.DirectoryRecordSequence = []
    ds.save_as(path, enforce_file_format=True)


def test_burned_in_text_and_secondary_capture_are_flagged(tmp_path: Path) -> None:
    """By the import, and by ``dataset check`` from the UID mapping (nnUNet_raw has no
    headers); a dataset without a mapping has no such finding."""
    src = tmp_path / "src"
    series = dd.write_series(src / "p0", dd.volume(), burned_in=True)
    dd.write_seg(src / "p0" / "seg.dcm", series, {"Liver": dd.ball()})
    dd.write_series(src / "p1", dd.volume(), sop_class=dd.SECONDARY_CAPTURE)
    result = _import(tmp_path, src)
    assert "p0/: the image series says BurnedInAnnotation YES" in _lines(result)
    assert "p1/: the image series is a Secondary Capture" in _lines(result)
    mapping = dicom_map.path_for(tmp_path / "ws" / ".hpcnn", result.path.name)
    report = check_dataset(result.path, workers=1, dicom_mapping=mapping)
    codes = {(f.file, f.code) for f in report.problems}
    ids = {c.images[0]: c.case_id for c in result.cases}
    assert {(ids["p0/"], "dicom-burned-in"), (ids["p1/"], "dicom-secondary-capture")} <= codes
    plain = check_dataset(result.path, workers=1, dicom_mapping=tmp_path / "none.csv")
    assert not {f.code for f in plain.problems} & {"dicom-burned-in", "dicom-secondary-capture"}


def _mr_pair(folder: Path, seed: int, t2_spacing: tuple[float, float, float] = dd.SPACING):
    """A T1 and a T2 series of one study and frame of reference (T2 written first, with the
    lower series number: channel order must come from the options, not the folder)."""
    t2 = dd.write_series(folder / "t2", dd.volume(seed=seed + 1), modality="MR",
                         description="T2 TSE ax", series_number=3, spacing=t2_spacing)
    t1 = dd.write_series(folder / "t1", dd.volume(seed=seed), modality="MR",
                         description="t1_mprage ax", series_number=5, study_uid=t2.study_uid,
                         frame_of_reference=t2.frame_of_reference)
    return t1, t2


def test_series_as_channels_in_the_stated_order(tmp_path: Path) -> None:
    """Repeated --series-description: channel 0 is the T1, channel 1 the T2 in every case; a
    SEG drawn on the T2 (channel 1) is placed through the T2's slices; the channels are named
    by their patterns (--modality MR would name both MR); the mapping has a row per channel;
    the header scan reports progress."""
    src = tmp_path / "src"
    mask = dd.ball()
    for i in range(2):
        _, t2 = _mr_pair(src / f"p{i}", seed=10 * i)
        dd.write_seg(src / f"p{i}" / "seg.dcm", t2, {"Lesion": mask})
    told: list[tuple[str, int, int]] = []
    result = _import(tmp_path, src, lambda *a: told.append(a),
                     series_description=("T1*", "t2 *"), modality=("MR",))
    assert ("reading DICOM headers", 50, 50) in told  # 2 x (12 + 12 slices + 1 SEG)
    assert result.channel_names == {"0": "T1", "1": "t2"}  # what predict finds them by
    for case in result.cases:
        i = int(case.images[0][1])
        t1_img = _read(result.path / "imagesTr" / f"{case.case_id}_0000.nii.gz")
        t2_img = _read(result.path / "imagesTr" / f"{case.case_id}_0001.nii.gz")
        assert np.array_equal(t1_img, dd.volume(seed=10 * i))
        assert np.array_equal(t2_img, dd.volume(seed=10 * i + 1))
        label = _read(result.path / "labelsTr" / f"{case.case_id}.nii.gz")
        assert np.array_equal(label, mask.astype(label.dtype))
    rows = dicom_map.read(dicom_map.path_for(tmp_path / "ws" / ".hpcnn", result.path.name))
    assert sorted(r.role for r in rows) == ["image"] * 2 + ["image 0001"] * 2 + ["label"] * 2
    from hpcnn.dataset.importer import _channel_names

    named = _channel_names(ImportOptions(Path(), "x", series_description=("T1*", "t2 tse*")),
                           [], 2)
    assert named == {"0": "T1", "1": "t2 tse"}


def test_channels_must_be_distinct_series_on_one_grid(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _mr_pair(src / "p0", seed=0, t2_spacing=(0.8, 0.9, 3.0))
    message = _failure(tmp_path, src, series_description=("t1*", "t2*"), modality=("MR",))
    assert "channel 1 (p0/t2/" in message and "is not on the grid of channel 0" in message
    assert "spacing 0.8x0.9x3" in message and "spacing 0.8x0.9x2.5" in message
    message = _failure(tmp_path, src, series_description=("*ax", "t1*"), modality=("MR",))
    assert "channel 0: 2 image series match --series-description '*ax'" in message
    message = _failure(tmp_path, src, series_description=("t1*", "t1*"), modality=("MR",))
    assert "channel 1 chose the same series as an earlier channel" in message
    message = _failure(tmp_path, src, series_description=("t1*", "t2*", "x"),
                       modality=("MR", "MR"))
    assert "--modality lists 2 values for 3 channels" in message
    message = _failure(tmp_path, src, channels=("T1", "T2"), modality=("MR",))
    assert "--channels with DICOM case folders" in message
    assert "repeat --series-description" in message
    from hpcnn.dataset.dicom_cases import Rule, channel_rules

    assert channel_rules((), ("CT", "PT")) == [Rule(None, frozenset({"CT"})),
                                              Rule(None, frozenset({"PT"}))]
    assert channel_rules(("t1*", "t2*"), ("MR",)) == [Rule("t1*", frozenset({"MR"})),
                                                      Rule("t2*", frozenset({"MR"}))]


def test_enhanced_multi_frame_ct_with_its_seg(tmp_path: Path) -> None:
    """One enhanced CT file (frames stored against position order) reads as the volume the
    classic series gives, on its grid, and a SEG referencing its frames lands on it; its size
    from the headers meets --max-gib as a file's does."""
    import SimpleITK as sitk

    classic = dd.write_series(tmp_path / "classic", dd.volume(seed=4))
    enhanced = dd.write_enhanced(tmp_path / "src" / "p0" / "ct.dcm", classic)
    liver = dd.ball()
    dd.write_seg(tmp_path / "src" / "p0" / "seg.dcm", enhanced, {"Liver": liver})
    result = _import(tmp_path, tmp_path / "src")
    case_id = result.cases[0].case_id
    image = sitk.ReadImage(str(result.path / "imagesTr" / f"{case_id}_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), dd.volume(seed=4))
    assert np.allclose(image.GetSpacing(), dd.SPACING)
    assert np.allclose(image.GetOrigin(), dd.ORIGIN)
    label = _read(result.path / "labelsTr" / f"{case_id}.nii.gz")
    assert np.array_equal(label, liver.astype(label.dtype))
    message = _failure(tmp_path / "small", tmp_path / "src", max_gib=1e-5)
    assert "p0/: a series of 32x32x12 voxels" in message and "--max-gib" in message


def test_pydicom_readers_hold_one_volume(tmp_path: Path) -> None:
    """Memory per worker: the pydicom readers (classic slices, enhanced frames) paste each
    slice into the output image, so what Python allocates besides it stays a few slices (the
    former reader stacked a numpy volume and converted it: two volumes more)."""
    import tracemalloc

    from hpcnn.formats import dicom_series

    shape = (40, 96, 96)
    series = dd.write_series(tmp_path / "p0", dd.volume(shape))
    enhanced = dd.write_enhanced(tmp_path / "enh.dcm", series)
    volume_bytes = int(np.prod(shape)) * 4  # int32, as GDCM gives this series
    for read in (lambda: dicom_series._read_with_pydicom(list(series.files)),
                 lambda: dicom_series.read_volume(list(enhanced.files))):
        tracemalloc.start()
        try:
            image = read()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert np.array_equal(_array(image), dd.volume(shape))
        assert peak < volume_bytes / 4, (peak, volume_bytes)


def _array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    dd.write_series(tmp_path / "src" / "p0", dd.volume())
    monkeypatch.setitem(sys.modules, "pydicom", None)
    message = _failure(tmp_path, tmp_path / "src")
    assert "pip install 'hpcnn[dicom]'" in message


def test_label_file_beside_the_series(tmp_path: Path) -> None:
    """A label map of another format in the case folder is the case's label, put on the
    series' grid like any segmentation."""
    import SimpleITK as sitk

    src = tmp_path / "src"
    dd.write_series(src / "p0" / "dicom", dd.volume())
    mask = sitk.GetImageFromArray(dd.ball().astype(np.uint8))
    mask.SetSpacing(dd.SPACING)
    mask.SetOrigin(dd.ORIGIN)
    sitk.WriteImage(mask, str(src / "p0" / "liver_label.nii.gz"))
    result = _import(tmp_path, src)
    assert result.cases[0].segmentation == "p0/liver_label.nii.gz"
    label = _read(result.path / "labelsTr" / f"{result.cases[0].case_id}.nii.gz")
    assert np.array_equal(label, dd.ball().astype(np.uint8))


def test_pydicom_reader_gives_what_imageseriesreader_gives(tmp_path: Path) -> None:
    """The fallback for transfer syntaxes GDCM lacks reads the same voxels on the same grid."""
    import SimpleITK as sitk

    from hpcnn.formats import dicom_series

    series = dd.write_series(tmp_path / "p0", dd.volume())
    files = list(series.files)
    gdcm, own = dicom_series.read_volume(files), dicom_series._read_with_pydicom(files)
    assert np.array_equal(sitk.GetArrayFromImage(gdcm), sitk.GetArrayFromImage(own))
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert np.allclose(getattr(gdcm, get)(), getattr(own, get)()), get


def test_predict_takes_dicom_series_folders(tmp_path: Path) -> None:
    """predict's input staging: each folder holding one series (an enhanced multi-frame file
    too) is a case named after the folder, staged for nnU-Net as the volume the import would
    write; a folder with a gap is refused before anything runs, and so is a DICOM result for
    an enhanced source."""
    from hpcnn.nnunet.inputs import collect, stage
    from hpcnn.nnunet.predict import _check_dicom_sources

    dd.write_series(tmp_path / "in" / "case7-ct" / "DICOM", dd.volume())
    dd.write_series(tmp_path / "in" / "case8-ct", dd.volume(seed=2))
    classic = dd.write_series(tmp_path / "classic", dd.volume(seed=3))
    dd.write_enhanced(tmp_path / "in" / "case9-enh" / "ct.dcm", classic)
    cases, _ = collect([str(tmp_path / "in")], ["CT"])
    assert [(c.name, c.output(None)) for c in cases] == [("case7-ct", "case7-ct.nii.gz"),
                                                        ("case8-ct", "case8-ct.nii.gz"),
                                                        ("case9-enh", "case9-enh.nii.gz")]
    lists = stage(cases, tmp_path / "staged", ".nii.gz")
    assert np.array_equal(_read(Path(lists[0][0])), dd.volume())
    assert np.array_equal(_read(Path(lists[1][0])), dd.volume(seed=2))
    assert np.array_equal(_read(Path(lists[2][0])), dd.volume(seed=3))
    with pytest.raises(DataError, match="case9-enh/ is an enhanced multi-frame image"):
        _check_dicom_sources(cases, "dicom-seg")
    broken = dd.write_series(tmp_path / "gap" / "case9", dd.volume())
    broken.files[4].unlink()
    with pytest.raises(DataError, match="uneven slice spacing"):
        collect([str(tmp_path / "gap")], ["CT"])


def test_predict_finds_a_models_dicom_channels_by_their_names(tmp_path: Path) -> None:
    """A model with channels named T1 and t2 (as an import by --series-description names them)
    takes each case folder's T1 and T2 series in channel order, whatever the folder's order;
    a folder without a T2 is refused naming the channel and listing its series; a CT channel
    is found by its modality."""
    from hpcnn.nnunet.inputs import collect, stage

    for i in range(2):
        _mr_pair(tmp_path / "in" / f"case{i}", seed=10 * i)
    cases, _ = collect([str(tmp_path / "in")], ["T1", "t2"])
    assert [c.name for c in cases] == ["case0", "case1"]
    lists = stage(cases, tmp_path / "staged", ".nii.gz")
    for i, (t1, t2) in enumerate(lists):
        assert np.array_equal(_read(Path(t1)), dd.volume(seed=10 * i))
        assert np.array_equal(_read(Path(t2)), dd.volume(seed=10 * i + 1))
    dd.write_series(tmp_path / "t1only" / "case2", dd.volume(), modality="MR",
                    description="t1_mprage ax")
    with pytest.raises(DataError, match=r"channel 1: no image series matches "
                                        r"--series-description '\*t2\*'.*t1_mprage ax"):
        collect([str(tmp_path / "t1only")], ["T1", "t2"])
    ct = dd.write_series(tmp_path / "ctpt" / "case3" / "ct", dd.volume(seed=4))
    dd.write_series(tmp_path / "ctpt" / "case3" / "pet", dd.volume(seed=5), modality="PT",
                    description="PET AC", series_number=4, study_uid=ct.study_uid,
                    frame_of_reference=ct.frame_of_reference)
    cases, _ = collect([str(tmp_path / "ctpt")], ["CT", "pet"])
    (ct_file, pet_file), = stage(cases, tmp_path / "staged2", ".nii.gz")
    assert np.array_equal(_read(Path(ct_file)), dd.volume(seed=4))
    assert np.array_equal(_read(Path(pet_file)), dd.volume(seed=5))
