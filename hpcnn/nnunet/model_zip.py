"""Model zips: ``hpcnn export`` and ``hpcnn import-model``.

The zip has nnU-Net's layout (what ``nnUNetv2_install_pretrained_model_from_zip`` extracts into
``nnUNet_results``): ``DatasetNNN_Name/Trainer__Plans__config/{dataset.json, plans.json,
dataset_fingerprint.json, fold_K/...}``. hpcnn writes it itself, with the folds that finished,
because nnU-Net's exporter stops at the first fold without ``progress.png`` or
``validation/summary.json``.

nnU-Net's installer extracts whatever a zip holds over whatever is there. The import here checks
first and writes nothing when a check fails: a readable zip with intact data (CRC), only plain
files and folders (no links), no absolute or ``..`` paths, a bounded total size that fits on the
disk, nnU-Net's layout with at least one finished fold, checkpoints that load with
``torch.load(weights_only=True)`` on the CPU (tensors and plain data only: a pickle that would run
code is refused), and no model of the same name unless ``force``. It extracts into a hidden
folder inside ``nnUNet_results`` and renames each model folder into place.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hpcnn.dataset.importer import _move_into_place
from hpcnn.dataset.layout import existing_datasets, parse_folder_name
from hpcnn.errors import DataError
from hpcnn.nnunet.model_folder import (
    CHECKPOINT,
    FINGERPRINT,
    FOLD_PROVENANCE,
    MODEL_FILES,
    ModelFolder,
    open_model,
)

MAX_TOTAL_BYTES = 64 * 2**30  # five folds of the largest nnU-Net networks fit many times
MAX_RATIO = 200  # uncompressed / compressed per member: more is a zip bomb, not a checkpoint
FOLD_FILES = (CHECKPOINT, "debug.json", "progress.png", "validation/summary.json",
              FOLD_PROVENANCE)
_IDENTIFIER = re.compile(r"[^_/][^/]*__[^/]+__[^/]+")
_FOLD = re.compile(r"fold_(\d+|all)")


@dataclass
class Exported:
    path: Path
    identifier: str
    folds: list[str]
    size: int
    skipped: str


def export_model(model_dir: Path, zip_path: Path, *, force: bool = False) -> Exported:
    """Zip the model's shared files and its finished folds; the zip appears whole or not at
    all (written beside it, then renamed). ``model_dir`` may be a ``DatasetNNN_Name`` results
    folder where ``hpcnn find-best`` chose: then every configuration it compared goes in, with
    the choice and the chosen postprocessing (method_files)."""
    from hpcnn.nnunet.method_predict import method_files

    method = method_files(model_dir)
    model = open_model(method.models[0] if method else model_dir)
    if zip_path.suffix.lower() != ".zip":
        raise DataError(f"{zip_path}: a model zip must end in .zip",
                        hint=f"e.g. {zip_path.with_suffix('.zip').name}")
    if zip_path.exists() and not force:
        raise DataError(f"{zip_path} already exists", hint="pass --force to replace it")
    members: list[tuple[Path, str]] = []
    models = [open_model(m) for m in method.models] if method else [model]
    for one in models:
        if not one.finished:
            raise DataError(f"{one.path}: no finished fold to export "
                            f"({one.describe_missing()})",
                            hint="train at least one fold to the end (or sync it) first")
        members += _model_members(one)
    if method:
        members += [(model_dir / name, f"{model_dir.name}/{name}") for name in method.extras]
    folds = model.finished
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(f".{zip_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for source, arcname in members:
                # Checkpoints are mostly float data that deflate barely shrinks: store them.
                method = zipfile.ZIP_STORED if source.suffix == ".pth" else zipfile.ZIP_DEFLATED
                zf.write(source, arcname, compress_type=method)
        os.replace(tmp, zip_path)
    finally:
        tmp.unlink(missing_ok=True)
    return Exported(zip_path, model.identifier, folds, zip_path.stat().st_size,
                    model.describe_missing())


def _model_members(model: ModelFolder) -> list[tuple[Path, str]]:
    """(file, name in the zip) of a model's shared files and finished folds."""
    members = [(model.path / name, f"{model.identifier}/{name}")
               for name in (*MODEL_FILES, FINGERPRINT) if (model.path / name).is_file()]
    for fold in model.finished:
        folder = model.fold_dirs[fold]
        members += [(folder / name, f"{model.identifier}/{folder.name}/{name}")
                    for name in FOLD_FILES if (folder / name).is_file()]
    return members


