"""``hpcnn dataset import``: an export folder (or CSV) → ``nnUNet_raw/DatasetNNN_Name``.

The import runs in stages and reports every problem of a stage at once (findings.py): pair the
files (sources.py), read every header and the values of plain label maps (in parallel), decide
the classes (labels.py), then read, check, convert and write every case (in parallel: slicer.py
builds class maps, geometry.py puts them on the image grid). Everything is written into a hidden
folder next to the destination and renamed into place only when no error was found, so a failed
or interrupted import leaves no half dataset, and an existing dataset is replaced only with
``force``. Inputs are sorted and the split is seeded: the same sources give the same bytes.

Workers are processes (workers.py) with one SimpleITK thread each; ``workers=1`` runs in
this process with the same single thread, so timings compare.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcnn.dataset import sources
from hpcnn.dataset.findings import Finding, error, fix, notice, raise_if_errors, warning
from hpcnn.dataset.geometry import Geometry, onto_image, relation
from hpcnn.dataset.labels import (
    LabelPlan,
    SegInfo,
    load_labels_file,
    lookup,
    parse_remap,
    plan_labels,
)
from hpcnn.dataset.layout import (
    MIN_TRAINING,
    DatasetRef,
    existing_datasets,
    next_free_id,
    validate_id,
    validate_name,
)
from hpcnn.dataset.slicer import SegmentTableError, class_map, read_segments
from hpcnn.dataset.workers import Progress, available_cpus, runner
from hpcnn.errors import DataError
from hpcnn.workspace import Workspace

FORMATS = {"nrrd": ".nrrd", "nii.gz": ".nii.gz"}


@dataclass(frozen=True)
class ImportOptions:
    """Everything ``hpcnn dataset import`` takes (see the CLI's help for each)."""

    source: Path
    name: str
    dataset_id: int | None = None
    labels_file: Path | None = None
    remap: tuple[str, ...] = ()
    overlap: tuple[str, ...] = ()
    modality: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    pattern: str | None = None
    file_format: str | None = None
    test_fraction: float = 0.2
    seed: int = 0
    strict: bool = False
    force: bool = False
    workers: int | None = None


@dataclass(frozen=True)
class CaseRecord:
    """One imported case: its id, split and the source files it came from."""

    case_id: str
    split: str  # train | test | unlabelled
    images: tuple[str, ...]
    segmentation: str | None


@dataclass
class ImportResult:
    dataset: DatasetRef
    path: Path
    labels: dict[str, int]
    channel_names: dict[str, str]
    file_ending: str
    cases: list[CaseRecord]
    findings: list[Finding] = field(default_factory=list)

    def count(self, split: str) -> int:
        return sum(c.split == split for c in self.cases)


def import_dataset(
    workspace: Workspace, options: ImportOptions, on_progress: Progress | None = None
) -> ImportResult:
    """Import ``options.source`` into the workspace; raises ImportFailed (a DataError) naming
    every file with a problem, and leaves nothing behind when it does."""
    _need_simpleitk()
    name = validate_name(options.name)
    spec = load_labels_file(options.labels_file) if options.labels_file else None
    remap = parse_remap(options.remap)
    strict = options.strict
    found = sources.discover(options.source, channels=options.channels, pattern=options.pattern)
    findings = list(found.findings)
    for case in found.cases:
        if case.segmentation is None:
            findings.append(warning(case.images[0].display, "image without a segmentation: "
                                    "goes to imagesTs (for prediction), not to training",
                                    hint="add its segmentation (or pass --strict to refuse)"))
    if found.cases and not any(c.segmentation for c in found.cases):
        findings.append(error(str(options.source), "no segmentations found",
                              hint="segmentations end in .seg.nrrd or _label/-label/_seg/_mask; "
                                   "see --pattern for other names"))
    elif not found.cases and not any(f.level == "error" for f in findings):
        raise DataError(f"{options.source}: no images found",
                        hint="images end in .nrrd, .nii, .nii.gz or .mha")
    raise_if_errors(findings, strict=strict)

    ref, replaces = _target(workspace, name, options)
    ending = _file_ending(found.cases, options.file_format, findings)
    channel_names = _channel_names(options, findings)
    ids, id_findings = sources.case_ids([c.key for c in found.cases])
    findings += id_findings
    splits = _split(found.cases, ids, options.test_fraction, options.seed)
    n_train = sum(s == "train" for s in splits)
    if n_train < MIN_TRAINING:
        findings.append(warning("", f"only {n_train} training case(s): nnU-Net's 5-fold "
                                f"cross-validation needs at least {MIN_TRAINING}",
                                hint="add cases, or lower --test-fraction"))

    workers = max(1, min(options.workers or available_cpus(), len(found.cases)))
    with runner(workers, on_progress) as run:
        scans = run("reading", _scan, [_scan_task(c) for c in found.cases])
        findings += [f for s in scans for f in s.findings]
        raise_if_errors(findings, strict=strict)
        infos = [s.seg for s in scans if s.seg is not None]
        plan, label_findings = plan_labels(infos, spec, remap)
        findings += label_findings
        if not plan.classes:
            findings.append(error(str(options.source), "no segments or label values found in "
                                  "any segmentation"))
        priority = tuple(plan.resolve(options.overlap, "--overlap"))
        raise_if_errors(findings, strict=strict)

        tmp = workspace.raw / f".{ref.folder_name}.importing-{uuid.uuid4().hex[:8]}"
        try:
            tasks = _write_tasks(found.cases, ids, splits, scans, plan, priority, ending, tmp)
            results = run("writing", _write, tasks)
            findings += [f for r in results for f in r]
            raise_if_errors(findings, strict=strict)
            cases = [CaseRecord(i, s, tuple(f.display for f in c.images),
                                c.segmentation.display if c.segmentation else None)
                     for c, i, s in zip(found.cases, ids, splits, strict=True)]
            labels = {"background": 0, **plan.classes}
            _write_json(tmp / "dataset.json", {
                "channel_names": channel_names,
                "labels": labels,
                "numTraining": n_train,
                "file_ending": ending,
                **({"overwrite_image_reader_writer": "SimpleITKIO"} if ending == ".nrrd" else {}),
                "name": name,
            })
            (tmp / "cases.csv").write_text(_cases_csv(cases, found.cases, ending),
                                           encoding="utf-8")
            destination = _move_into_place(tmp, workspace.raw / ref.folder_name, replaces)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ImportResult(ref, destination, labels, channel_names, ending, cases, findings)


def _need_simpleitk() -> None:
    try:
        import SimpleITK  # noqa: F401
    except ImportError as exc:
        raise DataError("dataset import needs SimpleITK, which is not installed",
                        hint="pip install 'hpcnn[nnunet]'") from exc


def _target(
    workspace: Workspace, name: str, options: ImportOptions
) -> tuple[DatasetRef, Path | None]:
    """The dataset's id and name, and the raw folder it replaces (only with ``force``).

    Without ``--id``, a dataset of the same name keeps its id (so importing again needs
    ``--force`` instead of silently creating a second copy); otherwise the next free id.
    An id that names another dataset in nnUNet_preprocessed or nnUNet_results is refused even
    with ``force``: nnU-Net stops when one id has two names.
    """
    raw = existing_datasets(workspace.raw)
    dataset_id = options.dataset_id
    if dataset_id is None:
        same = [i for i, p in raw.items() if p.name.split("_", 1)[1].casefold() == name.casefold()]
        dataset_id = same[0] if same else next_free_id(workspace.raw, workspace.preprocessed,
                                                       workspace.results)
    validate_id(dataset_id)
    ref = DatasetRef(dataset_id, name)
    for root in (workspace.preprocessed, workspace.results):
        other = existing_datasets(root).get(dataset_id)
        if other is not None and other.name != ref.folder_name:
            raise DataError(f"id {dataset_id} is already {other}: nnU-Net refuses an id with two "
                            "names",
                            hint=f"use --name {other.name.split('_', 1)[1]} or another --id "
                                 f"(next free: {_free(workspace)})")
    existing = raw.get(dataset_id)
    elsewhere = [r / ref.folder_name for r in (workspace.preprocessed, workspace.results)]
    in_use = existing or next((p for p in elsewhere if p.is_dir()), None)
    if in_use is not None and not options.force:
        raise DataError(f"{in_use} already exists",
                        hint=f"pass --force to replace it, or choose another --id (next free: "
                             f"{_free(workspace)})")
    return ref, existing


def _free(workspace: Workspace) -> int:
    return next_free_id(workspace.raw, workspace.preprocessed, workspace.results)


def _file_ending(cases: Sequence[sources.SourceCase], chosen: str | None,
                 findings: list[Finding]) -> str:
    """``--format``, else .nrrd when every input is NRRD, else .nii.gz (with a notice)."""
    files = [f for c in cases for f in (*c.images, c.segmentation) if f is not None]
    kinds = sorted({".nrrd" if f.extension == ".seg.nrrd" else f.extension for f in files})
    ending = FORMATS[chosen] if chosen else ".nrrd" if kinds == [".nrrd"] else ".nii.gz"
    converted = sum(f.extension != ending for c in cases for f in c.images)
    if converted:
        findings.append(notice("", f"input formats {', '.join(kinds)}: the dataset uses "
                                   f"{ending} (--format chooses); {converted} image(s) converted"))
    return ending


def _channel_names(options: ImportOptions, findings: list[Finding]) -> dict[str, str]:
    """dataset.json's channel_names: ``--modality`` per channel (one value applies to all),
    else the ``--channels`` names, else "image"; "CT" selects nnU-Net's CT normalisation,
    anything else z-score."""
    n = max(1, len(options.channels))
    modality = list(options.modality)
    if modality and len(modality) not in (1, n):
        raise DataError(f"--modality lists {len(modality)} values for {n} channel(s)",
                        hint="give one modality for all channels, or one per channel")
    if not modality and not options.channels:
        findings.append(notice("", "no --modality: nnU-Net normalises the images with z-score; "
                                   "pass --modality CT for CT (intensity clipping and scaling)"))
    names = modality * n if len(modality) == 1 else modality or list(options.channels) or ["image"]
    return {str(i): name for i, name in enumerate(names)}


def _split(cases: Sequence[sources.SourceCase], ids: Sequence[str], fraction: float,
           seed: int) -> list[str]:
    """train/test for labelled cases (a seeded sample of ``fraction``, rounded down, of the
    sorted ids), "unlabelled" for images without segmentation."""
    labelled = sorted(i for c, i in zip(cases, ids, strict=True) if c.segmentation)
    n_test = math.floor(len(labelled) * fraction + 1e-9)
    test = set(random.Random(seed).sample(labelled, n_test))
    return ["unlabelled" if c.segmentation is None else "test" if i in test else "train"
            for c, i in zip(cases, ids, strict=True)]


# --------------------------------------------------------------------------------------------
# Workers: plain data in, findings out (everything crosses a process boundary)


@dataclass(frozen=True)
class _ScanTask:
    images: tuple[tuple[str, str], ...]  # (path, display) per channel
    segmentation: tuple[str, str] | None


@dataclass
class _Scan:
    findings: list[Finding]
    seg: SegInfo | None


def _scan_task(case: sources.SourceCase) -> _ScanTask:
    seg = case.segmentation
    return _ScanTask(tuple((str(f.path), f.display) for f in case.images),
                     (str(seg.path), seg.display) if seg else None)


def _scan(task: _ScanTask) -> _Scan:
    """Headers of a case's files; a plain label map's values (its voxels are needed for them)."""
    import SimpleITK as sitk

    findings: list[Finding] = []
    first: tuple[str, tuple[int, ...]] | None = None
    for path, display in task.images:
        reader = _header(path, display, findings)
        if reader is None:
            continue
        size = tuple(reader.GetSize())
        if reader.GetDimension() != 3:
            findings.append(error(display, f"is a {reader.GetDimension()}-D image (size "
                                  f"{'x'.join(map(str, size))}); a 3-D dataset needs volumes",
                                  hint="export the 3-D volume, not a slice or screenshot"))
        elif reader.GetNumberOfComponents() != 1:
            findings.append(error(display, f"has {reader.GetNumberOfComponents()} components per "
                                  "voxel (colour or vector image)",
                                  hint="save each channel as its own file and pass --channels"))
        elif first is None:
            first = (display, size)
        elif size != first[1]:
            findings.append(error(display, f"size {'x'.join(map(str, size))} differs from "
                                  f"{first[0]} ({'x'.join(map(str, first[1]))})",
                                  hint="resample the channels of a case onto one grid"))
    if task.segmentation is None:
        return _Scan(findings, None)
    path, display = task.segmentation
    reader = _header(path, display, findings)
    if reader is None:
        return _Scan(findings, None)
    if reader.GetDimension() != 3:
        findings.append(error(display, f"segmentation is {reader.GetDimension()}-D; its image is "
                              "3-D", hint="export the segmentation of the whole volume"))
        return _Scan(findings, None)
    metadata = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    try:
        segments = read_segments(metadata, reader.GetNumberOfComponents())
    except SegmentTableError as exc:
        findings.append(error(display, f"Slicer segment table: {exc}",
                              hint="save the segmentation again from Slicer"))
        return _Scan(findings, None)
    if segments:
        return _Scan(findings, SegInfo(display, segments))
    if reader.GetNumberOfComponents() != 1:
        findings.append(error(display, f"a label map with {reader.GetNumberOfComponents()} "
                              "components and no Slicer segment table",
                              hint="save it as a single-component label map or a .seg.nrrd"))
        return _Scan(findings, None)
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as exc:
        findings.append(_unreadable(display, exc))
        return _Scan(findings, None)
    array = sitk.GetArrayViewFromImage(image)  # a view: ``image`` must outlive it
    values = np.unique(array)
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.round(values))
        if not whole.all():
            bad = values[~whole][0]
            findings.append(error(display, f"label values are not whole numbers (e.g. {bad:g}): "
                                  "a label map resampled with linear interpolation?",
                                  hint="export it as a label map, or resample with nearest "
                                       "neighbour"))
            return _Scan(findings, None)
        findings.append(fix(display, f"label map stored as {array.dtype} with whole-number "
                                     "values: converted to integers"))
    return _Scan(findings, SegInfo(display, None, [int(v) for v in values]))


