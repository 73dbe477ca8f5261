"""What a DICOM-SEG and an RTSTRUCT written from a prediction share: the source series' headers,
the check that the label map lies on that series' grid, the classes as coded concepts with
colours, the algorithm that made them, and the private, all-or-nothing write of the object.

Both objects are *derived* from the source series: they copy its Patient and Study modules and
reference its Frame of Reference, series and every SOP instance, so a viewer or PACS files them
beside the images (dicom-facts.md). That is why they are written here on the laptop from headers
read here: the cluster only ever sees voxels, geometry and case ids.

A class with a code in labels.yaml (``code: [CodeValue, CodingSchemeDesignator, CodeMeaning]``,
optionally ``category: [...]``) gets it; any other class is coded as the generic SNOMED CT
"Tissue" (85756007) in the "Tissue" category, with the class name as the segment/ROI label, as
3D Slicer does for segments nobody coded.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcnn.errors import DataError, HpcnnError
from hpcnn.yamlfile import read_yaml

if TYPE_CHECKING:
    import numpy as np
    import SimpleITK as sitk
    from pydicom.dataset import Dataset

INSTALL_HINT = "pip install 'hpcnn[dicom]' (highdicom, pydicom, pydicomrt)"
POSITION_TOLERANCE_MM = 0.01
"""How far a slice of the source series may lie from the label map's slice (SimpleITK and
nnU-Net keep geometry in float64; a NIfTI round trip keeps it to float32, far below this)."""
DIRECTION_TOLERANCE = 1e-4


class DicomExtraMissing(HpcnnError):
    """The optional DICOM libraries are not installed."""


def require_dicom(*modules: str) -> None:
    """DicomExtraMissing naming the install command when one of ``modules`` cannot be
    imported (checked before anything is predicted, so nnU-Net never runs for nothing)."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise DicomExtraMissing(f"writing DICOM needs {module.split('.')[0]}, which is not "
                                    f"installed ({exc})", hint=INSTALL_HINT) from exc


@dataclass(frozen=True)
class Code:
    """A coded concept: (CodeValue, CodingSchemeDesignator, CodeMeaning)."""

    value: str
    scheme: str
    meaning: str


TISSUE = Code("85756007", "SCT", "Tissue")
"""The generic concept for a class nobody coded (category and type alike)."""


@dataclass(frozen=True)
class SegmentClass:
    """One class of the model as a DICOM segment or ROI."""

    value: int  # the label value in the prediction
    name: str
    rgb: tuple[int, int, int]
    type_code: Code = TISSUE
    category: Code = TISSUE


@dataclass(frozen=True)
class Algorithm:
    """What made the segmentation, as the objects identify it."""

    configuration: str
    folds: tuple[str, ...]
    nnunet_version: str
    hpcnn_version: str
    name: str = "nnU-Net"

    @property
    def parameters(self) -> dict[str, str]:
        return {"configuration": self.configuration, "folds": ",".join(self.folds),
                "hpcnn": self.hpcnn_version}

    @property
    def description(self) -> str:
        """One line for a description field (64 characters at most for LO)."""
        return (f"{self.name} {self.configuration} folds {','.join(self.folds)}")[:64]


def segment_classes(labels: Mapping[str, int], palette: Sequence[tuple[float, float, float]],
                    codes: Mapping[str, tuple[Code, Code | None]] | None = None
                    ) -> list[SegmentClass]:
    """The model's foreground classes in value order, each with a colour from ``palette``
    (0..1 RGB) and its code from ``codes`` (by class name, case-insensitive) or TISSUE."""
    by_name = {k.casefold(): v for k, v in (codes or {}).items()}
    out = []
    for i, (name, value) in enumerate(sorted(labels.items(), key=lambda kv: kv[1])):
        rgb = tuple(round(255 * c) for c in palette[i % len(palette)])
        type_code, category = by_name.get(name.casefold(), (TISSUE, None))
        out.append(SegmentClass(value, name, (rgb[0], rgb[1], rgb[2]), type_code,
                                category or TISSUE))
    return out


def read_codes(path: Path) -> dict[str, tuple[Code, Code | None]]:
    """The ``code`` (and ``category``) of each class in labels.yaml that gives one."""
    data, _ = read_yaml(path, DataError)
    codes: dict[str, tuple[Code, Code | None]] = {}
    if not isinstance(data, dict):
        return codes
    for name, entry in data.items():
        if not isinstance(entry, dict) or "code" not in entry:
            continue
        where = f"{path}: class {name!r}"
        codes[str(name)] = (_code(where, "code", entry["code"]),
                            _code(where, "category", entry["category"])
                            if entry.get("category") is not None else None)
    return codes


