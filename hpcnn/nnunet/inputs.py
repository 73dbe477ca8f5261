"""Images to predict, as the user has them, and the same images in nnU-Net's naming.

nnU-Net's predictor wants ``CASE_0000<file_ending>`` files in one folder and crashes or skips
silently on anything else (nnunet-facts.md). Here INPUT is any mix of folders (searched
recursively, hidden files skipped), globs and files, in any format the dataset import reads,
named as the user likes:

- a one-channel model takes every image as its own case, named after its file;
- a model with channels ``T1, T2`` (dataset.json's ``channel_names``) takes ``case7_T1.nrrd``
  and ``case7_T2.nrrd`` as the two channels of case ``case7``, by the import's naming rules
  (sources.py);
- files already in nnU-Net's naming (every image ends in ``_0000``, ``_0001`` ...) are cases by
  their nnU-Net case name, channels by number, for either kind of model;
- segmentations lying next to the images (``case7.seg.nrrd``, ``case7_label.nrrd``) are skipped.

Every problem of every file (unreadable, not 3-D, several values per voxel, a missing or unnamed
channel, channels of different sizes, two inputs that would write one output) is collected and
raised at once, before anything is written. ``stage`` then gives nnU-Net its list of files per
case: the images themselves where they already are in the model's format, converted copies named
``case_NNNN_CCCC<file_ending>`` (numbered, so no user name can clash) for the others.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hpcnn import formats
from hpcnn.dataset import dicom_cases, payload, sources
from hpcnn.dataset.findings import Finding, error, notice, shorten, summary_lines
from hpcnn.errors import DataError
from hpcnn.formats.source import SourceItem

_NNUNET_CHANNEL = re.compile(r".+_(\d{4})")
_ONE_FILE = {".nhdr": ".nrrd", ".mhd": ".mha"}


@dataclass(frozen=True)
class PredictCase:
    """One case to predict: its images in channel order and the name its result gets."""

    name: str  # relative output path without extension: the image's own name, or the case's
    images: tuple[SourceItem, ...]

    @property
    def extension(self) -> str:
        """The input's format, which the result keeps unless ``--format`` says otherwise (a
        detached header's result is one file of the same format: it is renamed into place)."""
        if self.images[0].is_series:
            return ".nii.gz"  # a label map; --format dicom-seg / rtstruct for DICOM objects
        ext = self.images[0].extension
        return _ONE_FILE.get(ext, ext)

    def output(self, extension: str | None) -> str:
        ext = extension or self.extension
        return f"{self.name}{ext}"


def collect(items: Sequence[str], channel_names: Sequence[str], *,
            exclude: Path | None = None) -> tuple[list[PredictCase], list[Finding]]:
    """The cases in INPUT items for a model with these channels, and notices; DataError (every
    problem at once) when a file cannot be used. Files under ``exclude`` (the output folder,
    when it lies inside an input folder) are not inputs."""
    files, series, findings = _files(items, exclude.resolve() if exclude else None,
                                     dicom_cases.model_rules(channel_names))
    images = [f for f in files if not _is_segmentation(f)]
    nnunet_named = bool(images) and all(
        _NNUNET_CHANNEL.fullmatch(formats.split_extension(f.path.name)[0]) for f in images)
    n = len(channel_names)
    if nnunet_named:
        tokens = tuple(f"{c:04d}" for c in range(n))
    elif n > 1:
        tokens = tuple(channel_names)
        if len({t.casefold() for t in tokens}) < n:
            raise DataError(f"the model's channels {', '.join(tokens)} cannot be told apart by "
                            "file name",
                            hint="name the files in nnU-Net's way: CASE_0000, CASE_0001, ... in "
                                 "channel order")
    else:
        tokens = ()
    wanted = f"{n} channel(s) ({', '.join(channel_names)})"
    entries = []
    skipped = []
    for file in files:
        stem, ext = formats.split_extension(file.path.name)
        entry = sources._by_name(file, stem, ext or "", tokens)
        if entry.is_seg:
            skipped.append(file.display)
        elif tokens and entry.channel is None:
            said = (f"is channel {int(stem[-4:])} by its name" if nnunet_named
                    else "does not say which channel it is")
            findings.append(error(file.display, f"the model takes {wanted}; this file {said}",
                                  hint=f"give each case one file per channel, named "
                                       f"CASE_{tokens[0]}{ext}"
                                       + (f", CASE_{tokens[1]}{ext} ..." if n > 1 else "")))
        else:
            entries.append(entry)
    if skipped:
        findings.append(notice("", f"skipped {len(skipped)} segmentation(s) among the inputs: "
                                   f"{shorten(skipped)}"))
    if tokens:
        pairs, pairing = sources._pair(entries, tokens)
        findings += pairing
        cases = [PredictCase(_case_name(c), c.images) for c in pairs]
    else:
        cases = [PredictCase(formats.split_extension(e.file.display)[0], (e.file,))
                 for e in entries]
    for channels in series:  # named after its folder (a folder's display holds no "/")
        cases.append(PredictCase(channels[0].display.split("/", 1)[0], channels))
    if not cases and not any(f.level == "error" for f in findings):
        raise DataError(f"no images found in {', '.join(items)}",
                        hint="images end in .nrrd, .nii, .nii.gz or .mha")
    refuse(findings)
    return cases, findings


