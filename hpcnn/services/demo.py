"""``hpcnn demo``: the whole pipeline on this machine, on a synthetic dataset, through the same
commands a user types — import, check, preprocess, train-all-folds (the local scheduler, the
packaged demo trainer), status, sync, predict, evaluate, report.

Each step is the real command run in this process against the demo folder's own cluster.yaml,
so the demo proves the installation end to end and leaves a workspace to look at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hpcnn.errors import EXIT_FAILED, EXIT_OK, HpcnnError

MARKER = ".hpcnn-demo"
DATASET = "Demo"
N_TRAIN, N_TEST = 10, 3
FOLLOW_S = 10.0

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


def run_demo(folder: Path, cli: Callable[[list[str]], int], echo: Echo = print) -> float | None:
    """Run the pipeline in ``folder``; ``cli`` runs one hpcnn command line and returns its exit
    code. Returns the mean foreground Dice on the held-back cases."""
    import os

    from hpcnn.config import load_config_file
    from hpcnn.nnunet.evaluate import evaluate
    from hpcnn.services.demo_data import write_exports
    from hpcnn.services.session import Session
    from hpcnn.services.status import run_status

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
    step("preprocess", "preprocess", DATASET)
    step("train the five folds", "train-all-folds")
    echo("\n== following the folds (hpcnn status)")
    cfg = load_config_file(config)
    shown: dict[int, str] = {}
    while True:
        with Session(cfg) as session:
            status = run_status(session)
        for fold in status.folds:
            last = fold.log.last
            planned = fold.log.planned_epochs
            line = f"{fold.view.state}" + (
                f", epoch {last.epoch + 1}/{planned or '?'}" if last else "")
            if shown.get(fold.view.fold) != line:
                shown[fold.view.fold] = line
                echo(f"   fold {fold.view.fold}: {line}  [{time.time() - started:.0f} s]")
        if status.exit_code in (EXIT_OK, EXIT_FAILED):
            break
        time.sleep(FOLLOW_S)
    step("status", "status")
    step("sync", "sync")
    predictions = folder / "predictions"
    step("predict the held-back cases with the five-fold ensemble", "predict",
         str(folder / "test"), str(predictions), "--fast")
    echo(f"\n== evaluate  (hpcnn evaluate {predictions} {folder / 'test'})")
    result = evaluate(predictions, folder / "test", echo=echo)
    step("report", "report", "--out", str(folder / "report.png"))
    echo(f"\n== done in {time.time() - started:.0f} s")
    for name, dice in result.mean.items():
        echo(f"   Dice {name}: {'n/a' if dice is None else f'{dice:.3f}'}")
    fg = result.foreground_dice
    echo(f"   mean foreground Dice on {N_TEST} held-back cases: "
         f"{'n/a' if fg is None else f'{fg:.3f}'}")
    echo(f"   workspace {folder}: cluster.yaml, exports/, nnUNet_raw/, nnUNet_preprocessed/, "
         "nnUNet_results/, predictions/, report.png")
    return fg
