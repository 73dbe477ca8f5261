"""Which class every segment and label value becomes.

nnU-Net needs background 0 and classes 1..K, the same class for the same structure in every case.
Slicer segmentations are mapped by segment NAME (case-insensitive, through the synonyms of an
optional labels.yaml); plain label maps by VALUE (through ``--remap`` and labels.yaml's
``source_values``). Class order: labels.yaml's, or without one, Slicer names in order of first
appearance across the sorted cases and then plain label values in ascending order, numbered
1..K; a renumbering is reported.

labels.yaml (classes in order; every key but the name is optional)::

    liver:                      # class 1
      synonyms: [Leber, Segment_1]
      source_values: [1, 255]   # plain label maps: these input values are liver
    tumor: [lesion, tumour]     # short form: synonyms only
    vessel: 3                   # short form: the class value
    background: [unlabelled]    # names that mean background

Values, when given, must be given for every class; they set the order, and gaps are closed.
Without ``source_values`` anywhere, a plain label map's values are taken as the class values;
next to Slicer segmentations (named segments) plain maps need ``source_values``, or the import
stops: nothing else says which number is which name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcnn.dataset.findings import Finding, error, fix, shorten, warning
from hpcnn.errors import DataError
from hpcnn.formats.segment import NamedSegment
from hpcnn.yamlfile import read_yaml

BACKGROUND = "background"
_PLAIN_NAME = re.compile(r"label_-?\d+")


def plain_class_name(value: int) -> str:
    """The class name of a plain label map's value when nothing names it (``label_3``)."""
    return f"label_{value}"


def is_plain_class_name(name: str) -> bool:
    """Whether ``name`` is one hpcnn gave a plain label map's value (``plain_class_name``)."""
    return _PLAIN_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class ClassSpec:
    name: str
    synonyms: tuple[str, ...] = ()
    source_values: tuple[int, ...] = ()


@dataclass(frozen=True)
class LabelSpec:
    """A labels.yaml: classes in order (class value = position + 1)."""

    classes: tuple[ClassSpec, ...]
    background: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()


def load_labels_file(path: Path) -> LabelSpec:
    """Read and validate labels.yaml; errors name the file and the class."""
    data, _ = read_yaml(path, DataError)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a mapping of class names, e.g. 'liver: [Leber]'")
    classes: list[tuple[ClassSpec, int | None]] = []
    background: tuple[str, ...] = ()
    for name, entry in data.items():
        name = str(name)
        value, synonyms, sources = _entry(path, name, entry)
        if name.casefold() == BACKGROUND:
            background = synonyms
            continue
        classes.append((ClassSpec(name, synonyms, sources), value))
    if not classes:
        raise DataError(f"{path}: no classes besides background")
    given = [v for _, v in classes if v is not None]
    findings: list[Finding] = []
    if given:
        if len(given) != len(classes):
            raise DataError(f"{path}: some classes have a value and some do not",
                            hint="give every class a value, or none (the order then decides)")
        if len(set(given)) != len(given):
            raise DataError(f"{path}: two classes have the same value")
        classes.sort(key=lambda item: item[1] or 0)
        if sorted(given) != list(range(1, len(given) + 1)):
            findings.append(fix(path.name, "class values "
                                + ", ".join(str(v) for v in sorted(given))
                                + f" are not 1..{len(given)}: numbered 1..{len(given)} in that "
                                "order (nnU-Net needs consecutive labels)"))
    seen: dict[str, str] = {}
    for spec, _ in classes:
        for n in (spec.name, *spec.synonyms):
            if n.casefold() in seen and seen[n.casefold()] != spec.name:
                raise DataError(f"{path}: {n!r} names both {seen[n.casefold()]!r} and "
                                f"{spec.name!r}")
            seen[n.casefold()] = spec.name
    return LabelSpec(tuple(c for c, _ in classes), background, tuple(findings))


