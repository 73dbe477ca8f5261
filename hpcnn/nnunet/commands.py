"""Every nnU-Net command line hpcnn runs, built in one place.

nnU-Net's method is a handful of commands (plan and preprocess, train, find the best
configuration, predict, ensemble, apply postprocessing); hpcnn runs them here on the laptop and
as jobs on a cluster. Each builder returns the command exactly as a user would type it
(``["nnUNetv2_predict", "-i", ...]``), so that what hpcnn prints, records and runs is the same
line. ``through_launcher`` runs such a line with a given Python through hpcnn's pushed launcher
(``launcher.py nnunet ...``): the same entry point as the ``nnUNetv2_*`` script, but found
without relying on the cluster's PATH, and with the launcher's trainer lookup for the commands
that load a trainer class. Programs that used to be Python strings are launcher subcommands
too (``write_splits``).

This module imports nothing heavy: the CLI and the job builders use it on their start-up path.
"""

from __future__ import annotations

import codecs
import os
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TextIO

from hpcnn.nnunet.launcher import NNUNET_SUBCOMMAND, WRITE_SPLITS_SUBCOMMAND

PLAN_AND_PREPROCESS = "nnUNetv2_plan_and_preprocess"
PREPROCESS = "nnUNetv2_preprocess"
TRAIN = "nnUNetv2_train"
FIND_BEST = "nnUNetv2_find_best_configuration"
PREDICT = "nnUNetv2_predict"
ENSEMBLE = "nnUNetv2_ensemble"
APPLY_POSTPROCESSING = "nnUNetv2_apply_postprocessing"

DEFAULT_PLANNER = "ExperimentPlanner"
CASCADE = "3d_cascade_fullres"
LOWRES = "3d_lowres"
STANDARD_CONFIGURATIONS = ("2d", "3d_fullres", LOWRES, CASCADE)
"""What nnU-Net's planners can make (3d_lowres and the cascade only for large images)."""


def _folds(folds: Sequence[int | str]) -> list[str]:
    return ["-f", *(str(f) for f in folds)]


def _planning(planner: str | None, gpu_memory_target: float | None, clean: bool,
              progress_bar: bool) -> list[str]:
    """The options plan and plan_and_preprocess share."""
    argv = []
    if planner and planner != DEFAULT_PLANNER:
        argv += ["-pl", planner]
    if gpu_memory_target is not None:
        argv += ["-gpu_memory_target", f"{gpu_memory_target:g}"]
    if clean:
        argv.append("--clean")
    if not progress_bar:
        argv.append("--no_pbar")
    return argv


def plan(dataset_id: int, *, workers: int, planner: str | None = None,
         gpu_memory_target: float | None = None, clean: bool = False,
         progress_bar: bool = False) -> list[str]:
    """Fingerprint and plans only (``--no_pp``): hpcnn reads the plans it wrote (identifier,
    configurations) before anything is preprocessed."""
    return [PLAN_AND_PREPROCESS, "-d", str(dataset_id), "--no_pp", "--verify_dataset_integrity",
            "-npfp", str(workers), *_planning(planner, gpu_memory_target, clean, progress_bar)]


def preprocess(dataset_id: int, plans: str, configurations: Sequence[str], *, workers: int,
               progress_bar: bool = False) -> list[str]:
    """Preprocess ``configurations`` with the plans file ``plans`` (its identifier)."""
    argv = [PREPROCESS, "-d", str(dataset_id), "-plans_name", plans, "-c", *configurations,
            "-np", *([str(workers)] * len(configurations))]
    if not progress_bar:
        argv.append("--no_pbar")
    return argv


def plan_and_preprocess(dataset_id: int, configurations: Sequence[str], *, workers: int,
                        planner: str | None = None, gpu_memory_target: float | None = None,
                        clean: bool = False, progress_bar: bool = False) -> list[str]:
    """Both steps in one command (a preprocessing job on the cluster, where nothing reads the
    plans in between)."""
    return [PLAN_AND_PREPROCESS, "-d", str(dataset_id), "-c", *configurations,
            "--verify_dataset_integrity", "-np", str(workers), "-npfp", str(workers),
            *_planning(planner, gpu_memory_target, clean, progress_bar)]


