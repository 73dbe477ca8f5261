"""``hpcnn demo --dicom``'s own steps: the demo's synthetic patients handed over as a scanner
and a viewer hand them over (a CT series per case, its DICOM-SEG beside it), and the predicted
DICOM-SEGs read back and compared with the reference SEGs, as one checks what a PACS receives.

The series and SEGs are written by ``demo_dicom_data`` (pydicom and highdicom, the ``dicom``
extra); the SEGs are read back by ``formats.dicom_seg``, the reader ``hpcnn dataset import``
uses, so the Dice shown is that of the objects a viewer would display.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcnn.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from hpcnn.services.demo_dicom_data import Series

SPACING = (1.0, 1.0, 1.0)  # the NRRD demo's grid
ORIGIN = (0.0, 0.0, 0.0)
SEG_ENDING = ".seg.dcm"  # what `hpcnn predict --format dicom-seg` names its objects


@dataclass(frozen=True)
class Reference:
    """A held-back case: its reference SEG and its series (whose slices, in volume order, a
    SEG's frames are placed on)."""

    seg: Path
    series: Series

    @property
    def sop_uids(self) -> tuple[str, ...]:
        return self.series.sop_uids


def require_extra() -> None:
    """DicomExtraMissing naming ``pip install 'hpcnn[dicom]'`` before the demo writes
    anything."""
    from hpcnn.formats.dicom_derived import require_dicom

    require_dicom("pydicom", "highdicom")


def write_dicom_case(series_folder: Path, seg: Path, seed: int) -> Reference:
    """The demo patient ``seed`` as a CT series in ``series_folder`` and a DICOM-SEG of its
    classes at ``seg``."""
    from hpcnn.services.demo_data import CLASSES, synthetic_case
    from hpcnn.services.demo_dicom_data import write_seg, write_series

    image, labels = synthetic_case(seed)
    series = write_series(series_folder, image, description="Demo CT", spacing=SPACING,
                          origin=ORIGIN)
    write_seg(seg, series, {name: labels == value for name, value, _ in CLASSES})
    return Reference(seg, series)


def write_dicom_exports(folder: Path, n_cases: int) -> None:
    """``folder/case_NN/``: the series (``ct/``) with its SEG beside it — what
    ``hpcnn dataset import`` takes."""
    for i in range(n_cases):
        case = folder / f"case_{i + 1:02d}"
        write_dicom_case(case / "ct", case / f"case_{i + 1:02d}{SEG_ENDING}", i)


def write_dicom_held_back(images: Path, references: Path, n_cases: int,
                          first_seed: int) -> dict[str, Reference]:
    """``images/case_NN/``: a series alone per case (what ``hpcnn predict`` takes), and its
    reference SEG in ``references/``; returns the references by case name."""
    found = {}
    for i in range(n_cases):
        name = f"case_{i + 1:02d}"
        found[name] = write_dicom_case(images / name, references / f"{name}{SEG_ENDING}",
                                       first_seed + i)
    return found


def seg_masks(path: Path, sop_uids: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each segment of the SEG at ``path``, by SegmentLabel, as a (z, y, x) boolean mask on the
    slices ``sop_uids``."""
    from hpcnn.formats.dicom_seg import layers, segments

    declared = segments(path)
    if not declared:
        return {}
    stack = layers(path, sop_uids)
    return {s.name: stack[..., s.layer].astype(bool) for s in declared}


def dice(prediction: np.ndarray | None, reference: np.ndarray | None) -> float | None:
    """Dice of two boolean masks (a missing one is empty); None when both are empty (nnU-Net's
    NaN: the class is absent from both)."""
    found = 0 if prediction is None else int(prediction.sum())
    drawn = 0 if reference is None else int(reference.sum())
    if found + drawn == 0:
        return None
    if prediction is None or reference is None:
        return 0.0
    return 2 * int((prediction & reference).sum()) / (found + drawn)


@dataclass
class SegScores:
    """Dice per case and class, the mean per class and over the foreground classes."""

    per_case: dict[str, dict[str, float | None]]
    mean: dict[str, float | None]
    foreground_dice: float | None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def seg_dice(predictions: Path, references: Mapping[str, Reference],
             classes: list[str]) -> SegScores:
    """Read each case's predicted SEG (``predictions/<case>.seg.dcm``) and its reference SEG
    back and compare them class by class (segments pair by label; a class a SEG leaves out —
    the standard's way for an empty one — is empty). DataError naming a missing prediction."""
    missing = [name for name in references if not (predictions / f"{name}{SEG_ENDING}").is_file()]
    if missing:
        raise DataError(f"{predictions}: no DICOM-SEG for {', '.join(missing)}",
                        hint="predict the held-back series with --format dicom-seg")
    per_case = {}
    for name, ref in sorted(references.items()):
        predicted = seg_masks(predictions / f"{name}{SEG_ENDING}", ref.sop_uids)
        truth = seg_masks(ref.seg, ref.sop_uids)
        per_case[name] = {c: dice(predicted.get(c), truth.get(c)) for c in classes}
    mean = {c: _mean([scores[c] for scores in per_case.values()]) for c in classes}
    return SegScores(per_case, mean, _mean(list(mean.values())))