def _entry(
    path: Path, name: str, entry: Any
) -> tuple[int | None, tuple[str, ...], tuple[int, ...]]:
    where = f"{path}: class {name!r}"
    if entry is None:
        return None, (), ()
    if isinstance(entry, bool):
        raise DataError(f"{where}: expected a value, a list of synonyms or a mapping")
    if isinstance(entry, int):
        return _positive(where, entry), (), ()
    if isinstance(entry, list):
        return None, tuple(str(s) for s in entry), ()
    if isinstance(entry, dict):
        # code/category: the class's coded concept in DICOM results (formats/dicom_derived.py)
        unknown = set(entry) - {"value", "synonyms", "source_values", "code", "category"}
        if unknown:
            raise DataError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}",
                            hint="use value, synonyms, source_values, code and category")
        value = entry.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise DataError(f"{where}: value must be a whole number")
        sources = entry.get("source_values") or []
        if not isinstance(sources, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in sources
        ):
            raise DataError(f"{where}: source_values must be a list of whole numbers")
        synonyms = entry.get("synonyms") or []
        if not isinstance(synonyms, list):
            raise DataError(f"{where}: synonyms must be a list of names")
        return (None if value is None else _positive(where, value),
                tuple(str(s) for s in synonyms), tuple(sources))
    raise DataError(f"{where}: expected a value, a list of synonyms or a mapping")


def _positive(where: str, value: int) -> int:
    if value < 1:
        raise DataError(f"{where}: value {value}: classes are 1 or more (0 is background)")
    return value


def parse_remap(specs: Sequence[str]) -> dict[int, int]:
    """``["255:1", "128:2,64:0"]`` → ``{255: 1, 128: 2, 64: 0}``."""
    remap: dict[int, int] = {}
    for spec in specs:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            m = re.fullmatch(r"(-?\d+)\s*:\s*(\d+)", part)
            if not m:
                raise DataError(f"--remap {part!r}: expected OLD:NEW with whole numbers",
                                hint="e.g. --remap 255:1 (write --remap=-1:0 for negatives)")
            old, new = int(m.group(1)), int(m.group(2))
            if remap.get(old, new) != new:
                raise DataError(f"--remap maps {old} twice ({remap[old]} and {new})")
            remap[old] = new
    return remap


def lookup(raw: np.ndarray, mapping: Mapping[int, int], dtype: np.dtype) -> np.ndarray:
    """``mapping[value]`` for every voxel of an integer array, 0 where a value is not mapped;
    one pass through a lookup table."""
    if raw.dtype in (np.uint8, np.uint16):  # every value has a slot: no pass for min and max
        lo, hi = 0, int(np.iinfo(raw.dtype).max)
    else:
        lo, hi = int(raw.min(initial=0)), int(raw.max(initial=0))
    if hi - lo > 1 << 24:
        values, inverse = np.unique(raw, return_inverse=True)
        table = np.array([mapping.get(int(v), 0) for v in values], dtype=dtype)
        return table[inverse].reshape(raw.shape)
    table = np.zeros(hi - lo + 1, dtype=dtype)
    for value, cls in mapping.items():
        if lo <= value <= hi:
            table[value - lo] = cls
    return table[raw - lo] if lo else table[raw]


@dataclass
class SegInfo:
    """What the header scan learnt about one segmentation file."""

    file: str
    segments: list[NamedSegment] | None  # None: a plain label map
    values: list[int] = field(default_factory=list)  # plain label maps: distinct values


@dataclass
class LabelPlan:
    """The dataset's classes and how every file's segments or values map onto them."""

    classes: dict[str, int]
    by_name: dict[str, int]
    by_value: dict[int, int]
    remap: dict[int, int]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if len(self.classes) < 256 else np.uint16)

    def segment_table(self, segments: Sequence[NamedSegment]) -> list[tuple[int, int, int]]:
        """``(layer, label_value, class)`` for ``slicer.class_map``."""
        return [(s.layer, s.value, self.by_name.get(s.name.casefold(), 0)) for s in segments]

    def value_table(self, values: Sequence[int]) -> dict[int, int]:
        """Input value → class for a plain label map."""
        return {v: self.by_value.get(self.remap.get(v, v), 0) for v in values}

    def resolve(self, names: Sequence[str], option: str) -> list[int]:
        """Class values for user-given names (``--overlap``), each checked."""
        out = []
        for name in names:
            cls = self.by_name.get(name.casefold())
            if not cls:
                raise DataError(f"{option} names {name!r}, which is not a class "
                                f"(classes: {', '.join(self.classes)})")
            out.append(cls)
        return out


