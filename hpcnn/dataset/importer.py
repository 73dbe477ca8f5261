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
import shlex
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcnn import formats
from hpcnn.dataset import dicom_cases, dicom_map, leftovers, payload, sources
from hpcnn.dataset.findings import Finding, error, fix, notice, raise_if_errors, warning
from hpcnn.dataset.geometry import Geometry, onto_image, relation, within
from hpcnn.dataset.interrupt import Interrupted, deferred
from hpcnn.dataset.labels import (
    LabelPlan,
    SegInfo,
    load_labels_file,
    lookup,
    parse_remap,
    plan_labels,
)
from hpcnn.dataset.layout import (
    CASES_CSV,
    MIN_TRAINING,
    DatasetRef,
    existing_datasets,
    next_free_id,
    too_few_training,
    validate_id,
    validate_name,
)
from hpcnn.dataset.slicer import SegmentTableError, class_map, read_segments
from hpcnn.dataset.workers import Progress, available_cpus, available_memory, runner
from hpcnn.errors import DataError
from hpcnn.formats import dicom_series
from hpcnn.formats.source import SourceItem
from hpcnn.fsutil import ensure_dir, restrict_tree
from hpcnn.workspace import Workspace

DICOM_LABELS = ("dicom-seg", "rtstruct")
IMPORT_COPIES = 4  # a worker holds the image, the segmentation, the class map and a resampled copy


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
    allow_outside_source: bool = False
    max_gib: float | None = None
    anonymize: bool = False
    series_description: tuple[str, ...] = ()  # DICOM: one pattern per channel (or for all)


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
    every file with a problem, and leaves nothing behind when it does. A signal (inside
    ``interrupt.signals_raise``) raises Interrupted saying which dataset is in place."""
    _need_simpleitk()
    name = validate_name(options.name)
    spec = load_labels_file(options.labels_file) if options.labels_file else None
    remap = parse_remap(options.remap)
    strict = options.strict
    findings = leftovers.sweep(workspace.raw)
    found = sources.discover(options.source, channels=options.channels, pattern=options.pattern)
    findings += found.findings
    dicom = _dicom_cases(found, options, findings, on_progress)
    anonymize = options.anonymize or bool(dicom)
    for case in found.cases:
        if case.segmentation is None:
            findings.append(warning(case.images[0].display, "image without a segmentation: "
                                    "goes to imagesTs (for prediction), not to training",
                                    hint="add its segmentation"
                                         + ("" if strict else " (or pass --strict to refuse)")))
    if found.cases and not any(c.segmentation for c in found.cases):
        findings.append(error(str(options.source), "no segmentations found",
                              hint="segmentations end in .seg.nrrd or _label/-label/_seg/_mask "
                                   "(see --pattern for other names), or are a DICOM-SEG or "
                                   "RTSTRUCT in a DICOM case folder"))
    elif not found.cases and not any(f.level == "error" for f in findings):
        raise DataError(f"{options.source}: no images found",
                        hint="images end in .nrrd, .nhdr, .nii, .nii.gz, .mha or .mhd")
    raise_if_errors(findings, strict=strict)

    ref, replaces = _target(workspace, name, options)
    destination = workspace.raw / ref.folder_name
    ending = _file_ending(found.cases, options.file_format, findings)
    channel_names = _channel_names(options, findings,
                                   max((len(d.channels) for d in dicom.values()), default=0))
    if anonymize:
        ids = sources.opaque_ids(len(found.cases), options.seed)
        findings.append(notice("", f"{'--anonymize' if options.anonymize else 'DICOM input'}: "
                                   f"cases numbered {min(ids)}...{max(ids)} in a seeded order, "
                                   "header keys other than the geometry removed; only cases.csv "
                                   + ("and the DICOM mapping " if dicom else "")
                                   + "(keep them local) map them back"))
    else:
        ids, id_findings = sources.case_ids([c.key for c in found.cases])
        findings += id_findings
    workers = max(1, min(options.workers or available_cpus(), len(found.cases)))
    max_bytes = _max_bytes(options.max_gib, workers)
    findings += _series_too_large(dicom, found.cases, max_bytes)
    raise_if_errors(findings, strict=strict)
    moved, replaced = False, None
    try:
        with runner(workers, on_progress) as run:
            scans = run("reading", _scan, [_scan_task(c, options, max_bytes)
                                           for c in found.cases])
            findings += [f for s in scans for f in s.findings]
            raise_if_errors(findings, strict=strict)
            infos = [s.seg for s in scans if s.seg is not None]
            plan, label_findings = plan_labels(infos, spec, remap)
            findings += label_findings
            if not plan.classes:
                findings.append(error(str(options.source), "no segments or label values found "
                                      "in any segmentation"))
            priority = tuple(plan.resolve(options.overlap, "--overlap"))
            splits = _split(ids, [_classes(s.seg, plan) for s in scans], plan,
                            options.test_fraction, options.seed, findings)
            n_train = sum(s == "train" for s in splits)
            if n_train < MIN_TRAINING:
                findings.append(warning("", too_few_training(n_train),
                                        hint="add cases, or lower --test-fraction"))
            raise_if_errors(findings, strict=strict)

            ensure_dir(workspace.raw)
            tmp = leftovers.work_folder(destination, leftovers.IMPORTING)
            try:
                tasks = _write_tasks(found.cases, ids, splits, scans, plan, priority, ending, tmp,
                                     anonymize, dicom)
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
                    **({"overwrite_image_reader_writer": "SimpleITKIO"} if ending == ".nrrd"
                       else {}),
                    "name": name,
                })
                (tmp / CASES_CSV).write_text(_cases_csv(cases, found.cases, ending),
                                             encoding="utf-8")
                restrict_tree(tmp)
                replaced = _describe(replaces) if replaces is not None else None
                mapping = dicom_map.path_for(workspace.state_dir, ref.folder_name)
                with deferred():  # both renames, or neither
                    _move_into_place(tmp, destination, replaces)
                    moved = True
                    _write_mapping(mapping, found.cases, ids, dicom)
            except BaseException:
                with deferred():
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
    except Interrupted as exc:
        raise Interrupted(exc.signum, _in_place(destination, replaces, moved, ids)) from None
    if replaced is not None:
        findings.append(notice("", f"replaced {replaced} with the new import"))
    if dicom:
        findings.append(notice("", f"DICOM cases → UIDs and PatientID: {mapping} (0600; keep it "
                                   "on this machine)"))
    return ImportResult(ref, destination, labels, channel_names, ending, cases, findings)


def _dicom_cases(found: sources.Discovery, options: ImportOptions, findings: list[Finding],
                 on_progress: Progress | None = None) -> dict[str, dicom_cases.DicomCase]:
    """The DICOM case folders as cases (added to ``found.cases``), by source case key."""
    if not found.dicom:
        if options.series_description:
            raise DataError("--series-description applies to DICOM series; the source holds no "
                            "DICOM files", hint="drop --series-description")
        return {}
    if options.channels:
        raise DataError("--channels with DICOM case folders: DICOM channels are chosen by their "
                        "series' headers, not by file names",
                        hint="repeat --series-description (and/or list --modality) once per "
                             "channel, in channel order, e.g. --series-description 't1*' "
                             "--series-description 't2*'")
    rules = dicom_cases.channel_rules(options.series_description, options.modality)
    collected = dicom_cases.collect(found.dicom, rules, on_progress)
    findings += collected.findings
    found.cases.extend(c.case for c in collected.cases)
    found.cases.sort(key=lambda c: c.key)
    return {c.case.key: c for c in collected.cases}


def _series_too_large(dicom: dict[str, dicom_cases.DicomCase],
                      cases: Sequence[sources.SourceCase], max_bytes: int | None) -> list[Finding]:
    """An error for each DICOM series whose volume (from its headers: columns x rows x slices,
    two bytes a voxel at least) is more than one worker may hold: the bound ``--max-gib``
    sets for files, which a series of thousands of slices must meet too."""
    out: list[Finding] = []
    if max_bytes is None:
        return out
    for case in cases:
        d = dicom.get(case.key)
        for slices, item in zip(d.channels if d else (), case.images, strict=False):
            voxels = slices[0].columns * slices[0].rows * len(slices)
            if 2 * voxels > max_bytes:
                out.append(error(item.display, f"a series of {slices[0].columns}x"
                                 f"{slices[0].rows}x{len(slices)} voxels: at least "
                                 f"{2 * voxels / 2**30:.1f} GiB in memory, more than the "
                                 f"{max_bytes / 2**30:.1f} GiB one import worker may use",
                                 hint=f"pass --max-gib {math.ceil(2 * voxels / 2**30) + 1} (and "
                                      "fewer --workers if memory is short)"))
    return out


def _write_mapping(path: Path, cases: Sequence[sources.SourceCase], ids: Sequence[str],
                   dicom: dict[str, dicom_cases.DicomCase]) -> None:
    """The case → UID mapping of a DICOM import (dicom_map.py); a former one of the same
    dataset goes when the new import has no DICOM case."""
    if not dicom:
        path.unlink(missing_ok=True)
        return
    rows = []
    for case, case_id in zip(cases, ids, strict=True):
        d = dicom.get(case.key)
        if d is None:
            continue
        for k, (slices, item) in enumerate(zip(d.channels, case.images, strict=True)):
            first = slices[0]
            rows.append(dicom_map.Row(case_id, "image" if k == 0 else f"image {k:04d}",
                                      item.display, first.patient_id, first.study_uid,
                                      first.series_uid,
                                      tuple(dict.fromkeys(s.sop_uid for s in slices)),
                                      d.burned_in(k), d.secondary_capture(k)))
        if d.label is not None:
            rows.append(dicom_map.Row(case_id, "label", d.label.display, d.label.patient_id,
                                      d.label.study_uid, d.label.series_uid, (d.label.sop_uid,)))
    dicom_map.write(path, rows)


def _in_place(destination: Path, replaces: Path | None, moved: bool, ids: Sequence[str]) -> str:
    """What an interrupted import leaves, truthfully."""
    if moved:
        return (f"the new {destination.name} ({len(ids)} cases) was already in place and is "
                "kept" + (f"; it replaced {replaces.name}" if replaces is not None else ""))
    if replaces is not None:
        return f"nothing was imported; {replaces.name} is unchanged"
    return f"nothing was imported; there is no {destination.name}"


def _describe(folder: Path) -> str:
    """``Dataset501_Liver (12 training, 3 test cases)``, for the notice that it was replaced."""
    counts = []
    for sub, what in (("imagesTr", "training"), ("imagesTs", "test")):
        files = [p.name for p in (folder / sub).iterdir()] if (folder / sub).is_dir() else []
        counts.append(f"{sum('_0000.' in n for n in files)} {what}")
    return f"{folder.name} ({', '.join(counts)} cases)"


def _max_bytes(max_gib: float | None, workers: int) -> int | None:
    """The most voxel data one file may declare: ``--max-gib``, else what each worker may hold
    of the memory available (None: unknown, no bound)."""
    if max_gib is not None:
        return int(max_gib * 2**30)
    memory = available_memory()
    return memory // (workers * IMPORT_COPIES) if memory else None


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
    nrrd = (formats.get("nrrd"), formats.get("slicer-seg"))  # one format, attached or not
    kinds = sorted({".nrrd" if f.format in nrrd else f.extension or f.format_name or ""
                    for f in files})
    ending = (formats.dataset_choices()[chosen] if chosen
              else ".nrrd" if kinds == [".nrrd"] else ".nii.gz")
    converted = sum(f.extension != ending for c in cases for f in c.images)
    if converted:
        findings.append(notice("", f"input formats {', '.join(kinds)}: the dataset uses "
                                   f"{ending} (--format chooses); {converted} image(s) converted"))
    return ending


def _channel_names(options: ImportOptions, findings: list[Finding],
                   dicom_channels: int = 0) -> dict[str, str]:
    """dataset.json's channel_names: ``--modality`` per channel (one value applies to all),
    else the ``--channels`` names, else "image"; "CT" selects nnU-Net's CT normalisation,
    anything else z-score. DICOM channels chosen by one ``--series-description`` pattern each
    are named by their patterns without wildcards (a CT channel stays "CT", for its
    normalisation): the names by which ``predict`` finds the same series in a DICOM folder
    (dicom_cases.model_rules), which two channels both named "MR" could not tell apart."""
    n = max(1, len(options.channels), dicom_channels)
    modality = list(options.modality)
    if modality and len(modality) not in (1, n):
        raise DataError(f"--modality lists {len(modality)} values for {n} channel(s)",
                        hint="give one modality for all channels, or one per channel")
    if not modality and not options.channels:
        findings.append(notice("", "no --modality: nnU-Net normalises the images with z-score; "
                                   "pass --modality CT for CT (intensity clipping and scaling)"))
    patterns = [p.strip("*? ") or f"series {i}" for i, p in
                enumerate(options.series_description)] if dicom_channels > 1 else []
    names = (modality * n if len(modality) == 1 else modality or list(options.channels)
             or (patterns * n if len(patterns) == 1 else patterns) or ["image"] * n)
    if len(patterns) == n > 1:
        names = ["CT" if name.upper() == "CT" else pattern
                 for name, pattern in zip(names, patterns, strict=True)]
    return {str(i): name for i, name in enumerate(names)}


def _split(ids: Sequence[str], classes: Sequence[frozenset[int] | None], plan: LabelPlan,
           fraction: float, seed: int, findings: list[Finding]) -> list[str]:
    """train/test for labelled cases (``classes`` not None): a seeded sample of ``fraction``,
    rounded down, of the sorted ids, then changed where a class would have no training case
    (nnU-Net would train a class it never sees); "unlabelled" for images without segmentation.
    """
    holds = {i: c for i, c in zip(ids, classes, strict=True) if c is not None}
    labelled = sorted(holds)
    n_test = math.floor(len(labelled) * fraction + 1e-9)
    rng = random.Random(seed)
    test = set(rng.sample(labelled, n_test))
    training = Counter(c for i in labelled if i not in test for c in holds[i])
    names = {v: k for k, v in plan.classes.items()}
    for cls in sorted(names):
        if training[cls] or not any(cls in holds[i] for i in test):
            continue
        donor = min(i for i in test if cls in holds[i])
        spare = [i for i in labelled if i not in test and all(training[c] > 1 for c in holds[i])]
        test.discard(donor)
        training.update(holds[donor])
        swapped = ""
        if spare:
            back = rng.choice(spare)
            test.add(back)
            training.subtract(holds[back])
            swapped = f" and {back} to the test split in its place"
        findings.append(notice(donor, f"moved to training{swapped}: the test split held every "
                                      f"case of class {names[cls]!r}"))
    for cls in sorted(c for c in names if not any(c in held for held in holds.values())):
        findings.append(warning("", f"class {names[cls]!r} is in no segmentation: nnU-Net would "
                                    "train a class it never sees",
                                hint="add cases that show it, or remove it from labels.yaml"))
    return ["unlabelled" if c is None else "test" if i in test else "train"
            for i, c in zip(ids, classes, strict=True)]


def _classes(seg: SegInfo | None, plan: LabelPlan) -> frozenset[int] | None:
    """The classes a case's segmentation holds (from its segment table or label values)."""
    if seg is None:
        return None
    if seg.segments is not None:
        return frozenset(c for _, _, c in plan.segment_table(seg.segments) if c)
    return frozenset(c for c in plan.value_table(seg.values).values() if c)


