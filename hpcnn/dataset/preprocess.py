"""``hpcnn preprocess``: nnU-Net's plan-and-preprocess, safe to repeat and to train from.

nnU-Net's own command leaves traps (nnunet-facts.md): it reuses a stale
``dataset_fingerprint.json`` unless ``--clean`` is given; it keeps a stale ``splits_final.json``,
so new cases land in no fold; the first fold job that finds no split file writes one while the
others race on it (nnU-Net issue 3064); and it records no versions. So this command:

1. checks the dataset (``hpcnn dataset check``) and refuses one with errors, before anything
   under ``nnUNet_preprocessed`` is touched;
2. compares the case list, and a hash of dataset.json and of each raw file's name, size and
   mtime, with those the last run recorded and passes ``--clean`` when either changed (a
   ``--force`` re-import with the same ids), or when a fingerprint of unknown origin is there;
3. plans (``nnUNetv2_plan_and_preprocess --no_pp --verify_dataset_integrity`` with the planner
   and GPU memory target asked for), reads the plans identifier and configurations from the file
   the planner wrote, refuses a configuration the plans lack (``3d_lowres`` on small images), and
   only then preprocesses the configurations asked for (``all``: every one the plans define),
   each data folder once, with ``-np``/``-npfp`` sized to the cores and memory; nnU-Net's output
   goes to ``out`` (the CLI keeps it in a log file and prints a summary);
4. writes ``splits_final.json`` with nnU-Net's own ``generate_crossval_split`` unless the one
   there is a 5-fold split of exactly the current cases, so all fold jobs can start at once (the
   launcher's ``write_splits``, which a preprocessing job on the cluster runs too);
5. writes ``hpcnn_provenance.json`` (versions, time, planner, plans identifier, the
   configurations really preprocessed, case list and the hashes), last and atomically: its
   presence means a completed run on exactly those cases. Training and prediction read it back
   with ``read_provenance``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hpcnn.dataset.check import check_dataset
from hpcnn.dataset.layout import (
    NNUNET_FOLDS,
    DatasetRef,
    chosen_dataset,
    parse_folder_name,
    resolve_dataset,
    too_few_training,
)
from hpcnn.dataset.workers import Progress, available_cpus, available_memory
from hpcnn.errors import DataError, HpcnnError
from hpcnn.fsutil import atomic_write_text, ensure_dir
from hpcnn.nnunet import commands, launcher_path
from hpcnn.nnunet.launcher import write_splits
from hpcnn.nnunet.plans import (
    Plans,
    check_names,
    json_stamps,
    planner_exists,
    read_plans,
    resolve,
    to_preprocess,
    written_plans,
)
from hpcnn.workspace import RAW, Workspace

if TYPE_CHECKING:
    from hpcnn.config import Config

PROVENANCE = "hpcnn_provenance.json"
FINGERPRINT = "dataset_fingerprint.json"
RAW_FILES = ("imagesTr", "labelsTr")  # what nnU-Net fingerprints and preprocesses
WORKER_BASE_BYTES = 512 * 2**20  # a spawned nnU-Net worker (torch imported) before any data
BYTES_PER_VOXEL_CHANNEL = 32  # float32 data + segmentation, resampled copies, headroom


class PreprocessFailed(HpcnnError):
    """nnUNetv2_plan_and_preprocess ran and exited non-zero."""

    exit_code = 1


@dataclass
class PreprocessJob:
    """What ``run`` will do, decided before anything is written (printed by the CLI)."""

    dataset: DatasetRef
    raw_folder: Path
    output: Path
    configurations: list[str]  # as asked for: may hold "all"
    cases: list[str]
    workers: int
    workers_reason: str
    clean: bool
    clean_reason: str
    command: list[str]
    env: dict[str, str]
    raw_sha256: str = ""
    planner: str | None = None
    gpu_memory_target: float | None = None
    progress_bar: bool = False
    previous: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class PreprocessResult:
    output: Path
    splits: str  # "written", "regenerated" or "kept"
    provenance: Path
    plans: Plans
    configurations: list[str]  # really preprocessed (the cascade's stage 2 shares 3d_fullres')
    seconds: float


def case_list_hash(cases: Sequence[str]) -> str:
    """sha256 of the sorted case ids, one per line: what training compares against."""
    return hashlib.sha256("\n".join(sorted(cases)).encode("utf-8")).hexdigest()


def raw_files_hash(raw_folder: Path) -> str:
    """sha256 of dataset.json's bytes and of each file's relative path, size and mtime under
    imagesTr and labelsTr: changes when a dataset is re-imported or edited, without reading
    voxels."""
    digest = hashlib.sha256()
    try:
        digest.update((raw_folder / "dataset.json").read_bytes())
    except OSError:
        digest.update(b"\0no dataset.json")
    for sub in RAW_FILES:
        folder = raw_folder / sub
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        for path in files:
            st = path.stat()
            digest.update(f"\n{path.relative_to(raw_folder).as_posix()}\t{st.st_size}\t"
                          f"{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def read_provenance(preprocessed_folder: Path) -> dict[str, Any] | None:
    """The provenance of ``nnUNet_preprocessed/DatasetNNN_Name`` (None: never completed by
    hpcnn, or written by nnU-Net alone)."""
    try:
        data = json.loads((preprocessed_folder / PROVENANCE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prepare_configured(
    cfg: Config,
    dataset: str | None = None,
    *,
    configurations: Sequence[str] = (),
    planner: str | None = None,
    gpu_memory_target: float | None = None,
    workers: int | None = None,
    on_progress: Progress | None = None,
    interactive: bool = False,
) -> PreprocessJob:
    """``prepare`` for ``hpcnn preprocess``: the dataset given, else training.dataset, in the
    configured workspace; the configurations given, else training.configuration; the planner
    and GPU memory target given, else preprocess.planner and preprocess.gpu_memory_target."""
    workspace = Workspace(cfg.workspace)
    folder = resolve_dataset(chosen_dataset(dataset, cfg.training.dataset), workspace.raw)
    target = gpu_memory_target if gpu_memory_target is not None else \
        cfg.preprocess.gpu_memory_target
    return prepare(workspace, folder,
                   configurations=list(configurations) or [cfg.training.configuration],
                   planner=planner or cfg.preprocess.planner, gpu_memory_target=target,
                   folds=cfg.training.folds, workers=workers, on_progress=on_progress,
                   interactive=interactive)


def prepare(
    workspace: Workspace,
    raw_folder: Path,
    *,
    configurations: Sequence[str],
    folds: Sequence[int],
    planner: str | None = None,
    gpu_memory_target: float | None = None,
    workers: int | None = None,
    on_progress: Progress | None = None,
    interactive: bool = False,
) -> PreprocessJob:
    """Check the dataset, the configuration names and the planner, and decide the planning
    command; raises DataError (with the check's report) when the dataset has errors. Writes
    nothing."""
    ref = parse_folder_name(raw_folder.name)
    if ref is None:
        raise DataError(f"{raw_folder}: nnU-Net needs the dataset folder named DatasetNNN_Name",
                        hint="import it with `hpcnn dataset import`, or rename the folder")
    _refuse_id_clash(workspace, raw_folder, ref)
    output = workspace.preprocessed / ref.folder_name
    _check_plan_request(output, configurations, planner, gpu_memory_target)
    report = check_dataset(raw_folder, folds=folds, workers=workers, on_progress=on_progress)
    if report.errors:
        raise DataError(f"{report.summary()}; not preprocessing:\n"
                        f"{report.as_text(errors_only=True)}",
                        hint=f"fix the errors above; `hpcnn dataset check {raw_folder}` shows "
                             "the warnings too")
    if len(report.cases) < NNUNET_FOLDS:
        raise DataError(f"{raw_folder.name}: {too_few_training(len(report.cases))}",
                        hint="add labelled cases (re-import with a lower --test-fraction moves "
                             "test cases into training)")
    previous = read_provenance(output)
    raw_sha256 = raw_files_hash(raw_folder)
    if previous is not None:
        clean = True
        if previous.get("cases_sha256") != case_list_hash(report.cases):
            clean_reason = "the case list changed since the last preprocessing"
        elif previous.get("raw_sha256") != raw_sha256:
            clean_reason = ("dataset.json or the raw files changed since the last preprocessing "
                            "(re-imported or edited)")
        else:
            clean, clean_reason = False, "same cases and files as the last preprocessing"
    else:
        clean = (output / FINGERPRINT).exists()
        clean_reason = ("a fingerprint of unknown cases is there (no hpcnn provenance)" if clean
                        else "first preprocessing")
    sized, workers_reason = size_workers(len(report.cases), report.max_case_voxels,
                                         report.channels)
    if workers is not None:
        sized, workers_reason = workers, "--workers"
    command = _through_launcher(commands.plan(ref.id, workers=sized, planner=planner,
                                              gpu_memory_target=gpu_memory_target, clean=clean,
                                              progress_bar=interactive))
    env = {**os.environ, **workspace.nnunet_env(), RAW: str(raw_folder.parent),
           "PYTHONUNBUFFERED": "1"}
    job = PreprocessJob(ref, raw_folder, output, list(configurations), report.cases, sized,
                        workers_reason, clean, clean_reason, command, env, raw_sha256,
                        planner, gpu_memory_target, interactive, previous)
    job.warnings = [f"{p.file}: {p.message}" for p in report.warnings]
    return job


def run(job: PreprocessJob, out: TextIO | None = None) -> PreprocessResult:
    """Plan, check the configurations against the plans written, preprocess them (nnU-Net's
    output streamed to ``out``), then write splits and provenance. A configuration the plans
    lack stops before preprocessing, with the provenance of the last preprocessing intact."""
    start = time.monotonic()
    out = out or sys.stdout
    ensure_dir(job.output.parent)
    job.output.mkdir(exist_ok=True)
    before = json_stamps(job.output)
    _run_nnunet(job, job.command, out, "planning (nnUNetv2_plan_and_preprocess --no_pp)")
    plans = written_plans(job.output, before)
    configurations = resolve(job.configurations, plans)
    # A provenance file promises a completed run on its cases: withdraw it while this one runs.
    (job.output / PROVENANCE).unlink(missing_ok=True)
    line = commands.preprocess(job.dataset.id, plans.identifier,
                               to_preprocess(configurations, plans), workers=job.workers,
                               progress_bar=job.progress_bar)
    _run_nnunet(job, _through_launcher(line), out, "nnUNetv2_preprocess")
    splits = write_splits(job.output, job.cases)
    provenance = _write_provenance(job, splits, plans, configurations)
    return PreprocessResult(job.output, splits, provenance, plans, configurations,
                            time.monotonic() - start)


def _through_launcher(line: list[str]) -> list[str]:
    return commands.through_launcher(sys.executable, str(launcher_path()), line)


def _run_nnunet(job: PreprocessJob, command: list[str], out: TextIO, what: str) -> None:
    code, tail = commands.stream(command, job.env, out)
    if code != 0:
        raise PreprocessFailed(f"{what} exited with code {code}; its last lines:\n{tail}",
                               hint=_failure_hint(tail, job.workers))


def _check_plan_request(output: Path, configurations: Sequence[str], planner: str | None,
                        gpu_memory_target: float | None) -> None:
    """What can be refused before anything runs: a name that is no configuration (``3d_fulres``),
    a planner class nnU-Net does not have here, a GPU memory target that is no size."""
    known = []
    for path in output.glob("*.json"):
        with contextlib.suppress(DataError):
            known += read_plans(path).configurations
    check_names(configurations, known)
    if gpu_memory_target is not None and not gpu_memory_target > 0:
        raise DataError(f"--gpu-memory-target {gpu_memory_target:g}: give the GPU memory in GB, "
                        "e.g. 8 (nnU-Net's default) or 24 (ResEnc L)")
    if planner and planner != commands.DEFAULT_PLANNER and not planner_exists(planner):
        raise DataError(f"planner {planner!r}: nnU-Net has no planner class of that name here",
                        hint="use ExperimentPlanner, nnUNetPlannerResEncM, nnUNetPlannerResEncL "
                             "or nnUNetPlannerResEncXL; a site's own planner must be a module "
                             "inside nnunetv2/experiment_planning, where nnU-Net looks")


def size_workers(n_cases: int, max_voxels: int, channels: int) -> tuple[int, str]:
    """Processes for nnU-Net: the cores this process may use, fewer when the largest case times
    the workers would not fit in the memory available (nnU-Net's workers die silently then)."""
    cpus = available_cpus()
    per_worker = WORKER_BASE_BYTES + BYTES_PER_VOXEL_CHANNEL * max_voxels * (channels + 1)
    memory = available_memory()
    by_memory = memory // per_worker if memory else cpus
    workers = max(1, min(cpus, by_memory, n_cases))
    gib = 2**30
    mem_text = f"{memory / gib:.1f} GiB available" if memory else "memory unknown"
    return workers, (f"{cpus} core(s), {mem_text}, about {per_worker / gib:.1f} GiB per worker, "
                     f"{n_cases} case(s)")


def _refuse_id_clash(workspace: Workspace, raw_folder: Path, ref: DatasetRef) -> None:
    """nnU-Net looks the id up in all three folders and stops when it names two datasets."""
    others = []
    for root in (raw_folder.parent, workspace.preprocessed, workspace.results):
        if root.is_dir():
            others += [p for p in root.glob(f"Dataset{ref.id:03d}_*")
                       if p.is_dir() and p.name != ref.folder_name]
    if others:
        raise DataError(f"dataset id {ref.id} also names {', '.join(map(str, others))}: nnU-Net "
                        f"cannot tell which dataset -d {ref.id} means",
                        hint="rename or remove the other folder, or import under another --id")


def _failure_hint(tail: str, workers: int) -> str:
    if any(s in tail for s in ("6 feet under", "Killed", "MemoryError", "out of memory")):
        return (f"a worker ran out of memory: run again with fewer workers "
                f"(--workers {max(1, workers // 2)})")
    return "see nnU-Net's output above; `hpcnn dataset check` reports dataset problems"


def _write_provenance(job: PreprocessJob, splits: str, plans: Plans,
                      configurations: list[str]) -> Path:
    from importlib.metadata import version

    from hpcnn import __version__

    data = {
        "dataset": job.dataset.folder_name,
        "raw_folder": str(job.raw_folder),
        "planner": job.planner or commands.DEFAULT_PLANNER,
        "gpu_memory_target": job.gpu_memory_target,
        "plans": plans.identifier,
        "configurations": configurations,
        "data": {c: plans.data_identifier(c) for c in configurations},
        "preprocessed": _preprocessed(job, plans.identifier, configurations),
        "nnunetv2_version": version("nnunetv2"),
        "hpcnn_version": __version__,
        "python": sys.version.split()[0],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_cases": len(job.cases),
        "cases": sorted(job.cases),
        "cases_sha256": case_list_hash(job.cases),
        "raw_sha256": job.raw_sha256,
        "clean": job.clean,
        "splits": splits,
        "workers": job.workers,
    }
    path = job.output / PROVENANCE
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def _preprocessed(job: PreprocessJob, plans: str, configurations: list[str]) -> dict[str, list]:
    """Plans identifier -> configurations preprocessed for the current cases: this run's, and
    an earlier run's on the same cases and files (not --clean: their data are still valid)."""
    earlier: dict[str, list] = {}
    if not job.clean and job.previous is not None:
        found = job.previous.get("preprocessed")
        earlier = found if isinstance(found, dict) else {}
    merged = {k: list(v) for k, v in earlier.items() if isinstance(v, list)}
    merged[plans] = sorted({*merged.get(plans, []), *configurations})
    return merged


def preprocessed_configurations(provenance: dict[str, Any] | None, plans: str) -> list[str]:
    """The configurations of ``plans`` that hpcnn preprocessed (from the provenance)."""
    found = (provenance or {}).get("preprocessed") or {}
    return list(found.get(plans, [])) if isinstance(found, dict) else []

