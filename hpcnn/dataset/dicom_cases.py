"""DICOM case folders → cases: which series is the image, which object is its label, and
whether the label references that series.

A case folder (sources.DicomFolder) may hold several series. The image is the one series left
by ``--series-description`` (a case-insensitive pattern, ``*`` and ``?`` allowed) and
``--modality`` (when it names a DICOM modality such as CT or MR), else the only one, else the
one its DICOM label references; otherwise the import stops with a listing of the folder's
series. Several values of either option make several channels, in the order given (a
``Rule`` each; one value applies to every channel): each channel's series is chosen by the
same rule, the channels must be distinct series on one grid (headers compared before any
pixel is read), and the label may reference any of them.

The label is a DICOM-SEG or RTSTRUCT in the folder, or a label file of another format lying
in it; a SEG or RTSTRUCT must reference the image series (Frame of Reference,
SeriesInstanceUID, SOP instances) or the import stops naming both.

Header values never leave this module except in error listings on the terminal (the series a
user must choose between) and in the case → UID mapping (dicom_map.py): cases get hpcnn's
names, items are named by their folder and file paths.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpcnn.dataset.findings import Finding, error, notice, shorten, warning
from hpcnn.dataset.sources import DicomFolder, SourceCase
from hpcnn.errors import DataError
from hpcnn.formats import dicom_seg, dicom_series, rtstruct
from hpcnn.formats.dicom_series import DicomFile
from hpcnn.formats.source import SourceItem

if TYPE_CHECKING:
    from hpcnn.dataset.geometry import Geometry

DICOM_MODALITIES = {"CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT", "SC"}
_READERS = {"SEG": dicom_seg, "RTSTRUCT": rtstruct}
_FORMAT = {"SEG": "dicom-seg", "RTSTRUCT": "rtstruct"}


@dataclass(frozen=True)
class Rule:
    """What chooses one channel's series: a SeriesDescription pattern and DICOM modalities
    (either may be empty)."""

    description: str | None = None
    modality: frozenset[str] = frozenset()

    def said(self) -> str:
        return " and ".join(x for x in (
            f"--series-description {self.description!r}" if self.description else "",
            f"--modality {'/'.join(sorted(self.modality))}" if self.modality else "") if x)


def channel_rules(descriptions: Sequence[str], modality: Sequence[str]) -> list[Rule]:
    """One rule per channel: as many channels as ``--series-description`` or ``--modality``
    values, one value applying to every channel (the rule of dataset.json's channel_names)."""
    n = max(1, len(descriptions), len(modality))
    for option, given in (("--series-description", descriptions), ("--modality", modality)):
        if len(given) not in (0, 1, n):
            raise DataError(f"{option} lists {len(given)} values for {n} channels",
                            hint="give one value for every channel, or one per channel, in "
                                 "channel order")

    def pick(values: Sequence[str], i: int) -> str | None:
        return values[i if len(values) > 1 else 0] if values else None

    return [Rule(pick(descriptions, i), frozenset({(pick(modality, i) or "").upper()}
                                                  & DICOM_MODALITIES)) for i in range(n)]


@dataclass(frozen=True)
class DicomCase:
    """A case made of DICOM: the source case for the importer and what the UID mapping and
    ``dataset check`` keep about it."""

    case: SourceCase
    channels: tuple[tuple[DicomFile, ...], ...]  # each channel's series in volume order
    label: DicomFile | None  # a SEG or RTSTRUCT (None: no label, or a label file)
    label_channel: int = 0  # the channel whose series the label references

    @property
    def labelled(self) -> tuple[DicomFile, ...]:
        """The series the label was drawn on (a SEG's frames are placed by its slices)."""
        return self.channels[self.label_channel]

    def burned_in(self, channel: int) -> bool:
        return any(s.burned_in for s in self.channels[channel])

    def secondary_capture(self, channel: int) -> bool:
        return any(dicom_series.is_secondary_capture(s) for s in self.channels[channel])


@dataclass
class Found:
    cases: list[DicomCase] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def collect(folders: Sequence[DicomFolder], rules: Sequence[Rule],
            on_progress: Callable[[str, int, int], None] | None = None) -> Found:
    """Every DICOM case folder as a case, every problem as a finding; ``on_progress`` is told
    of every header read (a case may hold thousands of files)."""
    found = Found()
    total = sum(len(f.files) for f in folders)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress is not None and (done % 50 == 0 or done == total):
            on_progress("reading DICOM headers", done, total)

    for folder in folders:
        case = _case(folder, rules, found.findings, tick)
        if case is not None:
            found.cases.append(case)
    return found


def model_rules(channel_names: Sequence[str]) -> list[Rule]:
    """The rules that choose a DICOM folder's series for a model's channels when predicting:
    one channel takes the folder's one image series (as an import without options); with
    several, a channel named by a DICOM modality (``CT``, ``PT``) takes the series of that
    modality, any other name the series whose description contains it (``t1`` → ``*t1*``) —
    the names an import gives channels from ``--modality`` or ``--series-description``."""
    if len(channel_names) <= 1:
        return [Rule()]
    return [Rule(modality=frozenset({name.upper()})) if name.upper() in DICOM_MODALITIES
            else Rule(description=f"*{name}*") for name in channel_names]


def image_series(folder: DicomFolder, findings: list[Finding],
                 rules: Sequence[Rule] = (Rule(),)) -> tuple[SourceItem, ...] | None:
    """A folder's image series to predict, one per rule (channel), with the same choice and
    checks as an import, or None after an error in ``findings``."""
    case = _case(folder, rules, findings)
    return case.case.images if case is not None else None


def _case(folder: DicomFolder, rules: Sequence[Rule], findings: list[Finding],
          tick: Callable[[], None] | None = None) -> DicomCase | None:
    where = f"{folder.display}/"
    scan = dicom_series.scan(folder.files, tick)
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
    chosen = []
    for i, rule in enumerate(rules):
        series = _choose(where, images, rule, refs, findings,
                         f"channel {i}: " if len(rules) > 1 else "")
        if series is None:
            return None
        chosen.append(series)
    if len({id(c) for c in chosen}) < len(chosen):
        twice = next(i for i, c in enumerate(chosen) if any(c is d for d in chosen[:i]))
        findings.append(error(where, f"channel {twice} chose the same series as an earlier "
                              f"channel ({chosen[twice][0].display}): each channel needs its own "
                              "series", hint="make each channel's --series-description / "
                                             "--modality match one series"))
        return None
    bad = [p for c in chosen for p in dicom_series.problems(c)]
    for display, message, hint in bad:
        findings.append(error(display, message, hint=hint))
    if bad:
        return None
    channels = tuple(tuple(dicom_series.ordered(c)) for c in chosen)
    if not _one_grid(where, channels, findings):
        return None
    label_channel = _referenced_channel(refs, channels) if refs is not None else 0
    if label is not None and refs is not None and not _matches(label, refs,
                                                               channels[label_channel],
                                                               findings):
        return None
    items = tuple(SourceItem(folder.folder, where + (f" [series {images.index(c) + 1} of "
                                                     f"{len(images)}]" if len(images) > 1
                                                     else ""),
                             tuple(dict.fromkeys(s.path for s in slices)), "dicom-series")
                  for c, slices in zip(chosen, channels, strict=True))
    segmentation = (SourceItem(label.path, label.display, (), _FORMAT[label.modality])
                    if label is not None else folder.labels[0] if folder.labels else None)
    case = DicomCase(SourceCase(folder.display, items, segmentation), channels, label,
                     label_channel)
    for k in range(len(items)):
        if case.burned_in(k):
            findings.append(warning(where, f"the image series{_of(k, items)} says "
                                    "BurnedInAnnotation YES: its pixels may show patient text, "
                                    "which training data would carry to the cluster",
                                    hint="use a series without burned-in text, or remove the "
                                         "text from the pixels first"))
        if case.secondary_capture(k):
            findings.append(warning(where, f"the image series{_of(k, items)} is a Secondary "
                                    "Capture (a screenshot or derived image, possibly with "
                                    "patient text in the pixels)",
                                    hint="import the scanner's original series instead"))
    return case


def _of(k: int, items: Sequence[SourceItem]) -> str:
    return f" of channel {k} ({items[k].display})" if len(items) > 1 else ""


def _one_grid(where: str, channels: Sequence[Sequence[DicomFile]],
              findings: list[Finding]) -> bool:
    """Whether every channel's series lies on channel 0's grid (from the headers, before any
    pixel is read: nnU-Net needs a case's channels voxel for voxel); an error saying which
    channel differs and how otherwise. A difference within geometry.TOLERANCE (rounding) is
    left to the importer, which copies channel 0's geometry and says so."""
    from hpcnn.dataset.geometry import relation

    grids = [_geometry(c) for c in channels]
    for k, grid in enumerate(grids[1:], start=1):
        kind, _ = relation(grid, grids[0]) if grid.size == grids[0].size else ("size", None)
        if kind in ("same", "copied"):
            continue
        findings.append(error(where, f"channel {k} ({channels[k][0].display}: "
                              f"{grid.describe(grids[0])}) is not on the grid of channel 0 "
                              f"({channels[0][0].display}: {grids[0].describe(grid)})",
                              hint="channels must be series of one grid (same slices, spacing "
                                   "and orientation): resample one onto the other first, e.g. "
                                   "in 3D Slicer, and import the result as files"))
        return False
    return True


def _geometry(slices: Sequence[DicomFile]) -> Geometry:
    from hpcnn.dataset.geometry import Geometry

    return Geometry(*dicom_series.grid(slices))


def _referenced_channel(refs: tuple[set[str], set[str], set[str]],
                        channels: Sequence[Sequence[DicomFile]]) -> int:
    """The channel whose series the label references (channel 0 when none is: ``_matches``
    then says why)."""
    series, _, instances = refs
    for k, slices in enumerate(channels):
        if slices[0].series_uid in series or instances & {s.sop_uid for s in slices}:
            return k
    return 0


def _number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 1 << 30


def _references(label: DicomFile, findings: list[Finding]) -> tuple[set[str], set[str],
                                                                     set[str]] | None:
    try:
        return _READERS[label.modality].references(dicom_series.read_header(label.path)[0])
    except Exception as exc:  # a damaged object: pydicom raises many kinds
        findings.append(error(label.display, f"cannot read its references: {exc}",
                              hint="export the label object again"))
        return None


def _choose(where: str, images: list[list[DicomFile]], rule: Rule,
            refs: tuple[set[str], set[str], set[str]] | None, findings: list[Finding],
            channel: str = "") -> list[DicomFile] | None:
    """One channel's image series by the rule in the module docstring, or None after an
    error listing the folder's series."""
    left = images
    if rule.description:
        left = [s for s in left if fnmatch.fnmatch(s[0].description.casefold(),
                                                    rule.description.casefold())]
    if rule.modality:
        left = [s for s in left if s[0].modality in rule.modality]
    if len(left) > 1 and refs is not None:
        referenced = [s for s in left if s[0].series_uid in refs[0]]
        left = referenced or left
    if len(left) == 1:
        return left[0]
    listing = "; ".join(
        f"series {i}: {s[0].modality or '?'} {s[0].description!r}"
        f"{' #' + s[0].series_number if s[0].series_number else ''}, {len(s)} "
        f"{'frame(s)' if s[0].frame else 'file(s)'} ({s[0].display})"
        for i, s in enumerate(images, start=1))
    said = rule.said()
    what = (f"no image series matches {said}" if not left else
            f"{len(left)} image series" + (f" match {said}" if said else "") + ", one is needed")
    findings.append(error(where, f"{channel}{what}: {listing}",
                          hint="choose one with --series-description TEXT (a pattern of the "
                               "series description, * allowed) and/or --modality CT|MR|...; "
                               "repeat --series-description for several channels"))
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
                 direction: Sequence[float], frames: Sequence[int] = ()
                 ) -> tuple[object, list[tuple[str, str, str]]]:
    """A DICOM label as (slices, rows, columns, segments) layers on the image grid, and the
    warnings of drawing it ``(file, message, fix)``. DataError when it cannot be read."""
    if segmentation.format_name == "dicom-seg":
        return dicom_seg.layers(segmentation.path, slices_uids, frames), []
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
