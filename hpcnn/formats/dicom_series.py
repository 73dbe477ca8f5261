"""A DICOM image series: the slices of one SeriesInstanceUID in a case folder (any file names,
nested), recognised by content and read into one oriented volume; or the frames of one
enhanced multi-frame CT/MR object, placed by its Per-frame Functional Groups.

``read_header`` is hpcnn's one reader of DICOM headers (pydicom, no pixels). ``scan`` reads
every file's header once and sorts them into series and label objects (an enhanced object
becomes one record per frame); ``problems`` says why a series cannot become a volume (one
slice, a multi-frame object without per-frame positions, a missing or duplicated slice, gantry
tilt, a compressed transfer syntax without a decoder); ``read_volume`` stacks the slices in
position order with the rescale applied, on the grid the headers give (``grid``: origin of the
first slice, row/column/normal directions), which is what SimpleITK's ImageSeriesReader gives
for the same series, holding the volume once. ``headers`` gives the chosen slices' headers to
the DICOM results derived from them. Header values stay in the ``DicomFile`` records: callers
name files by path, never by a header value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hpcnn.errors import DataError
from hpcnn.formats import Format, register

DICOM_SERIES = register(Format("dicom-series", dicom=True))

INSTALL_HINT = "pip install 'hpcnn[dicom]'"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants .7.x
LABEL_MODALITIES = ("SEG", "RTSTRUCT")
_GDCM_DECODES = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",  # uncompressed
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",  # JPEG baseline, extended, lossless
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE
}
"""Transfer syntaxes SimpleITK's own GDCM decodes; others need a pydicom decoder plugin."""
SPACING_TOLERANCE = 0.01  # relative: slices further apart than this from the usual step
TILT_TOLERANCE = 0.01  # mm of in-plane shift per mm of slice step


def dicom_library(name: str = "pydicom") -> Any:
    """A library of the ``dicom`` extra (pydicom, highdicom), or a DataError saying how to
    install the extra."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise DataError(f"reading DICOM needs {name}, which is not installed",
                        hint=INSTALL_HINT) from exc


def pydicom_module() -> Any:
    return dicom_library("pydicom")


@dataclass(frozen=True)
class DicomFile:
    """What one file's header says (values stay here: messages use ``display``)."""

    path: Path
    display: str
    series_uid: str
    study_uid: str
    sop_uid: str
    sop_class: str
    modality: str
    description: str
    series_number: str
    frame_of_reference: str
    patient_id: str
    transfer_syntax: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    rows: int
    columns: int
    spacing: tuple[float, float] | None  # row spacing, column spacing (PixelSpacing)
    frames: int
    burned_in: bool
    has_pixels: bool
    preamble: bool
    frame: int = 0  # of an enhanced multi-frame image: this record's frame (1-based)


@dataclass
class Scan:
    """A folder's DICOM files by series, and the files that are not usable slices."""

    series: dict[str, list[DicomFile]]
    skipped: list[str]  # not DICOM (named in a notice)
    dicomdirs: list[str]
    no_preamble: list[str]


def looks_like_dicom(path: Path) -> bool:
    """The cheap test discovery uses: the ``DICM`` magic after the 128-byte preamble, a
    ``.dcm`` name, or a DICOMDIR."""
    if path.name.upper() == "DICOMDIR" or path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def read_header(path: Path) -> tuple[Any, bool]:
    """A file's header without its pixel data, and whether it has the ``DICM`` preamble: the
    one place hpcnn reads DICOM headers (the series scan here, the source headers a DICOM
    result copies and references, the slice positions of the pydicom reader). A file without
    the preamble is still parsed (old exports lack it); pydicom raises when it is no DICOM."""
    pydicom = pydicom_module()
    with path.open("rb") as f:
        head = f.read(132)
    preamble = head[128:132] == b"DICM"
    return pydicom.dcmread(path, stop_before_pixels=True, force=not preamble), preamble


def headers(files: Sequence[Path]) -> list[Any]:
    """The headers of the slices the input side chose and checked (``ordered``), in the order
    given: what a DICOM result derived from the series copies and references."""
    return [read_header(path)[0] for path in dict.fromkeys(files)]


