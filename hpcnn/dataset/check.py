"""``hpcnn dataset check``: every problem of a raw nnU-Net dataset, in one pass.

nnU-Net's own ``verify_dataset_integrity`` stops at the first hard error (an assert or a
RuntimeError), reads every label file twice, and misses whole classes of mistakes: empty or float
labels, orphan and stray files, imagesTs names, mixed orientations, duplicated cases, v1 keys in
dataset.json. This check runs every test on every file and collects the findings
(findings.py), so a user fixes everything in one round. It is a superset of nnU-Net's checks, with
the same tolerances (``np.allclose`` defaults, exact equality between channels), so a dataset it
passes also passes nnU-Net's.

How the work is split:
- the parent reads dataset.json and lists the folders: cheap, and where naming problems show;
- one task per case, in a process pool, reads that case's images and label with SimpleITK,
  because voxels are needed there (NaN/Inf, label values, emptiness, the duplicate hash), and
  returns its problems and a small summary (geometry, orientation, label values, hash);
- the parent compares the summaries (orientation, spacing, duplicates, classes never present);
- imagesTs is checked from file headers only: nothing there needs voxels.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcnn import formats
from hpcnn.dataset.findings import (
    DATASET_JSON,
    CheckReport,
    Finding,
    error,
    shorten,
    warning,
)
from hpcnn.dataset.geometry import Geometry
from hpcnn.dataset.labels import is_plain_class_name
from hpcnn.dataset.layout import NNUNET_FOLDS, SPLITS, read_dataset_json, too_few_training
from hpcnn.dataset.payload import examine
from hpcnn.dataset.workers import Progress, available_cpus, runner
from hpcnn.errors import DataError

if TYPE_CHECKING:
    import SimpleITK as sitk

IMAGES_TR, LABELS_TR, IMAGES_TS = "imagesTr", "labelsTr", "imagesTs"
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
V1_KEYS = {
    "training": "nnU-Net v2 ignores it and takes the training cases from the file names in "
                "imagesTr and labelsTr",
    "test": "nnU-Net v2 ignores it; test images are whatever imagesTs holds",
    "numTest": "nnU-Net v2 ignores it",
    "tensorImageSize": "nnU-Net v2 ignores it (the images say how many dimensions they have)",
    "modality": "nnU-Net v2 reads 'channel_names' instead",
}
RENAME_MODALITY = 'rename "modality" to "channel_names" (same content, e.g. {"0": "CT"})'
NNUNET_ONLY_ENDINGS = (".gipl.gz", ".gipl", ".tiff", ".tif", ".png", ".bmp", ".dcm")
"""Endings nnU-Net's readers take in a raw dataset that hpcnn itself neither imports nor writes."""
SPACING_OUTLIER = 2.0  # a case this many times finer/coarser than the median along an axis
_CHANNEL = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_SEG_HINT = ("a 3D Slicer segmentation with overlapping segments is stored as several layers: "
             "import it with `hpcnn dataset import` (--overlap sets which segment wins)")


@dataclass
class Meta:
    """What dataset.json says; None where it is missing or unusable (then inferred or skipped)."""

    file_ending: str | None = None
    channels: int | None = None
    allowed_labels: frozenset[int] | None = None
    foreground: dict[int, str] = field(default_factory=dict)
    num_training: int | None = None


@dataclass(frozen=True)
class CaseTask:
    """One case to read in a worker: paths relative to ``root``, images in channel order."""

    root: Path
    case: str
    images: tuple[str, ...]
    label: str | None
    allowed_labels: frozenset[int] | None


@dataclass
class CaseResult:
    """A worker's findings and what the parent needs to compare cases with each other."""

    case: str
    image: str
    problems: list[Finding] = field(default_factory=list)
    dimension: int | None = None
    geometry: Geometry | None = None
    orientation: str | None = None
    voxels: int = 0
    digest: str | None = None
    label_values: frozenset[int] = frozenset()


def check_dataset(
    folder: Path,
    *,
    folds: Sequence[int] = tuple(range(NNUNET_FOLDS)),
    workers: int | None = None,
    on_progress: Progress | None = None,
    dicom_mapping: Path | None = None,
) -> CheckReport:
    """Check the raw dataset in ``folder``; ``folds`` are the folds that will be trained;
    ``dicom_mapping`` is the import's case → DICOM file (dicom_map.py), whose flags are
    reported."""
    report = CheckReport(folder)
    meta = _read_dataset_json(folder, report)
    ending = _scan_ending(folder / IMAGES_TR, meta.file_ending, report)
    cases, labels = _scan_training(folder, meta, ending, report)
    channels = meta.channels or max((max(chs) + 1 for chs in cases.values()), default=1)
    report.channels = channels
    report.cases = sorted(cases)
    if ending is not None:
        _check_case_files(cases, labels, channels, ending, report)
    if meta.num_training is not None and meta.num_training != len(cases):
        report.add([error(DATASET_JSON,
                          f"numTraining is {meta.num_training} but imagesTr holds "
                          f"{len(cases)} case(s)", f'set "numTraining": {len(cases)}',
                          code="num-training-mismatch")])
    tasks = [CaseTask(folder, case, tuple(chs[c] for c in sorted(chs)), labels.get(case),
                      meta.allowed_labels)
             for case, chs in sorted(cases.items())]
    results = _run(tasks, workers or available_cpus(), on_progress)
    for result in results:
        report.add(result.problems)
    report.max_case_voxels = max((r.voxels for r in results), default=0)
    _compare_cases(results, meta, folds, report)
    if ending is not None:
        _check_test_images(folder, ending, channels, report)
    _check_raw_splits(folder, report.cases, report)
    if dicom_mapping is not None:
        report.add(_dicom_flags(dicom_mapping))
    return report


