"""``hpcnn demo``: the whole pipeline on this machine, on a synthetic dataset, through the same
commands a user types — import, check, preprocess, train-all-folds (the local scheduler, the
packaged demo trainer), status, sync, predict, evaluate, report. ``--method``: nnU-Net's whole
method instead — 2d and 3d_fullres as one experiment (two folds each, to stay within ten minutes
on a laptop), ``find-best``, and the prediction with what won (an ensemble and its
postprocessing, or one configuration). ``--dicom``: the same patients as a scanner and a viewer
hand them over — a CT series per case with a DICOM-SEG beside it (``demo_dicom``) — imported,
trained as the default demo trains, predicted back as DICOM-SEG, and the SEGs read back and
compared with the reference SEGs.

Each step is the real command run in this process against the demo folder's own cluster.yaml,
so the demo proves the installation end to end and leaves a workspace to look at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hpcnn.errors import EXIT_FAILED, EXIT_OK, HpcnnError

if TYPE_CHECKING:
    from hpcnn.config import Config

MARKER = ".hpcnn-demo"
DATASET = "Demo"
N_TRAIN, N_TEST = 10, 3
FOLLOW_S = 10.0
METHOD_CONFIGURATIONS = ("2d", "3d_fullres")
METHOD_FOLDS = (0, 1)

Echo = Callable[[str], None]


def _config(device: str, cpus: int, method: bool = False) -> str:
    gpu = 1 if device == "cuda" else 0
    # The method demo runs find-best as a step of its own (what a user types after a sync).
    extra = (f", configurations: [{', '.join(METHOD_CONFIGURATIONS)}], folds: "
             f"[{', '.join(map(str, METHOD_FOLDS))}], find_best: false" if method else "")
    return (
        "# Written by `hpcnn demo`: the local scheduler on this machine.\n"
        "workspace: .\n"
        f"training: {{dataset: {DATASET}, trainer: hpcnnDemoTrainer, device: {device}, "
        f"max_resubmits: 0{extra}}}\n"
        f"resources: {{cpus: {cpus}, gpus: {gpu}}}\n"
        "local: {max_parallel: 1}\n"
    )


def prepare_folder(folder: Path) -> None:
    """An empty folder, or one an earlier demo made (its contents are replaced); anything else
    is refused so the demo never writes into a user's data."""
    if folder.exists() and any(folder.iterdir()) and not (folder / MARKER).exists():
        raise HpcnnError(f"{folder} is not empty and not an earlier demo folder",
                         hint="give the demo a new folder: `hpcnn demo DIR`")
    if (folder / MARKER).exists():
        import shutil

        for child in folder.iterdir():
            if child.name != MARKER:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by hpcnn demo\n")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_demo(folder: Path, cli: Callable[[list[str]], int], echo: Echo = print, *,
             method: bool = False, dicom: bool = False) -> float | None:
    """Run the pipeline in ``folder``; ``cli`` runs one hpcnn command line and returns its exit
    code; ``method``: the whole method, ``dicom``: DICOM in and out (see the module docstring).
    Returns the mean foreground Dice on the held-back cases."""
    import os

    from hpcnn.config import load_config_file
    from hpcnn.nnunet.evaluate import evaluate
    from hpcnn.services.demo_data import write_exports
    from hpcnn.services.session import Session
    from hpcnn.services.status import experiment_status, worst_exit

    if method and dicom:
        raise HpcnnError("--method and --dicom are two demos", hint="run one at a time")
    if dicom:
        from hpcnn.services.demo_dicom import require_extra

        require_extra()  # before anything is written
    started = time.time()
    folder = folder.resolve()
    prepare_folder(folder)
    device, cpus = _device(), max(1, os.cpu_count() or 1)
    config = folder / "cluster.yaml"
    config.write_text(_config(device, cpus, method))

    def step(title: str, *args: str, ok: tuple[int, ...] = (EXIT_OK,)) -> None:
        echo(f"\n== {title}  (hpcnn {' '.join(args)})  [{time.time() - started:.0f} s]")
        code = cli(["--config", str(config), *args])
        if code not in ok:
            raise HpcnnError(f"the demo stopped: `hpcnn {' '.join(args)}` exited {code}",
                             hint=f"read its message above; the workspace is {folder}")

    if dicom:
        from hpcnn.services.demo_dicom import write_dicom_exports, write_dicom_held_back

        echo(f"== synthetic DICOM: {N_TRAIN} CT series with a DICOM-SEG each to train on, "
             f"{N_TEST} series held back (their reference SEGs in references/) in {folder}")
        write_dicom_exports(folder / "exports", N_TRAIN)
        references = write_dicom_held_back(folder / "test", folder / "references", N_TEST,
                                           first_seed=1000)
    else:
        echo(f"== synthetic exports: {N_TRAIN} cases to train on, {N_TEST} held back "
             f"(balls and boxes in noise, Slicer .seg.nrrd) in {folder}")
        write_exports(folder / "exports", N_TRAIN)
        write_exports(folder / "test", N_TEST, first_seed=1000)
    step("import", "dataset", "import", str(folder / "exports"), "--name", DATASET,
         "--modality", "CT", "--test-fraction", "0")
    step("check", "dataset", "check", DATASET)
    picks = [a for c in METHOD_CONFIGURATIONS for a in ("-c", c)] if method else []
    step("preprocess", "preprocess", DATASET, *picks)
    step(f"train {' and '.join(METHOD_CONFIGURATIONS)}, {len(METHOD_FOLDS)} folds each"
         if method else "train the five folds", "train-all-folds")
    echo("\n== following the folds (hpcnn status)")
    cfg = load_config_file(config)
    shown: dict[tuple[str, int], str] = {}
    while True:
        with Session(cfg) as session:
            statuses = experiment_status(session)
        for status in statuses:
            for fold in status.folds:
                last = fold.log.last
                planned = fold.log.planned_epochs
                line = f"{fold.view.state}" + (
                    f", epoch {last.epoch + 1}/{planned or '?'}" if last else "")
                key = (status.run.configuration, fold.view.fold)
                if shown.get(key) != line:
                    shown[key] = line
                    name = f"{key[0]} fold {key[1]}" if method else f"fold {key[1]}"
                    echo(f"   {name}: {line}  [{time.time() - started:.0f} s]")
        if worst_exit(statuses) in (EXIT_OK, EXIT_FAILED):
            break
        time.sleep(FOLLOW_S)
    step("status", "status")
    step("sync", "sync")
    if method:
        step("find-best: which configuration, or ensemble of two, to predict with",
             "find-best")
    predictions = folder / "predictions"
    step("predict the held-back cases with what find-best chose" if method else
         "predict the held-back series as DICOM-SEG with the five-fold ensemble" if dicom else
         "predict the held-back cases with the five-fold ensemble", "predict",
         str(folder / "test"), str(predictions), "--fast",
         *(("--format", "dicom-seg") if dicom else ()))
    if dicom:
        from hpcnn.services.demo_data import CLASSES
        from hpcnn.services.demo_dicom import seg_dice

        echo("\n== read the DICOM-SEGs back and compare them with the reference SEGs")
        scores = seg_dice(predictions, references, [name for name, _, _ in CLASSES])
        for case, per_class in scores.per_case.items():
            echo(f"   {case}: " + ", ".join(f"{name} {_shown(d)}"
                                            for name, d in per_class.items()))
        mean, fg = scores.mean, scores.foreground_dice
    else:
        echo(f"\n== evaluate  (hpcnn evaluate {predictions} {folder / 'test'})")
        result = evaluate(predictions, folder / "test", echo=echo)
        mean, fg = result.mean, result.foreground_dice
    # One report (PNG) per configuration of the method; its last line names the winner.
    reports = ({c: f"report-{c}.png" for c in METHOD_CONFIGURATIONS} if method
               else {"": "report.png"})
    for configuration, png in reports.items():
        step(f"report of {configuration}" if configuration else "report", "report",
             *(("-c", configuration) if configuration else ()), "--out", str(folder / png))
    echo(f"\n== done in {time.time() - started:.0f} s")
    if method:
        line = winner_line(cfg, statuses[0].run.dataset)
        if line:
            echo(f"   {line}")
    for name, dice in mean.items():
        echo(f"   Dice {name}: {_shown(dice)}")
    echo(f"   mean foreground Dice on {N_TEST} held-back cases: {_shown(fg)}")
    echo(f"   workspace {folder}: cluster.yaml, exports/, nnUNet_raw/, nnUNet_preprocessed/, "
         f"nnUNet_results/, predictions/, {'references/, ' if dicom else ''}"
         f"{', '.join(reports.values())}")
    return fg


def _shown(dice: float | None) -> str:
    return "n/a" if dice is None else f"{dice:.3f}"


def winner_line(cfg: Config, dataset: str) -> str | None:
    """What find-best chose for ``dataset`` and its cross-validation Dice, from the choice it
    recorded in this workspace (None before it chose)."""
    from hpcnn.nnunet.choice import read_choice
    from hpcnn.workspace import Workspace

    choice = read_choice(Workspace(cfg.workspace).results / dataset)
    return None if choice is None else choice.summary()
