"""``hpcnn demo``: the whole pipeline on this machine on a synthetic dataset."""

from __future__ import annotations

import click


@click.command("demo")
@click.argument("directory", default="hpcnn-demo", type=click.Path(file_okay=False))
@click.option("--method", is_flag=True,
              help="nnU-Net's whole method: 2d and 3d_fullres (two folds each), find-best, "
                   "and the prediction with what won.")
@click.option("--dicom", is_flag=True,
              help="The same patients as DICOM: CT series with a DICOM-SEG each, imported, "
                   "trained, predicted back as DICOM-SEG and read back (needs pip install "
                   "'hpcnn[dicom]').")
def demo_cmd(directory: str, method: bool, dicom: bool) -> None:
    """Run import → check → preprocess → train-all-folds → status → sync → predict →
    evaluate → report on a small synthetic dataset with the local scheduler (no cluster
    needed), and print the Dice of the held-back cases.

    DIRECTORY (default ./hpcnn-demo) must be new or an earlier demo's. A few minutes on two
    CPU cores; every step is the real command, shown as it runs.

    --method trains 2d and 3d_fullres as one experiment, lets `hpcnn find-best` choose, predicts
    with the winner and prints it with its cross-validation Dice. --dicom hands the patients
    over as DICOM CT series with a DICOM-SEG each and predicts them back as DICOM-SEG.
    """
    from pathlib import Path

    from hpcnn.cli.common import run_cli
    from hpcnn.services.demo import run_demo

    group = click.get_current_context().find_root().command  # the hpcnn group itself
    assert isinstance(group, click.Group)
    run_demo(Path(directory), lambda args: run_cli(group, args), click.echo, method=method,
             dicom=dicom)


COMMANDS = [demo_cmd]