def _dicom_flags(mapping: Path) -> list[Finding]:
    """Cases whose DICOM source may carry patient text in its pixels."""
    from hpcnn.dataset import dicom_map

    found = []
    for row in dicom_map.read(mapping):
        if row.burned_in:
            found.append(warning(row.case_id, "its DICOM series says BurnedInAnnotation YES: "
                                 "the pixels may show patient text, and training sends them to "
                                 "the cluster", "use a series without burned-in text, or remove "
                                 "the text from the pixels", code="dicom-burned-in"))
        if row.secondary_capture:
            found.append(warning(row.case_id, "its DICOM series is a Secondary Capture (a "
                                 "screenshot or derived image, possibly with patient text in the "
                                 "pixels)", "import the scanner's original series instead",
                                 code="dicom-secondary-capture"))
    return found


# --------------------------------------------------------------------------------------------
# dataset.json


def _read_dataset_json(folder: Path, report: CheckReport) -> Meta:
    meta = Meta()
    path = folder / DATASET_JSON
    if not path.is_file():
        report.add([error(DATASET_JSON, "no dataset.json in the dataset",
                          "write one with channel_names, labels, numTraining and file_ending "
                          "(`hpcnn dataset import` writes it)", code="missing-dataset-json")])
        return meta
    try:
        data = read_dataset_json(path)
    except DataError as exc:
        report.add([error(DATASET_JSON, str(exc.args[0]).replace(
            str(path), DATASET_JSON), exc.hint or "", code="invalid-json")])
        return meta
    problems: list[Finding] = []
    for key, why in V1_KEYS.items():
        if key in data:
            fix = (RENAME_MODALITY if key == "modality" and "channel_names" not in data
                   else f'remove "{key}"')
            problems.append(warning(DATASET_JSON,
                                    f'"{key}" is a nnU-Net v1 key: {why}', fix, code="v1-key"))
    for key in REQUIRED_KEYS:
        if key not in data:
            fix = (RENAME_MODALITY if key == "channel_names" and "modality" in data
                   else _MISSING_KEY_HINTS[key])
            problems.append(error(DATASET_JSON, f'required key "{key}" is missing',
                                  fix, code="missing-key"))
    if "dataset" in data:
        problems.append(warning(DATASET_JSON,
                                'a "dataset" file list: nnU-Net reads the cases from it, while '
                                "this check reads imagesTr and labelsTr",
                                'remove "dataset" and keep the cases in imagesTr/labelsTr',
                                code="explicit-file-list"))
    meta.channels = _channel_names(data.get("channel_names", data.get("modality")), problems)
    meta.file_ending = _file_ending(data.get("file_ending"), problems)
    _labels(data, meta, problems)
    num = data.get("numTraining")
    if num is not None:
        if isinstance(num, int) and not isinstance(num, bool) and num >= 0:
            meta.num_training = num
        else:
            problems.append(error(DATASET_JSON,
                                  f"numTraining is {num!r}, not a whole number",
                                  '"numTraining" is the number of training cases, e.g. 40',
                                  code="bad-num-training"))
    report.add(problems)
    return meta


_MISSING_KEY_HINTS = {
    "channel_names": 'add e.g. "channel_names": {"0": "CT"} (one entry per image channel)',
    "labels": 'add e.g. "labels": {"background": 0, "liver": 1}',
    "numTraining": '"numTraining" is the number of training cases',
    "file_ending": 'add e.g. "file_ending": ".nii.gz" (the ending of every image file)',
}


def _channel_names(value: Any, problems: list[Finding]) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        problems.append(error(DATASET_JSON,
                              f"channel_names must be an object, got {value!r}",
                              'e.g. "channel_names": {"0": "CT"}', code="bad-channel-names"))
        return None
    expected = [str(i) for i in range(len(value))]
    if sorted(value, key=lambda k: (len(str(k)), str(k))) != expected:
        problems.append(error(DATASET_JSON,
                              f"channel_names keys are {list(value)}; nnU-Net needs the channel "
                              f"numbers {', '.join(expected)}",
                              'number the channels from "0", matching the _0000, _0001 ... files',
                              code="bad-channel-names"))
    return len(value)