def scan(files: Iterable[tuple[Path, str]], on_file: Callable[[], None] | None = None) -> Scan:
    """Every file's header, grouped by SeriesInstanceUID; an enhanced multi-frame image is one
    record per frame (its place from the Per-frame Functional Groups). A file without the
    ``DICM`` preamble is read when it parses as DICOM (old exports lack it) and listed; one
    that does not parse is skipped and listed. ``on_file`` is called after each file (a
    progress bar: a series may have thousands)."""
    pydicom_module()
    out = Scan({}, [], [], [])
    for path, display in files:
        if on_file is not None:
            on_file()
        try:
            ds, preamble = read_header(path)
        except Exception:  # pydicom raises many kinds on a file that is not DICOM
            out.skipped.append(display)
            continue
        media = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if (path.name.upper() == "DICOMDIR" or media == DICOMDIR_CLASS
                or "DirectoryRecordSequence" in ds):
            out.dicomdirs.append(display)
            continue
        if not getattr(ds, "SOPInstanceUID", None) or not getattr(ds, "SeriesInstanceUID", None):
            out.skipped.append(display)
            continue
        if not preamble:
            out.no_preamble.append(display)
        record = _record(ds, path, display, preamble)
        frames = _frames(ds, record) if record.frames > 1 else [record]
        out.series.setdefault(record.series_uid, []).extend(frames)
    return out


