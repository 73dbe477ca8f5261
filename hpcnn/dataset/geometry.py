"""Putting a segmentation onto its image's voxel grid.

nnU-Net needs every label map on exactly its image's grid. Slicer crops segmentations to their
extent and other tools save them on other grids, so a segmentation is compared with its image
through the affine map from image voxel indices to segmentation voxel indices:

- the identity within TOLERANCE (a tenth of a voxel anywhere in the image): the image's geometry
  is copied (rounding from another format or tool; reported when nnU-Net's own ``np.allclose``
  test would have failed);
- the identity shifted by whole voxels (a cropped or padded copy of the same grid): the voxels
  are pasted at that offset, exact and fast;
- anything else (other spacing, direction, a fractional shift): nearest-neighbour resampling in
  physical space with SimpleITK, which for label maps keeps every value a label.

A segmentation whose labelled voxels all fall outside the image is an error: it was drawn on
another volume. Arrays are numpy (z, y, x); geometry is ITK's (x, y, z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

TOLERANCE = 0.1  # voxels


@dataclass(frozen=True)
class Geometry:
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> Geometry:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def apply(self, image: sitk.Image) -> None:
        """Give ``image`` this geometry (its size must already match)."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    @property
    def matrix(self) -> np.ndarray:
        n = len(self.size)
        return np.asarray(self.direction, dtype=float).reshape(n, n)

    def describe(self, other: Geometry | None = None) -> str:
        """Size, spacing and origin; the direction too when it differs from ``other``'s (a
        rotated or flipped grid otherwise reads like the same one)."""
        text = (f"size {'x'.join(map(str, self.size))}, spacing "
                f"{'x'.join(f'{s:g}' for s in self.spacing)}, origin "
                f"({', '.join(f'{o:.4g}' for o in self.origin)})")
        if other is not None and not np.allclose(self.direction, other.direction):
            text += f", direction ({', '.join(f'{d:.3g}' for d in self.direction)})"
        return text

    def allclose(self, other: Geometry) -> bool:
        """nnU-Net's test in verify_dataset_integrity (default np.allclose tolerances)."""
        return (self.size == other.size and np.allclose(self.spacing, other.spacing)
                and np.allclose(self.origin, other.origin)
                and np.allclose(self.direction, other.direction))


def index_map(src: Geometry, dst: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``src_index = A @ dst_index + b`` (continuous, x-y-z order)."""
    to_src = np.linalg.inv(_index_to_physical(src))
    return (to_src @ _index_to_physical(dst),
            to_src @ (np.asarray(dst.origin) - np.asarray(src.origin)))


def _index_to_physical(g: Geometry) -> np.ndarray:
    return g.matrix @ np.diag(g.spacing)


def _corners(size: tuple[int, ...]) -> np.ndarray:
    """Index of every corner voxel (columns): an affine map deviates most at one of them."""
    grids = np.meshgrid(*[[0, max(s - 1, 0)] for s in size], indexing="ij")
    return np.stack([g.ravel() for g in grids]).astype(float)


Placement = Literal["same", "copied", "shifted", "resampled"]


def relation(seg: Geometry, image: Geometry) -> tuple[Placement, np.ndarray]:
    """How ``seg``'s grid relates to ``image``'s, and the whole-voxel offset for "shifted"
    (image index + offset = segmentation index)."""
    a, b = index_map(seg, image)
    corners = _corners(image.size)
    offset = np.round(b)
    deviation = np.abs(a @ corners + b[:, None] - (corners + offset[:, None])).max()
    if deviation > TOLERANCE:
        return "resampled", offset
    if not offset.any() and seg.size == image.size:
        return ("same" if seg.allclose(image) else "copied"), offset
    return "shifted", offset


def within(seg: Geometry, image: Geometry) -> bool:
    """Whether ``seg``'s grid is a crop of ``image``'s (same axes, every voxel inside): how
    Slicer saves a segmentation, as opposed to one that is larger than or beside its image."""
    kind, offset = relation(seg, image)
    if kind != "shifted":
        return kind in ("same", "copied")
    return bool((-offset >= 0).all()
                and all(-o + s <= n for o, s, n in zip(offset, seg.size, image.size, strict=True)))


def paste(labels: np.ndarray, offset: np.ndarray, image: Geometry) -> np.ndarray:
    """The image-grid array whose voxel i is ``labels`` voxel i + offset (0 outside)."""
    out = np.zeros(image.size[::-1], dtype=labels.dtype)
    dst, src = [], []
    for axis in range(3):  # numpy axis 0 is z = ITK axis 2
        k = int(offset[2 - axis])
        n_img, n_seg = out.shape[axis], labels.shape[axis]
        lo, hi = max(0, -k), min(n_img, n_seg - k)
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo + k, hi + k))
    out[tuple(dst)] = labels[tuple(src)]
    return out


def resample(labels: np.ndarray, seg: Geometry, image: Geometry) -> np.ndarray:
    """Nearest-neighbour resampling of a label array onto the image grid (SimpleITK)."""
    import SimpleITK as sitk

    src = sitk.GetImageFromArray(labels)
    src.SetSpacing(seg.spacing)
    src.SetOrigin(seg.origin)
    src.SetDirection(seg.direction)
    out = sitk.Resample(src, image.size, sitk.Transform(), sitk.sitkNearestNeighbor,
                        image.origin, image.spacing, image.direction, 0, src.GetPixelID())
    return sitk.GetArrayFromImage(out)


def inside_count(labels: np.ndarray, seg: Geometry, image: Geometry) -> tuple[int, int]:
    """(labelled voxels of ``labels``, how many of them have their centre inside the image).

    Written element-wise rather than as one matrix product: a large product goes to the BLAS
    library, whose own threads would compete with the other import workers for the cores."""
    zyx = np.nonzero(labels)
    total = len(zyx[0])
    if not total:
        return 0, 0
    xyz = [zyx[2], zyx[1], zyx[0]]
    a, b = index_map(image, seg)
    inside = np.ones(total, dtype=bool)
    for axis in range(3):
        pos = b[axis] + a[axis, 0] * xyz[0] + a[axis, 1] * xyz[1] + a[axis, 2] * xyz[2]
        inside &= (pos >= -0.5) & (pos < image.size[axis] - 0.5)
    return total, int(inside.sum())


def onto_image(
    labels: np.ndarray, seg: Geometry, image: Geometry
) -> tuple[np.ndarray, Placement, int, int]:
    """``labels`` on the image grid, how it got there, and (labelled voxels, of which inside
    the image) — the caller turns "none inside" into an error and "some outside" into a
    warning."""
    kind, offset = relation(seg, image)
    total = int(np.count_nonzero(labels))
    if kind in ("same", "copied"):
        return labels, kind, total, total
    if kind == "shifted":
        placed = paste(labels, offset, image)
        return placed, kind, total, int(np.count_nonzero(placed))
    total, inside = inside_count(labels, seg, image)
    if total and not inside:
        return np.zeros(image.size[::-1], labels.dtype), kind, total, 0
    return resample(labels, seg, image), kind, total, inside