def _is_segmentation(file: SourceItem) -> bool:
    """The dataset import's rule (``.seg.nrrd``, ``_label``, ``_mask`` ...)."""
    stem, ext = formats.split_extension(file.path.name)
    return sources._by_name(file, stem, ext or "", ()).is_seg


def _case_name(case: sources.SourceCase) -> str:
    """The case key in its first image's folder: ``sub/case7`` for ``sub/case7_T1.nrrd``."""
    folder = case.images[0].display.rpartition("/")[0]
    return f"{folder}/{case.key}" if folder else case.key


def refuse(findings: Sequence[Finding]) -> None:
    """DataError naming every file with an error and its fix, when there is one."""
    errors = [f for f in findings if f.level == "error"]
    if not errors:
        return
    if len(errors) == 1:
        raise DataError(errors[0].line(), hint=errors[0].hint or None)
    lines = [f"{len(errors)} problems in the input; nothing was predicted:"]
    lines += ["  " + text.replace("\n", "\n  ") for _, text in summary_lines(errors)]
    raise DataError("\n".join(lines))


def _files(items: Sequence[str], exclude: Path | None, rules: Sequence[dicom_cases.Rule],
           ) -> tuple[list[SourceItem], list[tuple[SourceItem, ...]], list[Finding]]:
    """Every image file the items name: folders recursively (display relative to the folder),
    files and glob matches by name; and each DICOM folder's series, one per channel ``rules``
    choose."""
    found: list[SourceItem] = []
    series: list[tuple[SourceItem, ...]] = []
    ignored: list[str] = []
    problems: list[Finding] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            children = [c for c in sorted(p for p in path.rglob("*") if p.is_file())
                        if not any(part.startswith(".") for part in c.relative_to(path).parts)
                        and not (exclude is not None and c.resolve().is_relative_to(exclude))]
            folders = _dicom_folders(path, children)
            for child in children:
                rel = child.relative_to(path)
                if formats.split_extension(child.name)[1] is not None:
                    found.append(SourceItem(child, rel.as_posix()))
                elif (rel.parts[0] if len(rel.parts) > 1 else "") in folders:
                    folders[rel.parts[0] if len(rel.parts) > 1 else ""].files.append(
                        (child, rel.as_posix()))
                else:
                    ignored.append(rel.as_posix())
            for folder in folders.values():
                channels = dicom_cases.image_series(folder, problems, rules)
                if channels is not None:
                    series.append(channels)
            continue
        matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(item)))]
        if not matches and not glob.has_magic(item):
            problems.append(error(item, "no such file or folder",
                                  hint="check the path (quote a glob so hpcnn expands it)"))
        elif not matches:
            problems.append(error(item, "the pattern matches no file", hint="check the pattern"))
        for match in matches:
            if match.is_dir():
                problems.append(error(str(match), "a folder matched by a pattern",
                                      hint="pass folders by name, or make the pattern match "
                                           "files"))
            elif formats.split_extension(match.name)[1] is None:
                problems.append(error(str(match), "not an image file hpcnn reads",
                                      hint="pass .nrrd, .nii, .nii.gz or .mha files"))
            else:
                found.append(SourceItem(match, match.name))
    if ignored:
        problems.append(notice("", f"ignored {len(ignored)} file(s) that are not images: "
                                   f"{shorten(ignored)}"))
    return found, series, problems