def _file_ending(value: Any, problems: list[Finding]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip("."):
        problems.append(error(DATASET_JSON, f"file_ending is {value!r}",
                              'e.g. "file_ending": ".nii.gz"', code="bad-file-ending"))
        return None
    if not value.startswith("."):
        problems.append(error(DATASET_JSON,
                              f'file_ending "{value}" has no leading dot: nnU-Net matches file '
                              "names against it literally", f'use ".{value}"',
                              code="bad-file-ending"))
        value = "." + value
    readable = _nnunet_endings()
    if value not in readable:
        problems.append(error(DATASET_JSON,
                              f'nnU-Net has no reader for "{value}"',
                              f"convert the images to .nii.gz or .nrrd (nnU-Net reads "
                              f"{', '.join(sorted(readable))})", code="unsupported-file-ending"))
    return value


def _nnunet_endings() -> set[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    return {e for cls in LIST_OF_IO_CLASSES for e in cls.supported_file_endings}


def _labels(data: dict[str, Any], meta: Meta, problems: list[Finding]) -> None:
    """nnU-Net's LabelManager rules, all reported instead of the first one asserted."""
    labels = data.get("labels")
    if labels is None:
        return
    if not isinstance(labels, dict) or not labels:
        problems.append(error(DATASET_JSON, f"labels must be an object, got "
                              f"{labels!r}", 'e.g. "labels": {"background": 0, "liver": 1}',
                              code="bad-labels"))
        return
    scalars: dict[str, int] = {}
    values: set[int] = set()
    regions = False
    for name, value in labels.items():
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            problems.append(error(DATASET_JSON,
                                  f'label "{name}" has the value {value!r}, not a whole number',
                                  f'e.g. "{name}": 1 (a number, not a string)',
                                  code="bad-label-value"))
            continue
        if name == "ignore":
            continue
        values.update(items)
        if len(items) > 1:
            regions = True
        else:
            scalars[name] = items[0]
    if regions and "regions_class_order" not in data:
        problems.append(error(DATASET_JSON,
                              "labels define regions (lists of values) but regions_class_order "
                              "is missing", "add regions_class_order: one label value per region",
                              code="regions-without-order"))
    if labels.get("background") != 0:
        zero = [n for n, v in scalars.items() if v == 0 and n != "background"]
        fix = (f'rename "{zero[0]}" to "background"' if zero
               else 'add "background": 0 (nnU-Net requires it, with value 0)')
        found = "is missing" if "background" not in labels else f"is {labels['background']!r}"
        problems.append(error(DATASET_JSON,
                              f'the "background" label {found}; nnU-Net requires '
                              '"background": 0', fix, code="background-not-zero"))
    if values:
        gaps = sorted(set(range(max(values) + 1)) - values)
        negative = sorted(v for v in values if v < 0)
        if gaps or negative:
            problems.append(error(DATASET_JSON,
                                  f"label values {sorted(values)} are not 0, 1, 2, ... without "
                                  f"gaps (missing {gaps or 'none'})",
                                  "renumber the labels here and in the label files "
                                  "(`hpcnn dataset import --remap OLD:NEW` does both)",
                                  code="labels-not-consecutive"))
    by_value = Counter(scalars.values())
    for value, count in sorted(by_value.items()):
        if count > 1:
            names = [n for n, v in scalars.items() if v == value]
            problems.append(warning(DATASET_JSON,
                                    f"labels {names} share the value {value}: nnU-Net trains "
                                    "them as one class", "give each class its own value",
                                    code="duplicate-label-value"))
    ignore = labels.get("ignore")
    allowed = set(values)
    if isinstance(ignore, int) and not isinstance(ignore, bool):
        allowed.add(ignore)
        if values and ignore != max(values) + 1:
            problems.append(error(DATASET_JSON,
                                  f"the ignore label is {ignore}; nnU-Net requires it to be the "
                                  f"highest value, {max(values) + 1}",
                                  f'set "ignore": {max(values) + 1} and relabel the files',
                                  code="ignore-label-not-highest"))
    meta.allowed_labels = frozenset(allowed) if values else None
    meta.foreground = {v: n for n, v in scalars.items() if v != 0}


# --------------------------------------------------------------------------------------------
# File names


def _image_ending(name: str) -> str | None:
    lower = name.lower()
    endings = sorted(formats.file_endings() + NNUNET_ONLY_ENDINGS, key=len, reverse=True)
    return next((e for e in endings if lower.endswith(e)), None)


def _infer_ending(images_dir: Path) -> str | None:
    """With no usable file_ending, the commonest image ending in imagesTr (so that the cases
    are still checked in this pass)."""
    endings = Counter(_image_ending(p.name) for p in _entries(images_dir)
                      if not p.name.startswith("."))
    endings.pop(None, None)
    return endings.most_common(1)[0][0] if endings else None


def _scan_ending(images_dir: Path, declared: str | None, report: CheckReport) -> str | None:
    """The ending to find cases by: file_ending, unless no image has it and the images share
    another one (then that one, after one error, rather than every file reported as ignored)."""
    inferred = _infer_ending(images_dir)
    if declared is None or inferred is None or declared == inferred:
        return declared or inferred
    if any(p.name.endswith(declared) for p in _entries(images_dir)):
        return declared
    report.add([error(DATASET_JSON,
                      f'file_ending is "{declared}" but the images in imagesTr end in '
                      f'"{inferred}": nnU-Net finds no training case',
                      f'set "file_ending": "{inferred}"', code="file-ending-mismatch")])
    return inferred


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _misplaced(rel: str, path: Path, ending: str, severity: str = "error") -> Finding | None:
    """A folder, a stray file or an image with another ending: what nnU-Net silently skips.
    None for a file nnU-Net reads (``ending``, not hidden)."""
    where = rel.split("/")[0]
    make = error if severity == "error" else warning
    if path.is_dir():
        return warning(rel, f"a folder inside {where}: nnU-Net ignores it",
                       f"move it out of {where}", code="stray-file")
    if path.name.startswith("."):
        if path.name.endswith(ending) and where != LABELS_TR:
            return make(rel, "a hidden file with the image ending: nnU-Net takes "
                        "it for a case and fails to read it (macOS writes such ._ files)",
                        "delete it", code="hidden-file")
        return warning(rel, "a hidden file: nnU-Net ignores it", "delete it", code="stray-file")
    if path.name.endswith(ending):
        return None
    other = _image_ending(path.name)
    if other:
        return make(rel,
                    f'ends in "{other}" but the dataset\'s file_ending is "{ending}": nnU-Net '
                    "ignores this file", f"convert it to {ending} (every file of a dataset has "
                    "the same ending)", code="wrong-file-ending")
    return warning(rel, f"not an image with the ending {ending}: nnU-Net ignores it",
                   f"move it out of {where}", code="stray-file")


def _scan_training(
    folder: Path, meta: Meta, ending: str | None, report: CheckReport
) -> tuple[dict[str, dict[int, str]], dict[str, str]]:
    """Training cases as nnU-Net finds them: case → channel → file, and case → label file."""
    problems: list[Finding] = []
    for sub in (IMAGES_TR, LABELS_TR):
        if not (folder / sub).is_dir():
            problems.append(error(sub, f"no {sub} folder in the dataset",
                                  f"create {sub}/ with the training "
                                  f"{'images' if sub == IMAGES_TR else 'labels'}",
                                  code="missing-folder"))
    cases: dict[str, dict[int, str]] = {}
    labels: dict[str, str] = {}
    if ending is None:
        report.add(problems)
        return cases, labels
    for path in _entries(folder / IMAGES_TR):
        rel = f"{IMAGES_TR}/{path.name}"
        problem = _misplaced(rel, path, ending)
        if problem:
            problems.append(problem)
            continue
        stem = path.name[: -len(ending)]
        m = _CHANNEL.fullmatch(stem)
        if not m:
            problems.append(error(rel,
                                  f"not named CASE_XXXX{ending}: nnU-Net cuts the last five "
                                  "characters off as the channel number and makes a wrong case",
                                  f"rename it to {stem}_0000{ending} (one file per channel, "
                                  "numbered from _0000)", code="bad-image-name"))
            continue
        cases.setdefault(m["case"], {})[int(m["channel"])] = rel
    for path in _entries(folder / LABELS_TR):
        rel = f"{LABELS_TR}/{path.name}"
        problem = _misplaced(rel, path, ending)
        if problem:
            problems.append(problem)
            continue
        stem = path.name[: -len(ending)]
        if stem in cases:
            labels[stem] = rel
            continue
        m = _CHANNEL.fullmatch(stem)
        if m and m["case"] in cases:
            problems.append(error(rel,
                                  "label files carry no channel number: nnU-Net looks for "
                                  f"labelsTr/{m['case']}{ending}",
                                  f"rename it to {m['case']}{ending}", code="bad-label-name"))
        else:
            problems.append(error(rel,
                                  f"no images for case {stem!r} in imagesTr: nnU-Net ignores "
                                  "this label", f"add imagesTr/{stem}_0000{ending}, or remove "
                                  "the label", code="orphan-label"))
    report.add(problems)
    return cases, labels


def _check_case_files(cases: dict[str, dict[int, str]], labels: dict[str, str], channels: int,
                      ending: str, report: CheckReport) -> None:
    problems: list[Finding] = []
    for case, chs in sorted(cases.items()):
        for c in range(channels):
            if c not in chs:
                problems.append(error(f"{IMAGES_TR}/{case}_{c:04d}{ending}",
                                      f"missing: case {case!r} has channel(s) {sorted(chs)} of "
                                      f"{channels}", "add the file, or fix channel_names",
                                      code="missing-channel"))
        for c in sorted(chs):
            if c >= channels:
                problems.append(error(chs[c],
                                      f"channel {c}, but channel_names declares {channels} "
                                      "channel(s)", "declare it in channel_names, or remove the "
                                      "file", code="extra-channel"))
        if case not in labels:
            problems.append(error(f"{LABELS_TR}/{case}{ending}",
                                  f"missing: case {case!r} has images but no label",
                                  "add the label file, or move the images to imagesTs if the "
                                  "case has no segmentation", code="missing-label"))
        if not _SAFE_NAME.fullmatch(case):
            problems.append(warning(chs[min(chs)],
                                    f"case id {case!r} has spaces or characters other than "
                                    "A-Z a-z 0-9 _ . -",
                                    "rename the case: job scripts, rsync and other tools split "
                                    "or mangle such names", code="unusual-case-name"))
    report.add(problems)


# --------------------------------------------------------------------------------------------
# Per case, in a worker


def _run(tasks: list[CaseTask], workers: int, on_progress: Progress | None) -> list[CaseResult]:
    """Results in task order; a process pool when there is more than one worker and task."""
    with runner(max(1, min(workers, len(tasks))), on_progress) as run:
        return run("checking cases", check_case, tasks)


def check_case(task: CaseTask) -> CaseResult:
    """Read one case's images and label and report what is wrong with them."""
    import SimpleITK as sitk

    result = CaseResult(task.case, task.images[0])
    digest = hashlib.blake2b(digest_size=16)
    first: sitk.Image | None = None
    complete = True
    for rel in task.images:
        image = _read(task.root, rel, result)
        if image is None:
            complete = False
            continue
        arr = _check_image(image, rel, result)
        digest.update(f"{arr.dtype}{arr.shape}".encode())
        digest.update(np.ascontiguousarray(arr).data)
        if first is None:
            first = image
            result.dimension = image.GetDimension()
            result.geometry = Geometry.of(image)
            result.voxels = int(np.prod(image.GetSize()))
            if result.dimension == 3:
                result.orientation = sitk.DICOMOrientImageFilter.\
                    GetOrientationFromDirectionCosines(image.GetDirection())
        else:
            _compare_channels(first, image, rel, result)
    result.digest = digest.hexdigest() if complete else None
    if task.label is not None:
        label = _read(task.root, task.label, result, "label")
        if label is not None:
            _check_label(label, first, task, result)
    return result


def _read(root: Path, rel: str, result: CaseResult, role: str = "image") -> sitk.Image | None:
    """The image, after payload.examine: NaN and infinite voxels are counted in the file's
    data (SimpleITK reads a NIfTI's as 0); a damaged file is not read."""
    import SimpleITK as sitk

    path = root / rel
    problems = examine(path, root=root, allow_outside=True, max_bytes=None)
    for p in problems:
        code = f"{p.code}-in-{role}" if p.code in ("nan", "inf") else p.code
        result.problems.append(error(rel, p.message, p.fix, code=code))
    if any(p.code not in ("nan", "inf") for p in problems):
        return None
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].replace("sitk::ERROR: ", "")
        reason = reason.replace(f'"{path}"', "it").replace(str(path), "it")
        result.problems.append(error(rel, f"cannot be read as an image: {reason}",
                                     "re-export it: it is truncated, empty or not an image",
                                     code="unreadable"))
        return None


def _check_image(image: sitk.Image, rel: str, result: CaseResult) -> np.ndarray:
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        result.problems.append(error(rel,
                                     f"{image.GetNumberOfComponentsPerPixel()} values per voxel "
                                     "(a vector image): nnU-Net expects one value per voxel",
                                     "save each component as its own channel file "
                                     "(_0000, _0001, ...)", code="vector-image"))
    counted = any(f.code in ("nan-in-image", "inf-in-image") and f.file == rel
                  for f in result.problems)  # by payload.examine, in the file's own data
    if arr.dtype.kind == "f" and not counted:
        finite = np.isfinite(arr)
        if not finite.all():
            nan = int(np.isnan(arr).sum())
            inf = int(arr.size - finite.sum()) - nan
            for count, what, code in ((nan, "NaN", "nan-in-image"),
                                      (inf, "infinite", "inf-in-image")):
                if count:
                    result.problems.append(error(
                        rel, f"{count} {what} voxel(s): nnU-Net's normalisation turns them "
                        "into a NaN loss", "replace them with a real intensity (e.g. the "
                        "background value) before training", code=code))
    if arr.size and arr.min() == arr.max():
        result.problems.append(warning(rel,
                                       f"every voxel is {arr.flat[0]}: an empty or failed export",
                                       "re-export the image", code="constant-image"))
    return arr


def _compare_channels(first: sitk.Image, image: sitk.Image, rel: str,
                      result: CaseResult) -> None:
    """nnU-Net stacks the channels of a case and requires exactly equal grids (not allclose)."""
    if image.GetSize() != first.GetSize():
        result.problems.append(error(rel,
                                     f"size {image.GetSize()} differs from channel 0's "
                                     f"{first.GetSize()}", "resample the channels of a case onto "
                                     "one grid", code="channel-shape-mismatch"))
    elif image.GetSpacing() != first.GetSpacing():
        result.problems.append(error(rel,
                                     f"spacing {image.GetSpacing()} differs from channel 0's "
                                     f"{first.GetSpacing()}", "give all channels of a case the "
                                     "same spacing", code="channel-spacing-mismatch"))
    elif (image.GetOrigin(), image.GetDirection()) != (first.GetOrigin(), first.GetDirection()):
        result.problems.append(warning(rel,
                                       "origin or direction differs from channel 0's",
                                       "check that the channels are registered to each other",
                                       code="channel-geometry-mismatch"))


def _check_label(label: sitk.Image, image: sitk.Image | None, task: CaseTask,
                 result: CaseResult) -> None:
    import SimpleITK as sitk

    rel = task.label or ""
    problems = result.problems
    if label.GetNumberOfComponentsPerPixel() > 1:
        problems.append(error(rel,
                              f"{label.GetNumberOfComponentsPerPixel()} values per voxel: a "
                              "label map has one", _SEG_HINT, code="vector-image"))
        return
    if image is not None:
        _compare_geometry(Geometry.of(label), Geometry.of(image), rel, problems)
    arr = sitk.GetArrayViewFromImage(label)
    if arr.dtype.kind == "f":
        nan = int(np.isnan(arr).sum())
        if nan and not any(f.code == "nan-in-label" and f.file == rel for f in problems):
            problems.append(error(rel, f"{nan} NaN voxel(s)",
                                  "re-export the segmentation as an integer label map",
                                  code="nan-in-label"))
        if nan:
            arr = arr[~np.isnan(arr)]
        values = np.unique(arr)
        fractional = values[values != np.round(values)]
        if fractional.size:
            problems.append(error(rel,
                                  f"values such as {fractional[:3].tolist()} are not whole "
                                  "numbers: the label map was interpolated",
                                  "resample segmentations with nearest neighbour, never linear",
                                  code="non-integer-label"))
        else:
            problems.append(warning(rel, f"stored as {arr.dtype} floats",
                                    "store label maps as unsigned integers (uint8)",
                                    code="float-label"))
        values = values[values == np.round(values)].astype(np.int64)
    else:
        values = _unique(arr)
    found = [int(v) for v in values]
    result.label_values = frozenset(found)
    if task.allowed_labels is not None:
        undeclared = [v for v in found if v not in task.allowed_labels]
        if undeclared:
            if set(found) <= {0, 255}:
                fix = "a 0/255 mask: map 255 to 1 (`hpcnn dataset import --remap 255:1`)"
            elif min(undeclared) < 0:
                fix = "negative values are never labels: relabel the file"
            else:
                fix = "declare them in dataset.json labels, or relabel the file"
            problems.append(error(rel,
                                  f"values {_few(undeclared)} are not declared in dataset.json "
                                  f"(declared: {sorted(task.allowed_labels)})", fix,
                                  code="undeclared-label"))
    if set(found) <= {0}:
        problems.append(warning(rel, "no foreground: every voxel is 0",
                                "keep it only if the case really shows no structure; otherwise "
                                "the segmentation was not exported", code="empty-label"))


def _compare_geometry(label: Geometry, image: Geometry, rel: str,
                      problems: list[Finding]) -> None:
    """nnU-Net's tests (``np.allclose``): size and spacing are errors, origin and direction
    warnings, since only the voxel arrays are used for training."""
    fix = ("put the label on its image's grid: `hpcnn dataset import` resamples it with nearest "
           "neighbour")
    if len(label.size) != len(image.size):
        problems.append(error(rel, f"{len(label.size)}-D label for a "
                              f"{len(image.size)}-D image", fix, code="dimension-mismatch"))
        return
    if label.size != image.size:
        problems.append(error(rel, f"size {_dims(label.size)} but the image is "
                              f"{_dims(image.size)}", fix, code="shape-mismatch"))
    if not np.allclose(label.spacing, image.spacing):
        problems.append(error(rel, f"spacing {_dims(label.spacing)} but the "
                              f"image's is {_dims(image.spacing)}", fix, code="spacing-mismatch"))
    if not np.allclose(label.origin, image.origin):
        problems.append(warning(rel, f"origin {_dims(label.origin)} but the "
                                f"image's is {_dims(image.origin)}",
                                "check the overlay; if the label was drawn on this image, copy "
                                "the image's origin into the label file", code="origin-mismatch"))
    if not np.allclose(label.direction, image.direction):
        problems.append(warning(rel, "direction differs from the image's",
                                "check the overlay; the label may be flipped against its image",
                                code="direction-mismatch"))


def _unique(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values; bincount for small unsigned types (several times np.unique)."""
    if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(arr.ravel()))
    return np.unique(arr)


def _dims(values: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in values)


def _few(values: Sequence[int], n: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f" and {len(values) - n} more" if len(values) > n else "")


# --------------------------------------------------------------------------------------------
# Across cases


def _compare_cases(results: list[CaseResult], meta: Meta, folds: Sequence[int],
                   report: CheckReport) -> None:
    problems: list[Finding] = []
    if len(results) < NNUNET_FOLDS:
        problems.append(warning(IMAGES_TR, too_few_training(len(results)),
                                "add labelled cases (each fold validates on a fifth of them; 20 "
                                "or more give useful figures)", code="too-few-cases"))
    elif len(results) < len(folds):
        problems.append(error(IMAGES_TR,
                              f"{len(results)} training case(s) for the {len(folds)} folds "
                              f"configured ({', '.join(map(str, folds))}): a fold beyond the "
                              "cases has no validation case of its own",
                              "add labelled cases, or configure fewer training.folds",
                              code="too-few-cases"))
    read = [r for r in results if r.geometry is not None]
    dims = Counter(r.dimension for r in read)
    if len(dims) > 1:
        usual = dims.most_common(1)[0][0]
        for r in read:
            if r.dimension != usual:
                problems.append(error(r.image,
                                      f"a {r.dimension}-D image in a dataset of {usual}-D images",
                                      "export the full volume", code="dimension-mismatch"))
        read = [r for r in read if r.dimension == usual]
    orientations = Counter(r.orientation for r in read if r.orientation)
    if len(orientations) > 1:
        usual_o, count = orientations.most_common(1)[0]
        for r in read:
            if r.orientation and r.orientation != usual_o:
                problems.append(warning(r.image,
                                        f"orientation {r.orientation}, but {count} case(s) are "
                                        f"{usual_o}: nnU-Net trains on voxel arrays, so the "
                                        "anatomy appears flipped or rotated in this case",
                                        f"reorient it to {usual_o} (e.g. SimpleITK DICOMOrient)",
                                        code="orientation-differs"))
    if read:
        problems.extend(_spacing_problems(read))
    problems.extend(_duplicates(results))
    problems.extend(_mixed_label_kinds(results, meta))
    seen = frozenset().union(*(r.label_values for r in results))
    if seen and meta.foreground:
        for value, name in sorted(meta.foreground.items()):
            if value not in seen:
                problems.append(warning(DATASET_JSON,
                                        f'label "{name}" ({value}) occurs in no training label '
                                        f"({LABELS_TR}): nnU-Net trains a class it never sees",
                                        f"move a case that shows it from {IMAGES_TS}/labelsTs "
                                        "into training (`hpcnn dataset import` splits so), or "
                                        "remove it from labels (and renumber)",
                                        code="label-never-present"))
    report.add(problems)


def _mixed_label_kinds(results: list[CaseResult], meta: Meta) -> list[Finding]:
    """A dataset imported from Slicer segmentations AND plain label maps with nothing mapping
    one onto the other (hpcnn did so before it stopped such an import): the plain maps'
    values became classes of their own (``label_1``, hpcnn's name for an unnamed value), and
    no case holds both kinds, so every structure is two classes learnt from part of the cases."""
    plain = {v for v, n in meta.foreground.items() if is_plain_class_name(n)}
    named = set(meta.foreground) - plain
    if not plain or not named:
        return []
    with_named = sorted(r.case for r in results if r.label_values & named)
    with_plain = sorted(r.case for r in results if r.label_values & plain)
    if not with_named or not with_plain or set(with_named) & set(with_plain):
        return []

    def names(values: set[int]) -> str:
        return shorten([meta.foreground[v] for v in sorted(values)])

    return [error(DATASET_JSON,
                  f"classes {names(named)} and {names(plain)} never occur in one case: "
                  f"{len(with_named)} case(s) hold only the first ({shorten(with_named)}), "
                  f"{len(with_plain)} only the second ({shorten(with_plain)}), hpcnn's names "
                  "for the values of plain label maps: Slicer segmentations and plain label "
                  "maps imported as different classes, so nnU-Net would learn each structure "
                  "as two classes, each from part of the cases",
                  "import the sources again with `hpcnn dataset import --force --labels "
                  "labels.yaml`, the labels.yaml giving each class the values that mean it in "
                  "the plain label maps (source_values; see labels.yaml in the README)",
                  code="mixed-label-kinds")]


def _spacing_problems(read: list[CaseResult]) -> list[Finding]:
    from nnunetv2.configuration import ANISO_THRESHOLD

    problems: list[Finding] = []
    spacings = np.array([r.geometry.spacing for r in read if r.geometry])
    median = np.median(spacings, axis=0)
    if median.min() > 0 and median.max() / median.min() > ANISO_THRESHOLD:
        problems.append(warning(IMAGES_TR,
                                f"median spacing {_dims(median.tolist())}: more than "
                                f"{ANISO_THRESHOLD}x coarser along one axis, so nnU-Net "
                                "resamples that axis separately and the 2d configuration may "
                                "do as well as 3d_fullres", "consider training 2d as well",
                                code="anisotropic-spacing"))
    for r, spacing in zip(read, spacings, strict=True):
        ratio = spacing / median
        if (ratio > SPACING_OUTLIER).any() or (ratio < 1 / SPACING_OUTLIER).any():
            problems.append(warning(r.image,
                                    f"spacing {_dims(spacing.tolist())}, far from the median "
                                    f"{_dims(median.tolist())}: nnU-Net resamples it heavily",
                                    "check the export (swapped axes, wrong units, a scout "
                                    "scan)", code="spacing-outlier"))
    return problems


def _duplicates(results: list[CaseResult]) -> list[Finding]:
    first: dict[str, CaseResult] = {}
    problems = []
    for r in results:
        if r.digest is None:
            continue
        if r.digest in first:
            problems.append(warning(r.image,
                                    f"the same voxels as {first[r.digest].image}: one scan "
                                    "under two names can land in training and validation",
                                    "remove one of the two cases", code="duplicate-case"))
        else:
            first[r.digest] = r
    return problems


# --------------------------------------------------------------------------------------------
# imagesTs and splits_final.json


def _check_test_images(folder: Path, ending: str, channels: int, report: CheckReport) -> None:
    """Headers only: prediction needs CASE_XXXX names, every channel, readable files."""
    import SimpleITK as sitk

    problems: list[Finding] = []
    cases: dict[str, set[int]] = {}
    reader = sitk.ImageFileReader()
    for path in _entries(folder / IMAGES_TS):
        rel = f"{IMAGES_TS}/{path.name}"
        problem = _misplaced(rel, path, ending, severity="warning")
        if problem:
            problems.append(problem)
            continue
        m = _CHANNEL.fullmatch(path.name[: -len(ending)])
        if not m:
            problems.append(warning(rel, f"not named CASE_XXXX{ending}: "
                                    "prediction skips or crashes on it",
                                    f"rename it to {path.name[: -len(ending)]}_0000{ending}",
                                    code="bad-test-name"))
            continue
        cases.setdefault(m["case"], set()).add(int(m["channel"]))
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            problems.append(warning(rel, "cannot be read as an image",
                                    "re-export it: it is truncated, empty or not an image",
                                    code="unreadable"))
            continue
        if reader.GetNumberOfComponents() > 1:
            problems.append(warning(rel, "several values per voxel: nnU-Net "
                                    "expects one", "save each component as its own channel",
                                    code="vector-image"))
    for case, chs in sorted(cases.items()):
        for c in range(channels):
            if c not in chs:
                problems.append(warning(f"{IMAGES_TS}/{case}_{c:04d}{ending}",
                                        f"missing: test case {case!r} lacks channel {c}",
                                        "add the file: prediction needs every channel",
                                        code="missing-channel"))
    report.add(problems)


def _check_raw_splits(folder: Path, cases: list[str], report: CheckReport) -> None:
    """A splits_final.json in the raw folder is copied into nnUNet_preprocessed and used as is:
    a stale one leaves new cases in no fold (and nnU-Net asserts when it differs from the
    preprocessed copy)."""
    path = folder / SPLITS
    if not path.is_file():
        return
    fix = ("update it for the current cases, or delete it (`hpcnn preprocess` then writes "
           "nnU-Net's default 5-fold split)")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
        folds = [(set(s["train"]), set(s["val"])) for s in splits]
    except (ValueError, TypeError, KeyError) as exc:
        report.add([error(SPLITS, f"not a list of {{train, val}} folds: {exc}",
                          fix, code="bad-splits")])
        return
    known = set(cases)
    named = set().union(*(t | v for t, v in folds)) if folds else set()
    validated = set().union(*(v for _, v in folds)) if folds else set()
    unknown, unvalidated = sorted(named - known), sorted(known - validated)
    if unknown or unvalidated:
        parts = []
        if unvalidated:
            parts.append(f"{len(unvalidated)} case(s) in no validation fold "
                         f"({_few(unvalidated, 5)})")
        if unknown:
            parts.append(f"{len(unknown)} unknown case(s) ({_few(unknown, 5)})")
        report.add([error(SPLITS, "; ".join(parts), fix, code="stale-splits")])