def plan_labels(
    infos: Sequence[SegInfo], spec: LabelSpec | None, remap: Mapping[int, int]
) -> tuple[LabelPlan, list[Finding]]:
    """Classes for the whole dataset and the per-file problems of mapping onto them."""
    findings: list[Finding] = list(spec.findings) if spec else []
    by_name: dict[str, int] = {BACKGROUND: 0}
    names: list[str] = []  # class names in order
    if spec:
        for i, cls in enumerate(spec.classes, start=1):
            names.append(cls.name)
            for n in (cls.name, *cls.synonyms):
                by_name[n.casefold()] = i
        for n in spec.background:
            by_name[n.casefold()] = 0
    else:
        for info in infos:
            for seg in info.segments or ():
                if seg.name.casefold() not in by_name:
                    names.append(seg.name)
                    by_name[seg.name.casefold()] = len(names)
    n_named = len(names)

    plain_values = sorted({remap.get(v, v) for info in infos if info.segments is None
                           for v in info.values})
    for info in infos:
        for v in info.values:
            if remap.get(v, v) < 0:
                findings.append(error(info.file, f"negative label value {v}",
                                      hint=f"map it with --remap={v}:0 (background) or "
                                           f"--remap={v}:N"))
    by_value: dict[int, int] = {0: 0}
    sources = {v: i for i, c in enumerate(spec.classes, start=1) for v in c.source_values} \
        if spec else {}
    unmapped = _unmapped_plain(infos, remap, names[:n_named], spec, sources)
    if unmapped:
        findings.append(unmapped)
    for v in (x for x in plain_values if x > 0 and not unmapped):
        if spec and sources:
            if v in sources:
                by_value[v] = sources[v]
        elif spec:
            if v <= n_named:
                by_value[v] = v
        else:
            names.append(plain_class_name(v))
            by_value[v] = len(names)
    if not spec and not unmapped and any(by_value[v] != v for v in plain_values if v > 0):
        renumbered = ", ".join(f"{v}→{by_value[v]}" for v in plain_values if v > 0)
        findings.append(fix("", f"label values are not consecutive from 1: renumbered "
                                f"{renumbered} (nnU-Net needs 0, 1, 2, ...; class names keep "
                                "the old values)"))
    found = {v for info in infos if info.segments is None for v in info.values}
    if any(v in found for v in remap):
        findings.append(fix("", "label values remapped: "
                                + ", ".join(f"{a}→{b}" for a, b in sorted(remap.items())
                                            if a in found)))
    for value in sorted(set(remap) - found):
        findings.append(warning("", f"--remap {value}:{remap[value]}: no plain label map holds "
                                    f"the value {value}",
                                hint="check the value; Slicer segmentations map by name, "
                                     "not by --remap"))
    findings += _per_file([i for i in infos if not (unmapped and i.segments is None)], spec,
                          by_name, by_value, remap, names[:n_named])
    classes = {name: i for i, name in enumerate(names, start=1)}
    return LabelPlan(classes, by_name, by_value, dict(remap)), findings