def _floats(item: Any, name: str, n: int) -> tuple[float, ...] | None:
    """The ``n`` numbers of attribute ``name`` of ``item``; None when absent or malformed."""
    value = getattr(item, name, None)
    try:
        found = tuple(float(v) for v in value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return found if found is not None and len(found) == n else None


def _record(ds: Any, path: Path, display: str, preamble: bool) -> DicomFile:
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    spacing = _floats(ds, "PixelSpacing", 2)
    position = _floats(ds, "ImagePositionPatient", 3)
    return DicomFile(
        path=path, display=display,
        series_uid=str(ds.SeriesInstanceUID), study_uid=str(getattr(ds, "StudyInstanceUID", "")),
        sop_uid=str(ds.SOPInstanceUID), sop_class=str(getattr(ds, "SOPClassUID", "")),
        modality=str(getattr(ds, "Modality", "") or "").upper(),
        description=str(getattr(ds, "SeriesDescription", "") or ""),
        series_number=str(getattr(ds, "SeriesNumber", "") or ""),
        frame_of_reference=str(getattr(ds, "FrameOfReferenceUID", "") or ""),
        patient_id=str(getattr(ds, "PatientID", "") or ""),
        transfer_syntax=syntax,
        position=position,  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        rows=int(getattr(ds, "Rows", 0) or 0), columns=int(getattr(ds, "Columns", 0) or 0),
        spacing=spacing,  # type: ignore[arg-type]
        frames=int(getattr(ds, "NumberOfFrames", 1) or 1),
        burned_in=str(getattr(ds, "BurnedInAnnotation", "") or "").upper() == "YES",
        has_pixels="PixelData" in ds or bool(getattr(ds, "Rows", 0)),
        preamble=preamble,
    )


ENHANCED_GEOMETRY = ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence")


def _group(ds: Any, index: int, name: str) -> Any:
    """Functional group ``name`` of frame ``index`` (0-based): its per-frame item, else the
    shared one (the standard allows either), else None."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for item in (per_frame[index] if index < len(per_frame) else None,
                 shared[0] if shared else None):
        found = item.get(name) if item is not None else None
        if found:
            return found[0]
    return None


def _frames(ds: Any, record: DicomFile) -> list[DicomFile]:
    """An enhanced multi-frame image as one record per frame, placed by its Per-frame
    Functional Groups (Plane Position, Plane Orientation, Pixel Measures). A multi-frame object
    without them (a cine loop, a classic NM or US object) stays one record: ``problems`` then
    says it is no volume hpcnn can place."""
    if not ds.get("PerFrameFunctionalGroupsSequence") or record.modality in LABEL_MODALITIES:
        return [record]
    out = []
    for k in range(record.frames):
        place = {name: _group(ds, k, name) for name in ENHANCED_GEOMETRY}
        if any(v is None for v in place.values()):
            return [record]
        out.append(replace(
            record, display=f"{record.display} frame {k + 1}", frame=k + 1,
            position=_floats(place["PlanePositionSequence"], "ImagePositionPatient", 3),
            orientation=_floats(place["PlaneOrientationSequence"], "ImageOrientationPatient", 6),
            spacing=_floats(place["PixelMeasuresSequence"], "PixelSpacing", 2)))
    return out


def is_secondary_capture(file: DicomFile) -> bool:
    return file.sop_class == SECONDARY_CAPTURE or file.sop_class.startswith(SECONDARY_CAPTURE + ".")


def _normal(orientation: Sequence[float]) -> tuple[float, float, float]:
    r, c = orientation[:3], orientation[3:]
    return (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def ordered(slices: Sequence[DicomFile]) -> list[DicomFile]:
    """Slices in position order along the normal of their plane (not InstanceNumber)."""
    normal = _normal(slices[0].orientation or (1, 0, 0, 0, 1, 0))
    return sorted(slices, key=lambda s: _dot(s.position or (0, 0, 0), normal))


def problems(slices: Sequence[DicomFile]) -> list[tuple[str, str, str]]:
    """Why these slices cannot be one volume: ``(file, message, fix)`` each; empty when they
    can. The checks ImageSeriesReader leaves to its caller (dicom-facts.md)."""
    first = slices[0]
    if first.frames > 1 and not first.frame:
        return [(first.display, f"a multi-frame object ({first.frames} frames in one file) "
                 "without per-frame positions (Per-frame Functional Groups): its frames cannot "
                 "be placed in a volume", "export the series as an enhanced CT/MR object or as "
                 "single-frame images, or convert it with dcm2niix to NIfTI and import that")]
    enhanced = {s.path for s in slices if s.frame}
    if enhanced and (len(enhanced) > 1 or len({s.path for s in slices}) > 1):
        return [(first.display, "a series of several multi-frame objects, or of one mixed with "
                 "single-frame images: hpcnn reads one enhanced object per series",
                 "export the series as one enhanced object or as single-frame images")]
    missing = [s.display for s in slices if s.position is None or s.orientation is None
               or s.spacing is None or not s.rows]
    if missing:
        return [(missing[0], "a slice without ImagePositionPatient, ImageOrientationPatient or "
                 "PixelSpacing: its place in the volume is unknown",
                 "export the series again with its geometry, or leave the file out")]
    out: list[tuple[str, str, str]] = []
    if len(slices) < 2:
        return [(first.display, "a series of one slice: a 3-D dataset needs a volume",
                 "export the whole series")]
    for s in slices[1:]:
        if (max(abs(a - b) for a, b in zip(s.orientation, first.orientation, strict=True)) > 1e-3
                or (s.rows, s.columns) != (first.rows, first.columns)):
            out.append((s.display, f"orientation or size differs from {first.display}: one "
                        "series holds slices of two stacks",
                        "split the series, or export each stack as its own series"))
            return out
    out += _decoder(first)
    stack = ordered(slices)
    normal = _normal(first.orientation)  # type: ignore[arg-type]
    z = [_dot(s.position, normal) for s in stack]  # type: ignore[arg-type]
    steps = [b - a for a, b in zip(z, z[1:], strict=False)]
    for a, b, step in zip(stack, stack[1:], steps, strict=False):
        if abs(step) < 1e-4:
            out.append((b.display, f"at the same position as {a.display}: a duplicated slice",
                        "remove one of the two files"))
    if out:
        return out
    usual = sorted(steps)[len(steps) // 2]
    for a, b, step in zip(stack, stack[1:], steps, strict=False):
        if abs(step - usual) > SPACING_TOLERANCE * usual:
            out.append((b.display, f"uneven slice spacing: {step:.3g} mm from {a.display} to "
                        f"this slice where the others are {usual:.3g} mm apart (a gap of "
                        f"{step / usual - 1:.3g} slice(s): a missing slice?)",
                        "export the complete series; hpcnn does not resample across gaps"))
    if out:
        return out
    shift = [tuple(bp - ap - step * n for ap, bp, n in
                   zip(a.position, b.position, normal, strict=True))  # type: ignore[arg-type]
             for a, b, step in zip(stack, stack[1:], steps, strict=False)]
    worst = max(max(abs(v) for v in s) for s in shift)
    if worst > TILT_TOLERANCE * usual:
        out.append((first.display, f"gantry tilt: each slice is shifted {worst:.3g} mm within "
                    f"its plane from the one before ({usual:.3g} mm apart), so the volume is "
                    "sheared", "resample the series onto an untilted grid first (3D Slicer's "
                    "'Acquisition geometry regularization', or dcm2niix) and import the result"))
    return out


def _decoder(file: DicomFile) -> list[tuple[str, str, str]]:
    """A compressed transfer syntax that neither SimpleITK's GDCM nor an installed pydicom
    decoder reads, naming what to install (an enhanced object's frames are always decoded by
    pydicom)."""
    if file.transfer_syntax in _GDCM_DECODES and not file.frame:
        return []
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(file.transfer_syntax)
    except (NotImplementedError, ValueError):
        return [(file.display, f"transfer syntax {file.transfer_syntax} has no decoder in "
                 "pydicom", "convert the series to an uncompressed syntax (e.g. `gdcmconv "
                 "--raw`) first")]
    if decoder.is_available:
        return []
    needs = "; or ".join(decoder.missing_dependencies)
    packages = [p for p in ("pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")
                if p in needs]
    install = " ".join(["pylibjpeg", *packages])
    return [(file.display, f"compressed pixel data ({decoder.UID.name}) and no decoder for it "
             f"installed (needs: {needs})",
             f"pip install {install}" + (" (or python-gdcm)" if "gdcm" in needs else ""))]


def read_volume(files: Sequence[Path]) -> Any:
    """The series as a SimpleITK image, slices in the order given (``ordered``), rescaled to
    stored units (HU for CT): SimpleITK's ImageSeriesReader (GDCM) where it decodes the
    transfer syntax, else pydicom with its decoder plugins (``_decoder`` checked that one is
    installed). An enhanced multi-frame image (one file) is read by pydicom frame by frame and
    placed by its Per-frame Functional Groups.

    Memory: the output volume and one slice. ImageSeriesReader fills its output slice by slice;
    the pydicom readers paste each decoded slice into the output image, so a worker holding a
    3000-slice series holds it once (bench/dicom_import.py --memory measures it)."""
    import SimpleITK as sitk

    files = list(dict.fromkeys(files))  # an enhanced object's frames share one file
    first = read_header(files[0])[0]
    if len(files) == 1 and int(first.get("NumberOfFrames", 1) or 1) > 1:
        return _read_frames(files[0], first)
    if str(getattr(first.file_meta, "TransferSyntaxUID", "1.2.840.10008.1.2")) in _GDCM_DECODES:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in files])
        try:
            return reader.Execute()
        except RuntimeError:
            pass  # a file GDCM cannot parse (no preamble, odd encoding): pydicom reads it
    return _read_with_pydicom(files)


def _read_with_pydicom(files: Sequence[Path]) -> Any:
    """The slices stacked by pydicom on the grid ImageSeriesReader gives."""
    pydicom = pydicom_module()
    volume: _Volume | None = None
    positions = []
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path, force=True)
        if volume is None:
            volume = _Volume(ds, len(files), [float(v) for v in ds.ImageOrientationPatient],
                             [float(v) for v in ds.PixelSpacing])
        volume.put(k, ds.pixel_array, float(getattr(ds, "RescaleSlope", 1) or 1),
                   float(getattr(ds, "RescaleIntercept", 0) or 0))
        if k in (0, len(files) - 1):
            positions.append(tuple(float(v) for v in ds.ImagePositionPatient))
    assert volume is not None
    return volume.placed(positions[0], positions[-1])


def _read_frames(path: Path, ds: Any) -> Any:
    """An enhanced multi-frame image, its frames in position order along the normal, each
    rescaled by its Pixel Value Transformation (per frame or shared)."""
    from pydicom.pixels import iter_pixels

    n = int(ds.NumberOfFrames)
    place = [{name: _group(ds, k, name) for name in ENHANCED_GEOMETRY} for k in range(n)]
    orientation = [float(v) for v in place[0]["PlaneOrientationSequence"].ImageOrientationPatient]
    normal = _normal(orientation)
    position = [tuple(float(v) for v in p["PlanePositionSequence"].ImagePositionPatient)
                for p in place]
    order = sorted(range(n), key=lambda k: _dot(position[k], normal))
    slot = {frame: k for k, frame in enumerate(order)}
    volume = _Volume(ds, n, orientation,
                     [float(v) for v in place[0]["PixelMeasuresSequence"].PixelSpacing])
    for frame, pixels in enumerate(iter_pixels(path)):
        scale = _group(ds, frame, "PixelValueTransformationSequence")
        volume.put(slot[frame], pixels,
                   float(getattr(scale, "RescaleSlope", 1) or 1) if scale else 1.0,
                   float(getattr(scale, "RescaleIntercept", 0) or 0) if scale else 0.0)
    return volume.placed(position[order[0]], position[order[-1]])


class _Volume:
    """The output image, filled slice by slice: int16 when the stored values' declared range
    (BitsStored, PixelRepresentation) rescaled fits, else int32, else float32, as GDCM decides;
    widened (one copy) when a later slice's rescale needs more."""

    def __init__(self, ds: Any, slices: int, orientation: list[float],
                 pixel_spacing: list[float]) -> None:

        bits = int(getattr(ds, "BitsStored", 16) or 16)
        signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
        self.stored = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed
                       else (0, (1 << bits) - 1))
        self.kind = ""
        self.orientation = orientation
        self.pixel_spacing = pixel_spacing
        self.slices = slices
        self.size = [int(ds.Columns), int(ds.Rows), slices]
        self.image: Any = None  # made by the first ``put``, of that slice's type

    _KINDS = ("int16", "int32", "float32")

    def _kind(self, slope: float, intercept: float) -> str:
        if slope != 1 or intercept != int(intercept):
            return "float32"
        lo, hi = (v + int(intercept) for v in self.stored)
        if lo >= -32768 and hi <= 32767:
            return "int16"
        return "int32" if lo >= -(1 << 31) and hi < (1 << 31) else "float32"

    def put(self, k: int, pixels: Any, slope: float, intercept: float) -> None:
        import numpy as np
        import SimpleITK as sitk

        kind = self._kind(slope, intercept)
        if not self.kind or self._KINDS.index(kind) > self._KINDS.index(self.kind):
            wanted = {"int16": sitk.sitkInt16, "int32": sitk.sitkInt32,
                      "float32": sitk.sitkFloat32}[kind]
            self.image = (sitk.Image(self.size, wanted) if self.image is None
                          else sitk.Cast(self.image, wanted))
            self.kind = kind
        dtype = np.dtype(self.kind)
        if dtype.kind == "f":
            values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        else:
            values = pixels.astype(dtype)
            if intercept:
                values += dtype.type(int(intercept))
        self.image[:, :, k] = sitk.GetImageFromArray(values)

    def placed(self, first: Sequence[float], last: Sequence[float]) -> Any:
        """The image on its grid (``placement``)."""
        spacing, direction = placement(self.orientation, self.pixel_spacing, first, last,
                                       self.slices)
        self.image.SetOrigin(tuple(first))
        self.image.SetSpacing(spacing)
        self.image.SetDirection(direction)
        return self.image


