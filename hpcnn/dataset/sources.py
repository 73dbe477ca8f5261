"""Which files make up which case: images, segmentations and channels in an export folder or a
CSV list, paired by name.

Naming rules (folder input, file names compared case-insensitively):

- images and segmentations end in ``.nrrd``, ``.seg.nrrd``, ``.nii``, ``.nii.gz``, ``.mha`` or
  the detached headers ``.nhdr`` (``.seg.nhdr``) and ``.mhd``, whose data files (``.raw``,
  ``.raw.gz``, ``.zraw``, even a ``.nii``) belong to them and are never cases of their own;
  other files are ignored and listed in a notice (Slicer scenes hold ``.mrml``, ``.png`` ...),
  and so are hidden files and nnU-Net's own folders (``nnUNet_raw`` ...).
- a file is a segmentation when it ends in ``.seg.nrrd`` or its name ends in a separator
  (space, ``_``, ``-``, ``.``) and ``label``, ``labels``, ``labelmap``, ``seg``, ``segmentation``
  or ``mask``; the rest of the name is the case (``case7.seg.nrrd``, ``case7_label.nii.gz``,
  ``case7-label.nrrd``, ``case7 Segmentation.seg.nrrd`` all belong to ``case7``).
- an image's case is its name, less a trailing ``_image``/``_img``/``_volume``/``_vol``; with
  ``--channels T1,T2`` the name must end in a separator and one of the channels
  (``case7_T1.nrrd``), which becomes the channel index in that order.
- ``--pattern REGEX`` replaces the rules for names they do not fit: it is searched in each
  file's path relative to the folder, without extension and with ``/`` separators; its named
  group ``case`` gives the case, a group ``label`` that takes part in the match marks a
  segmentation (without that group the suffix rule decides), a group ``channel`` the channel.
  Files it does not match are ignored and listed.

DICOM: a folder that holds DICOM files (recognised by content, any names) is a case folder, the
top-level folder under the source (or the source itself for DICOM files lying in it); its files
go to dicom_cases.py, which sorts them into series by their headers, and the files of other
formats in it are its label.

CSV input: a header row with ``image`` and optionally ``segmentation`` (or ``label``/``mask``),
``case`` and ``channel``; one row per image, paths relative to the CSV file; an empty
segmentation means an unlabelled image.

Everything is sorted, so the same files always give the same cases in the same order.
"""

from __future__ import annotations

import csv
import errno
import os
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcnn import formats
from hpcnn.dataset import payload
from hpcnn.dataset.findings import Finding, error, fix, notice, shorten
from hpcnn.errors import DataError
from hpcnn.formats.source import SourceItem

_SEP = r"[ _.\-]+"
_SEG_WORDS = "(?:label|labels|labelmap|seg|segmentation|mask)"
_SEG_SUFFIX = re.compile(rf"(?i)^(?P<key>.*?){_SEP}{_SEG_WORDS}$")
_SEG_ONLY = re.compile(rf"(?i)^{_SEG_WORDS}$")
_IMAGE_SUFFIX = re.compile(rf"(?i)^(?P<key>.+?){_SEP}(?:image|img|volume|vol)$")
_NNUNET_DIRS = {"nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"}  # a workspace as source
_CSV_COLUMNS = {
    "image": "image", "img": "image", "volume": "image",
    "segmentation": "segmentation", "seg": "segmentation", "label": "segmentation",
    "labels": "segmentation", "mask": "segmentation",
    "case": "case", "case_id": "case", "channel": "channel",
}


@dataclass(frozen=True)
class SourceCase:
    """One case: its name as found, its images in channel order, its segmentation if any."""

    key: str
    images: tuple[SourceItem, ...]
    segmentation: SourceItem | None


@dataclass
class DicomFolder:
    """A case folder holding DICOM files (any names, nested): its files, to be sorted into
    series by their headers (dataset/dicom_cases.py), and the label files of other formats
    lying in it."""

    folder: Path
    display: str
    files: list[tuple[Path, str]] = field(default_factory=list)
    labels: list[SourceItem] = field(default_factory=list)


