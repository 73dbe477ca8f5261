"""Synthetic DICOM for tests and the demo: a CT series written with pydicom, a DICOM-SEG of it
written with highdicom (binary or fractional), an RTSTRUCT of it written with pydicom, and the
variants the fault tests need (a missing slice, gantry tilt, a compressed transfer syntax, no
preamble), and an enhanced multi-frame CT (highdicom's Legacy Converted Enhanced CT: one file,
per-frame functional groups). Volumes are tiny (32x32x12 by default); every header carries
made-up patient data (``PATIENT_ID``) so tests can check that none of it leaves the laptop side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PATIENT_ID = "PID-SECRET-4711"
PATIENT_NAME = "Doe^Jane"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SPACING = (0.8, 0.9, 2.5)  # x, y, z (mm)
ORIGIN = (-12.0, -14.0, 30.0)


@dataclass(frozen=True)
class Series:
    """What a written series is: its files in slice order and its UIDs."""

    files: tuple[Path, ...]
    study_uid: str
    series_uid: str
    frame_of_reference: str
    sop_uids: tuple[str, ...]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


def volume(shape: tuple[int, int, int] = (12, 32, 32), seed: int = 0) -> np.ndarray:
    """A CT-like (z, y, x) int16 volume in HU."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1500, size=shape, dtype=np.int16)


def ball(shape: tuple[int, int, int] = (12, 32, 32), centre: tuple[float, float, float] =
         (6, 16, 15), radius: tuple[float, float, float] = (3.5, 8, 9)) -> np.ndarray:
    """A (z, y, x) boolean ellipsoid."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (((z - centre[0]) / radius[0]) ** 2 + ((y - centre[1]) / radius[1]) ** 2
            + ((x - centre[2]) / radius[2]) ** 2) <= 1


def _new_object(sop_class: str, transfer_syntax: str | None = None) -> Any:
    """A dataset with its file meta, a new SOP Instance UID and the made-up patient."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    return ds


def write_series(folder: Path, image: np.ndarray, *, modality: str = "CT",
                 description: str = "AX 2.5mm", series_number: int = 2,
                 study_uid: str | None = None, frame_of_reference: str | None = None,
                 spacing: tuple[float, float, float] = SPACING,
                 origin: tuple[float, float, float] = ORIGIN, tilt_mm: float = 0.0,
                 transfer_syntax: str | None = None, burned_in: bool = False,
                 sop_class: str = CT_STORAGE, names: str = "IM{:04d}") -> Series:
    """One file per slice, named ``names`` (shuffled instance numbers: hpcnn must sort by
    position). ``tilt_mm`` shifts each slice along y (gantry tilt)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_of_reference = frame_of_reference or generate_uid()
    files, uids = [], []
    order = list(range(image.shape[0]))[::-1]  # instance numbers run against position
    for k in range(image.shape[0]):
        ds = _new_object(sop_class, transfer_syntax)
        sop = ds.SOPInstanceUID
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC-SECRET"
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.Modality = modality
        ds.Manufacturer = "hpcnn tests"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = order[k] + 1
        ds.ImagePositionPatient = [origin[0], origin[1] + k * tilt_mm,
                                   origin[2] + k * spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = image.shape[1], image.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        if burned_in:
            ds.BurnedInAnnotation = "YES"
        raw = (image[k].astype(np.int32) + 1024).astype(np.int16).tobytes()
        if transfer_syntax and transfer_syntax != ExplicitVRLittleEndian:
            ds.PixelData = encapsulate([raw[: len(raw) // 2]])  # never decoded by the tests
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = raw
        path = folder / names.format(order[k] + 1)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        uids.append(sop)
    return Series(tuple(files), study_uid, series_uid, frame_of_reference, tuple(uids),
                  spacing, origin)


def write_seg(path: Path, series: Series, masks: Mapping[str, np.ndarray], *,
              fractional: bool = False) -> Path:
    """A DICOM-SEG of ``series`` with one segment per ``masks`` entry (z, y, x), by highdicom;
    ``fractional`` stores each mask as a probability (0.0 outside, 0.8 inside)."""
    import highdicom as hd
    import pydicom

    sources = [pydicom.dcmread(f) for f in series.files]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i, segment_label=name,
            segmented_property_category=hd.sr.CodedConcept("123037004", "SCT",
                                                           "Anatomical Structure"),
            segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, name in enumerate(masks, start=1)]
    stack = np.stack([np.asarray(m) for m in masks.values()], axis=-1)
    if len(sources) == 1 and int(getattr(sources[0], "NumberOfFrames", 1) or 1) > 1:
        z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2])
             for f in sources[0].PerFrameFunctionalGroupsSequence]
        stack = stack[np.argsort(np.argsort(z))]  # frame k holds the slice of its position rank
    kind = (hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
            else hd.seg.SegmentationTypeValues.BINARY)
    pixels = stack.astype(np.float32) * 0.8 if fractional else stack.astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=kind,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="hpcnn tests",
        manufacturer_model_name="synthetic", software_versions="0", device_serial_number="0",
        **({"max_fractional_value": 255} if fractional else {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def write_enhanced(path: Path, series: Series) -> Series:
    """``series`` as one enhanced multi-frame CT file (frames in reverse position order: readers
    must place them by their Plane Position), by highdicom's legacy conversion."""
    import highdicom as hd
    import pydicom

    legacy = [pydicom.dcmread(f) for f in reversed(series.files)]
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy, series_instance_uid=hd.UID(), series_number=4,
        sop_instance_uid=hd.UID(), instance_number=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path)
    return Series((path,), series.study_uid, str(image.SeriesInstanceUID),
                  series.frame_of_reference, (str(image.SOPInstanceUID),), series.spacing,
                  series.origin)