def train(dataset: str, configuration: str, fold: int | str, *, trainer: str, plans: str,
          device: str, npz: bool = False, num_gpus: int = 1) -> list[str]:
    """``nnUNetv2_train`` (hpcnn's launcher takes the same arguments, and ``--c`` always)."""
    argv = [TRAIN, dataset, configuration, str(fold), "-tr", trainer, "-p", plans,
            "-device", device]
    if npz:
        argv.append("--npz")
    if num_gpus > 1:
        argv += ["-num_gpus", str(num_gpus)]
    return argv


def find_best_configuration(dataset: str, configurations: Sequence[str], *, trainer: str,
                            plans: str, folds: Sequence[int | str], workers: int,
                            ensembling: bool = True) -> list[str]:
    """Cross-validation of each configuration (and pairs, for ensembles), postprocessing, and
    the inference instructions nnU-Net writes beside the results."""
    argv = [FIND_BEST, dataset, "-c", *configurations, "-p", plans, "-tr", trainer,
            *_folds(folds), "-np", str(workers)]
    if not ensembling:
        argv.append("--disable_ensembling")
    return argv


def predict(input_folder: str, output_folder: str, dataset: str, configuration: str, *,
            trainer: str, plans: str, folds: Sequence[int | str], device: str, workers: int,
            probabilities: bool = False, previous_stage: str | None = None,
            tta: bool = True, progress_bar: bool = False,
            checkpoint: str | None = None) -> list[str]:
    """``nnUNetv2_predict`` for one configuration; ``previous_stage``: the 3d_lowres
    predictions a cascade's second stage reads; ``checkpoint``: the file each fold loads
    (nnU-Net's ``checkpoint_final.pth`` when None)."""
    argv = [PREDICT, "-i", input_folder, "-o", output_folder, "-d", dataset, "-c", configuration,
            "-tr", trainer, "-p", plans, *_folds(folds), "-device", device,
            "-npp", str(workers), "-nps", str(workers)]
    if probabilities:
        argv.append("--save_probabilities")
    if previous_stage:
        argv += ["-prev_stage_predictions", previous_stage]
    if not tta:
        argv.append("--disable_tta")
    if not progress_bar:
        argv.append("--disable_progress_bar")
    if checkpoint:
        argv += ["-chk", checkpoint]
    return argv


def ensemble(inputs: Sequence[str], output_folder: str, *, workers: int) -> list[str]:
    """Averages the members' probabilities (``--save_probabilities`` predictions)."""
    return [ENSEMBLE, "-i", *inputs, "-o", output_folder, "-np", str(workers)]


def apply_postprocessing(input_folder: str, output_folder: str, pkl_file: str, *,
                         plans_json: str, dataset_json: str, workers: int) -> list[str]:
    """The connected-component postprocessing find_best_configuration chose."""
    return [APPLY_POSTPROCESSING, "-i", input_folder, "-o", output_folder,
            "-pp_pkl_file", pkl_file, "-np", str(workers), "-plans_json", plans_json,
            "-dataset_json", dataset_json]


def through_launcher(python: str, launcher: str, argv: Sequence[str]) -> list[str]:
    """``argv`` (a line built above) run by ``python`` through hpcnn's launcher."""
    return [python, launcher, NNUNET_SUBCOMMAND, *argv]


def write_splits(python: str, launcher: str, dataset: str) -> list[str]:
    """The launcher writes nnU-Net's own 5-fold split of the preprocessed cases (kept when the
    one there already covers them), so fold jobs never race on it (nnU-Net issue 3064)."""
    return [python, launcher, WRITE_SPLITS_SUBCOMMAND, dataset]


def stream(command: Sequence[str], env: Mapping[str, str], out: TextIO) -> tuple[int, str]:
    """Run ``command``, copying its output to ``out`` as it comes (progress bars included);
    returns the exit code and the last lines."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        pending = ""
        try:
            while chunk := os.read(fd, 65536):
                text = decoder.decode(chunk)
                out.write(text)
                out.flush()
                pending += text
                *lines, pending = pending.split("\n")
                tail.extend(line.rsplit("\r", 1)[-1] for line in lines)
        except BaseException:  # interrupted: a SIGTERM to hpcnn alone must stop nnU-Net too
            proc.terminate()
            raise
        tail.append(pending)
        code = proc.wait()
    return code, "\n".join(line for line in tail if line.strip())


def shell_line(argv: Sequence[str]) -> str:
    """``argv`` as one line to paste into a shell."""
    import shlex

    return shlex.join(argv)