@dataclass
class Discovery:
    cases: list[SourceCase] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    dicom: list[DicomFolder] = field(default_factory=list)


@dataclass
class _Entry:
    file: SourceItem
    key: str
    is_seg: bool
    channel: str | None


def discover(
    source: Path, *, channels: Sequence[str] = (), pattern: str | None = None
) -> Discovery:
    """The cases in a folder or CSV file, with every pairing problem as a finding."""
    if source.is_symlink() and not source.exists():
        raise DataError(f"{source}: a symbolic link to {os.readlink(source)}, which "
                        + ("loops back on itself" if _loops(source) else "does not exist"),
                        hint="pass the folder the link was meant to point to")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DataError(f"{source}: a single file; import takes a folder of exports or a "
                            ".csv list of them", hint="pass the folder that holds it")
        if pattern:
            raise DataError("--pattern applies to folders; a CSV names its cases itself",
                            hint="drop --pattern, or add a 'case' column to the CSV")
        entries, findings = _csv_entries(source, channels)
        dicom: list[DicomFolder] = []
    elif source.is_dir():
        entries, findings, dicom = _folder_entries(source, channels, pattern)
    else:
        raise DataError(f"{source}: no such folder or CSV file")
    cases, pairing = _pair(entries, channels)
    return Discovery(cases, findings + pairing, dicom)


def _folder_entries(
    root: Path, channels: Sequence[str], pattern: str | None
) -> tuple[list[_Entry], list[Finding], list[DicomFolder]]:
    """Files by the naming rules, and the case folders that hold DICOM files: a top-level
    folder of ``root`` (or ``root`` itself for DICOM files lying directly in it) takes every
    file under it that no format claims by name as a DICOM candidate, and the files it holds
    in other formats as its labels."""
    from hpcnn.formats.dicom_series import looks_like_dicom

    regex = _compile(pattern) if pattern else None
    entries: list[_Entry] = []
    ignored: list[str] = []
    loops: list[str] = []
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part in _NNUNET_DIRS for part in rel.parts):
            continue
        if path.is_file():
            files.append(path)
        elif path.is_symlink() and _loops(path):
            loops.append(rel.as_posix())
    data = {d.resolve() for p in files if p.name.lower().endswith(formats.detached_endings())
            for d in payload.data_files(p)}
    folders: dict[str, DicomFolder] = {}
    for path in files:
        if formats.split_extension(path.name)[1] is None and looks_like_dicom(path):
            parts = path.relative_to(root).parts
            key = parts[0] if len(parts) > 1 else ""
            if key not in folders:
                folders[key] = DicomFolder(root / key, key or root.name)
    for path in files:
        rel = path.relative_to(root)
        if path.resolve() in data:
            continue  # a detached header's data: read with it
        stem, ext = formats.split_extension(path.name)
        display = rel.as_posix()
        case_folder = folders.get(rel.parts[0] if len(rel.parts) > 1 else "")
        if case_folder is not None:
            if ext is None:
                case_folder.files.append((path, display))
            else:
                case_folder.labels.append(SourceItem(path, display))
            continue
        if ext is None:
            ignored.append(display)
            continue
        file = SourceItem(path, display)
        if regex is not None:
            match = regex.search(rel.with_name(stem).as_posix())
            if not match or not match.group("case"):
                ignored.append(display)
                continue
            is_seg = (bool(match.group("label")) if "label" in regex.groupindex
                      else _is_seg(stem, ext))
            channel = match.group("channel") if "channel" in regex.groupindex else None
            entries.append(_Entry(file, match.group("case"), is_seg, channel))
        else:
            entries.append(_by_name(file, stem, ext, channels))
    findings = [error(rel, "a symbolic link that loops back on itself",
                      hint="remove the link, or point it at the file it was meant for")
                for rel in loops]
    if ignored:
        why = "not matched by --pattern or not an image" if regex else "not an image file"
        findings.append(notice("", f"ignored {len(ignored)} file(s), {why}: {shorten(ignored)}"))
    return entries, findings, [folders[k] for k in sorted(folders)]


