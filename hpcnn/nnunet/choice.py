"""Choosing what to predict with: nnU-Net's ``find_best_configuration`` on trained folds, and the
record hpcnn keeps of its answer.

nnU-Net's command needs every requested fold's ``validation/`` (with the ``--npz``
probabilities when configurations are ensembled) and ``gt_segmentations``; with one missing it
stops deep inside with a FileNotFoundError or, worse, evaluates fewer cases. ``check_trained``
names what is missing first. The command itself runs unchanged (through the launcher, as a job
would run it); hpcnn then reads what it wrote (``inference_information.json``, each candidate's
``summary.json``, the winner's ``postprocessed/summary.json``) into ``hpcnn_choice.json`` beside
the results: the winner (one configuration or an ensemble of two), its cross-validation Dice per
class with and without postprocessing, whether postprocessing helped, and nnU-Net's inference
instructions. Prediction, status, report and the model zip read that record.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from hpcnn.errors import DataError, HpcnnError
from hpcnn.fsutil import atomic_write_text
from hpcnn.nnunet import commands, launcher_path
from hpcnn.nnunet.launcher import FINAL, SPLITS_FILE
from hpcnn.nnunet.model_folder import local_nnunetv2_version

CHOICE = "hpcnn_choice.json"
INFORMATION = "inference_information.json"
INSTRUCTIONS = "inference_instructions.txt"
POSTPROCESSING = "postprocessing.pkl"
METHOD_MIN_VERSION = (2, 7)
MAX_JSON_BYTES = 8 * 2**20


class FindBestFailed(HpcnnError):
    """nnUNetv2_find_best_configuration ran and exited non-zero."""

    exit_code = 1


@dataclass(frozen=True)
class Trained:
    """The trained models find-best compares: one dataset, trainer, plans; some configurations."""

    results: Path  # nnUNet_results/DatasetNNN_Name
    trainer: str
    plans: str
    configurations: tuple[str, ...]
    folds: tuple[int, ...]

    @property
    def dataset(self) -> str:
        return self.results.name

    def model_folder(self, configuration: str) -> Path:
        return self.results / f"{self.trainer}__{self.plans}__{configuration}"


@dataclass
class Choice:
    """``hpcnn_choice.json``: what find-best chose and why."""

    dataset: str
    trainer: str
    plans: str
    folds: list[int]
    members: list[str]  # one configuration, or the two of an ensemble
    candidates: dict[str, dict[str, Any]]  # nnU-Net's name -> Dice (mean and per class)
    winner: str  # nnU-Net's name of the winning model or ensemble
    dice: float
    dice_postprocessed: float
    dice_per_class: dict[str, float]
    dice_per_class_postprocessed: dict[str, float]
    postprocessing: str | None  # relative to the dataset's results folder
    instructions: str
    nnunetv2_version: str | None = None
    created: str = ""
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    @property
    def postprocessing_helped(self) -> bool:
        return self.dice_postprocessed > self.dice

    def describe(self) -> str:
        what = (f"ensemble of {' + '.join(self.members)}" if self.is_ensemble
                else self.members[0])
        return f"{what} (cross-validation Dice {self.dice:.4f})"

    def summary(self) -> str:
        """The one line ``status`` and ``report`` show once find-best chose."""
        what = (f"ensemble of {' + '.join(self.members)}" if self.is_ensemble
                else f"{self.members[0]} (no ensemble)")
        used = self.postprocessing_helped and self.postprocessing
        post = (f"postprocessing on (Dice {self.dice:.4f} -> {self.dice_postprocessed:.4f})"
                if used else "postprocessing off (it does not help)")
        best = self.dice_postprocessed if used else self.dice
        return (f"find-best chose {what}; {post}; cross-validation Dice {best:.4f} "
                f"(mean over foreground classes, folds {' '.join(map(str, self.folds))})")


def version_problem(version: str | None, what: str) -> str | None:
    """Why ``version`` of nnunetv2 cannot run ``what`` (a cascade or an ensemble), or None."""
    try:
        parts = tuple(int(p) for p in (version or "").split(".")[:2])
    except ValueError:
        parts = ()
    if len(parts) == 2 and parts >= METHOD_MIN_VERSION:
        return None
    return (f"{what} needs nnunetv2 >= {'.'.join(map(str, METHOD_MIN_VERSION))}, this machine "
            f"has {version or 'none'}: 2.7 fixed ensembles averaging logits instead of "
            "probabilities and a 3d_lowres validation that could not overwrite its next-stage "
            "predictions (the cascade's input)")


def check_trained(trained: Trained, preprocessed: Path) -> None:
    """Refuses, naming what is missing, unless every configuration has every fold finished and
    validated (with the validation probabilities when there is more than one configuration)."""
    if not trained.configurations:
        raise DataError(f"{trained.results}: no trained configuration of {trained.trainer} with "
                        f"{trained.plans}", hint="train (and sync) the folds first")
    ensembles = len(trained.configurations) > 1
    if ensembles:
        problem = version_problem(local_nnunetv2_version(), "ensembling configurations")
        if problem:
            raise DataError(problem, hint="pip install 'nnunetv2>=2.7'")
    gt = preprocessed / "gt_segmentations"
    if not gt.is_dir():
        raise DataError(f"{gt} is missing: find-best compares the validation predictions with it",
                        hint=f"run `hpcnn preprocess {trained.dataset}` here")
    validation = (_validation_cases(preprocessed / SPLITS_FILE, trained.folds) if ensembles
                  else {})
    missing: list[str] = []
    for configuration in trained.configurations:
        folder = trained.model_folder(configuration)
        for fold in trained.folds:
            fold_dir = folder / f"fold_{fold}"
            for need in (fold_dir / FINAL, fold_dir / "validation" / "summary.json"):
                if not need.is_file():
                    missing.append(str(need))
            if ensembles and (fold_dir / "validation").is_dir():
                missing += [str(fold_dir / "validation" / f"{case}.npz")
                            for case in validation.get(fold, [])
                            if not (fold_dir / "validation" / f"{case}.npz").is_file()]
    if missing:
        shown = "\n  ".join(missing[:8]) + (f"\n  ... and {len(missing) - 8} more"
                                            if len(missing) > 8 else "")
        raise DataError(f"find-best needs every fold of {', '.join(trained.configurations)} "
                        f"finished and validated{' with --npz' if ensembles else ''}; missing:"
                        f"\n  {shown}",
                        hint="wait for the folds (hpcnn status), sync them (with their "
                             "validation .npz files when configurations are ensembled), or "
                             "choose among fewer configurations/folds (-c, --folds)")


def _validation_cases(splits: Path, folds: Sequence[int]) -> dict[int, list[str]]:
    try:
        data = json.loads(splits.read_text(encoding="utf-8"))
        return {f: list(data[f]["val"]) for f in folds}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{splits}: cannot read the validation cases of folds "
                        f"{', '.join(map(str, folds))} ({exc})",
                        hint="run `hpcnn preprocess` here (it writes the split)") from exc


def find_best(trained: Trained, preprocessed: Path, env: Mapping[str, str], *,
              workers: int = 1, ensembling: bool = True,
              out: TextIO | None = None) -> Choice:
    """Runs nnUNetv2_find_best_configuration on ``trained`` (its output to ``out``) and writes
    ``hpcnn_choice.json`` (0600) beside the results; returns the choice."""
    check_trained(trained, preprocessed)
    line = commands.find_best_configuration(
        trained.dataset, trained.configurations, trainer=trained.trainer, plans=trained.plans,
        folds=trained.folds, workers=workers,
        ensembling=ensembling and len(trained.configurations) > 1)
    argv = commands.through_launcher(sys.executable, str(launcher_path()), line)
    information = trained.results / INFORMATION
    information.unlink(missing_ok=True)  # a stale answer must not pass for this one
    code, tail = commands.stream(argv, env, out or sys.stdout)
    if code != 0 or not information.is_file():
        raise FindBestFailed(f"nnUNetv2_find_best_configuration exited with code {code}; its "
                             f"last lines:\n{tail}", hint="see its output in the log")
    choice = read_answer(trained)
    write_choice(trained.results, choice)
    return choice


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise DataError(f"{path}: larger than {MAX_JSON_BYTES // 2**20} MB")
    return json.loads(path.read_text(encoding="utf-8"))


def _dice(summary: Path, labels: Mapping[int, str]) -> tuple[float, dict[str, float]]:
    """Mean foreground Dice and Dice per class name from one of nnU-Net's summary.json."""
    data = _read_json(summary)
    per_class = {labels.get(int(k), k) if str(k).isdigit() else str(k): float(v["Dice"])
                 for k, v in data.get("mean", {}).items()}
    return float(data["foreground_mean"]["Dice"]), per_class