def _header(path: str, display: str, findings: list[Finding]) -> Any:
    """A SimpleITK reader with the file's header read, or None (an error is added)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        findings.append(_unreadable(display, exc))
        return None
    return reader


def _unreadable(display: str, exc: RuntimeError) -> Finding:
    """ITK's long messages cut to their last meaningful line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = next((ln.split("ERROR:", 1)[1].strip() for ln in reversed(lines) if "ERROR:" in ln),
                  lines[-1] if lines else "unknown error")
    reason = re.sub(r"^\w+\(0x[0-9a-f]+\):\s*", "", reason)
    if "Unable to determine ImageIO reader" in reason:
        reason = "not an image SimpleITK can read"
    return error(display, f"cannot read: {reason}",
                 hint="is it a complete image file? export or copy it again")


@dataclass(frozen=True)
class _WriteTask:
    images: tuple[tuple[str, str], ...]
    image_outputs: tuple[str, ...]
    copy_images: bool
    segmentation: tuple[str, str] | None
    label_output: str | None
    slicer: tuple[tuple[int, int, int], ...] | None  # (layer, value, class)
    values: tuple[tuple[int, int], ...]  # plain label map: (value, class)
    priority: tuple[int, ...]
    class_names: tuple[str, ...]
    dtype: str


def _write_tasks(
    cases: Sequence[sources.SourceCase],
    ids: Sequence[str],
    splits: Sequence[str],
    scans: Sequence[_Scan],
    plan: LabelPlan,
    priority: tuple[int, ...],
    ending: str,
    tmp: Path,
) -> list[_WriteTask]:
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    tasks = []
    for case, case_id, split, scan in zip(cases, ids, splits, scans, strict=True):
        images_dir, labels_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs",
                                                                                    "labelsTs")
        seg = case.segmentation
        info = scan.seg
        tasks.append(_WriteTask(
            images=tuple((str(f.path), f.display) for f in case.images),
            image_outputs=tuple(str(tmp / images_dir / f"{case_id}_{c:04d}{ending}")
                                for c in range(len(case.images))),
            copy_images=all(f.extension == ending and _attached(f.path) for f in case.images),
            segmentation=(str(seg.path), seg.display) if seg else None,
            label_output=str(tmp / labels_dir / f"{case_id}{ending}") if seg else None,
            slicer=tuple(plan.segment_table(info.segments))
            if info is not None and info.segments else None,
            values=tuple(plan.value_table(info.values).items())
            if info is not None and info.segments is None else (),
            priority=priority,
            class_names=tuple(plan.classes),
            dtype=plan.dtype.name,
        ))
    for sub in ("imagesTs", "labelsTs"):
        if not any(Path(p).parent.name == sub for t in tasks
                   for p in (*t.image_outputs, t.label_output) if p):
            (tmp / sub).rmdir()
    return tasks