def _dicom_folders(root: Path, files: Sequence[Path]) -> dict[str, sources.DicomFolder]:
    """The DICOM series folders under an input folder, as the dataset import finds its case
    folders (sources.py): ``root`` itself for DICOM files lying in it, else its top-level
    folders that hold DICOM files (keyed by that folder's name)."""
    from hpcnn.formats.dicom_series import looks_like_dicom

    folders: dict[str, sources.DicomFolder] = {}
    for path in files:
        if formats.split_extension(path.name)[1] is None and looks_like_dicom(path):
            parts = path.relative_to(root).parts
            key = parts[0] if len(parts) > 1 else ""
            folders.setdefault(key, sources.DicomFolder(root / key, key or root.name))
    return folders


def check_images(cases: Sequence[PredictCase], channel_names: Sequence[str], *,
                 max_bytes: int | None) -> None:
    """Every file through ``dataset import``'s own checks (payload.examine: a data file outside
    the input folder, more than ``max_bytes`` of voxels, damaged or cut-short data, NaN or
    infinite voxels), then its header; DataError naming each file that the model cannot take,
    before any worker reads a voxel."""
    import SimpleITK as sitk

    findings: list[Finding] = []
    n = len(channel_names)
    for case in cases:
        first: tuple[str, tuple[int, ...]] | None = None
        for file in case.images:
            if file.is_series:
                continue  # its headers were checked when it was found (dicom_cases.py)
            problems = payload.examine(file.path, root=_root(file), allow_outside=False,
                                       max_bytes=max_bytes, command="predict")
            findings += [error(file.display, p.message, hint=p.fix) for p in problems]
            if problems:
                continue
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(file.path))
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                findings.append(error(file.display, "cannot be read as an image",
                                      hint="it is truncated, empty or not an image: export it "
                                           "again, or leave it out of the input"))
                continue
            size = tuple(reader.GetSize())
            if reader.GetDimension() != 3:
                findings.append(error(file.display, f"is a {reader.GetDimension()}-D image "
                                      f"(size {'x'.join(map(str, size))}); the model segments "
                                      "3-D volumes",
                                      hint="pass the 3-D volume, not a slice or a series"))
            elif reader.GetNumberOfComponents() != 1:
                findings.append(error(file.display, f"has {reader.GetNumberOfComponents()} "
                                      f"values per voxel; the model takes {n} channel(s) "
                                      f"({', '.join(channel_names)}), one file each",
                                      hint="save each channel as its own single-value image"
                                           + (" named CASE_<channel>" if n > 1 else "")))
            elif first is None:
                first = (file.display, size)
            elif size != first[1]:
                findings.append(error(file.display, f"size {'x'.join(map(str, size))} differs "
                                      f"from {first[0]} ({'x'.join(map(str, first[1]))}), "
                                      "another channel of the case",
                                      hint="resample a case's channels onto one grid"))
    refuse(findings)


def _root(file: SourceItem) -> Path:
    """The folder the user named that holds ``file`` (its own folder for a file or a glob's
    match): a detached header's data must lie inside it, as in ``dataset import``."""
    depth = len(PurePosixPath(file.display).parts)
    return file.path.parents[depth - 1] if depth else file.path.parent