@dataclass
class Imported:
    installed: list[Path]
    folds: dict[Path, list[str]]
    notes: list[str] = field(default_factory=list)


def import_model(zip_path: Path, results: Path, *, force: bool = False,
                 max_bytes: int = MAX_TOTAL_BYTES) -> Imported:
    """Check ``zip_path`` and install its model folder(s) into ``results``."""
    name = zip_path.name
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{name}: not a readable zip file ({exc})",
                        hint="download or copy it again; `hpcnn export` writes model zips") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        models, notes, extras = _check_members(name, zf.infolist(), max_bytes)
        _check_space(name, results, sum(i.file_size for i in infos))
        dataset = next(iter(models)).split("/")[0]
        _check_target(name, results, dataset, models, force)
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise DataError(f"{name}: damaged zip ({exc})",
                            hint="download or copy it again") from exc
        if bad is not None:
            raise DataError(f"{name}: {bad} is damaged (its checksum does not match)",
                            hint="download or copy the zip again")
        results.mkdir(parents=True, exist_ok=True)
        work = results / f".hpcnn-import-{uuid.uuid4().hex[:8]}"
        try:
            for info in infos:
                if "/".join(info.filename.split("/")[:2]) in models or info.filename in extras:
                    _extract(zf, info, work)
            if extras:
                from hpcnn.nnunet.method_predict import check_method_files

                notes += check_method_files(name, work / dataset)
            installed, folds = [], {}
            for identifier in sorted(models):
                folder = work / identifier
                model = open_model(folder)
                for fold in model.finished:
                    _check_checkpoint(name, f"{identifier}/{model.fold_dirs[fold].name}",
                                      model.fold_dirs[fold] / CHECKPOINT)
                target = results / identifier
                folds[target] = model.finished
                installed.append(target)
            for identifier in sorted(models):
                target = results / identifier
                target.parent.mkdir(parents=True, exist_ok=True)
                _move_into_place(work / identifier, target, target if target.exists() else None)
            for extra in sorted(extras):  # the choice and its postprocessing, beside the models
                target = results.joinpath(*PurePosixPath(extra).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = work.joinpath(*PurePosixPath(extra).parts)
                source.chmod(0o600)  # the choice names the dataset's results: private
                os.replace(source, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Imported(installed, folds, notes)


def _check_members(name: str, infos: list[zipfile.ZipInfo],
                   max_bytes: int) -> tuple[set[str], list[str], set[str]]:
    """Paths, kinds and sizes of every member, and nnU-Net's layout; returns the model
    identifiers (``DatasetNNN_Name/Trainer__Plans__config``), notes on what is skipped, and the
    method's files (the choice and an ensemble's postprocessing: method_predict.METHOD_FILE)."""
    from hpcnn.nnunet.method_predict import METHOD_FILE

    extras: set[str] = set()
    if not infos:
        raise DataError(f"{name}: an empty zip", hint="export the model again")
    total = 0
    datasets: set[str] = set()
    models: dict[str, set[str]] = {}
    skipped = []
    for info in infos:
        path = info.filename
        mode = info.external_attr >> 16
        if path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", path) or "\\" in path:
            raise DataError(f"{name}: member {path!r} has an absolute path",
                            hint="refusing a zip that writes outside nnUNet_results; export the "
                                 "model with `hpcnn export`")
        parts = PurePosixPath(path).parts
        if ".." in parts:
            raise DataError(f"{name}: member {path!r} leaves the folder ('..')",
                            hint="refusing a zip that writes outside nnUNet_results; export the "
                                 "model with `hpcnn export`")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: written without type
            raise DataError(f"{name}: member {path!r} is a link or special file",
                            hint="a model zip holds plain files only; export it with "
                                 "`hpcnn export`")
        if info.is_dir():
            continue
        total += info.file_size
        if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise DataError(f"{name}: member {path!r} unpacks to {info.file_size} bytes from "
                            f"{info.compress_size} (more than {MAX_RATIO}x)",
                            hint="not a model zip (a zip bomb?); export the model again")
        if parse_folder_name(parts[0]) is None or len(parts) < 2:
            raise DataError(f"{name}: {path!r} is not under a DatasetNNN_Name folder: not an "
                            "nnU-Net model zip",
                            hint="a model zip holds DatasetNNN_Name/Trainer__Plans__config/...; "
                                 "`hpcnn export` writes one")
        datasets.add(parts[0])
        if len(parts) >= 3 and _IDENTIFIER.fullmatch(parts[1]):
            models.setdefault(f"{parts[0]}/{parts[1]}", set()).add("/".join(parts[2:]))
        elif METHOD_FILE.fullmatch("/".join(parts[1:])):
            extras.add(path)
        else:
            skipped.append(path)
    if total > max_bytes:
        raise DataError(f"{name}: unpacks to {total / 2**20:.1f} MiB, more than the "
                        f"{max_bytes / 2**20:.1f} MiB a model zip may hold",
                        hint="not a model zip, or one with far more than checkpoints")
    if len(datasets) > 1:
        raise DataError(f"{name}: holds several datasets ({', '.join(sorted(datasets))})",
                        hint="export one dataset's model per zip")
    if not models:
        raise DataError(f"{name}: no Trainer__Plans__config folder inside: not an nnU-Net model "
                        "zip", hint="`hpcnn export` writes one")
    for identifier, files in models.items():
        missing = [f for f in MODEL_FILES if f not in files]
        finished = [p for p in files if p.count("/") == 1 and p.endswith(f"/{CHECKPOINT}")
                    and _FOLD.fullmatch(p.split("/")[0])]
        if missing or not finished:
            what = ", ".join(missing) if missing else f"fold_K/{CHECKPOINT}"
            raise DataError(f"{name}: {identifier} lacks {what}: not a usable model",
                            hint="export the model again from a folder with a finished fold")
    notes = [f"not installed ({len(skipped)} file(s) outside the model folders): "
             f"{', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}"] if skipped else []
    return set(models), notes, extras


def _check_space(name: str, results: Path, total: int) -> None:
    probe = results
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if total > free:
        raise DataError(f"{name}: needs {total / 2**30:.2f} GiB, {probe} has "
                        f"{free / 2**30:.2f} GiB free", hint="free some space first")


def _check_target(name: str, results: Path, dataset: str, models: set[str],
                  force: bool) -> None:
    """No silent overwrite, and no second dataset under the same id (nnU-Net stops then)."""
    ref = parse_folder_name(dataset)
    assert ref is not None
    other = existing_datasets(results).get(ref.id)
    if other is not None and other.name != dataset:
        raise DataError(f"{name}: holds {dataset}, but {other} uses id {ref.id}: nnU-Net "
                        "cannot tell them apart",
                        hint="rename or move the other dataset's results first")
    there = [m for m in sorted(models) if (results / m).exists()]
    if there and not force:
        raise DataError(f"{results / there[0]} already exists",
                        hint="pass --force to replace it (the old folder is removed once the "
                             "new one is in place)")


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path) -> None:
    """One member as a plain file under ``root`` (paths were checked; no modes or links)."""
    target = root.joinpath(*PurePosixPath(info.filename).parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _check_checkpoint(name: str, where: str, path: Path) -> None:
    """Load the checkpoint as nnU-Net will, but with tensors and plain data only."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: {where}/{CHECKPOINT} does not load as a checkpoint "
                        f"({reason[:300]})",
                        hint="export the model again; a checkpoint that needs code to load "
                             "is refused") from exc
    if not isinstance(data, dict) or "network_weights" not in data or \
            "trainer_name" not in data:
        raise DataError(f"{name}: {where}/{CHECKPOINT} is not an nnU-Net checkpoint (no "
                        "network_weights or trainer_name)", hint="export the model again")


def _numpy_globals() -> list[object]:
    """The numpy types nnU-Net's checkpoints hold (its training log keeps numpy floats)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    found: list[object] = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in getattr(dtypes, "__all__", ())]
    return found
