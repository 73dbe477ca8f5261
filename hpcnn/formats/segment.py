"""The named segment every label reader yields (a Slicer segment table row, a DICOM-SEG
segment, an RTSTRUCT ROI): classes follow segment names, never stored values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NamedSegment:
    """One segment: where the reader puts it (``layer`` of the label array it returns and the
    ``value`` that marks it there) and the name that decides its class."""

    index: int
    name: str
    layer: int
    value: int