# --------------------------------------------------------------------------------------------
# Workers: plain data in, findings out (everything crosses a process boundary)


@dataclass(frozen=True)
class _ScanTask:
    images: tuple[tuple[str, str], ...]  # (path, display) per channel
    segmentation: tuple[str, str] | None
    root: str  # files (and their data files) must lie inside, unless allow_outside
    allow_outside: bool
    max_bytes: int | None
    series: tuple[bool, ...] = ()  # per image: a DICOM series (checked when it was found)
    seg_format: str | None = None  # "dicom-seg" | "rtstruct": read by the DICOM label readers


@dataclass
class _Scan:
    findings: list[Finding]
    seg: SegInfo | None


def _scan_task(case: sources.SourceCase, options: ImportOptions,
               max_bytes: int | None) -> _ScanTask:
    seg = case.segmentation
    source = options.source
    root = source if source.is_dir() else case.images[0].path.parent  # a CSV: each file's own
    return _ScanTask(tuple((str(f.path), f.display) for f in case.images),
                     (str(seg.path), seg.display) if seg else None, str(root),
                     options.allow_outside_source, max_bytes,
                     tuple(f.is_series for f in case.images), _dicom_label(seg))


def _dicom_label(seg: SourceItem | None) -> str | None:
    return seg.format_name if seg is not None and seg.format_name in DICOM_LABELS else None


