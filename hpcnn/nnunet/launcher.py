#!/usr/bin/env python3
"""hpcnn's in-job launcher: trains one nnU-Net fold so that it survives any walltime.

A fold job runs, with the cluster's python (stdlib + nnunetv2 only: hpcnn is not installed there)::

    python launcher.py DATASET CONFIG FOLD -tr T -p P [--c] [--npz] [-device D] [-num_gpus N]
                       [--deadline EPOCH_SECONDS] [--safety SECONDS]

and, as subcommands, ``launcher.py nnunet nnUNetv2_X ARGS`` (one of nnU-Net's commands, see
``ENTRY_POINTS``) and ``launcher.py write-splits DATASET`` (nnU-Net's 5-fold split, written once
before the folds start). The fold job is nnU-Net's own training entry point
(``nnUNetv2_train``) plus what that lacks:

- The trainer is looked up in the ``nnUNet_extTrainer`` directories first (every top-level ``.py``
  there is imported), and only then with nnU-Net's own lookup, which imports all of nnU-Net's
  trainer modules first and so fails on a cluster whose optional packages are broken (timm or
  torchvision, for nnU-Net's Primus trainers).
- With ``--c`` (a continuation, or a resubmission of a fold that has a checkpoint) it continues
  as nnU-Net's ``--c``: from ``checkpoint_final.pth`` it only validates, else it resumes from
  ``checkpoint_latest.pth`` (or ``checkpoint_best.pth``). Without it, it starts fresh (hpcnn does
  not pass ``--c`` to a fold's first attempt, where nnU-Net would warn that there is no
  checkpoint to continue from), unless the fold has a checkpoint after all (the scheduler
  requeued the job): that is resumed, never trained over. A fold that is complete (final
  checkpoint and its validation) exits 0 at once without importing torch, with ``--c`` or not.
- Walltime: nnU-Net saves ``checkpoint_latest.pth`` only every 50 epochs and has no signal
  handling. The launcher stops at the end of an epoch once the next epoch might not fit before
  ``--deadline`` (the end time of the job: it keeps the longest epoch seen so far plus ``--safety``
  seconds in reserve), or after SIGTERM/SIGUSR1 arrived. It then writes ``checkpoint_latest.pth``
  for the epoch just finished, never ``checkpoint_final.pth`` (which nnU-Net's ``on_train_end``
  would write for the partial model), and exits with ``EXIT_CONTINUE``: a continuation resumes at
  the next epoch, so no epoch is trained twice. Every attempt trains at least one epoch, so
  continuations always make progress. A signal outside the epochs (start-up, validation) stops the
  launcher at once: the attempt's end is recorded (with the epochs it trained) and the process
  exits without unwinding, because the scheduler signalled nnU-Net's worker processes too, and
  a ``multiprocessing`` pool whose idle worker died holding the queue's lock hangs in its
  cleanup until the scheduler's SIGKILL, which leaves no record. The continuation validates.
- No process that nnU-Net started outlives the launcher's training or a stop: the data-loader
  workers (forked, so they keep the launcher's SIGTERM handler and outlive ``terminate()``) that
  did not stop when asked are killed once training ends, and a stop kills what is left of the
  launcher's ``multiprocessing`` children (a pool replaces a worker killed by the scheduler's
  signal at once, with one that the signal never reached). One left behind holds the job's
  output open and keeps the job running after the launcher has exited.
- Checkpoints are written to a temporary name and renamed, so a job killed mid-write never leaves
  a truncated checkpoint for the continuation to load.
- Once the fold is complete it writes ``checkpoint_final_inference.pth`` beside nnU-Net's final
  checkpoint: what prediction reads (the network weights and a few small keys), without the
  optimizer state that makes up half of nnU-Net's file, loadable with ``weights_only=True``.
  ``hpcnn sync`` and ``export`` move it (landing as ``checkpoint_final.pth``); nnU-Net's own file
  stays for resuming or fine-tuning.
- ``hpcnn_provenance.json`` in the fold folder records the versions, host, job id and every
  attempt's start, end and outcome (nnU-Net records no nnunetv2 version).

The trainer keeps its class and name (the launcher patches methods of the trainer instance), so
the result folder is nnU-Net's ``Trainer__Plans__config/fold_K`` and predictions find the trainer
by the same name. With ``-num_gpus N > 1`` the ranks agree on stopping at every epoch end, and
the launcher forwards the stop signals to them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

EXIT_COMPLETE = 0
# "Stopped before the walltime with a fresh checkpoint_latest.pth: continue me" (EX_TEMPFAIL).
EXIT_CONTINUE = 75
EXIT_USAGE = 2

PROVENANCE = "hpcnn_provenance.json"
FINAL = "checkpoint_final.pth"
LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_best.pth"
RESUMABLE = (FINAL, LATEST, BEST)
"""The checkpoints ``--c`` resumes from, in nnU-Net's order."""
INFERENCE = "checkpoint_final_inference.pth"
INFERENCE_KEYS = ("network_weights", "init_args", "trainer_name",
                  "inference_allowed_mirroring_axes", "current_epoch")
