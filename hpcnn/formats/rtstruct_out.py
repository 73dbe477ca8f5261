"""A prediction as an RT Structure Set (RTSTRUCT), written with pydicomrt.

highdicom 0.28 has no RT module, so the contours come from pydicomrt (pydicom 3, maintained,
2026): its ``RTStructBuilder`` takes the source series' headers, copies the patient and study,
references the Frame of Reference, the series and every slice's SOP instance, and turns each
class's mask into closed planar contours per slice in patient coordinates (holes as inner
contours). Its smoothing and speckle removal are off here: a contour follows the predicted
voxels' outline, so the structure a planning system fills from it is the prediction (within the
rasteriser's treatment of the boundary, tests/test_rtstruct_out.py states and tests the bound).
rt-utils, the older choice, was last released in 2023 and handles holes poorly.

Every class of the model is an ROI; a class the prediction does not hold is an ROI without
contours (the ROI Contour module's Contour Sequence is optional), so a planning system shows it
as empty instead of missing. The object's identification (manufacturer, series, structure set
label and description, each ROI's generation algorithm and code) says it is nnU-Net's automatic
result, not a clinician's contour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpcnn.formats.dicom_derived import (
    Algorithm,
    Code,
    SegmentClass,
    require_dicom,
    voxels_on_series,
    write_private,
)

if TYPE_CHECKING:
    import SimpleITK as sitk
    from pydicom.dataset import Dataset

SERIES_NUMBER = 902
SERIES_DESCRIPTION = "nnU-Net structures (hpcnn)"
CONTOURS = {"ex_noise_size": 0, "in_noise_size": 0, "lowpass_ratio": 45, "ctr_precision": 4}
"""pydicomrt's contour settings: no speckle removal, no low-pass (45 and above turns it off),
coordinates to 0.1 µm."""


def write_rtstruct(label: sitk.Image, series: Sequence[Dataset],
                   classes: Sequence[SegmentClass], algorithm: Algorithm, final: Path, *,
                   force: bool = False) -> Path:
    """Write the label map ``label`` (on the grid of ``series``, the source headers sorted
    along the normal) as an RTSTRUCT to ``final``; DataError when the grids differ."""
    require_dicom("pydicomrt.rs", "pydicom")
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicomrt.rs import RTStructBuilder

    labels = voxels_on_series(label, series, str(final))
    builder = RTStructBuilder(list(series)).set_structure_set_label("nnU-Net")
    for number, c in enumerate(classes, start=1):
        builder.add_roi((labels == c.value).astype("uint8"), c.name[:64], number=number,
                        color=list(c.rgb), description=c.type_code.meaning[:64],
                        interpreted_type="ORGAN", contour_config=CONTOURS)
    ds = builder.build()
    first = series[0]
    ds.Manufacturer = "hpcnn"
    ds.ManufacturerModelName = algorithm.name
    ds.SoftwareVersions = [f"hpcnn {algorithm.hpcnn_version}",
                           f"nnunetv2 {algorithm.nnunet_version}"]
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.StructureSetDescription = algorithm.description
    ds.OperatorsName = ""
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    for roi in ds.StructureSetROISequence:
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = algorithm.description
    for contour in ds.ROIContourSequence:
        if not contour.get("ContourSequence"):
            del contour.ContourSequence  # Type 3: absent, not empty, for a class not found
    for observation, c in zip(ds.RTROIObservationsSequence, classes, strict=True):
        observation.ROIObservationDescription = f"{algorithm.name} class {c.value}"
        item = Dataset()
        _set_code(item, c.type_code)
        observation.RTROIIdentificationCodeSequence = DicomSequence([item])
    return write_private(ds, final, force=force)


def _set_code(item: Dataset, code: Code) -> None:
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