def placement(orientation: Sequence[float], pixel_spacing: Sequence[float],
              first: Sequence[float], last: Sequence[float], slices: int
              ) -> tuple[tuple[float, float, float], tuple[float, ...]]:
    """SimpleITK's spacing and direction of a stack of ``slices`` from its first slice at
    ``first`` to its last at ``last`` (the origin is ``first``): the grid ImageSeriesReader
    gives, which the pydicom readers give their images and ``grid`` states from headers."""
    normal = _normal(orientation)
    step = (_dot(last, normal) - _dot(first, normal)) / max(1, slices - 1)
    row, col = orientation[:3], orientation[3:]
    return ((float(pixel_spacing[1]), float(pixel_spacing[0]), step),
            (row[0], col[0], normal[0], row[1], col[1], normal[1], row[2], col[2], normal[2]))


def grid(slices: Sequence[DicomFile]) -> tuple[tuple[int, int, int], tuple[float, float, float],
                                               tuple[float, float, float], tuple[float, ...]]:
    """The (size, spacing, origin, direction) ``read_volume`` gives these slices (in
    ``ordered`` order, checked by ``problems``), from their headers alone."""
    first, last = slices[0], slices[-1]
    assert first.orientation and first.spacing and first.position and last.position
    spacing, direction = placement(first.orientation, first.spacing, first.position,
                                   last.position, len(slices))
    return (first.columns, first.rows, len(slices)), spacing, first.position, direction
