"""A prediction as a DICOM Segmentation (DICOM-SEG), written with highdicom.

BINARY, not the 2024 LABELMAP class, although nnU-Net's classes never overlap: the BINARY
Segmentation Storage SOP class has been read by viewers, PACS and 3D Slicer (dcmqi) since 2011,
while a PACS that does not know the newer Label Map Segmentation Storage class may refuse to
store it. Bit-packed frames also keep a BINARY object smaller than an 8-bit label map frame for
up to seven classes.

Every class of the model is a segment. A class the prediction does not hold is a segment with
no frames (the standard's own way to say "looked for, not found", which highdicom writes with
``omit_empty_frames``); a prediction with no foreground at all keeps every (empty) frame, since
a SEG needs at least one.
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

SERIES_NUMBER = 901
"""Series number of the derived series (viewers list series by number; nnU-Net's results sort
after the scanner's own)."""
SERIES_DESCRIPTION = "nnU-Net segmentation (hpcnn)"


def write_dicom_seg(label: sitk.Image, series: Sequence[Dataset],
                    classes: Sequence[SegmentClass], algorithm: Algorithm, final: Path, *,
                    force: bool = False) -> Path:
    """Write the label map ``label`` (on the grid of ``series``, the source headers sorted
    along the normal) as a BINARY DICOM-SEG to ``final``; DataError when the grids differ."""
    require_dicom("highdicom", "pydicom")
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    labels = voxels_on_series(label, series, str(final))
    frames = np.stack([labels == c.value for c in classes], axis=-1).astype(np.uint8)
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.nnunet_version, parameters=algorithm.parameters)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=c.name[:64],
            segmented_property_category=_concept(c.category),
            segmented_property_type=_concept(c.type_code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            display_color=hd.color.CIELabColor.from_rgb(*c.rgb))
        for number, c in enumerate(classes, start=1)]
    seg = hd.seg.Segmentation(
        source_images=list(series), pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="hpcnn", manufacturer_model_name=algorithm.name,
        software_versions=[f"hpcnn {algorithm.hpcnn_version}",  # a list: VM 1-n
                           f"nnunetv2 {algorithm.nnunet_version}"],
        device_serial_number="none", content_description=algorithm.description,
        content_label="NNUNET", content_creator_name="hpcnn^nnU-Net",
        series_description=SERIES_DESCRIPTION)
    return write_private(seg, final, force=force)


def _concept(code: Code):  # -> hd.sr.CodedConcept
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(code.value, code.scheme, code.meaning)
