"""DICOM case folders → cases: which series is the image, which object is its label, and
whether the label references that series.

A case folder (sources.DicomFolder) may hold several series. The image is the one series left
by ``--series-description`` (a case-insensitive pattern, ``*`` and ``?`` allowed) and
``--modality`` (when it names a DICOM modality such as CT or MR), else the only one, else the
one its DICOM label references; otherwise the import stops with a listing of the folder's
series. The label is a DICOM-SEG or RTSTRUCT in the folder, or a label file of another format
lying in it; a SEG or RTSTRUCT must reference the image series (Frame of Reference,
SeriesInstanceUID, SOP instances) or the import stops naming both.

Header values never leave this module except in error listings on the terminal (the series a
user must choose between) and in the case → UID mapping (dicom_map.py): cases get hpcnn's
names, items are named by their folder and file paths.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from hpcnn.dataset.findings import Finding, error, notice, shorten, warning
from hpcnn.dataset.sources import DicomFolder, SourceCase
from hpcnn.errors import DataError
from hpcnn.formats import dicom_seg, dicom_series, rtstruct
from hpcnn.formats.dicom_series import DicomFile
from hpcnn.formats.source import SourceItem

DICOM_MODALITIES = {"CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT", "SC"}
_READERS = {"SEG": dicom_seg, "RTSTRUCT": rtstruct}
_FORMAT = {"SEG": "dicom-seg", "RTSTRUCT": "rtstruct"}


@dataclass(frozen=True)
class DicomCase:
    """A case made of DICOM: the source case for the importer and what the UID mapping and
    ``dataset check`` keep about it."""

    case: SourceCase
    slices: tuple[DicomFile, ...]  # the image series in volume order
    label: DicomFile | None  # a SEG or RTSTRUCT (None: no label, or a label file)

    @property
    def burned_in(self) -> bool:
        return any(s.burned_in for s in self.slices)

    @property
    def secondary_capture(self) -> bool:
        return any(dicom_series.is_secondary_capture(s) for s in self.slices)


@dataclass
class Found:
    cases: list[DicomCase] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def collect(folders: Sequence[DicomFolder], series_description: str | None,
            modality: Sequence[str]) -> Found:
    """Every DICOM case folder as a case, every problem as a finding."""
    found = Found()
    for folder in folders:
        case = _case(folder, series_description, modality, found.findings)
        if case is not None:
            found.cases.append(case)
    return found


def image_series(folder: DicomFolder, findings: list[Finding]) -> SourceItem | None:
    """The one image series of a folder to predict (the same choice and checks as an import
    without options), or None after an error in ``findings``."""
    case = _case(folder, None, (), findings)
    return case.case.images[0] if case is not None else None


def _case(folder: DicomFolder, description: str | None, modality: Sequence[str],
          findings: list[Finding]) -> DicomCase | None:
    where = f"{folder.display}/"
    scan = dicom_series.scan(folder.files)
    if scan.skipped:
        findings.append(notice(where, f"skipped {len(scan.skipped)} file(s) that are not DICOM: "
                                      f"{shorten(scan.skipped)}"))
    if scan.dicomdirs:
        findings.append(notice(where, f"skipped the DICOMDIR {shorten(scan.dicomdirs)}: an index "
                                      "of the media's files; the images are read from the files "
                                      "themselves"))
    if scan.no_preamble:
        findings.append(notice(where, f"{len(scan.no_preamble)} file(s) without the DICM preamble "
                                      f"read as DICOM: {shorten(scan.no_preamble)}"))
    images: list[list[DicomFile]] = []
    labels: list[DicomFile] = []
    for files in scan.series.values():
        first = files[0]
        if first.modality in _READERS:
            labels.extend(files)
        elif first.has_pixels:
            images.append(files)
    images.sort(key=lambda s: (_number(s[0].series_number), s[0].display))
    if not images:
        findings.append(error(where, "no DICOM image series in this case folder",
                              hint="put each case's image series (and its label) in its own "
                                   "folder"))
        return None
    if len(labels) + len(folder.labels) > 1:
        named = [f.display for f in labels] + [f.display for f in folder.labels]
        findings.append(error(where, f"several labels for one case: {shorten(named)}",
                              hint="keep one SEG, RTSTRUCT or label file per case folder"))
        return None
    label = labels[0] if labels else None
    refs = _references(label, findings) if label is not None else None
    chosen = _choose(where, images, description, modality, refs, findings)
    if chosen is None:
        return None
    bad = dicom_series.problems(chosen)
    for display, message, hint in bad:
        findings.append(error(display, message, hint=hint))
    if bad:
        return None
    slices = tuple(dicom_series.ordered(chosen))
    if label is not None and refs is not None and not _matches(label, refs, slices, findings):
        return None
    series_display = where + (f" [series {images.index(chosen) + 1} of {len(images)}]"
                              if len(images) > 1 else "")
    image = SourceItem(folder.folder, series_display, tuple(s.path for s in slices),
                       "dicom-series")
    segmentation = (SourceItem(label.path, label.display, (), _FORMAT[label.modality])
                    if label is not None else folder.labels[0] if folder.labels else None)
    case = DicomCase(SourceCase(folder.display, (image,), segmentation), slices, label)
    if case.burned_in:
        findings.append(warning(where, "the image series says BurnedInAnnotation YES: its "
                                "pixels may show patient text, which training data would carry "
                                "to the cluster", hint="use a series without burned-in text, or "
                                "remove the text from the pixels first"))
    if case.secondary_capture:
        findings.append(warning(where, "the image series is a Secondary Capture (a screenshot "
                                "or derived image, possibly with patient text in the pixels)",
                                hint="import the scanner's original series instead"))
    return case


def _number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 1 << 30


def _references(label: DicomFile, findings: list[Finding]) -> tuple[set[str], set[str],
                                                                     set[str]] | None:
    pydicom = dicom_series.pydicom_module()
    try:
        ds = pydicom.dcmread(label.path, stop_before_pixels=True, force=True)
        return _READERS[label.modality].references(ds)
    except Exception as exc:  # a damaged object: pydicom raises many kinds
        findings.append(error(label.display, f"cannot read its references: {exc}",
                              hint="export the label object again"))
        return None


def _choose(where: str, images: list[list[DicomFile]], description: str | None,
            modality: Sequence[str], refs: tuple[set[str], set[str], set[str]] | None,
            findings: list[Finding]) -> list[DicomFile] | None:
    """The image series by the rule in the module docstring, or None after an error."""
    left = images
    if description:
        left = [s for s in left if fnmatch.fnmatch(s[0].description.casefold(),
                                                    description.casefold())]
    codes = {m.upper() for m in modality} & DICOM_MODALITIES
    if codes:
        left = [s for s in left if s[0].modality in codes]
    if len(left) > 1 and refs is not None:
        referenced = [s for s in left if s[0].series_uid in refs[0]]
        left = referenced or left
    if len(left) == 1:
        return left[0]
    listing = "; ".join(
        f"series {i}: {s[0].modality or '?'} {s[0].description!r}"
        f"{' #' + s[0].series_number if s[0].series_number else ''}, {len(s)} file(s) "
        f"({s[0].display})" for i, s in enumerate(images, start=1))
    said = " and ".join(x for x in (f"--series-description {description!r}" if description
                                    else "", f"--modality {'/'.join(sorted(codes))}" if codes
                                    else "") if x)
    what = (f"no image series matches {said}" if not left else
            f"{len(left)} image series" + (f" match {said}" if said else "") + ", one is needed")
    findings.append(error(where, f"{what}: {listing}",
                          hint="choose one with --series-description TEXT (a pattern of the "
                               "series description, * allowed) and/or --modality CT|MR|..."))
    return None


def _matches(label: DicomFile, refs: tuple[set[str], set[str], set[str]],
             slices: Sequence[DicomFile], findings: list[Finding]) -> bool:
    """Whether the label object references the chosen image series; an error naming both
    when it does not."""
    series, frames, instances = refs
    image = slices[0]
    uids = {s.sop_uid for s in slices}
    why = []
    if series and image.series_uid not in series:
        why.append("its referenced SeriesInstanceUID is not the image's")
    if frames and image.frame_of_reference and image.frame_of_reference not in frames:
        why.append("its Frame of Reference is not the image's")
    if instances and not instances <= uids:
        why.append(f"{len(instances - uids)} of the {len(instances)} slices it references are "
                   "not in the image series")
    if not (series or frames or instances):
        why.append("it references no series at all")
    if not why:
        return True
    first = slices[0].display.rsplit("/", 1)[0]
    findings.append(error(label.display, f"does not belong to the image series in {first}/ "
                          f"({len(slices)} slices, e.g. {slices[0].display}): "
                          + "; ".join(why),
                          hint="put the label beside the series it was drawn on, or choose that "
                               "series with --series-description"))
    return False


def label_layers(segmentation: SourceItem, slices_uids: Sequence[str], size: Sequence[int],
                 spacing: Sequence[float], origin: Sequence[float],
                 direction: Sequence[float]) -> tuple[object, list[tuple[str, str, str]]]:
    """A DICOM label as (slices, rows, columns, segments) layers on the image grid, and the
    warnings of drawing it ``(file, message, fix)``. DataError when it cannot be read."""
    if segmentation.format_name == "dicom-seg":
        return dicom_seg.layers(segmentation.path, slices_uids), []
    drawn = rtstruct.rasterise(segmentation.path, size, spacing, origin, direction)
    notes = []
    d = segmentation.display
    for name in drawn.empty:
        notes.append((d, f"ROI {name!r} has no contours: it is background in this case",
                      "draw it in the planning system if the structure is there"))
    for name, n in drawn.outside.items():
        notes.append((d, f"ROI {name!r}: {n} contour point(s) lie outside the image; the "
                      "parts inside are kept", "check that the RTSTRUCT belongs to this image"))
    for name, n in drawn.off_plane.items():
        notes.append((d, f"ROI {name!r}: {n} contour(s) lie between the image's slices and "
                      "were left out", "draw the contours on the image's slices"))
    for name, n in drawn.not_closed.items():
        notes.append((d, f"ROI {name!r}: {n} contour(s) are not CLOSED_PLANAR (points or open "
                      "lines) and were left out", "only closed contours enclose voxels"))
    return drawn.layers, notes


def segments_of(segmentation: SourceItem) -> list:
    """The named segments of a DICOM label (DataError when it has none)."""
    reader = dicom_seg if segmentation.format_name == "dicom-seg" else rtstruct
    found = reader.segments(segmentation.path)
    if not found:
        raise DataError(f"{segmentation.display}: declares no segments or ROIs",
                        hint="export the label object again with its structures")
    return found
