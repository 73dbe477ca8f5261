"""A trained model folder, ``nnUNet_results/DatasetNNN_Name/Trainer__Plans__config``: what
prediction, evaluation and the model zip need from it, read without torch.

nnU-Net's predictor takes the folds it is told and raises FileNotFoundError on a missing one, and
records no nnunetv2 version; here the folds are those that finished (``checkpoint_final.pth``),
the others are named, and the version that trained each fold comes from the provenance file the
training launcher writes into the fold folder (read tolerantly: a model trained elsewhere has
none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hpcnn.errors import DataError
from hpcnn.nnunet.launcher import FINAL as CHECKPOINT
from hpcnn.nnunet.launcher import INFERENCE
from hpcnn.nnunet.launcher import PROVENANCE as FOLD_PROVENANCE

MODEL_FILES = ("dataset.json", "plans.json")  # what the predictor reads besides checkpoints
FINGERPRINT = "dataset_fingerprint.json"
NNUNET_DEFAULT_FOLDS = ("0", "1", "2", "3", "4")
_FOLD_DIR = re.compile(r"fold_(\d+|all)")
_IDENTIFIER = re.compile(r"[^_].*__.+__.+")


@dataclass(frozen=True)
class ModelFolder:
    """One ``Trainer__Plans__config`` folder and its dataset.json."""

    path: Path
    dataset_json: dict[str, Any]
    fold_dirs: dict[str, Path]  # every fold_K folder present, finished or not
    synced: ClassVar[bool] = True
    """Folds come here by sync (messages say so); a model on the cluster is where they train."""

    @property
    def file_ending(self) -> str:
        return str(self.dataset_json["file_ending"])

    @property
    def channel_names(self) -> list[str]:
        """Channel names in channel order (dataset.json keys are "0", "1", ...)."""
        names = self.dataset_json["channel_names"]
        return [str(names[k]) for k in sorted(names, key=int)]

    @property
    def labels(self) -> dict[str, int]:
        """Foreground class name → label value (region-based labels keep their first value)."""
        out = {}
        for name, value in self.dataset_json["labels"].items():
            first = value[0] if isinstance(value, list | tuple) else value
            if int(first) != 0 and name != "ignore":
                out[str(name)] = int(first)
        return out

    @property
    def finished(self) -> list[str]:
        """Folds with a final checkpoint, in fold order."""
        return [f for f, d in self.fold_dirs.items() if (d / CHECKPOINT).is_file()]

    def describe_missing(self) -> str:
        """Which of nnU-Net's five folds (and any other fold folder) cannot be used, and why."""
        parts = []
        absent = [f for f in NNUNET_DEFAULT_FOLDS if f not in self.fold_dirs]
        if absent:
            parts.append(f"fold(s) {', '.join(absent)} not trained (no fold folder)")
        unfinished = [f for f in self.fold_dirs if f not in self.finished]
        if unfinished:
            parts.append(f"fold(s) {', '.join(unfinished)} without {CHECKPOINT} (training not "
                         f"finished{' or not synced' if self.synced else ''})")
        return "; ".join(parts)

    def trained_with(self, folds: Sequence[str]) -> dict[str, str]:
        """fold → the nnunetv2 version that trained it, for the folds whose provenance says."""
        found = {}
        for fold in folds:
            version = _nnunetv2_version(self.fold_dirs[fold] / FOLD_PROVENANCE)
            if version:
                found[fold] = version
        return found

    @property
    def identifier(self) -> str:
        """``DatasetNNN_Name/Trainer__Plans__config``: the folder relative to nnUNet_results."""
        return f"{self.path.parent.name}/{self.path.name}"


