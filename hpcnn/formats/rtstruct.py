"""RT Structure Sets (Modality RTSTRUCT): ROIs become classes by ROIName, their closed planar
contours filled onto the referenced series' grid.

The filling is hpcnn's own (README, dependency notes): each contour's points (patient mm) go to
the grid's continuous index space, a contour must lie in one slice plane, and a voxel is inside
when its centre is crossed an odd number of times by the contours of its ROI in its slice
(even-odd rule), so an inner contour is a hole, as RTSTRUCTs draw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcnn.errors import DataError
from hpcnn.formats import Format, register
from hpcnn.formats.dicom_series import read_header
from hpcnn.formats.segment import NamedSegment

RTSTRUCT = register(Format("rtstruct", prediction_choice="rtstruct", ending=".rtstruct.dcm",
                           label=True, dicom=True))  # written by rtstruct_out.py
PLANE_TOLERANCE = 0.25  # of a slice: how far a contour may lie off its slice's plane


@dataclass
class Rasterised:
    """The ROIs as layers, and what could not be drawn (names and counts only)."""

    layers: Any  # (slices, rows, columns, rois) uint8
    empty: list[str] = field(default_factory=list)  # ROIs without a contour
    outside: dict[str, int] = field(default_factory=dict)  # ROI -> points off the grid
    off_plane: dict[str, int] = field(default_factory=dict)  # ROI -> contours between slices
    not_closed: dict[str, int] = field(default_factory=dict)  # ROI -> POINT/OPEN contours


def references(ds: Any) -> tuple[set[str], set[str], set[str]]:
    """The series, Frames of Reference and contour image instances an RTSTRUCT references."""
    series, frames, instances = set(), set(), set()
    for ref in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
        frames.add(str(ref.FrameOfReferenceUID))
        for study in getattr(ref, "RTReferencedStudySequence", []):
            for s in getattr(study, "RTReferencedSeriesSequence", []):
                series.add(str(s.SeriesInstanceUID))
    for roi in getattr(ds, "StructureSetROISequence", []):
        if getattr(roi, "ReferencedFrameOfReferenceUID", None):
            frames.add(str(roi.ReferencedFrameOfReferenceUID))
    for item in getattr(ds, "ROIContourSequence", []):
        for contour in getattr(item, "ContourSequence", []):
            for img in getattr(contour, "ContourImageSequence", []):
                instances.add(str(img.ReferencedSOPInstanceUID))
    return series, frames, instances


def segments(path: Path) -> list[NamedSegment]:
    """The ROIs in StructureSetROISequence order: layer k holds the k-th."""
    ds = read_header(path)[0]
    return [NamedSegment(int(r.ROINumber), str(getattr(r, "ROIName", "") or
                                               f"ROI_{r.ROINumber}"), layer, 1)
            for layer, r in enumerate(getattr(ds, "StructureSetROISequence", []))]


def rasterise(path: Path, size: Sequence[int], spacing: Sequence[float],
              origin: Sequence[float], direction: Sequence[float]) -> Rasterised:
    """Every ROI of the file filled onto the grid of the referenced image (``size`` x, y, z;
    SimpleITK's spacing, origin and row-major direction)."""
    import numpy as np

    ds = read_header(path)[0]
    rois = segments(path)
    size = tuple(int(n) for n in size)
    origin = np.asarray(origin, float)
    spacing = np.asarray(spacing, float)
    to_index = np.linalg.inv(np.asarray(direction, float).reshape(3, 3))
    out = Rasterised(np.zeros((size[2], size[1], size[0], len(rois)), np.uint8))
    contours: dict[int, Sequence[Any]] = {
        int(item.ReferencedROINumber): list(getattr(item, "ContourSequence", []))
        for item in getattr(ds, "ROIContourSequence", [])}
    for roi in rois:
        found = contours.get(roi.index, [])
        if not found:
            out.empty.append(roi.name)
            continue
        by_slice: dict[int, list[Any]] = {}
        for contour in found:
            kind = str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR"))
            points = np.asarray([float(v) for v in contour.ContourData], float).reshape(-1, 3)
            if kind != "CLOSED_PLANAR" or len(points) < 3:
                out.not_closed[roi.name] = out.not_closed.get(roi.name, 0) + 1
                continue
            index = (to_index @ (points - origin).T).T / spacing  # x, y, z continuous
            k = float(np.median(index[:, 2]))
            plane = round(k)
            if np.abs(index[:, 2] - plane).max() > PLANE_TOLERANCE:
                out.off_plane[roi.name] = out.off_plane.get(roi.name, 0) + 1
                continue
            off = ((index[:, 0] < -0.5) | (index[:, 0] > size[0] - 0.5)
                   | (index[:, 1] < -0.5) | (index[:, 1] > size[1] - 0.5)
                   | (plane < 0) | (plane >= size[2]))
            if off.any():
                out.outside[roi.name] = out.outside.get(roi.name, 0) + int(off.sum())
            if 0 <= plane < size[2]:
                by_slice.setdefault(plane, []).append(index[:, :2])
        for plane, polygons in by_slice.items():
            out.layers[plane, :, :, roi.layer] = even_odd(polygons, size[1], size[0])
    return out


def even_odd(polygons: Sequence[Any], rows: int, columns: int) -> Any:
    """The pixels whose centres lie inside the polygons (``(n, 2)`` arrays of x, y in index
    space) by the even-odd rule: crossings to the left of each centre counted along its row."""
    import numpy as np

    crossings = np.zeros((rows, columns + 1), np.int32)
    for poly in polygons:
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        lo = max(0, int(np.ceil(y0.min())))
        hi = min(rows - 1, int(np.floor(y0.max())))
        if hi < lo:
            continue
        y = np.arange(lo, hi + 1, dtype=float)[:, None]
        spans = ((y0 <= y) & (y1 > y)) | ((y1 <= y) & (y0 > y))
        with np.errstate(divide="ignore", invalid="ignore"):
            x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        r, e = np.nonzero(spans)
        cols = np.clip(np.ceil(x[r, e]), 0, columns).astype(int)
        np.add.at(crossings, (r + lo, cols), 1)
    return (np.cumsum(crossings, axis=1)[:, :columns] % 2).astype(np.uint8)


def check_readable(path: Path) -> None:
    """DataError when the file is not a structure set with ROIs."""
    ds = read_header(path)[0]
    if not getattr(ds, "StructureSetROISequence", None):
        raise DataError(f"{path.name}: an RTSTRUCT without ROIs",
                        hint="export the structure set again with its structures")