def _unmapped_plain(infos: Sequence[SegInfo], remap: Mapping[int, int], named: Sequence[str],
                    spec: LabelSpec | None, sources: Mapping[int, int]) -> Finding | None:
    """The error of a dataset that mixes Slicer segmentations (classes by segment name) with
    plain label maps (numbers only) when nothing says which number is which name, or None.
    Numbering the plain values as classes of their own made one structure two classes
    (``liver`` and ``label_1``), each learnt from half the cases; taking them as the named
    classes' numbers would rest on an order nobody wrote down."""
    slicer = [i.file for i in infos if i.segments is not None]
    plain = [i.file for i in infos if i.segments is None
             and any(remap.get(v, v) > 0 for v in i.values)]
    if not (slicer and plain) or sources:
        return None
    values = sorted({remap.get(v, v) for i in infos if i.segments is None for v in i.values
                     if remap.get(v, v) > 0})
    example = " and ".join(f"'{n}: {{source_values: [{v}]}}'" for n, v in zip(named, values,
                                                                               strict=False))
    where = ("give each class in the --labels file" if spec else
             "write a labels.yaml that gives each class")
    return error("", f"segmentations of two kinds: {len(slicer)} Slicer segmentation(s) name "
                     f"their segments ({shorten(slicer)}: {shorten(list(named))}), "
                     f"{len(plain)} plain label map(s) hold only numbers ({shorten(plain)}: "
                     f"values {shorten([str(v) for v in values])}); which number is which "
                     "named class is written nowhere",
                 hint=f"{where} the values that mean it in the plain label maps"
                      + (f", e.g. {example} (look up in one plain map which value is which)"
                         if example else "")
                      + ("" if spec else " and pass --labels labels.yaml")
                      + "; or export every segmentation the same way (all .seg.nrrd from "
                        "Slicer, or all label maps)")


def _same_class(file: str, first: NamedSegment, second: NamedSegment) -> Finding:
    """Two segments of one file that would become one class: merging them silently would
    hide whichever the user meant to keep (a duplicate left over from an edit)."""
    what = (f"two segments named {first.name!r}" if first.name.casefold() ==
            second.name.casefold() else f"segments {first.name!r} and {second.name!r} (synonyms "
            "of one class)")
    return error(file, f"{what}, label value {first.value} (layer {first.layer}) and label value "
                       f"{second.value} (layer {second.layer}): they would be merged into one "
                       "class", hint="in Slicer's Segment Editor delete the duplicate, rename it "
                                     "if it is another structure, or merge the two (Logical "
                                     "operators → Add) and save again")


def _per_file(
    infos: Sequence[SegInfo],
    spec: LabelSpec | None,
    by_name: Mapping[str, int],
    by_value: Mapping[int, int],
    remap: Mapping[int, int],
    named: Sequence[str],
) -> list[Finding]:
    """Unknown and missing segments, unknown values, and names stored under several values."""
    findings: list[Finding] = []
    stored: dict[int, set[int]] = {}
    expected = {by_name[n.casefold()] for n in named}
    for info in infos:
        if info.segments is None:
            unknown = sorted(v for v in info.values if remap.get(v, v) > 0
                             and remap.get(v, v) not in by_value)
            if unknown:
                findings.append(warning(info.file, "label value(s) "
                                        + ", ".join(map(str, unknown))
                                        + " belong to no class in labels.yaml: left as background",
                                        hint="add them to a class's source_values, or --remap"))
            continue
        present: dict[int, NamedSegment] = {}
        for seg in info.segments:
            cls = by_name.get(seg.name.casefold())
            if cls is None:
                findings.append(warning(info.file, f"unknown segment {seg.name!r} (not in "
                                        "labels.yaml): left as background",
                                        hint="add it, or a synonym for it, to labels.yaml"))
                continue
            if cls and cls in present:
                findings.append(_same_class(info.file, present[cls], seg))
                continue
            present[cls] = seg
            if cls:
                stored.setdefault(cls, set()).add(seg.value)
        for cls in sorted(expected - present.keys()):
            findings.append(warning(info.file, f"no segment {named[cls - 1]!r}: it is background "
                                    "in this case",
                                    hint="add the segment in Slicer if the structure is there"
                                    + ("" if spec else ", or a synonym in a labels.yaml")))
    for cls, values in sorted(stored.items()):
        if len(values) > 1:
            findings.append(fix("", f"segment {named[cls - 1]!r} is stored with label values "
                                    f"{', '.join(map(str, sorted(values)))} in different files: "
                                    f"mapped by name to class {cls} in every case"))
    return findings