def _attached(path: Path) -> bool:
    """Whether a file holds its own voxels (a .nrrd may point to a separate data file), so
    copying it copies the image."""
    if not path.name.lower().endswith(".nrrd"):
        return True
    head = b""
    with path.open("rb") as fh:
        while b"\n\n" not in head and len(head) < 1 << 20:
            chunk = fh.read(4096)
            if not chunk:
                break
            head += chunk
    return not re.search(rb"^data ?file:", head.split(b"\n\n", 1)[0], re.MULTILINE)


def _write(task: _WriteTask) -> list[Finding]:
    """Read, check and write one case: images copied (same format) or converted, the
    segmentation turned into a class map on the first image's grid."""
    import SimpleITK as sitk

    findings: list[Finding] = []
    reference = None
    outputs = zip(task.images, task.image_outputs, strict=True)
    for index, ((path, display), output) in enumerate(outputs):
        try:
            image = sitk.ReadImage(path)
        except RuntimeError as exc:
            findings.append(_unreadable(display, exc))
            continue
        if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            bad = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
            if bad:
                findings.append(error(display, f"{bad} voxel(s) are NaN or infinite",
                                      hint="fill them (e.g. with the background intensity) "
                                           "before importing; nnU-Net cannot normalise them"))
                continue
        copy = task.copy_images
        if reference is None:
            reference = image
        else:
            kind, _ = relation(Geometry.of(image), Geometry.of(reference))
            if kind in ("shifted", "resampled"):
                findings.append(error(display, f"channel {index} is on another grid than channel "
                                      f"0 ({Geometry.of(image).describe()} vs "
                                      f"{Geometry.of(reference).describe()})",
                                      hint="resample the channels of a case onto one grid"))
                continue
            if kind == "copied":
                image.CopyInformation(reference)
                copy = False
                findings.append(fix(display, "geometry differs slightly from channel 0's: "
                                             "copied channel 0's geometry"))
        if copy:
            shutil.copyfile(path, output)
        else:
            sitk.WriteImage(image, output, True)
    if reference is None or any(f.level == "error" for f in findings) or not task.segmentation:
        return findings
    labels = _labels(task, reference, findings)
    if labels is not None:
        out = sitk.GetImageFromArray(labels)
        out.CopyInformation(reference)
        sitk.WriteImage(out, task.label_output, True)
    return findings


