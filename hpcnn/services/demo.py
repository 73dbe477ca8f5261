"""``hpcnn demo``: the whole pipeline on this machine, on a synthetic dataset, through the same
commands a user types — import, check, preprocess, train-all-folds (the local scheduler, the
packaged demo trainer), status, sync, predict, evaluate, report.

Each step is the real command run in this process against the demo folder's own cluster.yaml,
so the demo proves the installation end to end and leaves a workspace to look at.

``method=True`` (``hpcnn demo --method``) shows nnU-Net's whole method instead: 2d and 3d_fullres
(two folds each, with the validation probabilities), ``find-best`` choosing among them and
their ensemble, and the held-back cases predicted with the winner (an ensemble: each member's
probabilities averaged, then nnU-Net's postprocessing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcnn.errors import EXIT_FAILED, EXIT_OK, HpcnnError

MARKER = ".hpcnn-demo"
DATASET = "Demo"
N_TRAIN, N_TEST = 10, 3
FOLLOW_S = 10.0
METHOD_CONFIGURATIONS = ("2d", "3d_fullres")
METHOD_FOLDS = ("0", "1")  # two folds per configuration keep the demo within minutes

Echo = Callable[[str], None]


def _config(device: str, cpus: int) -> str:
    gpu = 1 if device == "cuda" else 0
    return (
        "# Written by `hpcnn demo`: the local scheduler on this machine.\n"
        "workspace: .\n"
        f"training: {{dataset: {DATASET}, trainer: hpcnnDemoTrainer, device: {device}, "
        "max_resubmits: 0}\n"
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
             method: bool = False) -> float | None:
    """Run the pipeline in ``folder``; ``cli`` runs one hpcnn command line and returns its exit
    code. Returns the mean foreground Dice on the held-back cases."""
    import os

    from hpcnn.config import load_config_file
    from hpcnn.nnunet.evaluate import evaluate
    from hpcnn.services.demo_data import write_exports

    started = time.time()
    folder = folder.resolve()
    prepare_folder(folder)
    device, cpus = _device(), max(1, os.cpu_count() or 1)
    config = folder / "cluster.yaml"
    config.write_text(_config(device, cpus))

    def step(title: str, *args: str, ok: tuple[int, ...] = (EXIT_OK,)) -> None:
        echo(f"\n== {title}  (hpcnn {' '.join(args)})  [{time.time() - started:.0f} s]")
        code = cli(["--config", str(config), *args])
        if code not in ok:
            raise HpcnnError(f"the demo stopped: `hpcnn {' '.join(args)}` exited {code}",
                             hint=f"read its message above; the workspace is {folder}")

    echo(f"== synthetic exports: {N_TRAIN} cases to train on, {N_TEST} held back "
         f"(balls and boxes in noise, Slicer .seg.nrrd) in {folder}")
    write_exports(folder / "exports", N_TRAIN)
    write_exports(folder / "test", N_TEST, first_seed=1000)
    step("import", "dataset", "import", str(folder / "exports"), "--name", DATASET,
         "--modality", "CT", "--test-fraction", "0")
    step("check", "dataset", "check", DATASET)
    cfg = load_config_file(config)
    predictions = folder / "predictions"
    if method:
        _method_steps(folder, cfg, step, echo, started)
        step("predict the held-back cases with the winner", "predict", str(folder / "test"),
             str(predictions), "--fast")
    else:
        step("preprocess", "preprocess", DATASET)
        step("train the five folds", "train-all-folds")
        _follow(cfg, None, echo, started)
        step("status", "status")
        step("sync", "sync")
        step("predict the held-back cases with the five-fold ensemble", "predict",
             str(folder / "test"), str(predictions), "--fast")
    echo(f"\n== evaluate  (hpcnn evaluate {predictions} {folder / 'test'})")
    result = evaluate(predictions, folder / "test", echo=echo)
    if not method:
        step("report", "report", "--out", str(folder / "report.png"))
    echo(f"\n== done in {time.time() - started:.0f} s")
    if method:
        from hpcnn.nnunet.choice import read_choice
        from hpcnn.services.method import results_folder
        from hpcnn.workspace import Workspace

        choice = read_choice(results_folder(Workspace(folder), DATASET))
        if choice is not None:
            echo(f"   winner of find-best: {choice.describe()}; postprocessing "
                 f"{'helped' if choice.postprocessing_helped else 'did not help'}")
    for name, dice in result.mean.items():
        echo(f"   Dice {name}: {'n/a' if dice is None else f'{dice:.3f}'}")
    fg = result.foreground_dice
    echo(f"   mean foreground Dice on {N_TEST} held-back cases: "
         f"{'n/a' if fg is None else f'{fg:.3f}'}")
    echo(f"   workspace {folder}: cluster.yaml, exports/, nnUNet_raw/, nnUNet_preprocessed/, "
         f"nnUNet_results/, predictions/{'' if method else ', report.png'}")
    return fg


def _follow(cfg: Any, run_id: str | None, echo: Echo, started: float) -> None:
    """Show each fold's state and epoch as it changes until the run's folds are done."""
    from hpcnn.services.session import Session
    from hpcnn.services.status import run_status

    echo("\n== following the folds (hpcnn status)")
    shown: dict[int, str] = {}
    while True:
        with Session(cfg) as session:
            status = run_status(session, run_id)
        for fold in status.folds:
            last = fold.log.last
            planned = fold.log.planned_epochs
            line = f"{fold.view.state}" + (
                f", epoch {last.epoch + 1}/{planned or '?'}" if last else "")
            if shown.get(fold.view.fold) != line:
                shown[fold.view.fold] = line
                echo(f"   fold {fold.view.fold}: {line}  [{time.time() - started:.0f} s]")
        if status.exit_code in (EXIT_OK, EXIT_FAILED):
            return
        time.sleep(FOLLOW_S)


def _method_steps(folder: Path, cfg: Any, step: Callable[..., None], echo: Echo,
                  started: float) -> None:
    """Preprocess both configurations, train two folds of each with --npz (one run per
    configuration), sync them and let find-best choose."""
    from hpcnn.services.session import Session

    configurations = [a for c in METHOD_CONFIGURATIONS for a in ("-c", c)]
    folds = [a for f in METHOD_FOLDS for a in ("--folds", f)]
    step("preprocess 2d and 3d_fullres", "preprocess", DATASET, *configurations)
    runs = []
    for configuration in METHOD_CONFIGURATIONS:
        step(f"train {configuration} (folds {', '.join(METHOD_FOLDS)}, with --npz)",
             "train-all-folds", "--configuration", configuration, "--npz", *folds)
        with Session(cfg) as session:
            runs.append(session.find_run(None)[0].id)
    for run in runs:
        _follow(cfg, run, echo, started)
        step(f"sync {run}", "sync", "--run", run)
    step("choose: nnU-Net's find_best_configuration", "find-best", "--folds",
         ",".join(METHOD_FOLDS))

