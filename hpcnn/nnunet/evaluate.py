"""``hpcnn evaluate``: Dice per class of predictions against references, computed by nnU-Net's
own ``compute_metrics_on_folder`` (the code behind ``nnUNetv2_evaluate_folder`` and each fold's
``validation/summary.json``).

nnU-Net wants both folders in one format with identical file names. Here the files keep the
user's names and pair by case as the dataset import pairs them (``case7.nrrd`` with
``case7.nrrd``, ``case7.seg.nrrd`` or ``case7_label.nii.gz``). Each pair is written into a work
folder under one name and format, and a Slicer segmentation whose segments are not stored as
the class values is mapped by segment name, whatever value Slicer stored. Class names come
from ``hpcnn_predict.json`` (written by ``hpcnn predict``); without it, every value found in the
references is a class.

Dice is only true when every voxel of the reference is compared, so grids are strict:

- a reference on the prediction's own lattice, cropped or padded by whole voxels (how Slicer
  saves a segmentation: cropped to its extent), is pasted onto the prediction's grid, which
  changes nothing: the voxels outside the crop are background in both;
- a reference with labelled voxels outside the prediction's grid is an error (dropping them
  silently reported a true Dice of 0.80 as 0.97), and so is a reference on another lattice
  (other spacing, direction or a fractional shift): resampling a label map changes the very
  voxel counts Dice is made of, and a result of ``hpcnn predict`` is always on its image's
  grid, so a reference on another grid belongs to another image or another export;
- a "label map" with values that are not whole numbers (a probability map, an interpolated
  resampling, NaN) is an error; whole numbers stored as floats are read as labels and said;
- predictions without a reference and references without a prediction are reported (and
  listed by ``--json``), never dropped without a word.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcnn import formats
from hpcnn.dataset import sources
from hpcnn.dataset.findings import shorten
from hpcnn.errors import DataError
from hpcnn.formats.source import SourceItem
from hpcnn.nnunet.predict import RECORD

Echo = Callable[[str], None]
_ENDING = ".nrrd"  # the work folder's format: every input is linked or written as NRRD


@dataclass
class CaseScore:
    prediction: str
    reference: str
    dice: dict[str, float | None]
    metrics: dict[str, dict[str, float | None]]


@dataclass
class Evaluation:
    labels: dict[str, int]
    cases: list[CaseScore]
    mean: dict[str, float | None]
    foreground_dice: float | None
    without_reference: list[str] = field(default_factory=list)
    without_prediction: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "mean_dice": self.mean,
                "foreground_mean_dice": self.foreground_dice,
                "cases": [{"prediction": c.prediction, "reference": c.reference,
                           "dice": c.dice, "metrics": c.metrics} for c in self.cases],
                "predictions_without_reference": self.without_reference,
                "references_without_prediction": self.without_prediction}


def evaluate(pred: Path, ref: Path, *, echo: Echo = print) -> Evaluation:
    """Pair, convert where needed, and run nnU-Net's evaluation (imported only once every pair
    is staged: a refusal costs no torch import)."""
    from hpcnn.dataset.workers import available_cpus

    preds, refs = _by_case(pred), _by_case(ref)
    pairs = [(preds[k], refs[k]) for k in sorted(preds) if k in refs]
    no_ref = sorted(preds[k].display for k in preds if k not in refs)
    no_pred = sorted(refs[k].display for k in refs if k not in preds)
    if no_ref:
        echo(f"warning: no reference in {ref} for {len(no_ref)} prediction(s), not evaluated: "
             f"{shorten(no_ref)}")
    if no_pred:
        echo(f"warning: no prediction in {pred} for {len(no_pred)} reference(s), not "
             f"evaluated: {shorten(no_pred)}")
    if not pairs:
        raise DataError(f"no prediction in {pred} has a reference in {ref}",
                        hint="references pair by name: case7.nrrd with case7.nrrd, "
                             "case7.seg.nrrd or case7_label.nii.gz")
    labels = _labels(pred)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hpcnn-evaluate-") as tmp:
        work = Path(tmp)
        (work / "pred").mkdir()
        (work / "ref").mkdir()
        for index, (p, r) in enumerate(pairs):
            name = f"case_{index:04d}{_ENDING}"
            try:
                grid = _stage(p, work / "pred" / name, labels, None, echo)
                _stage(r, work / "ref" / name, labels, (grid, p.display), echo)
            except DataError as exc:
                problems.append(str(exc))
        if problems:
            raise DataError("\n".join([f"{len(problems)} pair(s) cannot be compared; no Dice "
                                       "was computed:", *problems]) if len(problems) > 1
                            else problems[0])
        if labels is None:
            labels = _values_found(work / "ref")
        if not labels:
            raise DataError(f"{ref}: the references hold no labelled voxel and no class names "
                            "are known", hint="evaluate the output folder of `hpcnn predict`")
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        result = compute_metrics_on_folder(
            str(work / "ref"), str(work / "pred"), None, SimpleITKIO(), _ENDING,
            list(labels.values()), None, max(1, min(available_cpus(), len(pairs))))
    by_value = {v: n for n, v in labels.items()}
    cases = []
    for (p, r), case in zip(pairs, result["metric_per_case"], strict=True):
        metrics = {by_value[int(k)]: {m: _number(x) for m, x in v.items()}
                   for k, v in case["metrics"].items()}
        cases.append(CaseScore(p.display, r.display,
                               {n: metrics[n]["Dice"] for n in labels}, metrics))
    mean = {by_value[int(k)]: _number(v["Dice"]) for k, v in result["mean"].items()}
    return Evaluation(labels, cases, {n: mean[n] for n in labels},
                      _number(result["foreground_mean"]["Dice"]), no_ref, no_pred)


def _number(value: Any) -> float | None:
    """nnU-Net gives NaN for a class absent from both files: None (JSON null) here."""
    number = float(value)
    return None if math.isnan(number) else number


def _by_case(folder: Path) -> dict[str, SourceItem]:
    """Label files by case (the import's naming rules, compared case-insensitively). A folder
    with images next to segmentations gives the segmentations."""
    found: dict[str, SourceItem] = {}
    seg: dict[str, bool] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        stem, ext = formats.split_extension(path.name)
        if ext is None or any(part.startswith(".") for part in rel.parts):
            continue
        entry = sources._by_name(SourceItem(path, rel.as_posix()), stem, ext, ())
        key = entry.key.casefold()
        if key in found and seg[key] == entry.is_seg:
            raise DataError(f"{folder}: {found[key].display} and {rel.as_posix()} are both case "
                            f"{entry.key!r}", hint="keep one of them in the folder")
        if key not in found or entry.is_seg:
            found[key], seg[key] = entry.file, entry.is_seg
    return found


def _labels(pred: Path) -> dict[str, int] | None:
    """Class name → value from ``hpcnn predict``'s record, background left out."""
    try:
        record = json.loads((pred / RECORD).read_text(encoding="utf-8"))
        labels = {str(k): int(v) for k, v in record["labels"].items() if int(v) != 0}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return labels or None


def _stage(file: SourceItem, target: Path, labels: dict[str, int] | None,
           onto: tuple[Any, str] | None, echo: Echo) -> Any:
    """Write ``file`` as a plain label map at ``target``, pasted onto the prediction's grid
    ``onto`` (its Geometry and name) when given; returns its grid (a Geometry). Overlapping
    Slicer segments count for the one in the lower layer. DataError (with the fix) for values
    that are no labels and for grids that cannot be compared voxel for voxel."""
    import SimpleITK as sitk

    from hpcnn.dataset.geometry import Geometry, paste, relation
    from hpcnn.dataset.slicer import SegmentTableError, class_map, read_segments

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file.path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DataError(f"{file.display}: cannot be read as an image",
                        hint="export it again, or move it out of the folder") from None
    metadata = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    try:
        segments = read_segments(metadata, reader.GetNumberOfComponents())
    except SegmentTableError as exc:
        raise DataError(f"{file.display}: Slicer segment table: {exc}",
                        hint="save the segmentation again from Slicer") from None
    geometry = Geometry.of(reader)
    wanted = {n.casefold(): v for n, v in (labels or {}).items()}
    by_name = bool(segments) and (labels is None or any(
        s.layer != 0 or wanted.get(s.name.casefold()) != s.value for s in segments))
    if by_name and labels is None:
        raise DataError(f"{file.display}: a Slicer segmentation, and no class names are known "
                        "to map its segments to",
                        hint="evaluate the output folder of `hpcnn predict` (its "
                             "hpcnn_predict.json names the classes)")
    image = sitk.ReadImage(str(file.path))
    data = _whole_labels(sitk.GetArrayFromImage(image), file, echo)
    if by_name:
        table = [(s.layer, s.value, wanted.get(s.name.casefold(), 0)) for s in segments]
        data, _, overlaps = class_map(data, table, (), data.dtype)
        for o in overlaps:
            names = {v: n for n, v in (labels or {}).items()}
            echo(f"warning: {file.display}: segments {names[o.first]!r} and "
                 f"{names[o.second]!r} overlap in {o.voxels} voxel(s); counted for the one in "
                 "the lower layer")
    if onto is not None:
        grid, shown = onto
        kind, offset = relation(geometry, grid)
        if kind == "resampled":
            raise DataError(f"{file.display}: on another grid than the prediction {shown} "
                            f"({geometry.describe(grid)} vs {grid.describe(geometry)}); Dice "
                            "compares voxel for voxel",
                            hint="compare with the reference of the image that was predicted, "
                                 "or predict the image the reference was drawn on")
        if kind == "shifted":
            placed = paste(data, offset, grid)
            lost = int(np.count_nonzero(data)) - int(np.count_nonzero(placed))
            if lost:
                raise DataError(f"{file.display}: {lost} labelled voxel(s) lie outside the grid "
                                f"of the prediction {shown} ({geometry.describe(grid)} vs "
                                f"{grid.describe(geometry)}); leaving them out would inflate "
                                "Dice",
                                hint="predict the whole image the reference was drawn on "
                                     "(hpcnn predict keeps each image's grid)")
            data = placed
        geometry = grid
    out = sitk.GetImageFromArray(data)
    out.SetSpacing(geometry.spacing)
    out.SetOrigin(geometry.origin)
    out.SetDirection(geometry.direction)
    sitk.WriteImage(out, str(target), False)
    return geometry


def _whole_labels(data: Any, file: SourceItem, echo: Echo) -> Any:
    """``data`` as integer labels; DataError for float values that are not whole numbers."""
    if data.dtype.kind != "f":
        return data
    whole = np.isfinite(data) & (data == np.round(data))
    if not whole.all():
        bad = data[~whole]
        raise DataError(f"{file.display}: not a label map: {bad.size} voxel(s) are not whole "
                        f"numbers (e.g. {bad.flat[0]:g}; stored as {data.dtype})",
                        hint="evaluate label maps (a probability map, or a label map resampled "
                             "with linear interpolation, is none): threshold or argmax it, or "
                             "resample with nearest neighbour")
    echo(f"warning: {file.display}: a label map stored as {data.dtype}; its whole-number values "
         "are read as labels")
    return data.astype(np.int32)


def _values_found(folder: Path) -> dict[str, int]:
    import SimpleITK as sitk

    values: set[int] = set()
    for path in sorted(folder.iterdir()):
        values |= {int(v) for v in np.unique(sitk.GetArrayViewFromImage(
            sitk.ReadImage(str(path)))) if v != 0}
    return {f"label {v}": v for v in sorted(values)}