def _scan(task: _ScanTask) -> _Scan:
    """Headers of a case's files; a plain label map's values (its voxels are needed for them)."""
    import SimpleITK as sitk

    findings: list[Finding] = []
    first: tuple[str, tuple[int, ...]] | None = None
    for k, (path, display) in enumerate(task.images):
        if task.series and task.series[k]:
            continue  # dicom_cases checked the series' headers
        reader = _inspect(path, display, task, findings) and _header(path, display, findings)
        if not reader:
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
    if task.seg_format is not None:
        try:
            segments = dicom_cases.segments_of(SourceItem(Path(path), display, (),
                                                          task.seg_format))
        except DataError as exc:
            findings.append(error(display, exc.args[0], hint=exc.hint))
            return _Scan(findings, None)
        return _Scan(findings, SegInfo(display, segments))
    reader = _inspect(path, display, task, findings) and _header(path, display, findings)
    if not reader:
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


def _inspect(path: str, display: str, task: _ScanTask, findings: list[Finding]) -> bool:
    """Whether the file may be read (payload.py): inside the source folder (a symbolic link
    may point anywhere), its data files too, a size a worker can hold, its data whole and
    finite (NaN in a NIfTI is visible only there: SimpleITK reads it as 0)."""
    file, root = Path(path), Path(task.root)
    if not task.allow_outside and not payload.inside(file, root):
        findings.append(error(display, f"a symbolic link to {file.resolve()}, outside the source "
                              f"folder {root}: hpcnn reads only files inside it",
                              hint="copy the file into the source folder, or pass "
                                   "--allow-outside-source if it is really yours to import"))
        return False
    problems = payload.examine(file, root=root, allow_outside=task.allow_outside,
                               max_bytes=task.max_bytes)
    findings.extend(error(display, p.message, hint=p.fix) for p in problems)
    return not problems


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
    """ITK's long messages cut to the line that gives the reason: its ERROR line, or the last
    line of the reader's own trace when the ERROR line only introduces it ("expected 16000
    bytes but received 11969")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    at = next((i for i in range(len(lines) - 1, -1, -1) if "ERROR:" in lines[i]), None)
    reason = lines[-1] if lines else "unknown error"
    if at is not None:
        reason = lines[at].split("ERROR:", 1)[1].strip()
        if reason.endswith(":") and at < len(lines) - 1:
            reason = re.sub(r"^\[\w+\]\s*\w+:\s*", "", lines[-1])
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
    anonymize: bool
    series: tuple[tuple[str, ...], ...] = ()  # per image: a DICOM series' files in order
    seg_format: str | None = None  # "dicom-seg" | "rtstruct"
    source_uids: tuple[str, ...] = ()  # the series' SOP Instance UIDs, for a DICOM-SEG
    source_frames: tuple[int, ...] = ()  # an enhanced source's frames, in volume order


def _write_tasks(
    cases: Sequence[sources.SourceCase],
    ids: Sequence[str],
    splits: Sequence[str],
    scans: Sequence[_Scan],
    plan: LabelPlan,
    priority: tuple[int, ...],
    ending: str,
    tmp: Path,
    anonymize: bool,
    dicom: dict[str, dicom_cases.DicomCase],
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
            copy_images=not anonymize and all(f.extension == ending
                                              and not payload.data_files(f.path)
                                              for f in case.images),
            segmentation=(str(seg.path), seg.display) if seg else None,
            label_output=str(tmp / labels_dir / f"{case_id}{ending}") if seg else None,
            slicer=tuple(plan.segment_table(info.segments))
            if info is not None and info.segments else None,
            values=tuple(plan.value_table(info.values).items())
            if info is not None and info.segments is None else (),
            priority=priority,
            class_names=tuple(plan.classes),
            dtype=plan.dtype.name,
            anonymize=anonymize,
            series=tuple(tuple(str(p) for p in f.files) for f in case.images),
            seg_format=_dicom_label(seg),
            source_uids=tuple(s.sop_uid for s in dicom[case.key].labelled)
            if case.key in dicom else (),
            source_frames=tuple(s.frame for s in dicom[case.key].labelled)
            if case.key in dicom else (),
        ))
    for sub in ("imagesTs", "labelsTs"):
        if not any(Path(p).parent.name == sub for t in tasks
                   for p in (*t.image_outputs, t.label_output) if p):
            (tmp / sub).rmdir()
    return tasks


def _write(task: _WriteTask) -> list[Finding]:
    """Read, check and write one case: images copied (same format) or converted, the
    segmentation turned into a class map on the first image's grid."""
    import SimpleITK as sitk

    findings: list[Finding] = []
    reference: Geometry | None = None
    outputs = zip(task.images, task.image_outputs, strict=True)
    for index, ((path, display), output) in enumerate(outputs):
        copy = task.copy_images
        files = task.series[index] if task.series else ()
        image = (_read_series(files, display, findings) if files
                 else _read_image(path, display, copy, findings))
        if image is None:
            continue
        geometry = Geometry.of(image)
        if reference is None:
            reference = geometry
        else:
            kind, _ = relation(geometry, reference)
            if kind in ("shifted", "resampled"):
                findings.append(error(display, f"channel {index} is on another grid than channel "
                                      f"0 ({geometry.describe(reference)} vs "
                                      f"{reference.describe(geometry)})",
                                      hint="resample the channels of a case onto one grid"))
                continue
            if kind == "copied":
                if not isinstance(image, sitk.Image):
                    image = sitk.ReadImage(path)
                reference.apply(image)
                copy = False
                findings.append(fix(display, "geometry differs slightly from channel 0's: "
                                             "copied channel 0's geometry"))
        if copy:
            shutil.copyfile(path, output)
        else:
            if task.anonymize:  # names, ids, dates a scanner or Slicer put in the header
                for key in image.GetMetaDataKeys():
                    image.EraseMetaData(key)
            sitk.WriteImage(image, output, True)
    if reference is None or any(f.level == "error" for f in findings) or not task.segmentation:
        return findings
    labels = _labels(task, reference, findings)
    if labels is not None:
        out = sitk.GetImageFromArray(labels)
        reference.apply(out)
        sitk.WriteImage(out, task.label_output, True)
    return findings


