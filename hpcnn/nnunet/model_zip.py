"""Model zips: ``hpcnn export`` and ``hpcnn import-model``.

The zip has nnU-Net's layout (what ``nnUNetv2_install_pretrained_model_from_zip`` extracts into
``nnUNet_results``): ``DatasetNNN_Name/Trainer__Plans__config/{dataset.json, plans.json,
dataset_fingerprint.json, fold_K/...}``. hpcnn writes it itself, with the folds that finished,
because nnU-Net's exporter stops at the first fold without ``progress.png`` or
``validation/summary.json``.

nnU-Net's installer extracts whatever a zip holds over whatever is there. The import here checks
first and writes nothing when a check fails: a readable zip with intact data (each member's CRC,
read as it is extracted into a hidden work folder; a damaged member is named), no two members of
one name, only plain files and folders (no links), no absolute or ``..`` paths, a bounded total
size that fits on the disk, nnU-Net's layout with at least one finished fold, and every
checkpoint it carries (final, latest and best, of finished and unfinished folds: nnU-Net's
``--c`` loads the latter) passing the one weights-only check (checkpoint.py), and no model of
the same name unless ``force``. Files a model does not use (code, pickles, anything outside
``MODEL_PATTERNS``) are left out, and the notes name them. Model folders are renamed into place.

The export moves each finished fold's inference checkpoint (what prediction reads, about half of
nnU-Net's file) as ``checkpoint_final.pth``, unless ``full_checkpoints``; either way each
checkpoint passes the same check first, so hpcnn never hands on a file that would run code.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from hpcnn.dataset.importer import _move_into_place
from hpcnn.dataset.layout import existing_datasets, parse_folder_name
from hpcnn.errors import DataError
from hpcnn.nnunet.checkpoint import check_checkpoint, slim_bytes
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
MODEL_PATTERNS = (*MODEL_FILES, FINGERPRINT, "fold_*/checkpoint_*.pth", "fold_*/progress.png",
                  "fold_*/training_log_*.txt", "fold_*/debug.json",
                  "fold_*/validation/summary.json", f"fold_*/{FOLD_PROVENANCE}",
                  # find-best's postprocessing of a configuration that won alone
                  *(f"crossval_results_folds_*/{n}"
                    for n in ("postprocessing.pkl", "plans.json", "dataset.json")))
"""What import-model installs of a model folder (paths inside ``Trainer__Plans__config``)."""
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError)


@dataclass
class Exported:
    path: Path
    identifier: str
    folds: list[str]
    size: int
    skipped: str


def export_model(model_dir: Path, zip_path: Path, *, force: bool = False,
                 full_checkpoints: bool = False, models: Sequence[Path] = ()) -> Exported:
    """Zip the model's shared files and its finished folds (their inference checkpoints, unless
    ``full_checkpoints``); the zip appears whole or not at all (written beside it, then
    renamed). ``model_dir`` may be a ``DatasetNNN_Name`` results folder where ``hpcnn
    find-best`` chose: then every configuration it compared goes in, with the choice and the
    chosen postprocessing (method_files). ``models``: exactly these model folders of that
    results folder (an experiment's configurations, or some of them), with the choice only
    when they hold every configuration it chose."""
    from hpcnn.nnunet.method_predict import method_files

    method = method_files(model_dir)
    skipped = ""
    if models:
        if method and not {p.name for p in method.chosen} <= {p.name for p in models}:
            skipped = (f"find-best's choice ({', '.join(p.name for p in method.chosen)}): "
                       "its configurations are not all exported")
            method = None
        method = replace(method, models=list(models)) if method else None
    model = open_model(method.models[0] if method else (models[0] if models else model_dir))
    if zip_path.suffix.lower() != ".zip":
        raise DataError(f"{zip_path}: a model zip must end in .zip",
                        hint=f"e.g. {zip_path.with_suffix('.zip').name}")
    if zip_path.exists() and not force:
        raise DataError(f"{zip_path} already exists", hint="pass --force to replace it")
    members: list[tuple[Path, str]] = []
    opened = ([open_model(m) for m in method.models] if method
              else [open_model(m) for m in models] if models else [model])
    for one in opened:
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
                if source.name != CHECKPOINT:
                    zf.write(source, arcname, compress_type=zipfile.ZIP_DEFLATED)
                    continue
                # Checkpoints are mostly float data that deflate barely shrinks: store them.
                slim = None if full_checkpoints else slim_bytes(source)
                if slim is None:
                    check_checkpoint(source)
                    zf.write(source, arcname, compress_type=zipfile.ZIP_STORED)
                else:
                    zf.writestr(_member(source, arcname), slim,
                                compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, zip_path)
    finally:
        tmp.unlink(missing_ok=True)
    return Exported(zip_path, model.identifier, folds, zip_path.stat().st_size,
                    "; ".join(p for p in (model.describe_missing(), skipped) if p))


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
        results.mkdir(parents=True, exist_ok=True)
        work = results / f".hpcnn-import-{uuid.uuid4().hex[:8]}"
        try:
            for info in infos:
                if _installed(info.filename, models) or info.filename in extras:
                    _extract(name, zf, info, work)
            if extras:
                from hpcnn.nnunet.method_predict import check_method_files

                notes += check_method_files(name, work / dataset)
            installed, folds = [], {}
            for identifier in sorted(models):
                folder = work / identifier
                model = open_model(folder)
                for path in sorted(folder.glob("fold_*/*.pth")):
                    check_checkpoint(path, f"{name}: {path.relative_to(work).as_posix()}",
                                     hint="export the model again from a folder you trust; "
                                          "a checkpoint that needs code to load is refused")
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
    names = [i.filename.rstrip("/") for i in infos]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{name}: member(s) {', '.join(repr(n) for n in twice[:5])} appear more "
                        "than once: which copy would be installed is not defined",
                        hint="a model zip names each file once; export the model again with "
                             "`hpcnn export`")
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
    unused = [f"{m}/{f}" for m, files in models.items() for f in sorted(files)
              if not any(fnmatch.fnmatchcase(f, p) for p in MODEL_PATTERNS)]
    notes = [f"not installed ({len(skipped)} file(s) outside the model folders): "
             f"{_some(skipped)}"] if skipped else []
    if unused:
        notes.append(f"left out {len(unused)} file(s) a model does not use (only checkpoints, "
                     f"plans, logs and summaries are installed): {_some(unused)}")
    return set(models), notes, extras


def _some(paths: list[str], shown: int = 5) -> str:
    return ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more"
                                       if len(paths) > shown else "")


def _installed(path: str, models: set[str]) -> bool:
    """Whether a member is a model file that import-model installs."""
    parts = path.split("/")
    return "/".join(parts[:2]) in models and any(
        fnmatch.fnmatchcase("/".join(parts[2:]), p) for p in MODEL_PATTERNS)


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


def _extract(name: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path) -> None:
    """One member as a plain file under ``root`` (paths were checked; no modes or links); its
    data is checked as it is read (zipfile checks the CRC at the end), a damaged member named."""
    target = root.joinpath(*PurePosixPath(info.filename).parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except _ZIP_ERRORS as exc:
        if isinstance(exc, OSError) and not isinstance(exc, zipfile.BadZipFile) and \
                exc.filename is not None:
            raise  # the disk here, not the zip
        detail = str(exc).replace(repr(info.filename), "").replace(info.filename, "").strip()
        raise DataError(f"{name}: {info.filename} is damaged: its data cannot be unpacked or "
                        f"does not match its checksum ({type(exc).__name__}: {detail[:200]})",
                        hint="download or copy the zip again; nothing was installed") from exc


def _member(source: Path, arcname: str) -> zipfile.ZipInfo:
    """A zip entry for ``arcname`` dated as ``source``."""
    info = zipfile.ZipInfo(arcname, time.localtime(source.stat().st_mtime)[:6])
    info.external_attr = 0o644 << 16
    return info