"""What nnU-Net's predictor reads from a checkpoint (``initialize_from_trained_model_folder``),
and the epoch for the record."""
SUMMARY = ("validation", "summary.json")
TMP_SUFFIX = ".hpcnn-tmp"
# SIGUSR1 is the early warning a job script can ask the scheduler for (Slurm's --signal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DEFAULT_SAFETY_S = 60.0  # checkpoint write, dataloader shutdown and exit after the last epoch
PREPROCESSED, RESULTS, EXT_TRAINER = "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"
JOB_ID_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "JOB_ID", "HPCNN_JOB_ID")


class StopRequest(BaseException):
    """Leaves nnU-Net's training loop or validation to stop for a continuation.

    A BaseException, so that nnU-Net's ``except Exception`` blocks do not swallow it."""


class Stopper:
    """Decides when to stop: the deadline, the longest epoch seen so far, the stop signals.

    Outside the epochs (``interruptible``) a signal stops at once; inside, it is only recorded
    and the epoch end stops, because half an epoch cannot be checkpointed."""

    def __init__(self, deadline: float | None, safety: float) -> None:
        self.deadline = deadline
        self.safety = safety
        self.longest_epoch = 0.0
        self.signalled: str | None = None
        self.interruptible = True
        self.exit_now: Callable[[str], None] | None = None
        """Set once the attempt is recorded: records its end and exits the process."""

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signalled = signal.Signals(signum).name
        if self.interruptible:
            if self.exit_now is not None:
                self.exit_now(f"signal {self.signalled}")
            raise StopRequest(self.signalled)

    def time_is_up(self, now: float, reserve: float) -> bool:
        """Whether ``reserve`` more seconds of work plus the safety margin overrun the deadline."""
        return self.deadline is not None and now + reserve + self.safety >= self.deadline

    def after_epoch(self, epoch_seconds: float, now: float) -> str | None:
        """Why to stop after an epoch that took ``epoch_seconds`` (None: train the next one)."""
        self.longest_epoch = max(self.longest_epoch, epoch_seconds)
        if self.signalled:
            return f"signal {self.signalled}"
        if self.time_is_up(now, self.longest_epoch):
            return "deadline"
        return None

    def before_validation(self, now: float) -> str | None:
        """Why not to start validation (None: validate)."""
        if self.signalled:
            return f"signal {self.signalled}"
        if self.time_is_up(now, 0.0):
            return "deadline"
        return None


# --- the fold folder, without torch ---------------------------------------------------------