def open_model(path: Path) -> ModelFolder:
    """Read a model folder; DataError naming the missing piece and the fix otherwise."""
    if not path.is_dir():
        raise DataError(f"{path}: no such model folder",
                        hint="pass --model nnUNet_results/DatasetNNN_Name/Trainer__Plans__config")
    if not _IDENTIFIER.fullmatch(path.name):
        raise DataError(f"{path}: not a trained model folder (expected a name like "
                        "nnUNetTrainer__nnUNetPlans__3d_fullres)",
                        hint="pass the Trainer__Plans__config folder inside "
                             "nnUNet_results/DatasetNNN_Name")
    for name in MODEL_FILES:
        if not (path / name).is_file():
            raise DataError(f"{path / name}: missing; nnU-Net's predictor needs it",
                            hint="sync or copy the whole model folder again")
    dataset_json = read_dataset_json((path / "dataset.json").read_text(encoding="utf-8"),
                                     str(path / "dataset.json"),
                                     hint="sync or copy the model folder again")
    folds = {}
    for child in sorted(path.iterdir(), key=_fold_order):
        m = _FOLD_DIR.fullmatch(child.name)
        if m and child.is_dir():
            folds[m.group(1)] = child
    return ModelFolder(path, dataset_json, folds)


def read_dataset_json(text: str, where: str, *, hint: str) -> dict[str, Any]:
    """A model's dataset.json with the keys prediction reads; DataError naming ``where``."""
    try:
        dataset_json = json.loads(text)
        for key in ("channel_names", "labels", "file_ending"):
            dataset_json[key]  # noqa: B018  (KeyError below names it)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{where}: unusable ({exc})", hint=hint) from exc
    return dataset_json


@dataclass(frozen=True)
class ListedModel(ModelFolder):
    """A model folder known from a listing, not from files here: the one on the cluster that a
    prediction job uses. Its finished folds are those the listing saw with a final checkpoint,
    so fold choice and messages are the same as for a model on this machine."""

    final: tuple[str, ...] = ()
    inference: tuple[str, ...] = ()
    """Finished folds that also hold the launcher's inference checkpoint."""
    synced: ClassVar[bool] = False

    @property
    def finished(self) -> list[str]:
        return [f for f in self.fold_dirs if f in self.final]

    def checkpoint_for(self, folds: Sequence[str]) -> str | None:
        """The checkpoint a prediction with ``folds`` loads (one name for all folds): the
        inference checkpoint where every fold has one (half the bytes to read), else None
        (nnU-Net's default, ``checkpoint_final.pth``)."""
        return INFERENCE if folds and all(f in self.inference for f in folds) else None


def listed_model(path: str, dataset_json: dict[str, Any], folders: Mapping[str, bool],
                 inference: Collection[str] = ()) -> ListedModel:
    """``folders``: each folder of the model (``fold_0`` ...) → whether it holds a final
    checkpoint, as the listing found them; ``inference``: the folders that also hold an
    inference checkpoint; other folders (``fold_0.replaced-...``) are not folds."""
    dirs = sorted((Path(path, n) for n in folders if _FOLD_DIR.fullmatch(n)), key=_fold_order)
    fold_dirs = {d.name.removeprefix("fold_"): d for d in dirs}
    final = tuple(f for f, d in fold_dirs.items() if folders[d.name])
    return ListedModel(Path(path), dataset_json, fold_dirs, final,
                       tuple(f for f in final if fold_dirs[f].name in inference))


def choose_folds(model: ModelFolder, wanted: Sequence[str] | None) -> list[str]:
    """The folds to predict with: those asked for (each must be finished), else every finished
    one; DataError when none is."""
    finished = model.finished
    if wanted:
        bad = [f for f in wanted if f not in finished]
        if bad:
            raise DataError(f"{model.path}: fold(s) {', '.join(bad)} have no {CHECKPOINT} "
                            f"(finished: {', '.join(finished) or 'none'})",
                            hint="drop them from --folds, or wait until they finish"
                                 + (" and sync" if model.synced else ""))
        return list(dict.fromkeys(wanted))
    if not finished:
        raise DataError(f"{model.path}: no finished fold ({model.describe_missing()})",
                        hint="train at least one fold to the end"
                             + (" (or sync it)" if model.synced else "") + " before predicting")
    return finished


def _fold_order(path: Path) -> tuple[int, str]:
    m = _FOLD_DIR.fullmatch(path.name)
    return (int(m.group(1)) if m and m.group(1).isdigit() else 10**6, path.name)


def _nnunetv2_version(path: Path) -> str | None:
    """The nnunetv2 version a provenance file names, wherever it keeps it; None when there is no
    readable file (a fold trained without hpcnn)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for holder in (data, data.get("versions")):
        if isinstance(holder, dict):
            for key in ("nnunetv2_version", "nnunetv2"):
                value = holder.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
    return None


def local_nnunetv2_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return None