def _code(where: str, key: str, given: Any) -> Code:
    if (isinstance(given, list) and len(given) == 3
            and all(isinstance(v, str | int) and not isinstance(v, bool) and str(v).strip()
                    for v in given)):
        return Code(*(str(v).strip() for v in given))
    raise DataError(f"{where}: {key} must be [CodeValue, CodingSchemeDesignator, CodeMeaning]",
                    hint=f"e.g. {key}: [10200004, SCT, Liver]")


def voxels_on_series(label: sitk.Image, series: Sequence[Dataset], where: str) -> np.ndarray:
    """The label map's voxels as (slice, row, column) in the order of ``series``, after
    checking that every slice of the series is a slice of the label map (same rows, columns,
    orientation and spacing; each position within POSITION_TOLERANCE_MM). A mismatch is a
    DataError naming both grids: a DICOM object references the source's pixels one to one, so
    a label map on another grid cannot be written as one without resampling it."""
    import numpy as np
    import SimpleITK as sitk

    first = series[0]
    if "PerFrameFunctionalGroupsSequence" in first:
        raise DataError(f"{where}: the source is an enhanced multi-frame image; hpcnn writes "
                        "DICOM results for series of single-frame images only",
                        hint="write the result as NIfTI (--format nii.gz), or predict a "
                             "single-frame export of the series")
    size = label.GetSize()
    spacing = label.GetSpacing()
    direction = np.array(label.GetDirection()).reshape(3, 3)
    rows, cols = int(first.Rows), int(first.Columns)
    pixel = [float(v) for v in first.PixelSpacing]  # row spacing (y), column spacing (x)
    iop = [float(v) for v in first.ImageOrientationPatient]
    problems = []
    if len(size) != 3 or (size[0], size[1], size[2]) != (cols, rows, len(series)):
        problems.append(f"size {'x'.join(map(str, size))} against {cols}x{rows}x{len(series)}")
    elif not (np.allclose(direction[:, 0], iop[:3], atol=DIRECTION_TOLERANCE)
              and np.allclose(direction[:, 1], iop[3:], atol=DIRECTION_TOLERANCE)):
        problems.append("orientation " + _fmt(direction[:, 0]) + "/" + _fmt(direction[:, 1])
                        + f" against {_fmt(iop[:3])}/{_fmt(iop[3:])}")
    elif not np.allclose(spacing[:2], (pixel[1], pixel[0]), atol=POSITION_TOLERANCE_MM):
        problems.append(f"pixel spacing {_fmt(spacing[:2])} against {_fmt((pixel[1], pixel[0]))}")
    indices: list[int] = []
    if not problems:
        for ds in series:
            point = tuple(float(v) for v in ds.ImagePositionPatient)
            index = np.array(label.TransformPhysicalPointToContinuousIndex(point))
            k = int(round(index[2]))
            offset = np.abs(index - (0, 0, k)) * np.array(spacing)
            if not 0 <= k < size[2] or offset.max() > POSITION_TOLERANCE_MM or k in indices:
                problems.append(f"source slice {ds.SOPInstanceUID} at {_fmt(point)} mm is no "
                                "slice of the label map")
                break
            indices.append(k)
    if problems:
        raise DataError(f"{where}: the label map ({_grid(label)}) is not on the grid of the "
                        f"source series {first.SeriesInstanceUID}: {problems[0]}",
                        hint="predict the series itself (its folder as INPUT): the result is "
                             "then on its grid")
    array = sitk.GetArrayFromImage(label)
    return np.ascontiguousarray(array[indices])


def _grid(image: sitk.Image) -> str:
    return (f"size {'x'.join(map(str, image.GetSize()))}, spacing {_fmt(image.GetSpacing())}, "
            f"origin {_fmt(image.GetOrigin())}")


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def write_private(ds: Dataset, final: Path, *, force: bool = False) -> Path:
    """Write ``ds`` as a DICOM file (with the DICM preamble and file meta) to ``final``
    through a temporary name beside it, mode 0600 (it carries the patient's identity): a
    reader never sees half a file. An existing ``final`` is refused unless ``force``."""
    if os.path.lexists(final) and not force:
        raise DataError(f"{final}: exists already; nothing was written",
                        hint="write to another folder, or pass --force to replace it")
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
