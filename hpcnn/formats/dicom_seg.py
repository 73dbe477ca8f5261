"""DICOM Segmentation objects (Modality SEG, binary or fractional), read with highdicom:
segments become classes by SegmentLabel, as a Slicer segmentation's by name; each segment is
one layer of the label array, on the referenced series' grid frame by frame (a fractional
segment covers a voxel from half its maximum value on)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcnn.errors import DataError
from hpcnn.formats import Format, register
from hpcnn.formats.dicom_series import dicom_library
from hpcnn.formats.segment import NamedSegment

DICOM_SEG = register(Format("dicom-seg", prediction_choice="dicom-seg", ending=".seg.dcm",
                            label=True, dicom=True))  # written by dicom_seg_out.py



def references(ds: Any) -> tuple[set[str], set[str], set[str]]:
    """The series, Frame of Reference and SOP instances a SEG header references."""
    series, instances = set(), set()
    for item in getattr(ds, "ReferencedSeriesSequence", []):
        series.add(str(item.SeriesInstanceUID))
        instances |= {str(i.ReferencedSOPInstanceUID)
                      for i in getattr(item, "ReferencedInstanceSequence", [])}
    for frame in getattr(ds, "PerFrameFunctionalGroupsSequence", []):
        for derivation in getattr(frame, "DerivationImageSequence", []):
            for src in getattr(derivation, "SourceImageSequence", []):
                instances.add(str(src.ReferencedSOPInstanceUID))
    frame = getattr(ds, "FrameOfReferenceUID", None)
    return series, {str(frame)} if frame else set(), instances


def segments(path: Path) -> list[NamedSegment]:
    """The segments a SEG declares, in SegmentNumber order: layer k holds the k-th."""
    from hpcnn.formats.dicom_series import read_header

    ds = read_header(path)[0]
    found = sorted((int(s.SegmentNumber), str(getattr(s, "SegmentLabel", "") or
                                               f"Segment_{s.SegmentNumber}"))
                   for s in getattr(ds, "SegmentSequence", []))
    return [NamedSegment(number, label, layer, 1)
            for layer, (number, label) in enumerate(found)]


def layers(path: Path, source_uids: Sequence[str], source_frames: Sequence[int] = ()) -> Any:
    """A (slices, rows, columns, segments) uint8 array, 1 where a segment covers a voxel,
    for the image slices ``source_uids`` (in volume order); for an enhanced multi-frame source
    (one SOP instance) the slices are its frames ``source_frames`` (1-based, in volume order)."""
    import numpy as np

    hd = dicom_library("highdicom")
    seg = hd.seg.segread(str(path))
    numbers = [s.index for s in segments(path)]
    try:
        if any(source_frames):
            pixels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=source_uids[0],
                source_frame_numbers=list(source_frames), segment_numbers=numbers,
                combine_segments=False, rescale_fractional=True,
                assert_missing_frames_are_empty=True)  # a SEG omits frames it leaves empty
        else:
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=list(source_uids), segment_numbers=numbers,
                combine_segments=False, rescale_fractional=True)
    except (ValueError, KeyError, AttributeError) as exc:
        raise DataError(f"{path.name}: its frames cannot be placed on the image slices: {exc}",
                        hint="export the SEG with a reference to its source image per frame") \
            from exc
    return (np.asarray(pixels) >= 0.5).astype(np.uint8)