def _loops(path: Path) -> bool:
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 and 3.12
        return True
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    if "case" not in regex.groupindex:
        raise DataError(f"--pattern {pattern!r} has no (?P<case>...) group",
                        hint=r"e.g. --pattern '(?P<label>mask_)?(?:img_)?(?P<case>\d+)'")
    return regex


def _is_seg(stem: str, ext: str) -> bool:
    return (ext in (".seg.nrrd", ".seg.nhdr") or bool(_SEG_SUFFIX.match(stem))
            or bool(_SEG_ONLY.match(stem)))


def _by_name(file: SourceItem, stem: str, ext: str, channels: Sequence[str]) -> _Entry:
    """The default naming rules (module docstring)."""
    if _is_seg(stem, ext):
        m = _SEG_SUFFIX.match(stem)
        key = m.group("key") if m else ("" if _SEG_ONLY.match(stem) else stem)
        key, _ = _strip_channel(key, channels)
        return _Entry(file, key, True, None)
    key, channel = _strip_channel(stem, channels)
    m = _IMAGE_SUFFIX.match(key)
    return _Entry(file, m.group("key") if m else key, False, channel)


def _strip_channel(stem: str, channels: Sequence[str]) -> tuple[str, str | None]:
    """``("case7", "T1")`` for ``case7_T1``; longer channel names are tried first."""
    for ch in sorted(channels, key=len, reverse=True):
        m = re.fullmatch(rf"(?is)(?P<key>.+?){_SEP}{re.escape(ch)}", stem)
        if m:
            return m.group("key"), ch
    return stem, None


def _csv_entries(csv_path: Path, channels: Sequence[str]) -> tuple[list[_Entry], list[Finding]]:
    base = csv_path.parent
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    columns = {c: _CSV_COLUMNS.get(c.strip().lower()) for c in reader.fieldnames or []}
    if "image" not in columns.values():
        raise DataError(f"{csv_path}:1: no 'image' column (found: {', '.join(columns) or 'none'})",
                        hint="start the CSV with a header such as: image,segmentation")
    entries: list[_Entry] = []
    findings: list[Finding] = []
    for lineno, row in enumerate(reader, start=2):
        values = {columns[k]: (v or "").strip() for k, v in row.items() if columns.get(k)}
        where = f"{csv_path.name}:{lineno}"
        if not values.get("image"):
            findings.append(error(where, "no image on this row"))
            continue
        files = []
        for role in ("image", "segmentation"):
            if values.get(role):
                path = Path(values[role]).expanduser()
                path = path if path.is_absolute() else base / path
                if not path.is_file():
                    findings.append(error(where, f"{values[role]}: no such file"))
                    continue
                files.append((role, SourceItem(path, values[role])))
        for role, file in files:
            stem, ext = formats.split_extension(file.path.name)
            entry = _by_name(file, stem, ext or "", channels)
            entry.is_seg = role == "segmentation"
            if values.get("case"):
                entry.key = values["case"]
            if values.get("channel") and not entry.is_seg:
                entry.channel = values["channel"]
            entries.append(entry)
    return entries, findings


