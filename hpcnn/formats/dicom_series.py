"""A DICOM image series: the slices of one SeriesInstanceUID in a case folder (any file names,
nested), recognised by content and read into one oriented volume.

``scan`` reads every file's header once (pydicom, no pixels) and sorts them into series and
label objects; ``problems`` says why a series cannot become a volume (one slice, enhanced
multi-frame, a missing or duplicated slice, gantry tilt, a compressed transfer syntax without
a decoder); ``read_volume`` stacks the slices in position order with the rescale applied, on
the grid the headers give (origin of the first slice, row/column/normal directions), which is
what SimpleITK's ImageSeriesReader gives for the same series. Header values stay in the
``DicomFile`` records: callers name files by path, never by a header value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


def scan(files: Iterable[tuple[Path, str]]) -> Scan:
    """Every file's header, grouped by SeriesInstanceUID. A file without the ``DICM``
    preamble is read when it parses as DICOM (old exports lack it) and listed; one that does
    not parse is skipped and listed."""
    pydicom = pydicom_module()
    out = Scan({}, [], [], [])
    for path, display in files:
        try:
            with path.open("rb") as f:
                head = f.read(132)
            preamble = head[128:132] == b"DICM"
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=not preamble)
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
        out.series.setdefault(record.series_uid, []).append(record)
    return out


def _record(ds: Any, path: Path, display: str, preamble: bool) -> DicomFile:
    def floats(name: str, n: int) -> tuple[float, ...] | None:
        value = getattr(ds, name, None)
        try:
            found = tuple(float(v) for v in value) if value is not None else None
        except (TypeError, ValueError):
            return None
        return found if found is not None and len(found) == n else None

    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    spacing = floats("PixelSpacing", 2)
    position = floats("ImagePositionPatient", 3)
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
        orientation=floats("ImageOrientationPatient", 6),
        rows=int(getattr(ds, "Rows", 0) or 0), columns=int(getattr(ds, "Columns", 0) or 0),
        spacing=spacing,  # type: ignore[arg-type]
        frames=int(getattr(ds, "NumberOfFrames", 1) or 1),
        burned_in=str(getattr(ds, "BurnedInAnnotation", "") or "").upper() == "YES",
        has_pixels="PixelData" in ds or bool(getattr(ds, "Rows", 0)),
        preamble=preamble,
    )


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
    if first.frames > 1:
        return [(first.display, f"an enhanced multi-frame object ({first.frames} frames in one "
                 "file): hpcnn reads classic one-slice-per-file series",
                 "export the series as single-frame images (e.g. the scanner's 'classic' DICOM, "
                 "or dcm2niix to NIfTI) and import that")]
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
    decoder reads, naming what to install."""
    if file.transfer_syntax in _GDCM_DECODES:
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
    installed)."""
    import SimpleITK as sitk

    pydicom = pydicom_module()
    meta = pydicom.dcmread(files[0], stop_before_pixels=True, force=True).file_meta
    if str(getattr(meta, "TransferSyntaxUID", "1.2.840.10008.1.2")) in _GDCM_DECODES:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in files])
        try:
            return reader.Execute()
        except RuntimeError:
            pass  # a file GDCM cannot parse (no preamble, odd encoding): pydicom reads it
    return _read_with_pydicom(files, pydicom)


def _read_with_pydicom(files: Sequence[Path], pydicom: Any) -> Any:
    """The slices stacked by pydicom, as int16 when the rescaled values fit, else int32 or
    float32, on the grid ImageSeriesReader gives."""
    import numpy as np
    import SimpleITK as sitk

    first = None
    volume = None
    scales = []
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path, force=True)
        pixels = ds.pixel_array
        if volume is None:
            first = ds
            volume = np.empty((len(files), *pixels.shape), dtype=pixels.dtype)
        volume[k] = pixels
        scales.append((float(getattr(ds, "RescaleSlope", 1) or 1),
                       float(getattr(ds, "RescaleIntercept", 0) or 0)))
    assert volume is not None and first is not None
    slopes = {s for s, _ in scales}
    intercepts = [i for _, i in scales]
    if slopes == {1.0} and all(i == int(i) for i in intercepts) and volume.dtype.kind in "iu":
        lo = int(volume.min()) + int(min(intercepts))
        hi = int(volume.max()) + int(max(intercepts))
        dtype = np.int16 if lo >= -32768 and hi <= 32767 else np.int32
        out = volume.astype(dtype)
        if any(intercepts):
            out += np.asarray(intercepts, dtype=dtype)[:, None, None]
    else:
        out = volume.astype(np.float32)
        out *= np.asarray([s for s, _ in scales], dtype=np.float32)[:, None, None]
        out += np.asarray(intercepts, dtype=np.float32)[:, None, None]
    image = sitk.GetImageFromArray(out)
    orientation = [float(v) for v in first.ImageOrientationPatient]
    positions = [_position(p, pydicom) for p in (files[0], files[-1])]
    normal = _normal(orientation)
    step = (_dot(positions[1], normal) - _dot(positions[0], normal)) / max(1, len(files) - 1)
    row, col = orientation[:3], orientation[3:]
    image.SetOrigin(positions[0])
    image.SetSpacing((float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), step))
    image.SetDirection((row[0], col[0], normal[0], row[1], col[1], normal[1],
                        row[2], col[2], normal[2]))
    return image


def _position(path: Path, pydicom: Any) -> tuple[float, float, float]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return tuple(float(v) for v in ds.ImagePositionPatient)  # type: ignore[return-value]