def read_answer(trained: Trained) -> Choice:
    """The choice, from what nnUNetv2_find_best_configuration wrote under ``trained.results``."""
    info = _read_json(trained.results / INFORMATION)
    best = info["best_model_or_ensemble"]
    members = [m["configuration"] for m in best["selected_model_or_models"]]
    dataset_json = _read_json(trained.model_folder(members[0]) / "dataset.json")
    labels = {int(v if not isinstance(v, list) else v[0]): str(k)
              for k, v in dataset_json["labels"].items()}
    folds = "_".join(map(str, trained.folds))
    candidates: dict[str, dict[str, Any]] = {}
    for name in info["all_results"]:
        source = (trained.results / "ensembles" / name if name.startswith("ensemble___")
                  else trained.results / name / f"crossval_results_folds_{folds}")
        mean, per_class = _dice(source / "summary.json", labels)
        candidates[name] = {"dice": mean, "dice_per_class": per_class, "source":
                            str(source.relative_to(trained.results))}
    winner = max(info["all_results"], key=lambda k: info["all_results"][k])
    # nnU-Net keeps the first of equal scores (the simpler model): the same rule as max().
    source = trained.results / candidates[winner]["source"]
    dice, per_class = _dice(source / "summary.json", labels)
    dice_pp, per_class_pp = _dice(source / "postprocessed" / "summary.json", labels)
    pkl = source / POSTPROCESSING
    instructions = trained.results / INSTRUCTIONS
    return Choice(
        dataset=trained.dataset, trainer=trained.trainer, plans=trained.plans,
        folds=list(trained.folds), members=members, candidates=candidates, winner=winner,
        dice=dice, dice_postprocessed=dice_pp, dice_per_class=per_class,
        dice_per_class_postprocessed=per_class_pp,
        postprocessing=str(pkl.relative_to(trained.results)) if pkl.is_file() else None,
        instructions=instructions.read_text(encoding="utf-8")[:20000]
        if instructions.is_file() else "",
        nnunetv2_version=local_nnunetv2_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        labels={name: value for value, name in labels.items() if value != 0})