def _pair(entries: list[_Entry], channels: Sequence[str]) -> tuple[list[SourceCase], list[Finding]]:
    """Group by case (case-insensitively, Unicode-normalised: macOS stores names decomposed)."""
    findings: list[Finding] = []
    groups: dict[str, list[_Entry]] = {}
    for entry in entries:
        if not entry.key.strip(" _.-"):
            findings.append(error(entry.file.display, "cannot tell which case this file belongs "
                                  "to: its name is only a segmentation suffix",
                                  hint="rename it after its image (case7.seg.nrrd for case7.nrrd) "
                                       "or pass --pattern"))
            continue
        groups.setdefault(_norm(entry.key), []).append(entry)
    wanted = {ch.casefold(): i for i, ch in enumerate(channels)}
    cases: list[SourceCase] = []
    for norm in sorted(groups):
        group = groups[norm]
        images = [e for e in group if not e.is_seg]
        segs = [e for e in group if e.is_seg]
        if len(segs) > 1:
            findings.append(error(segs[0].file.display, "two segmentations for one case: "
                                  + ", ".join(e.file.display for e in segs),
                                  hint="keep one of them in the source folder"))
        if not images:
            for e in segs:
                findings.append(error(e.file.display, "segmentation without an image (no image "
                                      f"named like {e.key!r})",
                                      hint="add its image, or name the pair alike "
                                           "(case7.nrrd + case7.seg.nrrd) or pass --pattern"))
            continue
        by_channel: dict[int, list[_Entry]] = {}
        for e in images:
            if channels:
                index = wanted.get((e.channel or "").casefold())
                if index is None:
                    findings.append(error(e.file.display, "image of no known channel "
                                          f"(expected a name ending in one of: "
                                          f"{', '.join(channels)})",
                                          hint="rename it, or fix --channels"))
                    continue
            elif e.channel:
                findings.append(error(e.file.display, f"channel {e.channel!r} given but no "
                                      "--channels list", hint="pass --channels in channel order"))
                continue
            else:
                index = 0
            by_channel.setdefault(index, []).append(e)
        bad = False
        for index, found in sorted(by_channel.items()):
            if len(found) > 1:
                bad = True
                findings.append(error(found[0].file.display, "two images for one case"
                                      + (f" and channel {channels[index]}" if channels else "")
                                      + ": " + ", ".join(e.file.display for e in found),
                                      hint="keep one, or name them by channel and pass --channels"))
        missing = [channels[i] for i in range(len(channels)) if i not in by_channel]
        if missing and by_channel:
            bad = True
            have = ", ".join(e.file.display for e in images)
            findings.append(error(images[0].file.display, f"case {images[0].key!r} has no "
                                  f"{', '.join(missing)} image (found: {have})",
                                  hint="add the missing channel, or remove the case"))
        if bad or not by_channel or len(segs) > 1:
            continue
        ordered = tuple(by_channel[i][0].file for i in sorted(by_channel))
        cases.append(SourceCase(by_channel[min(by_channel)][0].key, ordered,
                                segs[0].file if segs else None))
    return cases, findings


def _norm(key: str) -> str:
    return unicodedata.normalize("NFC", key).casefold()


def case_ids(keys: Sequence[str]) -> tuple[list[str], list[Finding]]:
    """nnU-Net case ids for case names, in the same order.

    A case keeps its own name, made safe for every file system and shell (accents dropped, runs
    of other characters turned into ``_``: ``Pätient 02 ü`` → ``Patient_02_u``), when every name
    stays non-empty and distinct (case-insensitively, for macOS and Windows). Otherwise every case
    is numbered ``case_001``, ``case_002``... in sorted order, so no id depends on which name
    happened to collide; ``cases.csv`` maps the ids back to the files either way.
    """
    safe = [_sanitise(k) for k in keys]
    counts = Counter(s.casefold() for s in safe)
    clashes = sorted({key for key, s in zip(keys, safe, strict=True)
                      if not s or counts[s.casefold()] > 1})
    if not clashes:
        renamed = [f"{k!r} → {s}" for k, s in zip(keys, safe, strict=True) if k != s]
        return safe, [fix("", f"case names made file-name safe: {shorten(renamed, 8)} "
                              "(cases.csv lists them all)")] if renamed else []
    width = max(3, len(str(len(keys))))
    ids = [f"case_{i:0{width}d}" for i in range(1, len(keys) + 1)]
    shown = ", ".join(repr(k) for k in clashes[:6])
    return ids, [fix("", f"case names {shown} are empty or the same once made file-name safe: "
                     f"numbered all cases {ids[0]}...{ids[-1]} (cases.csv maps them back)")]


def opaque_ids(n: int, seed: int) -> list[str]:
    """``case_001``... in a seeded random order, for ``--anonymize``: neither the id nor the
    order of the ids tells anything about the names (sorted names would give away initials)."""
    width = max(3, len(str(n)))
    numbers = list(range(1, n + 1))
    random.Random(seed).shuffle(numbers)
    return [f"case_{k:0{width}d}" for k in numbers]


def _sanitise(key: str) -> str:
    ascii_key = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9-]+", "_", ascii_key).strip("_-")
