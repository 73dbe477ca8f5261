"""3D Slicer segmentations (``.seg.nrrd``, ``.seg.nhdr``): NRRD with a segment table in the
header; segments become classes by name (dataset/slicer.py reads the table)."""

from hpcnn.formats import Format, register

SLICER_SEG = register(Format("slicer-seg", (".seg.nrrd", ".seg.nhdr"),
                             prediction_choice="seg.nrrd", ending=".seg.nrrd", detached=True,
                             label=True))