def _read_series(files: Sequence[str], display: str, findings: list[Finding]) -> Any:
    """A DICOM series as an image (formats/dicom_series.py), or None after an error."""
    try:
        return dicom_series.read_volume([Path(f) for f in files])
    except Exception as exc:  # a decoder or a damaged slice: pydicom raises many kinds
        findings.append(error(display, f"cannot read the series' pixel data: {exc}",
                              hint="export the series again (uncompressed if in doubt)"))
        return None


def _read_image(path: str, display: str, copy: bool, findings: list[Finding]) -> Any:
    """The image, checked for NaN and infinite voxels; or only its header (a reader) for a file
    that is copied as it is and has nothing to look for in its voxels: whole-number voxels
    whose raw or gzip data the scan verified (payload.verify), so they are not decompressed a
    second time. None after an error."""
    import SimpleITK as sitk

    floats = (sitk.sitkFloat32, sitk.sitkFloat64)
    try:
        if copy:
            header = sitk.ImageFileReader()
            header.SetFileName(path)
            header.ReadImageInformation()
            found = payload.layout(Path(path))
            if (header.GetPixelID() not in floats and found is not None
                    and found.encoding in ("raw", "gzip")):
                return header
        image = sitk.ReadImage(path)
    except RuntimeError as exc:
        findings.append(_unreadable(display, exc))
        return None
    if image.GetPixelID() in floats:
        bad = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
        if bad:
            findings.append(error(display, f"{bad} voxel(s) are NaN or infinite",
                                  hint="fill them (e.g. with the background intensity) before "
                                       "importing; nnU-Net cannot normalise them"))
            return None
    return image


