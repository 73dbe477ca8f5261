"""The demo's synthetic patients: shapes in noise, exported the way 3D Slicer exports them.

Each case is a CT-like volume (``case_NN.nrrd``) with a ball and a box of their own intensities
in noise, and a Slicer segmentation beside it (``case_NN.seg.nrrd``) with the segments named
``ball`` and ``box`` — what a researcher's export folder looks like, small enough to train in
minutes on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hpcnn.dataset.slicer import segment_header

if TYPE_CHECKING:
    import numpy as np

SIZE = (32, 32, 32)
CLASSES = (("ball", 1, (0.9, 0.4, 0.3)), ("box", 2, (0.3, 0.6, 0.9)))


def synthetic_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One patient as (z, y, x) arrays: the int16 CT-like image and its uint8 labels (the
    values of ``CLASSES``). The NRRD and the DICOM exports both write these."""
    import numpy as np

    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SIZE)
    labels = np.zeros(SIZE, dtype=np.uint8)
    centre = rng.uniform(9, 13, 3) * rng.choice([-1, 1], 3) + 16
    radius = rng.uniform(4.5, 6.5)
    labels[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2] = 1
    lo = (32 - centre).clip(4, 22).astype(int) - 3
    side = rng.integers(6, 9, 3)
    box = np.zeros(SIZE, dtype=bool)
    box[lo[0]:lo[0] + side[0], lo[1]:lo[1] + side[1], lo[2]:lo[2] + side[2]] = True
    labels[box & (labels == 0)] = 2
    image = rng.normal(0, 40, SIZE) + np.where(labels == 1, 180, 0) + np.where(labels == 2, -160, 0)
    return image.astype(np.int16), labels


def write_case(folder: Path, name: str, seed: int) -> tuple[Path, Path]:
    """``<name>.nrrd`` and ``<name>.seg.nrrd`` under ``folder``; returns both paths."""
    import SimpleITK as sitk

    image, labels = synthetic_case(seed)
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(image)
    seg = sitk.GetImageFromArray(labels)
    for item in (img, seg):
        item.SetSpacing((1.0, 1.0, 1.0))
    for key, value in segment_header(CLASSES, SIZE).items():
        seg.SetMetaData(key, value)
    paths = folder / f"{name}.nrrd", folder / f"{name}.seg.nrrd"
    sitk.WriteImage(img, str(paths[0]), True)
    sitk.WriteImage(seg, str(paths[1]), True)
    return paths


def write_exports(folder: Path, n_cases: int, *, first_seed: int = 0) -> list[Path]:
    """``n_cases`` image + segmentation pairs; returns the image paths."""
    return [write_case(folder, f"case_{i + 1:02d}", first_seed + i)[0] for i in range(n_cases)]