def _labels(task: _WriteTask, reference: Any, findings: list[Finding]) -> np.ndarray | None:
    """The case's class map on the reference image's grid, or None after an error."""
    import SimpleITK as sitk

    path, display = task.segmentation  # type: ignore[misc]
    try:
        seg = sitk.ReadImage(path)
    except RuntimeError as exc:
        findings.append(_unreadable(display, exc))
        return None
    data = sitk.GetArrayViewFromImage(seg)
    if data.dtype.kind == "f":  # whole numbers (checked in _scan for plain label maps)
        data = data.astype(np.int64)
    dtype = np.dtype(task.dtype)
    name = dict(enumerate(task.class_names, start=1))
    if task.slicer is not None:
        labels, settled, unsettled = class_map(data, task.slicer, task.priority, dtype)
        for o in unsettled:
            findings.append(error(display, f"segments {name[o.first]!r} and {name[o.second]!r} "
                                  f"overlap in {o.voxels} voxel(s); nnU-Net needs one class per "
                                  "voxel",
                                  hint=f"pass --overlap {name[o.second]},{name[o.first]} (the "
                                       "first listed wins), or fix the overlap in Slicer"))
        order = {c: i for i, c in enumerate(task.priority)}
        for o in settled:
            winner = min((o.first, o.second), key=lambda c: order.get(c, len(order)))
            findings.append(fix(display, f"voxels in both {name[o.first]!r} and "
                                         f"{name[o.second]!r} labelled {name[winner]!r} "
                                         "(--overlap)"))
        if unsettled:
            return None
    else:
        labels = lookup(data, dict(task.values), dtype)
    image = Geometry.of(reference)
    if not labels.any():
        findings.append(warning(display, "empty segmentation: no labelled voxels"
                                + (" of any class" if np.any(data) else ""),
                                hint="check the export; an empty label map teaches nnU-Net that "
                                     "the structures are absent"))
        return np.zeros(image.size[::-1], dtype)
    seg_geometry = Geometry.of(seg)
    placed, kind, total, inside = onto_image(labels, seg_geometry, image)
    if not inside:
        findings.append(error(display, "does not overlap its image at all (segmentation "
                              f"{seg_geometry.describe()}; image {image.describe()})",
                              hint="it was drawn on another volume: pair it with the right image"))
        return None
    if inside < total:
        findings.append(warning(display, f"{total - inside} of {total} labelled voxels lie "
                                "outside the image and were dropped",
                                hint="check that it belongs to this image"))
    if kind == "copied":
        findings.append(fix(display, "geometry differs slightly from its image's (under a tenth "
                                     "of a voxel): copied the image's geometry"))
    elif kind == "shifted":
        findings.append(notice(display, "cropped to its segments' extent, as Slicer saves it: "
                                        "placed on the image grid") if task.slicer is not None
                        else fix(display, "covers another part of the same grid as its image: "
                                          "cropped/padded onto the image grid"))
    elif kind == "resampled":
        findings.append(fix(display, f"on another grid than its image ({seg_geometry.describe()} "
                                     f"vs {image.describe()}): resampled onto the image grid "
                                     "(nearest neighbour)"))
        if not placed.any():
            findings.append(warning(display, "no labelled voxel is left after resampling onto "
                                    "the image grid", hint="check the segmentation's geometry"))
    return placed


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _cases_csv(records: Sequence[CaseRecord], cases: Sequence[sources.SourceCase],
               ending: str) -> str:
    """One row per source file: case id, split, role, channel, source path, dataset path."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["case_id", "split", "role", "channel", "source", "output"])
    for record, case in sorted(zip(records, cases, strict=True), key=lambda rc: rc[0].case_id):
        images, labels = ("imagesTr", "labelsTr") if record.split == "train" else ("imagesTs",
                                                                                  "labelsTs")
        for c, f in enumerate(case.images):
            out.writerow([record.case_id, record.split, "image", c, f.display,
                          f"{images}/{record.case_id}_{c:04d}{ending}"])
        if case.segmentation:
            out.writerow([record.case_id, record.split, "label", "", case.segmentation.display,
                          f"{labels}/{record.case_id}{ending}"])
    return buf.getvalue()


def _move_into_place(tmp: Path, destination: Path, replaces: Path | None) -> Path:
    """Rename the finished dataset into place; a replaced one is moved aside first and
    deleted only once the new one is in place (put back if that fails)."""
    aside = None
    if replaces is not None:
        aside = replaces.with_name(f".{replaces.name}.replaced-{uuid.uuid4().hex[:8]}")
        replaces.rename(aside)
    try:
        tmp.rename(destination)
    except BaseException:
        if aside is not None:
            aside.rename(replaces)  # type: ignore[arg-type]
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return destination