def _labels(task: _WriteTask, image: Geometry, findings: list[Finding]) -> np.ndarray | None:
    """The case's class map on the reference image's grid, or None after an error."""
    import SimpleITK as sitk

    path, display = task.segmentation  # type: ignore[misc]
    if task.seg_format is not None:
        data = _dicom_layers(task, image, findings)
        if data is None:
            return None
        seg_geometry = image
    else:
        try:
            seg = sitk.ReadImage(path)
        except RuntimeError as exc:
            findings.append(_unreadable(display, exc))
            return None
        data = sitk.GetArrayViewFromImage(seg)
        seg_geometry = Geometry.of(seg)
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
                                  hint=f"pass --overlap "
                                       f"{shlex.quote(f'{name[o.second]},{name[o.first]}')} "
                                       "(the first listed wins), or fix the overlap in Slicer"))
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
    if not labels.any():
        findings.append(warning(display, "empty segmentation: no labelled voxels"
                                + (" of any class" if np.any(data) else ""),
                                hint="check the export; an empty label map teaches nnU-Net that "
                                     "the structures are absent"))
        return np.zeros(image.size[::-1], dtype)
    placed, kind, total, inside = onto_image(labels, seg_geometry, image)
    if not inside:
        findings.append(error(display, "does not overlap its image at all (segmentation "
                              f"{seg_geometry.describe(image)}; image "
                              f"{image.describe(seg_geometry)})",
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
                                        "placed on the image grid")
                        if task.slicer is not None and within(seg_geometry, image)
                        else fix(display, f"covers another part of the same grid as its image "
                                          f"({seg_geometry.describe(image)} vs "
                                          f"{image.describe(seg_geometry)}): cropped/padded onto "
                                          "the image grid"))
    elif kind == "resampled":
        findings.append(fix(display, f"on another grid than its image "
                                     f"({seg_geometry.describe(image)} vs "
                                     f"{image.describe(seg_geometry)}): resampled onto the image "
                                     "grid (nearest neighbour)"))
        if not placed.any():
            findings.append(warning(display, "no labelled voxel is left after resampling onto "
                                    "the image grid", hint="check the segmentation's geometry"))
    return placed


def _dicom_layers(task: _WriteTask, image: Geometry, findings: list[Finding]) -> Any:
    """A DICOM-SEG's or RTSTRUCT's segments as layers on the image grid, or None after an
    error; the RTSTRUCT's drawing problems as warnings."""
    path, display = task.segmentation  # type: ignore[misc]
    item = SourceItem(Path(path), display, (), task.seg_format)
    try:
        data, notes = dicom_cases.label_layers(item, task.source_uids, image.size,
                                               image.spacing, image.origin, image.direction,
                                               task.source_frames)
    except DataError as exc:
        findings.append(error(display, exc.args[0], hint=exc.hint))
        return None
    findings += [warning(file, message, hint=hint) for file, message, hint in notes]
    return data


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
        aside = leftovers.work_folder(replaces, leftovers.REPLACED)
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