def box_contour(x0: int, x1: int, y0: int, y1: int) -> list[tuple[float, float]]:
    """A closed polygon along the outer edges of the voxels x0..x1, y0..y1 (index space)."""
    return [(x0 - 0.5, y0 - 0.5), (x1 + 0.5, y0 - 0.5), (x1 + 0.5, y1 + 0.5),
            (x0 - 0.5, y1 + 0.5)]


def circle_contour(cx: float, cy: float, rx: float, ry: float,
                   n: int = 48) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip((cx + rx * np.cos(t)).tolist(), (cy + ry * np.sin(t)).tolist(), strict=True))


def write_rtstruct(path: Path, series: Series,
                   rois: Mapping[str, Mapping[int, Sequence[Sequence[tuple[float, float]]]]],
                   *, referenced_series: str | None = None) -> Path:
    """An RTSTRUCT of ``series``: per ROI, per slice index, polygons in (x, y) index space
    (an ROI with no slices has no contours)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = _new_object(RTSTRUCT_STORAGE)
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.SeriesNumber = 200
    ds.StructureSetLabel = "synthetic"
    ds.StructureSetDate = "20260101"
    ds.StructureSetTime = "120000"

    def image_ref(uid: str) -> Dataset:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT_STORAGE
        ref.ReferencedSOPInstanceUID = uid
        return ref

    ref_series = Dataset()
    ref_series.SeriesInstanceUID = referenced_series or series.series_uid
    ref_series.ContourImageSequence = [image_ref(u) for u in series.sop_uids]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = series.study_uid
    study.RTReferencedSeriesSequence = [ref_series]
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence = []
    ds.ROIContourSequence = []
    sx, sy, sz = series.spacing
    ox, oy, oz = series.origin
    for number, (name, slices) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [255, 0, 0]
        contours = []
        for k, polygons in slices.items():
            for polygon in polygons:
                c = Dataset()
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(polygon)
                c.ContourData = [round(v, 4) for x, y in polygon
                                 for v in (ox + x * sx, oy + y * sy, oz + k * sz)]
                c.ContourImageSequence = [image_ref(series.sop_uids[k])]
                contours.append(c)
        if contours:
            item.ContourSequence = contours
        ds.ROIContourSequence.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
