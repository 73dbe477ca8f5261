"""3D Slicer ``.seg.nrrd`` files: the segment table in the header, and the class map built
from it by segment name.

A segment is the voxels where component ``SegmentN_Layer`` equals ``SegmentN_LabelValue``. A
file without overlaps is a 3-D label map; overlapping segments make it 4-D (``kinds: list domain
domain domain``), which SimpleITK reads as a vector image with one component per layer. Label
values are unique only within a layer and change when segments are re-created, so classes follow
segment names (labels.py), never stored values. Files from Slicer before 4.11 have no
``_LabelValue``/``_Layer`` keys: one component per segment with value 1, which the defaults below
reproduce.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hpcnn.dataset.labels import lookup
from hpcnn.formats.segment import NamedSegment


def segment_key(index: int | str, field: str) -> str:
    """A segment's header key as Slicer names it: ``Segment0_Name`` (the one place the key
    format is spelled; the reader's pattern is built from it)."""
    return f"Segment{index}_{field}"


_KEY = re.compile(segment_key(r"(\d+)", "(ID|Name|Layer|LabelValue)"))


class SegmentTableError(ValueError):
    """The header's segment table cannot be used (message says which key)."""


def read_segments(metadata: Mapping[str, str], layers: int) -> list[NamedSegment]:
    """The segments declared in a header's metadata (empty: not a Slicer segmentation)."""
    fields: dict[int, dict[str, str]] = {}
    for key, value in metadata.items():
        m = _KEY.fullmatch(key)
        if m:
            fields.setdefault(int(m.group(1)), {})[m.group(2)] = value.strip()
    segments = []
    for index in sorted(fields):
        f = fields[index]
        name = f.get("Name") or f.get("ID") or f"Segment_{index + 1}"
        layer = _int(f, "Layer", index, index if layers > 1 else 0)
        value = _int(f, "LabelValue", index, 1)
        if not 0 <= layer < layers:
            raise SegmentTableError(f"Segment{index}_Layer is {layer} but the file has "
                                    f"{layers} layer(s)")
        if value <= 0:
            raise SegmentTableError(f"Segment{index}_LabelValue is {value}; Slicer values are "
                                    "1 or more")
        segments.append(NamedSegment(index, name, layer, value))
    return segments


def _int(fields: Mapping[str, str], key: str, index: int, default: int) -> int:
    if key not in fields:
        return default
    try:
        return int(fields[key])
    except ValueError:
        raise SegmentTableError(f"Segment{index}_{key} is {fields[key]!r}, not a whole "
                                "number") from None


@dataclass(frozen=True)
class Overlap:
    """Voxels claimed by two classes in one file."""

    first: int
    second: int
    voxels: int


def class_map(
    data: np.ndarray,
    segments: Sequence[tuple[int, int, int]],
    priority: Sequence[int],
    dtype: np.dtype,
) -> tuple[np.ndarray, list[Overlap], list[Overlap]]:
    """The class of every voxel.

    ``data`` is the file's array (z, y, x) or (z, y, x, layers); ``segments`` lists
    ``(layer, label_value, class)`` (class 0 drops the segment). Each layer goes through a lookup
    table in one pass, then layers are merged. Where two classes claim a voxel, the one earlier in
    ``priority`` wins, and a listed class beats an unlisted one. Returns the map, the overlaps
    that ``priority`` settled, and those it did not (two unlisted classes), which the caller
    reports as an error.
    """
    layers = data[..., None] if data.ndim == 3 else data
    unlisted = len(priority)
    rank = np.full(max([c for _, _, c in segments] + list(priority) + [0]) + 1, unlisted)
    rank[list(priority)] = np.arange(len(priority))
    out: np.ndarray | None = None
    settled: list[Overlap] = []
    unsettled: list[Overlap] = []
    for layer in range(layers.shape[-1]):
        mapped = lookup(layers[..., layer],
                        {v: c for lay, v, c in segments if lay == layer and c}, dtype)
        if out is None:
            out = np.ascontiguousarray(mapped)  # written through a flat view below
            continue
        # Later layers usually hold a few small segments: work on their voxels only.
        flat = out.reshape(-1)
        where = np.flatnonzero(mapped)
        new, old = mapped.reshape(-1)[where], flat[where]
        clash = (old != 0) & (old != new)
        take = old == 0
        if clash.any():
            pairs, counts = np.unique(np.stack([old[clash], new[clash]]), axis=1,
                                      return_counts=True)
            for (a, b), n in zip(pairs.T.tolist(), counts.tolist(), strict=True):
                ordered = rank[a] < unlisted or rank[b] < unlisted
                (settled if ordered else unsettled).append(Overlap(min(a, b), max(a, b), n))
            take |= clash & (rank[new] < rank[old])
        flat[where[take]] = new[take]
    assert out is not None
    return out, settled, unsettled


def segment_header(segments: Sequence[tuple[str, int, tuple[float, float, float]]],
                   size: Sequence[int]) -> dict[str, str]:
    """The header keys that make a 3-D label map (one layer, full size) a Slicer segmentation:
    one segment per ``(name, label value, colour)``, so Slicer shows the classes by name."""
    extent = " ".join(f"0 {s - 1}" for s in size)
    fields: dict[str, str] = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for index, (name, value, color) in enumerate(segments):
        values = {"ID": f"Segment_{value}", "Name": name, "NameAutoGenerated": "0",
                  "Color": " ".join(f"{c:g}" for c in color), "ColorAutoGenerated": "0",
                  "Extent": extent, "Tags": "|", "Layer": "0", "LabelValue": str(value)}
        fields.update({segment_key(index, k): v for k, v in values.items()})
    return fields
