"""Names and folders of nnU-Net datasets: ``DatasetNNN_Name`` under ``nnUNet_raw``.

Users refer to a dataset by id (``501``), name (``Liver``), folder name (``Dataset501_Liver``) or
path; every command resolves it here, with an error that lists what exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcnn.errors import ConfigError, DataError

SPLITS = "splits_final.json"  # nnU-Net's cross-validation split, in raw and preprocessed folders
NNUNET_FOLDS = 5  # nnU-Net's default split is a 5-fold KFold (nnUNetTrainer.do_split)
MIN_TRAINING = NNUNET_FOLDS  # fewer training cases and the 5-fold split fails
CASES_CSV = "cases.csv"  # case id → source file names (patient names): never leaves the laptop
_FOLDER_RE = re.compile(r"Dataset(\d{3})_(.+)")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class DatasetRef:
    """A dataset's id and name; ``folder_name`` is nnU-Net's ``DatasetNNN_Name``."""

    id: int
    name: str

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.id:03d}_{self.name}"


def parse_folder_name(name: str) -> DatasetRef | None:
    m = _FOLDER_RE.fullmatch(name)
    return DatasetRef(int(m.group(1)), m.group(2)) if m else None


def validate_name(name: str) -> str:
    """A dataset name nnU-Net and every shell accept: letters, digits, ``_`` and ``-``."""
    if not _NAME_RE.fullmatch(name):
        raise DataError(
            f"dataset name {name!r} is not usable: start with a letter or digit, then use only "
            "letters, digits, '_' and '-' (nnU-Net builds folder names from it)"
        )
    return name


def validate_id(dataset_id: int) -> int:
    if not 1 <= dataset_id <= 999:
        raise DataError(f"dataset id {dataset_id} is out of range: nnU-Net uses 1 to 999")
    return dataset_id


def existing_datasets(*roots: Path) -> dict[int, Path]:
    """Dataset folders under any of ``roots`` (raw, preprocessed, results), by id."""
    found: dict[int, Path] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            ref = parse_folder_name(child.name)
            if ref and child.is_dir():
                found.setdefault(ref.id, child)
    return found


def next_free_id(*roots: Path, start: int = 501) -> int:
    """The lowest id from ``start`` used by no dataset under ``roots`` (501+ avoids the MSD ids)."""
    taken = existing_datasets(*roots)
    for candidate in range(start, 1000):
        if candidate not in taken:
            return candidate
    for candidate in range(1, start):
        if candidate not in taken:
            return candidate
    raise DataError("all dataset ids 1-999 are taken in this workspace")


def too_few_training(n: int) -> str:
    """The words import and check both use, at the same severity (a warning)."""
    return (f"only {n} training case(s): nnU-Net's 5-fold cross-validation needs at least "
            f"{MIN_TRAINING}; `hpcnn preprocess` refuses fewer")


def chosen_dataset(given: str | int | None, configured: str | int | None, *,
                   how: str = "name the dataset") -> str:
    """The dataset a command works on: the one given on the command line, else cluster.yaml's
    ``training.dataset``; ConfigError (exit 2) when neither names one."""
    spec = given if given not in (None, "") else configured
    if spec in (None, ""):
        raise ConfigError(f"no dataset: {how}, or set training.dataset in cluster.yaml",
                          hint="e.g. `training: {dataset: 501}` (an id, a name or "
                               "DatasetNNN_Name)")
    return str(spec)


def match_dataset(spec: str, folder_names: Iterable[str]) -> str | None:
    """The ``DatasetNNN_Name`` among ``folder_names`` that ``spec`` names (an id such as ``501``
    or ``5``, a name, or the folder name, case-insensitive); None when none does. The one rule
    every command resolves dataset names by, locally and on the cluster."""
    text = str(spec).strip()
    for folder in folder_names:
        ref = parse_folder_name(folder)
        if ref is None:
            continue
        if text.isdigit() and int(text) == ref.id:
            return folder
        if not text.isdigit() and text.lower() in (folder.lower(), ref.name.lower()):
            return folder
    return None


def resolve_dataset(spec: str | int, raw_root: Path) -> Path:
    """The raw dataset folder for an id, name, ``DatasetNNN_Name`` or path."""
    text = str(spec).strip()
    path = Path(text).expanduser()
    if path.is_dir() and (path / "dataset.json").exists() or path.is_absolute() or "/" in text:
        if not path.is_dir():
            raise DataError(f"{path}: no such dataset folder")
        return path.resolve()
    datasets = {p.name: p for p in existing_datasets(raw_root).values()}
    found = match_dataset(text, datasets)
    if found:
        return datasets[found]
    known = ", ".join(datasets) or "none"
    raise DataError(
        f"no dataset {text!r} in {raw_root} (datasets there: {known})",
        hint="import one with `hpcnn dataset import SRC --name NAME`, or pass its folder path",
    )


def read_dataset_json(path: Path) -> dict[str, Any]:
    """Load dataset.json; JSON errors name the line and explain the usual trailing comma."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: missing", hint="a nnU-Net dataset needs a dataset.json") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "fix the JSON syntax"
        before = text[: exc.pos].rstrip()
        if before.endswith(","):
            hint = "remove the trailing comma before the closing bracket (JSON allows none)"
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}",
                        hint=hint) from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: the top level must be an object {{...}}")
    return data
