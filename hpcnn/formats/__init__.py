"""Every file format hpcnn reads or writes, in one registry (as ``schedulers`` holds the
dialects): one module per format declares a ``Format``; the importer, the checker, predict's
input staging and output, and the CLI's ``--format`` choices ask this registry instead of keeping
lists of their own. Adding a format = one module here (listed in ``_MODULES``) + its tests.

A format predict writes sets ``prediction_choice`` and ``ending`` (``predict --format`` then
offers it); its writer lives in the format's own module or one beside it.

The registry imports nothing heavy: a format module declares data at import time and keeps its
readers' imports (SimpleITK, pydicom, highdicom) inside functions, so the CLI stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

_MODULES = ("nifti", "nrrd", "slicer_seg", "metaimage", "dicom_series", "dicom_seg", "rtstruct")


@dataclass(frozen=True)
class Format:
    """What hpcnn knows about one format.

    ``endings`` are lower-case file endings (a format read from a folder, a DICOM series, has
    none: its files are recognised by content). ``dataset_choice`` / ``prediction_choice`` are
    the ``--format`` values of ``dataset import`` / ``predict`` that write it, ``ending`` the
    ending then written. ``detached``: a header that may name a separate data file. ``label``:
    the format holds segmentations only (named segments). ``dicom``: read with the DICOM readers,
    not SimpleITK's file reader.
    """

    name: str
    endings: tuple[str, ...] = ()
    dataset_choice: str | None = None
    prediction_choice: str | None = None
    ending: str | None = None
    detached: bool = False
    label: bool = False
    dicom: bool = False


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add a format (a module calls this at import); a second format of one name is a bug."""
    if fmt.name in _REGISTRY and _REGISTRY[fmt.name] != fmt:
        raise ValueError(f"format {fmt.name!r} registered twice")
    _REGISTRY[fmt.name] = fmt
    return fmt


def all_formats() -> list[Format]:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return list(_REGISTRY.values())


def get(name: str) -> Format:
    all_formats()
    return _REGISTRY[name]


def file_endings() -> tuple[str, ...]:
    """Every file ending a format claims, longest first (``.seg.nrrd`` before ``.nrrd``)."""
    return tuple(sorted({e for f in all_formats() for e in f.endings}, key=len, reverse=True))


def detached_endings() -> tuple[str, ...]:
    return tuple(e for f in all_formats() if f.detached for e in f.endings)


def split_extension(name: str) -> tuple[str, str | None]:
    """``("case7", ".seg.nrrd")``; ``(name, None)`` for a file no format claims by name."""
    lower = name.lower()
    for ext in file_endings():
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return name, None


def of_file(name: str) -> Format | None:
    """The format a file name says (None: no format claims its ending)."""
    ext = split_extension(name)[1]
    return next((f for f in all_formats() if ext in f.endings), None) if ext else None


def dataset_choices() -> dict[str, str]:
    """``dataset import --format`` values → the ending nnUNet_raw's files get."""
    return {f.dataset_choice: f.ending for f in all_formats()
            if f.dataset_choice and f.ending}


def prediction_choices() -> dict[str, str]:
    """``predict --format`` values → the ending a result gets."""
    return {f.prediction_choice: f.ending for f in all_formats()
            if f.prediction_choice and f.ending}


def by_prediction_choice(choice: str) -> Format:
    return next(f for f in all_formats() if f.prediction_choice == choice)