def write_choice(results: Path, choice: Choice) -> Path:
    path = results / CHOICE
    atomic_write_text(path, json.dumps(asdict(choice), indent=2) + "\n", mode=0o600)
    return path


def read_choice(results: Path) -> Choice | None:
    """The recorded choice of ``nnUNet_results/DatasetNNN_Name`` (None: none made)."""
    path = results / CHOICE
    if not path.is_file():
        return None
    try:
        data = _read_json(path)
        return Choice(**{k: v for k, v in data.items() if k in Choice.__dataclass_fields__})
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a choice hpcnn wrote ({exc})",
                        hint="run `hpcnn find-best` again") from exc


def trained_configurations(results: Path, trainer: str, plans: str) -> list[str]:
    """The configurations of ``trainer`` and ``plans`` with a model folder under ``results``,
    in nnU-Net's order (2d, 3d_fullres, 3d_lowres, cascade, then others)."""
    prefix = f"{trainer}__{plans}__"
    found = [p.name[len(prefix):] for p in results.glob(f"{prefix}*")
             if p.is_dir() and any(p.glob("fold_*"))] if results.is_dir() else []
    order = {c: i for i, c in enumerate(commands.STANDARD_CONFIGURATIONS)}
    return sorted(found, key=lambda c: (order.get(c, len(order)), c))


def experiment_choice(results: Path, trainer: str, plans: str,
                      configurations: Sequence[str], folds: Sequence[int]) -> Choice | None:
    """The choice among ``configurations`` of ``trainer`` and ``plans`` under ``results``
    (``nnUNet_results/DatasetNNN_Name``): hpcnn's record (``hpcnn find-best``, a sync), else
    what a find_best_configuration job wrote there (the local scheduler's results are here);
    None when nothing chose among exactly these models yet. Never writes."""
    try:
        choice = read_choice(results)
    except DataError:
        choice = None
    if choice is None and (results / INFORMATION).is_file():
        try:
            choice = read_answer(Trained(results, trainer, plans, tuple(configurations),
                                         tuple(folds)))
        except (DataError, OSError, ValueError, KeyError, TypeError):
            return None
    if choice is None or (choice.trainer, choice.plans) != (trainer, plans):
        return None
    return choice if set(choice.members) <= set(configurations) else None