def fold_folder(dataset: str, trainer: str, plans: str, configuration: str, fold: str) -> Path:
    """``nnUNet_results/DatasetNNN_Name/Trainer__Plans__config/fold_K``, as nnU-Net builds it
    (with the ``plans_name`` recorded in the plans file)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(dataset)
    plans_file = Path(os.environ[PREPROCESSED], name, f"{plans}.json")
    plans_name = json.loads(plans_file.read_text()).get("plans_name", plans)
    return Path(os.environ[RESULTS], name,
                f"{trainer}__{plans_name}__{configuration}", f"fold_{fold}")


def validation_is_done(folder: Path, npz: bool) -> bool:
    """A readable validation summary written after the final checkpoint (and the ``.npz``
    files when asked for): what a complete fold has."""
    final, summary = folder / FINAL, folder.joinpath(*SUMMARY)
    if not (final.is_file() and summary.is_file()):
        return False
    if summary.stat().st_mtime < final.stat().st_mtime:
        return False
    try:
        json.loads(summary.read_text())["foreground_mean"]
    except (ValueError, KeyError, TypeError):
        return False
    return not npz or any(summary.parent.glob("*.npz"))


# --- the cascade's second stage, without torch ----------------------------------------------

PREDICTED_NEXT_STAGE = "predicted_next_stage"
PREDICTION_SUFFIXES = (".b2nd", ".npz", ".npy")
"""How nnU-Net's datasets store a previous stage's segmentation of a case (blosc2 since 2.6)."""


def previous_stage_problem(dataset: str, trainer: str, plans: str, configuration: str,
                           fold: str) -> str | None:
    """Why a cascade fold cannot train (None: it can, or it is no cascade).

    A ``3d_cascade_fullres`` fold reads, for every case it trains and validates on, what the
    3d_lowres folds predicted of their validation cases during their final validation
    (``<lowres>/predicted_next_stage/<cascade>``). nnU-Net itself only fails later, in a
    data-loading worker, with a bare FileNotFoundError; this names the folder, the cases and
    the 3d_lowres folds that should have written them."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(dataset)
    base = Path(os.environ[PREPROCESSED], name)
    data = json.loads((base / f"{plans}.json").read_text())
    previous = data.get("configurations", {}).get(configuration, {}).get("previous_stage")
    if not previous:
        return None
    plans_name = data.get("plans_name", plans)
    folder = Path(os.environ[RESULTS], name, f"{trainer}__{plans_name}__{previous}",
                  PREDICTED_NEXT_STAGE, configuration)
    splits = json.loads((base / SPLITS_FILE).read_text())
    if fold == "all":
        cases = {c for split in splits for c in split["val"]}
    else:
        split = splits[int(fold)]
        cases = {*split["train"], *split["val"]}
    there = {p.name[: -len(s)] for p in folder.glob("*") for s in PREDICTION_SUFFIXES
             if p.name.endswith(s)} if folder.is_dir() else set()
    missing = sorted(cases - there)
    if not missing:
        return None
    folds = sorted({i for i, split in enumerate(splits) for c in missing if c in split["val"]})
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10
                                       else "")
    return (f"{configuration} needs what the {previous} folds predicted of every case, and "
            f"{folder} lacks {shown}: {previous} folds {', '.join(map(str, folds))} did not "
            f"complete their validation. Fix: let those {previous} folds complete (`hpcnn "
            f"train-all-folds --resubmit-failed` resubmits a failed one, then this fold)")


# --- the inference checkpoint ---------------------------------------------------------------


def safe_numpy_globals() -> list[Any]:
    """The numpy types nnU-Net's checkpoints hold (its training log keeps numpy floats), for
    ``torch.serialization.safe_globals``."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    found: list[Any] = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in getattr(dtypes, "__all__", ())]
    return found


def inference_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The keys of an nnU-Net checkpoint that prediction reads (no optimizer state, gradient
    scaler or training log)."""
    return {k: checkpoint[k] for k in INFERENCE_KEYS if k in checkpoint}