def check_output_folder(output: Path, items: Sequence[str]) -> None:
    """DataError when the output folder is an input folder."""
    resolved = output.expanduser().resolve()
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir() and path.resolve() == resolved:
            raise DataError(f"{output}: the output folder is the input folder; results would "
                            "mix with (and could replace) the images",
                            hint="write the results to another folder")
    if output.exists() and not output.is_dir():
        raise DataError(f"{output}: exists and is not a folder",
                        hint="name a folder for the results (it is created when missing)")


def check_outputs(cases: Sequence[PredictCase], extension: str | None, output: Path, *,
                  force: bool = False, records: Sequence[str] = ()) -> list[Path]:
    """The result path of every case; DataError when two cases would write one file, when a
    result would replace an input, or (without ``force``) when a result or one of ``records``
    (files every prediction writes into ``output``) already exists: an earlier prediction, or
    a folder of manual segmentations under the same names, is never replaced silently."""
    inputs = {f.path.resolve(): f.display for c in cases for f in c.images}
    by_name: dict[str, list[PredictCase]] = {}
    for case in cases:
        by_name.setdefault(case.output(extension).casefold(), []).append(case)
    findings = []
    for clash in by_name.values():
        if len(clash) > 1:
            names = ", ".join(f.display for c in clash for f in c.images)
            findings.append(error("", f"{names} would all be written to "
                                  f"{clash[0].output(extension)}",
                                  hint="rename one of them, or predict them into separate "
                                       "folders"))
    paths = [output / c.output(extension) for c in cases]
    for case, path in zip(cases, paths, strict=True):
        if path.resolve() in inputs:
            findings.append(error(case.images[0].display, f"its result {path} would replace the "
                                  f"input {inputs[path.resolve()]}",
                                  hint="write the results to another folder"))
    refuse(findings)
    if not force:
        refuse_existing([*paths, *(output / r for r in records)], output)
    return paths


def refuse_existing(paths: Sequence[Path], output: Path) -> None:
    """DataError naming every one of ``paths`` (inside ``output``) that exists already."""
    existing = [p.relative_to(output).as_posix() for p in paths if os.path.lexists(p)]
    if existing:
        raise DataError(f"{output}: {len(existing)} file(s) this prediction would write exist "
                        f"already: {shorten(existing, 8)}; nothing was predicted",
                        hint="write the results to another (or a new) folder, or pass --force "
                             "to replace them")


def case_id(index: int) -> str:
    """The name nnU-Net knows case ``index`` by while it predicts (``case_0007``): numbered, so
    no user's name can clash or confuse nnU-Net's channel suffix; its result is
    ``case_0007<file_ending>``."""
    return f"case_{index:04d}"


def stage(cases: Sequence[PredictCase], folder: Path, file_ending: str, *,
          every_file: bool = False) -> list[list[str]]:
    """nnU-Net's list of lists of files, channel by channel. An image already in the model's
    format is read where it is (nnU-Net takes file lists, and a detached header still finds its
    data); any other is converted into ``folder`` as ``case_NNNN_CCCC<file_ending>``.

    ``every_file``: ``folder`` gets every image under that name, those in the model's format
    hard-linked (copied across file systems), so that the folder alone is nnU-Net's input folder:
    what a prediction job on a cluster, where the user's paths mean nothing, is given."""
    import SimpleITK as sitk

    from hpcnn.formats.dicom_series import read_volume

    lists = []
    for index, case in enumerate(cases):
        files = []
        for channel, image in enumerate(case.images):
            in_format = (not image.is_series
                         and image.path.name.lower().endswith(file_ending.lower()))
            if in_format and not every_file:
                files.append(str(image.path))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{case_id(index)}_{channel:04d}{file_ending}"
            if in_format:
                _link_or_copy(image.path, target)
            else:
                sitk.WriteImage(read_volume(image.files) if image.is_series
                                else sitk.ReadImage(str(image.path)), str(target), False)
            files.append(str(target))
        lists.append(files)
    return lists


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` holds ``source``'s bytes: a hard link (no space used), else a copy through a
    temporary name."""
    import shutil

    try:
        os.link(source, target)
    except OSError:
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
