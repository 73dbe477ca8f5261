"""Tiny synthetic label maps for the DICOM output tests, on the grid of a CT series written by
hpcnn/services/demo_dicom_data.py (patient/study values a derived object must carry over), and
the same label map on another grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcnn.services.demo_dicom_data import PATIENT_ID  # noqa: F401  (the tests import it from here)

SIZE = (32, 32, 12)  # x, y, z
SPACING = (0.8, 0.8, 2.5)
ORIGIN = (-12.0, -14.0, 30.0)
LABELS = {"liver": 1, "tumor": 2, "vessel": 3}
"""The model's classes; the prediction below holds liver and tumor but no vessel."""


@dataclass(frozen=True)
class Series:
    folder: Path
    study_uid: str
    series_uid: str
    frame_of_reference: str
    sop_uids: tuple[str, ...]


def write_series(folder: Path, size: tuple[int, int, int] = SIZE,
                 spacing: tuple[float, float, float] = SPACING,
                 origin: tuple[float, float, float] = ORIGIN) -> Series:
    """A CT series of ``size`` (x, y, z) axial slices (hpcnn/services/demo_dicom_data.py writes
    it, named against their position order: readers must sort by position, not by name)."""
    from hpcnn.services import demo_dicom_data as dicom_data

    image = dicom_data.volume((size[2], size[1], size[0]))
    made = dicom_data.write_series(folder, image, spacing=spacing, origin=origin,
                                   series_number=3, names="slice{:03d}.dcm")
    return Series(folder, made.study_uid, made.series_uid, made.frame_of_reference,
                  made.sop_uids)


def label_array(size: tuple[int, int, int] = SIZE) -> np.ndarray:
    """(z, y, x) labels: a liver block with a hole on some slices and a disc below it, a
    tumour inside it and a 2x2 speck outside, no vessel (class 3 absent)."""
    x, y, z = size
    arr = np.zeros((z, y, x), dtype=np.uint8)
    arr[2:10, 6:26, 5:27] = 1
    arr[4:6, 12:16, 12:16] = 0  # a hole in the liver on slices 4-5
    arr[6:9, 10:17, 18:24] = 2
    arr[3, 28:30, 28:30] = 2
    rows, cols = np.ogrid[:y, :x]
    arr[10][(rows - y / 2) ** 2 + (cols - x / 2) ** 2 <= 36] = 1
    return arr


def label_image(size: tuple[int, int, int] = SIZE,
                spacing: tuple[float, float, float] = SPACING,
                origin: tuple[float, float, float] = ORIGIN):
    """``label_array`` as a SimpleITK image on the series' grid (what nnU-Net writes)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(label_array(size))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def tool(name: str) -> str:
    """A command the ``test`` extra installs (dcmqi, dicom3tools) beside this Python."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} is missing: pip install 'hpcnn[test]' (dcmqi, dicom3tools)"
    return found


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """dciodvfy's errors and warnings for one DICOM file (its IOD verifier)."""
    import subprocess

    done = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True,
                          timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    return ([ln for ln in lines if ln.startswith("Error")],
            [ln for ln in lines if ln.startswith("Warning")])


def written(ds_path: Path) -> set[str]:
    """The files in ``ds_path``'s folder (to show nothing else, no temporary file, is left)."""
    return {p.name for p in ds_path.parent.iterdir()}


def algorithm():
    from hpcnn.formats.dicom_derived import Algorithm

    return Algorithm("3d_fullres", ("0", "1"), "2.6.2", "0.0-test")


def classes(codes=None):
    from hpcnn.formats.dicom_derived import segment_classes
    from hpcnn.nnunet.predict import PALETTE

    return segment_classes(LABELS, PALETTE, codes)


def case_folders(root: Path):
    """A series under ``root/ct``, its headers as the writers take them, and an empty
    ``root/out`` for the results."""
    from hpcnn.formats import dicom_series

    series = write_series(root / "ct")
    out = root / "out"
    out.mkdir()
    return series, dicom_series.headers(slice_files(series)), out


def slice_files(series: Series) -> tuple[Path, ...]:
    """The series' files in position order, as predict's input side hands them on."""
    from hpcnn.formats import dicom_series

    found = dicom_series.scan((p, p.name) for p in sorted(series.folder.iterdir()))
    return tuple(s.path for s in dicom_series.ordered(found.series[series.series_uid]))