def write_inference_checkpoint(folder: Path) -> Path:
    """``INFERENCE`` from the fold's final checkpoint (loaded with tensors and plain data only),
    through a temporary name; kept when it is already newer than the final checkpoint."""
    import torch

    final, target = folder / FINAL, folder / INFERENCE
    if target.is_file() and target.stat().st_mtime >= final.stat().st_mtime:
        return target
    with torch.serialization.safe_globals(safe_numpy_globals()):
        checkpoint = torch.load(final, map_location="cpu", weights_only=True)
    tmp = folder / (INFERENCE + TMP_SUFFIX)
    try:
        torch.save(inference_checkpoint(checkpoint), tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def inference_or_warn(folder: Path) -> None:
    """``write_inference_checkpoint``; a failure is only a warning: the fold is complete all the
    same, and sync then moves nnU-Net's whole file."""
    try:
        write_inference_checkpoint(folder)
    except Exception as exc:
        print(f"hpcnn launcher: no {INFERENCE} ({type(exc).__name__}: {exc}); sync and export "
              f"will move the whole {FINAL}", file=sys.stderr)


# --- provenance -----------------------------------------------------------------------------


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Temp file + rename (hpcnn's own writer cannot be imported on the cluster)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_attempt(folder: Path, attempt: dict[str, Any]) -> None:
    """Adds ``attempt`` to the fold's provenance, or updates the entry with its ``id``."""
    path = folder / PROVENANCE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    attempts = [a for a in data.get("attempts", []) if a.get("id") != attempt["id"]]
    data.update({"written_by": "hpcnn launcher", "nnunetv2_version": attempt["nnunetv2_version"],
                 "torch_version": attempt["torch_version"], "attempts": [*attempts, attempt]})
    _write_json_atomically(path, data)


def new_attempt(args: argparse.Namespace) -> dict[str, Any]:
    job_id = next((os.environ[v] for v in JOB_ID_VARIABLES if os.environ.get(v)), None)
    return {"id": f"{_now()}-{os.getpid()}", "started": _now(), "ended": None,
            "host": socket.gethostname(), "job_id": job_id, "pid": os.getpid(),
            "python": sys.version.split()[0], "nnunetv2_version": _version("nnunetv2"),
            "torch_version": _version("torch"), "device": args.device,
            "num_gpus": args.num_gpus, "deadline": args.deadline, "outcome": "running"}


# --- the trainer class ----------------------------------------------------------------------


def _external_trainer(name: str, errors: list[str]) -> type | None:
    """The class ``name`` from the first ``nnUNet_extTrainer`` module that defines it.

    Every top-level module of each directory is imported in name order, with the directory on
    ``sys.path`` (a trainer may import its neighbours). Import errors are collected, not raised:
    the class may live in another module."""
    for directory in filter(None, os.environ.get(EXT_TRAINER, "").split(os.pathsep)):
        folder = Path(directory).resolve()
        if not folder.is_dir():
            errors.append(f"{directory}: not a directory")
            continue
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        for path in sorted(folder.glob("*.py")):
            try:
                module = _import_file(path)
            except Exception as exc:  # a broken neighbour must not hide the trainer
                errors.append(f"{path}: {type(exc).__name__}: {exc}")
                continue
            found = getattr(module, name, None)
            if isinstance(found, type):
                return found
    return None


def _import_file(path: Path) -> Any:
    """Imports ``path`` under its own name, or a private one when another module has it."""
    loaded = sys.modules.get(path.stem)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    name = path.stem if loaded is None else f"_hpcnn_ext_{abs(hash(path))}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def find_trainer(name: str) -> type:
    """The trainer class: ``nnUNet_extTrainer`` first, then nnU-Net's own lookup."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    errors: list[str] = []
    found = _external_trainer(name, errors)
    if found is None and name == nnUNetTrainer.__name__:
        found = nnUNetTrainer
    if found is None:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        try:
            found = recursive_find_trainer_class_by_name(name)
        except Exception as exc:
            detail = "".join(f"\n  {e}" for e in errors)
            raise SystemExit(f"hpcnn launcher: trainer {name!r} not found ({exc})"
                             + (f"\nnnUNet_extTrainer modules that failed to import:{detail}"
                                if errors else "")) from exc
    if not issubclass(found, nnUNetTrainer):
        raise SystemExit(f"hpcnn launcher: {name!r} ({found.__module__}) is not an nnUNetTrainer")
    for error in errors:
        print(f"hpcnn launcher: warning: {error}", file=sys.stderr)
    return found


# --- one fold, in this process or in one DDP rank -------------------------------------------


def build_trainer(cls: type, args: argparse.Namespace, device: Any) -> Any:
    """The trainer as nnU-Net's ``get_trainer_from_args`` makes it, from a class found here."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    base = Path(os.environ[PREPROCESSED], maybe_convert_to_dataset_name(args.dataset))
    plans = json.loads((base / f"{args.plans}.json").read_text())
    plans["continue_training"] = args.continue_training
    dataset_json = json.loads((base / "dataset.json").read_text())
    fold: int | str = int(args.fold) if args.fold != "all" else "all"
    return cls(plans=plans, configuration=args.configuration, fold=fold,
               dataset_json=dataset_json, device=device)


def guard(trainer: Any, stopper: Stopper, agree: Callable[[bool], bool]) -> dict[str, Any]:
    """Patches this trainer instance: atomic checkpoints, and a stop check at every epoch end.

    ``agree`` turns one rank's wish to stop into the decision of all ranks (identity without
    DDP). Returns the patches' state: ``stopped`` is the reason once they stopped training."""
    state: dict[str, Any] = {"stopped": None, "epoch_started": 0.0}
    save, epoch_start, epoch_end = (trainer.save_checkpoint, trainer.on_epoch_start,
                                    trainer.on_epoch_end)

    def save_checkpoint(filename: str) -> None:
        tmp = filename + TMP_SUFFIX
        save(tmp)  # writes on rank 0 only, and only with checkpointing enabled
        if trainer.local_rank == 0 and os.path.exists(tmp):
            os.replace(tmp, filename)

    def on_epoch_start() -> None:
        state["epoch_started"] = time.time()
        epoch_start()

    def on_epoch_end() -> None:
        epoch_end()  # logs the epoch, saves nnU-Net's own checkpoints, counts the epoch
        now = time.time()
        reason = stopper.after_epoch(now - state["epoch_started"], now)
        if trainer.current_epoch >= trainer.num_epochs:
            return  # the last epoch: on_train_end writes the final checkpoint
        if not agree(reason is not None):
            return
        reason = reason or "another rank"
        done = trainer.current_epoch  # epochs finished; the next to train has this number
        trainer.current_epoch -= 1  # save_checkpoint stores current_epoch + 1 (as on_train_end)
        trainer.save_checkpoint(os.path.join(trainer.output_folder, LATEST))
        trainer.current_epoch += 1
        trainer.print_to_log_file(
            f"hpcnn: stopping after epoch {done - 1} ({reason}); {LATEST} resumes at epoch "
            f"{done}; exit {EXIT_CONTINUE} asks for a continuation")
        state["stopped"] = reason
        raise StopRequest(reason)

    trainer.save_checkpoint = save_checkpoint
    trainer.on_epoch_start = on_epoch_start
    trainer.on_epoch_end = on_epoch_end
    return state


def _shut_down_dataloaders(trainer: Any) -> None:
    """What ``on_train_end`` does besides the final checkpoint, which must not be written."""
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        finish = getattr(loader, "_finish", None)
        if finish is not None:
            finish()


def run_fold(args: argparse.Namespace, stopper: Stopper, device: Any,
             agree: Callable[[bool], bool],
             progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """Continue, train and validate one fold; returns what happened (epochs, stop reason).
    ``progress`` is kept up to date with the epochs as they are known (for a stop that
    cannot wait for the return)."""
    progress = {} if progress is None else progress
    from nnunetv2.run.run_training import maybe_load_checkpoint

    trainer = build_trainer(find_trainer(args.trainer), args, device)
    state = guard(trainer, stopper, agree)
    final = os.path.join(trainer.output_folder, FINAL)
    if trainer.local_rank == 0:
        for leftover in Path(trainer.output_folder).glob(f"*{TMP_SUFFIX}"):
            leftover.unlink()  # a checkpoint write that a kill interrupted
    found = [n for n in RESUMABLE if os.path.isfile(os.path.join(trainer.output_folder, n))]
    resume = args.continue_training or bool(found)
    if found and not args.continue_training:
        # A first attempt that the scheduler started again (Slurm requeues a job after a node
        # failure or a preemption): its own checkpoint is resumed, never trained over.
        trainer.print_to_log_file(f"hpcnn launcher: {found[0]} is there without --c (a "
                                  "requeued job?): resuming it")
    trained = resume and os.path.isfile(final)
    if trained:
        trainer.load_checkpoint(final)  # only validation is left, as with nnU-Net's --c
    else:
        maybe_load_checkpoint(trainer, resume, False)
    info = {"start_epoch": trainer.current_epoch, "num_epochs": trainer.num_epochs}
    progress.update(info)
    if not trained:
        trainer.print_to_log_file(f"hpcnn launcher: training from epoch {trainer.current_epoch} "
                                  f"of {trainer.num_epochs}")
        stopper.interruptible = False  # signals wait for the epoch end from here
        try:
            trainer.run_training()
        except StopRequest:
            _shut_down_dataloaders(trainer)
        except BaseException:
            # A failure (out of memory, a bug): stop the data-loader workers first, or the
            # process waits for them at exit (they keep the launcher's SIGTERM handler, so
            # multiprocessing's terminate() does not stop them) and the failed fold looks like
            # a running one until the walltime.
            with contextlib.suppress(Exception):
                _shut_down_dataloaders(trainer)
            raise
        finally:
            kill_children()  # data-loader workers that did not stop when their loader finished
        stopper.interruptible = True
    info.update(next_epoch=trainer.current_epoch, longest_epoch_s=round(stopper.longest_epoch, 2))
    progress.update(info)
    if state["stopped"]:
        return {**info, "stopped": state["stopped"]}
    reason = stopper.before_validation(time.time())
    if agree(reason is not None):
        return {**info, "stopped": f"before validation: {reason or 'another rank'}"}
    try:
        trainer.perform_actual_validation(args.npz)
    except StopRequest as stop:  # the final checkpoint is there: the continuation validates
        return {**info, "stopped": f"during validation: signal {stop}"}
    stopper.interruptible = False  # complete: a late signal must not cut the record short
    return {**info, "stopped": None}


def _ddp_rank(rank: int, args: argparse.Namespace, world_size: int) -> None:
    """One DDP rank: nnU-Net's ``run_ddp`` with the launcher's lookup and stop rules."""
    import torch
    import torch.distributed as dist

    stopper = Stopper(args.deadline, args.safety)
    install_stop_handlers(stopper)
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    torch.cuda.set_device(torch.device("cuda", rank))

    def agree(stop: bool) -> bool:
        flag = torch.tensor([1 if stop else 0], device=torch.device("cuda", rank))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    try:
        run_fold(args, stopper, torch.device("cuda", rank), agree)
    except StopRequest:
        pass  # a signal outside the epochs; the parent decides from the files
    finally:
        dist.destroy_process_group()


def _run_ddp(args: argparse.Namespace, stopper: Stopper) -> dict[str, Any]:
    """Spawns the ranks, forwards stop signals to them, and waits."""
    import torch.multiprocessing as mp
    from nnunetv2.run.run_training import find_free_network_port

    os.environ["MASTER_ADDR"] = "localhost"
    os.environ.setdefault("MASTER_PORT", str(find_free_network_port()))
    ranks: list[Any] = []
    stopper.interruptible = False  # the ranks decide when to stop; this process waits for them

    def forward(signum: int, frame: object) -> None:
        stopper.on_signal(signum, frame)
        for process in ranks:
            if process.is_alive():
                os.kill(process.pid, signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    context = mp.start_processes(_ddp_rank, args=(args, args.num_gpus), nprocs=args.num_gpus,
                                 join=False, start_method="spawn")
    ranks.extend(context.processes)
    while not context.join():
        pass
    # The ranks stop together; without a signal only the deadline stops them.
    return {"stopped": f"signal {stopper.signalled}" if stopper.signalled else "deadline"}


def _run_here(args: argparse.Namespace, stopper: Stopper,
              progress: dict[str, Any]) -> dict[str, Any]:
    import torch

    if args.device == "cpu":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(cpus or 1)  # the job's cpus, not the node's
    elif args.device == "cuda":
        torch.set_num_threads(1)  # as nnU-Net: more threads do not help on a GPU
        torch.set_num_interop_threads(1)
    return run_fold(args, stopper, torch.device(args.device), lambda stop: stop, progress)


# --- subcommands: nnU-Net's commands and the split, with the job's python -------------------

NNUNET_SUBCOMMAND, WRITE_SPLITS_SUBCOMMAND = "nnunet", "write-splits"
ENTRY_POINTS = {
    "nnUNetv2_plan_and_preprocess":
        "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
    "nnUNetv2_preprocess":
        "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:preprocess_entry",
    "nnUNetv2_find_best_configuration":
        "nnunetv2.evaluation.find_best_configuration:find_best_configuration_entry_point",
    "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
    "nnUNetv2_ensemble": "nnunetv2.ensembling.ensemble:entry_point_ensemble_folders",
    "nnUNetv2_apply_postprocessing":
        "nnunetv2.postprocessing.remove_connected_components:entry_point_apply_postprocessing",
}
"""The nnU-Net commands hpcnn runs (``launcher.py nnunet nnUNetv2_X ARGS``): the function behind
each console script, so that a job needs nnunetv2 importable, not its scripts on the PATH."""
LOADS_TRAINER = {"nnUNetv2_predict": "recursive_find_trainer_class_by_name"}
"""Commands that look a trainer class up: they use the launcher's lookup (``nnUNet_extTrainer``
first), so that a cluster whose optional packages break nnU-Net's own lookup predicts as it
trained."""
SPLITS_FILE, SPLIT_FOLDS, SPLIT_SEED = "splits_final.json", 5, 12345  # as nnUNetTrainer.do_split


def run_nnunet(argv: list[str]) -> int:
    """Runs one of ENTRY_POINTS with ``argv`` (its name first) as its command line."""
    if not argv or argv[0] not in ENTRY_POINTS:
        print(f"hpcnn launcher: {NNUNET_SUBCOMMAND} needs one of {', '.join(ENTRY_POINTS)}",
              file=sys.stderr)
        return EXIT_USAGE
    module_name, function = ENTRY_POINTS[argv[0]].split(":")
    module = importlib.import_module(module_name)
    if argv[0] in LOADS_TRAINER:
        setattr(module, LOADS_TRAINER[argv[0]], find_trainer)
    sys.argv = list(argv)
    try:
        getattr(module, function)()
    except SystemExit as stop:  # argparse's usage errors and the like
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0


def splits_cover(path: Path, cases: set[str]) -> bool:
    """Whether ``path`` holds SPLIT_FOLDS folds, each case validated in exactly one, and in each
    fold train is all the other cases."""
    try:
        folds = [(list(s["train"]), list(s["val"])) for s in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError, KeyError):
        return False
    if len(folds) != SPLIT_FOLDS:
        return False
    validated = [c for _, val in folds for c in val]
    if len(validated) != len(cases) or set(validated) != cases:
        return False
    return all(len(train) == len(set(train)) and set(train) == cases - set(val)
               for train, val in folds)


def preprocessed_cases(folder: Path) -> list[str]:
    """The case ids nnU-Net preprocessed into ``folder`` (its ``gt_segmentations``)."""
    ending = json.loads((folder / "dataset.json").read_text())["file_ending"]
    return sorted(p.name[: -len(ending)] for p in (folder / "gt_segmentations").iterdir()
                  if p.name.endswith(ending))


def write_splits(folder: Path, cases: list[str] | None = None) -> str:
    """Keeps ``folder``'s split file when it is a split of exactly ``cases`` (default: the
    preprocessed ones), else writes nnU-Net's default split; returns ``kept``, ``written`` or
    ``regenerated``. Written before any fold starts: five folds racing on it is nnU-Net issue
    3064, and a stale one leaves new cases in no fold."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    cases = sorted(preprocessed_cases(folder) if cases is None else cases)
    path = folder / SPLITS_FILE
    existed = path.exists()
    if existed and splits_cover(path, set(cases)):
        return "kept"
    splits = generate_crossval_split(cases, seed=SPLIT_SEED, n_splits=SPLIT_FOLDS)
    plain = [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]}
             for s in splits]
    fd, tmp = tempfile.mkstemp(prefix=f".{SPLITS_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(plain, indent=4) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return "regenerated" if existed else "written"


def run_write_splits(argv: list[str]) -> int:
    """``write-splits DATASET``: the split of nnUNet_preprocessed/DATASET's cases."""
    if len(argv) != 1 or not os.environ.get(PREPROCESSED):
        print(f"hpcnn launcher: usage: {WRITE_SPLITS_SUBCOMMAND} DATASET (with {PREPROCESSED} "
              "set)", file=sys.stderr)
        return EXIT_USAGE
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = Path(os.environ[PREPROCESSED], maybe_convert_to_dataset_name(argv[0]))
    outcome = write_splits(folder)
    print(f"hpcnn launcher: {SPLITS_FILE} {outcome} in {folder} for "
          f"{len(preprocessed_cases(folder))} cases")
    return 0


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    NNUNET_SUBCOMMAND: run_nnunet, WRITE_SPLITS_SUBCOMMAND: run_write_splits}


# --- entry point ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launcher.py", description="Train one nnU-Net fold, continuing and stopping "
        f"before the walltime (exit {EXIT_CONTINUE}: continue me).")
    parser.add_argument("dataset", help="dataset name or id")
    parser.add_argument("configuration")
    parser.add_argument("fold", help="0-4 or 'all'")
    parser.add_argument("-tr", dest="trainer", default="nnUNetTrainer")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans")
    parser.add_argument("--c", dest="continue_training", action="store_true",
                        help="continue from the fold's checkpoint, as nnUNetv2_train --c")
    parser.add_argument("--npz", action="store_true", help="keep validation probabilities")
    parser.add_argument("-device", dest="device", default="cuda", choices=("cuda", "cpu", "mps"))
    parser.add_argument("-num_gpus", dest="num_gpus", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=None,
                        help="time (seconds since the epoch) by which the launcher must exit")
    parser.add_argument("--safety", type=float, default=DEFAULT_SAFETY_S,
                        help="seconds kept in reserve before the deadline (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.fold != "all" and not args.fold.isdigit():
        parser.error(f"fold must be a number or 'all', not {args.fold!r}")
    if args.num_gpus > 1 and args.device != "cuda":
        parser.error(f"-num_gpus {args.num_gpus} needs -device cuda (nnU-Net's DDP is CUDA only)")
    return args


def install_stop_handlers(stopper: Stopper) -> None:
    """The stop signals go to ``stopper``. nnU-Net's data-loader workers, forked from the
    launcher, keep this handler: the scheduler's SIGTERM reaches them too and must not stop
    them before the epoch ends. So ``terminate()`` cannot stop them either, and
    ``kill_children`` ends those that do not stop when asked."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, stopper.on_signal)


def kill_children() -> None:
    """SIGKILL the processes this one started through ``multiprocessing``, twice over: a pool
    may have replaced a killed worker between the two rounds."""
    import multiprocessing

    for _ in range(2):
        for child in multiprocessing.active_children():
            with contextlib.suppress(OSError, ValueError):
                child.kill()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = parse_args(argv)
    missing = [v for v in (PREPROCESSED, RESULTS) if not os.environ.get(v)]
    if missing:
        print(f"hpcnn launcher: {' and '.join(missing)} not set: export them in the job "
              "script before running the launcher", file=sys.stderr)
        return EXIT_USAGE
    stopper = Stopper(args.deadline, args.safety)
    install_stop_handlers(stopper)
    try:
        return attempt_fold(args, stopper)
    except StopRequest as stop:  # before the attempt was recorded, or while recording its end
        print(f"hpcnn launcher: stopped by signal {stop}; exit {EXIT_CONTINUE}")
        return EXIT_CONTINUE


def attempt_fold(args: argparse.Namespace, stopper: Stopper) -> int:
    """One attempt at the fold, recorded in its provenance; returns the exit code."""
    folder = fold_folder(args.dataset, args.trainer, args.plans, args.configuration, args.fold)
    attempt = new_attempt(args)
    if validation_is_done(folder, args.npz):
        if not (folder / INFERENCE).is_file():  # completed by a launcher that wrote none
            inference_or_warn(folder)
        record_attempt(folder, {**attempt, "ended": _now(), "outcome": "already complete",
                                "exit_code": EXIT_COMPLETE})
        print(f"hpcnn launcher: {folder} is complete; nothing to do")
        return EXIT_COMPLETE
    problem = previous_stage_problem(args.dataset, args.trainer, args.plans,
                                     args.configuration, args.fold)
    if problem:
        record_attempt(folder, {**attempt, "ended": _now(), "outcome": "failed",
                                "error": problem[:2000], "exit_code": EXIT_USAGE})
        print(f"hpcnn launcher: {problem}", file=sys.stderr)
        return EXIT_USAGE
    record_attempt(folder, attempt)
    progress: dict[str, Any] = {}

    def exit_now(signalled: str) -> None:
        phase = "during validation" if "next_epoch" in progress else "before training"
        if "start_epoch" in progress:  # what the continuation trains next
            progress.setdefault("next_epoch", progress["start_epoch"])
        outcome = f"stopped for continuation ({phase}: {signalled})"
        record_attempt(folder, {**attempt, **progress, "stopped": f"{phase}: {signalled}",
                                "ended": _now(), "outcome": outcome,
                                "exit_code": EXIT_CONTINUE})
        for stream in (sys.stdout, sys.stderr):
            # RuntimeError: the signal arrived inside a write to it; that output is lost
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                stream.flush()
        os.write(sys.stdout.fileno(), f"hpcnn launcher: {outcome}; exit {EXIT_CONTINUE}\n"
                 .encode())
        kill_children()
        os._exit(EXIT_CONTINUE)

    if args.num_gpus <= 1:  # the ranks of a multi-GPU fold stop on their own (_ddp_rank)
        stopper.exit_now = exit_now
    try:
        info = (_run_ddp(args, stopper) if args.num_gpus > 1
                else _run_here(args, stopper, progress))
    except StopRequest as stop:  # a signal outside the epochs: start-up or validation
        info = {"stopped": f"signal {stop}"}
    except BaseException as exc:
        record_attempt(folder, {**attempt, "ended": _now(), "outcome": "failed",
                                "error": f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    if validation_is_done(folder, args.npz):
        code, outcome = EXIT_COMPLETE, "completed"
        inference_or_warn(folder)
    elif info.get("stopped"):
        code, outcome = EXIT_CONTINUE, f"stopped for continuation ({info['stopped']})"
    else:
        code, outcome = 1, f"nnU-Net returned without {FINAL} and its validation"
    record_attempt(folder, {**attempt, **info, "ended": _now(), "outcome": outcome,
                            "exit_code": code})
    print(f"hpcnn launcher: {outcome}; exit {code}")
    return code


if __name__ == "__main__":  # nnU-Net's validation uses spawned processes: import must be inert
    sys.exit(main())
